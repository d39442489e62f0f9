"""SHAC on the MJX cart-pole in float64 with the forward states rounded to float32 (issue 15 diagnostic).
usage: python scripts/mjx_shac_rounded_states.py SEEDS   e.g. 8,9,10
After every env step qpos and qvel are rounded to float32 precision in the FORWARD pass only
(x + stop_gradient(f64(f32(x)) − x)): the trajectory carries float32's storage round-off while every
derivative stays float64's. If this alone reproduces float32's failures, round-off steering the
training run is the cause, not the precision of the gradients."""
import dataclasses, json, sys, time
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp, numpy as np
from mbpo_grad import envs
from mbpo_grad.agents import shac
seeds = [int(s) for s in sys.argv[1].split(",")]
S = dict(horizon=32, num_envs=32, episode_length=200, iterations=800, eval_every=20, eval_envs=32, actor_lr=1e-3)
sg = jax.lax.stop_gradient
def rounded(x):
    return x + sg(x.astype(jnp.float32).astype(x.dtype) - x)
for seed in seeds:
    base = envs.make("mjx:inverted_pendulum", x64=True)
    def step(s, a, xi=None, _step=base.step):
        s1 = _step(s, a, xi)
        return s1.replace(qpos=rounded(s1.qpos), qvel=rounded(s1.qvel))
    env = dataclasses.replace(base, step=step)
    cfg = shac.SHACConfig(env="mjx:inverted_pendulum", critic_minibatches=4, x64=True, **S)
    t0 = time.perf_counter()
    _, params, m = shac.train(cfg, jax.random.PRNGKey(seed), env=env, progress=False)
    ev = np.asarray(m["eval_return"], np.float64)
    print(json.dumps({"variant": "float64, states rounded to float32", "seed": seed, "last5": float(ev[-5:].mean()),
                      "final": float(ev[-1]), "best": float(ev.max()), "wall": round(time.perf_counter() - t0, 1)}),
          flush=True)
