"""Float32 vs float64 window gradients at the states a trained SHAC policy visits (MJX cart-pole; issue 15).
usage: python scripts/mjx_policy_state_gradients.py PRECISION [SEED [ITERATIONS]]
  float64 8 800: a float64 run that solves the task;  float32 9 800: a float32 run that plateaus.
Trains SHAC at PRECISION (the benchmark's setting), rolls its deterministic policy 200 steps from 64
starts at that precision, and at t in {0, 40, 80, 120, 160} compares per-start gradients of the
32-step reward sum w.r.t. the policy parameters in float32 and in float64 (same states and
parameters, cast). Also: the starts whose cart is at a rail limit (within 1 % of the slider range)."""
import json, sys, time
import jax
prec = sys.argv[1]
if prec not in ("float32", "float64"):
    sys.exit(f"PRECISION must be float32 or float64, got {prec!r}")
if prec == "float64":
    jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp, numpy as np
import mbpo_grad as mg
from mbpo_grad import envs
from mbpo_grad.agents import shac
from mbpo_grad.envs.brax_adapter import cast_floats
seed = int(sys.argv[2]) if len(sys.argv) > 2 else (8 if prec == "float64" else 9)
its = int(sys.argv[3]) if len(sys.argv) > 3 else 800
S = dict(horizon=32, num_envs=32, episode_length=200, iterations=its, eval_every=20, eval_envs=32, actor_lr=1e-3)
cfg = shac.SHACConfig(env="mjx:inverted_pendulum", critic_minibatches=4, x64=prec == "float64", **S)
t0 = time.perf_counter()
_, params, m = shac.train(cfg, jax.random.PRNGKey(seed), progress=False)
ev = np.asarray(m["eval_return"])
print("trained", prec, "seed", seed, "final", float(ev[-1]), "best", float(ev.max()), round(time.perf_counter() - t0), "s",
      flush=True)
act = shac.make_agent(cfg).act
env = envs.make("mjx:inverted_pendulum", x64=prec == "float64")
mj = env.info["mj_model"]
lo, hi = (float(v) for v in mj.jnt_range[0]) if mj.jnt_limited[0] else (-np.inf, np.inf)
starts = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(123), 64))


def roll(s, T):
    def body(s, _):
        return env.step(s, act(params, env.observe(s))), s
    return jax.lax.scan(body, s, None, length=T)[1]


traj = jax.device_get(jax.jit(jax.vmap(lambda s: roll(s, 200)))(starts))
params_np = jax.device_get(params)


def grads(env, dtype, p, s0):
    pol_p = jax.tree.map(lambda x: jnp.asarray(x, dtype), p)
    s0 = cast_floats(jax.tree.map(jnp.asarray, s0), dtype)

    def J(pp, s):
        pi = lambda w, st, e: act({**pol_p, "policy": w}, env.observe(st))
        r, _ = mg.pathwise_returns(pi, pp, env.step, env.reward, jax.tree.map(lambda x: x[None], s), horizon=32)
        return r[0]

    g = jax.jit(jax.vmap(jax.grad(J), in_axes=(None, 0)))(pol_p["policy"], s0)
    return np.concatenate([np.asarray(x, np.float64).reshape(s0.qpos.shape[0], -1) for x in jax.tree.leaves(g)], 1)


for t in (0, 40, 80, 120, 160):
    s_t = jax.tree.map(lambda x: x[:, t], traj)
    with jax.enable_x64(False):
        g32 = grads(envs.make("mjx:inverted_pendulum"), jnp.float32, params_np, s_t)
    with jax.enable_x64(True):
        g64 = grads(envs.make("mjx:inverted_pendulum", x64=True), jnp.float64, params_np, s_t)
    fin = np.all(np.isfinite(g32), 1) & np.all(np.isfinite(g64), 1)
    cos = np.sum(g32 * g64, 1) / (np.linalg.norm(g32, axis=1) * np.linalg.norm(g64, axis=1) + 1e-300)
    rel = np.linalg.norm(g32 - g64, axis=1) / (np.linalg.norm(g64, axis=1) + 1e-300)
    x = np.asarray(s_t.qpos)[:, 0]
    at_rail = (x <= lo + 0.01 * (hi - lo)) | (x >= hi - 0.01 * (hi - lo))
    a, b = g32[fin].mean(0), g64[fin].mean(0)
    print(json.dumps({"t": t, "finite_both": int(fin.sum()), "median_cos": float(np.median(cos[fin])),
                      "min_cos": float(np.min(cos[fin])), "frac_cos_ge_0.99": float(np.mean(cos[fin] >= 0.99)),
                      "median_rel_err": float(np.median(rel[fin])),
                      "cos_of_batch_means": float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-300)),
                      "median_norm64": float(np.median(np.linalg.norm(g64, axis=1))), "at_rail": int(at_rail.sum()),
                      "theta_abs_median": float(np.median(np.abs(np.asarray(s_t.qpos)[:, 1])))}), flush=True)
