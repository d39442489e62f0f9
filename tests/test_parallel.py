"""Data-parallel training (``driver.run(devices=...)``, ``mbpo_grad.parallel``) on 4 forced CPU
devices equals the one-device run up to reduction order, for SHAC and DDPG.

The runs happen in a subprocess started with ``--xla_force_host_platform_device_count=4`` (the
test process has already started JAX with one device). The check that the layout is real: the
env states come back split over the 4 devices, the parameters replicated.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, jax
    from mbpo_grad.agents import ddpg, shac
    from mbpo_grad import parallel
    assert jax.device_count() == 4
    out = {}
    cfg = shac.SHACConfig(env="pendulum", num_envs=8, horizon=8, iterations=4, eval_every=2, eval_envs=4,
                          critic_iterations=2, critic_minibatches=2)
    dcfg = ddpg.DDPGConfig(env="pendulum", num_envs=4, iterations=6, eval_every=3, eval_envs=4, warmup_steps=16,
                           batch_size=16, buffer_size=256, updates_per_iteration=2)
    for name, mod, c, params in (("shac", shac, cfg, lambda s: s.policy_params),
                                 ("ddpg", ddpg, dcfg, lambda s: s.learner.actor)):
        for dev in (None, 4):
            st, m = mod.run(c, jax.random.key(0), progress=False, devices=dev)
            leaf = jax.tree_util.tree_leaves(st.env_state)[0]
            p = jax.tree_util.tree_leaves(params(st))
            out[f"{name}_{dev}"] = {
                "metrics": {k: np.asarray(v, np.float64).tolist() for k, v in m.items() if k != "wall_s"},
                "params": [np.asarray(x, np.float64).ravel().tolist() for x in p],
                "env_shards": len(leaf.sharding.device_set), "env_spec": str(getattr(leaf.sharding, "spec", "")),
                "param_replicated": bool(p[0].sharding.is_fully_replicated),
            }
    try:
        shac.run(cfg.replace(num_envs=6), jax.random.key(0), progress=False, devices=4)
        out["error"] = None
    except ValueError as err:
        out["error"] = str(err)
    json.dump(out, open(sys.argv[1], "w"))
""")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    path = tmp_path_factory.mktemp("parallel") / "out.json"
    script = path.parent / "run.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4",
               PYTHONPATH=REPO)
    res = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(path.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["shac", "ddpg"])
def test_data_parallel_run_equals_the_one_device_run(runs, name):
    one, four = runs[f"{name}_None"], runs[f"{name}_4"]
    assert one["env_shards"] == 1 and four["env_shards"] == 4 and "envs" in four["env_spec"]
    assert four["param_replicated"]
    for k, v in one["metrics"].items():
        np.testing.assert_allclose(four["metrics"][k], v, rtol=1e-4, atol=1e-5, err_msg=k)
    for a, b in zip(one["params"], four["params"]):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_an_env_count_that_does_not_split_is_refused(runs):
    assert runs["error"] is not None and "num_envs" in runs["error"] and "4 devices" in runs["error"]
