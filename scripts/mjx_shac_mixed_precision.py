"""SHAC on the MJX cart-pole with mixed precision (a diagnostic for issue 15).
usage: python scripts/mjx_shac_mixed_precision.py PHYSICS LEARNING SEEDS   e.g. float32 float64 8,9,10
PHYSICS: the env's dtype (envs.make(..., x64=)); LEARNING: SHACConfig.x64 (params, normaliser).
jax_enable_x64 is on whenever either is float64."""
import json, sys, time
import jax
phys, learn, seeds = sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3].split(",")]
if "float64" in (phys, learn):
    jax.config.update("jax_enable_x64", True)
import numpy as np
from mbpo_grad import envs
from mbpo_grad.agents import shac
S = dict(horizon=32, num_envs=32, episode_length=200, iterations=800, eval_every=20, eval_envs=32, actor_lr=1e-3)
for seed in seeds:
    env = envs.make("mjx:inverted_pendulum", x64=phys == "float64")
    cfg = shac.SHACConfig(env="mjx:inverted_pendulum", critic_minibatches=4, x64=learn == "float64", **S)
    t0 = time.perf_counter()
    _, params, m = shac.train(cfg, jax.random.PRNGKey(seed), env=env, progress=False)
    ev = np.asarray(m["eval_return"], np.float64)
    dt = sorted({str(np.asarray(x).dtype) for x in jax.tree.leaves(params)})
    print(json.dumps({"physics": phys, "learning": learn, "seed": seed, "last5": float(ev[-5:].mean()),
                      "final": float(ev[-1]), "best": float(ev.max()), "param_dtypes": dt,
                      "wall": round(time.perf_counter() - t0, 1)}), flush=True)
