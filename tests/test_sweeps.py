"""mg.sweep: one compilation for a 16-seed sweep, equality with separate runs, sharded == unsharded."""
import importlib
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mbpo_grad as mg

sw = importlib.import_module("mbpo_grad.sweeps")  # the module, even if mbpo_grad re-exports the function

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRACES = []

HORIZON, N_STATES, N_UPDATES, EVERY = 8, 16, 200, 20


def _policy(params, s, eps):
    return params["K"] @ s


def _step(s, a, xi):
    return 0.9 * s + a


def _reward(s, a):
    return -(jnp.sum(s * s) + 0.1 * jnp.sum(a * a))


def train_lqr(key, hp):
    """Adam on the pathwise objective of a tiny linear-quadratic system; summaries every EVERY updates."""
    TRACES.append(1)  # runs once per trace, never inside the compiled program
    opt = optax.adam(hp["lr"])
    k_init, k_states = jax.random.split(key)
    params = {"K": 0.1 * jax.random.normal(k_init, (2, 2))}
    states = jax.random.normal(k_states, (N_STATES, 2))

    def objective(p):
        return mg.pathwise_objective(_policy, p, _step, _reward, states, horizon=HORIZON, gamma=hp["gamma"])

    def update(carry, _):
        p, o = carry
        j, g = jax.value_and_grad(objective)(p)
        g = jax.tree_util.tree_map(jnp.negative, g)  # ascend J
        u, o = opt.update(g, o, p)
        return (optax.apply_updates(p, u), o), j

    (params, _), js = jax.lax.scan(update, (params, opt.init(params)), None, length=N_UPDATES)
    return {"J": js[::EVERY], "final_J": objective(params), "K": params["K"]}


HPARAMS = {"lr": [1e-2, 3e-2], "gamma": [0.9, 0.99]}


def test_sixteen_seeds_compile_once_and_new_values_do_not_retrace():
    TRACES.clear()
    out = sw.sweep(train_lqr, 16, HPARAMS)
    assert len(TRACES) == 1
    assert out["J"].shape == (4, 16, N_UPDATES // EVERY)
    assert out["final_J"].shape == (4, 16) and out["K"].shape == (4, 16, 2, 2)
    assert isinstance(out["J"], np.ndarray)
    # Training works in every lane: the objective improved.
    assert np.all(out["final_J"] > out["J"][..., 0])

    out2 = sw.sweep(train_lqr, np.arange(100, 116), {"lr": [5e-3, 2e-2], "gamma": [0.8, 0.95]})
    assert len(TRACES) == 1  # new values, same shapes: the compiled program is reused
    assert not np.allclose(out2["final_J"], out["final_J"])


def test_results_equal_separate_runs():
    seeds = np.array([3, 11])
    out = sw.sweep(train_lqr, seeds, HPARAMS)
    points = sw.grid_points(HPARAMS)
    np.testing.assert_allclose(points["lr"], [1e-2, 1e-2, 3e-2, 3e-2])
    np.testing.assert_allclose(points["gamma"], [0.9, 0.99, 0.9, 0.99])
    single = jax.jit(train_lqr)
    for g in range(4):
        hp = {k: jnp.float32(v[g]) for k, v in points.items()}
        for s, seed in enumerate(seeds):
            ref = single(jax.random.PRNGKey(int(seed)), hp)
            for name in ref:
                np.testing.assert_allclose(out[name][g, s], ref[name], rtol=2e-5, atol=1e-6, err_msg=name)


def test_zip_mode_seed_only_and_key_inputs():
    def train(key, hp):
        return {"x": jax.random.uniform(key) + sum(hp.values(), 0.0)}

    zipped = sw.sweep(train, 3, {"a": [1.0, 2.0], "b": [10.0, 20.0]}, grid=False)
    u = np.array([float(jax.random.uniform(jax.random.PRNGKey(s))) for s in range(3)])
    np.testing.assert_allclose(zipped["x"], np.array([11.0, 22.0])[:, None] + u[None], rtol=1e-6)
    only_seeds = sw.sweep(train, 3)
    np.testing.assert_allclose(only_seeds["x"], u[None], rtol=1e-6)
    raw = sw.sweep(train, jax.vmap(jax.random.PRNGKey)(jnp.arange(3)))
    np.testing.assert_allclose(raw["x"], u[None], rtol=1e-6)
    typed_keys = jax.vmap(jax.random.key)(jnp.arange(3))
    typed = sw.sweep(train, typed_keys)
    np.testing.assert_allclose(typed["x"][0], jax.vmap(jax.random.uniform)(typed_keys), rtol=1e-6)


def test_bound_method_is_compiled_once():
    class Trainer:
        def __init__(self):
            self.traces = 0

        def train(self, key, hp):
            self.traces += 1
            return {"x": hp["a"] * jax.random.uniform(key)}

    t = Trainer()
    first = sw.sweep(t.train, 2, {"a": [1.0, 2.0]})
    second = sw.sweep(t.train, 2, {"a": [3.0, 4.0]})
    assert t.traces == 1
    np.testing.assert_allclose(second["x"], first["x"] * np.array([[3.0], [2.0]]), rtol=1e-6)


def test_bad_arguments_name_the_argument():
    f = lambda key, hp: {"x": jnp.zeros(())}  # noqa: E731
    with pytest.raises(ValueError, match="grid=False"):
        sw.sweep(f, 2, {"a": [1.0, 2.0], "b": [1.0]}, grid=False)
    with pytest.raises(ValueError, match=r"hparams\['a'\]"):
        sw.sweep(f, 2, {"a": 0.1})
    with pytest.raises(ValueError, match=r"hparams\['a'\] is empty"):
        sw.sweep(f, 2, {"a": []})
    with pytest.raises(TypeError, match=r"hparams\['a'\]"):
        sw.sweep(f, 2, {"a": ["adam"]})
    with pytest.raises(ValueError, match="seeds"):
        sw.sweep(f, 0)
    with pytest.raises(ValueError, match="seeds"):
        sw.sweep(f, np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match="train_fn"):
        sw.sweep(None, 2)


_SHARDED = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, optax
    import importlib
    import mbpo_grad as mg
    sw = importlib.import_module("mbpo_grad.sweeps")

    assert jax.device_count() == 4, jax.devices()

    def train(key, hp):
        opt = optax.adam(hp["lr"])
        k0, k1 = jax.random.split(key)
        params = {"K": 0.1 * jax.random.normal(k0, (2, 2))}
        states = jax.random.normal(k1, (8, 2))
        def objective(p):
            return mg.pathwise_objective(lambda q, s, e: q["K"] @ s, p, lambda s, a, xi: 0.9 * s + a,
                                         lambda s, a: -(s @ s + 0.1 * a @ a), states, horizon=6,
                                         gamma=hp["gamma"])
        def update(carry, _):
            p, o = carry
            j, g = jax.value_and_grad(lambda q: -objective(q))(p)
            u, o = opt.update(g, o, p)
            return (optax.apply_updates(p, u), o), -j
        (p, _), js = jax.lax.scan(update, (params, opt.init(params)), None, length=50)
        return {"J": js[::10], "K": p["K"]}

    hp = {"lr": [1e-2, 3e-2, 5e-2], "gamma": [0.9, 0.99]}  # 6 grid points x 3 seeds = 18 runs, padded to 20
    sharded = sw.sweep(train, 3, hp, shard=True)
    plain = sw.sweep(train, 3, hp, shard=False)
    assert sharded["J"].shape == (6, 3, 5) and sharded["K"].shape == (6, 3, 2, 2)
    for k in plain:
        np.testing.assert_allclose(sharded[k], plain[k], rtol=1e-6, atol=1e-7)

    # The compiled program really spans the four devices: 20 padded runs, five per device.
    (fn,) = [f for key, f in sw._CACHE[train].items() if key[1]]
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), (sw.AXIS,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(sw.AXIS))
    seeds = sw._place(np.arange(20, dtype=np.int32), sharding)
    hps = {k: sw._place(np.full(20, 0.01, np.float32), sharding) for k in hp}
    out = fn(seeds, hps)
    assert len(out["J"].sharding.device_set) == 4
    assert sorted(s.data.shape[0] for s in out["J"].addressable_shards) == [5, 5, 5, 5]
    print("OK")
    """
)


def test_sharded_sweep_equals_unsharded_on_four_cpu_devices():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", _SHARDED], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith("OK")
