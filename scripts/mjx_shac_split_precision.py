"""SHAC on the MJX cart-pole with the physics' forward pass and its derivative in different
precisions (a diagnostic for issue 15).
usage: python scripts/mjx_shac_split_precision.py FORWARD BACKWARD SEEDS   e.g. float64 float32 8,9,10

The env's step is a ``jax.custom_vjp``: the value is the FORWARD-precision step, the
vector-Jacobian product is the BACKWARD-precision step's (``jax.vjp`` at the inputs rounded to
that precision, cotangents cast back). Learning (parameters, normaliser) is float64
(``SHACConfig.x64``; learning precision was measured not to matter, mjx_shac_mixed_precision.py).
Rewards, observations and termination are the FORWARD env's. Same settings and seeds as
``benchmarks/mjx_shac_precision.py`` / mjx_shac_mixed_precision.py."""
import dataclasses, json, sys, time
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
from mbpo_grad import envs
from mbpo_grad.agents import shac

fwd_p, bwd_p, seeds = sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3].split(",")]
S = dict(horizon=32, num_envs=32, episode_length=200, iterations=800, eval_every=20, eval_envs=32, actor_lr=1e-3)


def cast(tree, like):
    """Floating leaves of ``tree`` in the dtypes of ``like``'s; others (ints, float0) unchanged."""
    def one(x, y):
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating):
            return x.astype(y.dtype)
        return x
    return jax.tree_util.tree_map(one, tree, like)


def to(tree, dtype):
    return jax.tree_util.tree_map(
        lambda x: x.astype(dtype) if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def split_env(env_f, env_b, dtype_b):
    @jax.custom_vjp
    def step(s, a, xi):
        return env_f.step(s, a, xi)

    def fwd(s, a, xi):
        return env_f.step(s, a, xi), (s, a, xi)

    def bwd(res, ct):
        s, a, xi = res
        _, vjp = jax.vjp(env_b.step, to(s, dtype_b), to(a, dtype_b), to(xi, dtype_b) if xi is not None else None)
        ct_s, ct_a, ct_xi = vjp(to(ct, dtype_b))
        return cast(ct_s, s), cast(ct_a, a), (cast(ct_xi, xi) if xi is not None else None)

    step.defvjp(fwd, bwd)
    return dataclasses.replace(env_f, step=step)


for seed in seeds:
    env_f = envs.make("mjx:inverted_pendulum", x64=fwd_p == "float64")
    env_b = envs.make("mjx:inverted_pendulum", x64=bwd_p == "float64")
    env = split_env(env_f, env_b, jnp.float64 if bwd_p == "float64" else jnp.float32)
    cfg = shac.SHACConfig(env="mjx:inverted_pendulum", critic_minibatches=4, x64=True, **S)
    t0 = time.perf_counter()
    _, params, m = shac.train(cfg, jax.random.PRNGKey(seed), env=env, progress=False)
    ev = np.asarray(m["eval_return"], np.float64)
    print(json.dumps({"forward": fwd_p, "backward": bwd_p, "seed": seed, "last5": float(ev[-5:].mean()),
                      "final": float(ev[-1]), "best": float(ev.max()), "skipped": int(np.asarray(m["total_skipped"])[-1]),
                      "wall": round(time.perf_counter() - t0, 1)}), flush=True)
