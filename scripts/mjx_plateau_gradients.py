"""Float32 vs float64 window gradients at the states of a float32 SHAC run's OWN policy (MJX cart-pole; issue 15).
usage: python scripts/mjx_plateau_gradients.py [SEED [ITERATIONS]]   (default 9 800: a float32 seed that plateaus)
Train float32 SHAC (x64 off), roll its deterministic policy 200 steps from 64 starts in float32, and at
t in {0, 40, 80, 120, 160} compare per-start gradients of the 32-step reward sum w.r.t. the policy
parameters in float32 and in float64 (same states and parameters, cast up). Also: the share of starts whose
cart is at a rail limit (|x| within 1 % of the joint range) at t."""
import json, sys, time
import jax
import jax.numpy as jnp, numpy as np
import mbpo_grad as mg
from mbpo_grad import envs
from mbpo_grad.agents import shac
from mbpo_grad.envs.brax_adapter import cast_floats
seed = int(sys.argv[1]) if len(sys.argv) > 1 else 9
its = int(sys.argv[2]) if len(sys.argv) > 2 else 800
S = dict(horizon=32, num_envs=32, episode_length=200, iterations=its, eval_every=20, eval_envs=32, actor_lr=1e-3)
cfg = shac.SHACConfig(env="mjx:inverted_pendulum", critic_minibatches=4, **S)
t0 = time.perf_counter()
make_policy, params, m = shac.train(cfg, jax.random.PRNGKey(seed), progress=False)
ev = np.asarray(m["eval_return"])
print("trained float32", float(ev[-1]), "best", float(ev.max()), round(time.perf_counter() - t0), "s", flush=True)
act = shac.make_agent(cfg).act
env32 = envs.make("mjx:inverted_pendulum")
mj = env32.info["mj_model"]
lo, hi = (float(v) for v in mj.jnt_range[0]) if mj.jnt_limited[0] else (-np.inf, np.inf)
starts = jax.vmap(env32.reset)(jax.random.split(jax.random.PRNGKey(123), 64))
def roll(s, T):
    def body(s, _):
        return env32.step(s, act(params, env32.observe(s))), s
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
rows = []
for t in (0, 40, 80, 120, 160):
    s_t = jax.tree.map(lambda x: x[:, t], traj)
    g32 = grads(env32, jnp.float32, params_np, s_t)
    with jax.enable_x64(True):
        env64 = envs.make("mjx:inverted_pendulum", x64=True)
        g64 = grads(env64, jnp.float64, params_np, s_t)
    fin = np.all(np.isfinite(g32), 1) & np.all(np.isfinite(g64), 1)
    cos = np.sum(g32 * g64, 1) / (np.linalg.norm(g32, axis=1) * np.linalg.norm(g64, axis=1) + 1e-300)
    rel = np.linalg.norm(g32 - g64, axis=1) / (np.linalg.norm(g64, axis=1) + 1e-300)
    x = np.asarray(s_t.qpos)[:, 0]
    at_rail = (x <= lo + 0.01 * (hi - lo)) | (x >= hi - 0.01 * (hi - lo))
    mc = lambda a, b: float(np.dot(a.mean(0), b.mean(0)) / (np.linalg.norm(a.mean(0)) * np.linalg.norm(b.mean(0)) + 1e-300))
    rows.append({"t": t, "finite_both": int(fin.sum()), "median_cos": float(np.median(cos[fin])),
                 "min_cos": float(np.min(cos[fin])), "frac_cos_ge_0.99": float(np.mean(cos[fin] >= 0.99)),
                 "median_rel_err": float(np.median(rel[fin])), "cos_of_batch_means": mc(g32[fin], g64[fin]),
                 "at_rail": int(at_rail.sum()),
                 "median_cos_at_rail": float(np.median(cos[fin & at_rail])) if (fin & at_rail).any() else None,
                 "theta_abs_median": float(np.median(np.abs(np.asarray(s_t.qpos)[:, 1])))})
    print(json.dumps(rows[-1]), flush=True)
