"""Float32 vs float64 window gradients at a TRAINED SHAC policy's states (MJX cart-pole; a diagnostic for issue 15).
usage: python scripts/mjx_trained_policy_gradients.py [SEED [ITERATIONS]]   (default 8 800)
Train float64 SHAC (seed 8, the benchmark's setting), roll its deterministic policy 200 steps from 64 starts
in float64, and at t in {0, 40, 80, 120, 160} compare per-start gradients of the 32-step reward sum
w.r.t. the policy parameters, float32 vs float64 (same states and parameters, cast)."""
import json, sys, time
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp, numpy as np
import mbpo_grad as mg
from mbpo_grad import envs
from mbpo_grad.agents import shac
from mbpo_grad.envs.brax_adapter import cast_floats
seed = int(sys.argv[1]) if len(sys.argv) > 1 else 8
its = int(sys.argv[2]) if len(sys.argv) > 2 else 800
S = dict(horizon=32, num_envs=32, episode_length=200, iterations=its, eval_every=20, eval_envs=32, actor_lr=1e-3)
cfg = shac.SHACConfig(env="mjx:inverted_pendulum", critic_minibatches=4, x64=True, **S)
t0 = time.perf_counter()
make_policy, params, m = shac.train(cfg, jax.random.PRNGKey(seed), progress=False)
print("trained", float(np.asarray(m["eval_return"])[-1]), round(time.perf_counter() - t0), "s", flush=True)
agent = shac.make_agent(cfg)
act = agent.act
env64 = envs.make("mjx:inverted_pendulum", x64=True)
env32 = envs.make("mjx:inverted_pendulum", x64=False)
starts = jax.vmap(env64.reset)(jax.random.split(jax.random.PRNGKey(123), 64))
def roll(s, T):
    def body(s, _):
        return env64.step(s, act(params, env64.observe(s))), s
    return jax.lax.scan(body, s, None, length=T)[1]
traj = jax.jit(jax.vmap(lambda s: roll(s, 200)))(starts)   # [64, 200, ...]
def grads(env, dtype, p, s0):
    pol_p = jax.tree.map(lambda x: jnp.asarray(x, dtype), p)
    s0 = cast_floats(s0, dtype)
    def J(pp, s):
        q = {**pol_p, "policy": pp}
        pi = lambda w, st, e: act({**q, "policy": w}, env.observe(st))
        r, _ = mg.pathwise_returns(pi, pp, env.step, env.reward, jax.tree.map(lambda x: x[None], s), horizon=32)
        return r[0]
    g = jax.jit(jax.vmap(jax.grad(J), in_axes=(None, 0)))(pol_p["policy"], s0)
    return np.concatenate([np.asarray(x, np.float64).reshape(s0.qpos.shape[0], -1) for x in jax.tree.leaves(g)], 1)
for t in (0, 40, 80, 120, 160):
    s_t = jax.tree.map(lambda x: x[:, t], traj)
    g64 = grads(env64, jnp.float64, params, s_t)
    jax.config.update("jax_enable_x64", False)
    g32 = grads(env32, jnp.float32, jax.device_get(params), jax.device_get(s_t))
    jax.config.update("jax_enable_x64", True)
    fin = np.all(np.isfinite(g32), 1)
    cos = np.sum(g32 * g64, 1) / (np.linalg.norm(g32, axis=1) * np.linalg.norm(g64, axis=1) + 1e-300)
    rel = np.linalg.norm(g32 - g64, axis=1) / (np.linalg.norm(g64, axis=1) + 1e-300)
    mean_cos = float(np.dot(g32[fin].mean(0), g64[fin].mean(0)) / (np.linalg.norm(g32[fin].mean(0)) * np.linalg.norm(g64[fin].mean(0))))
    print(json.dumps({"t": t, "f32_finite": int(fin.sum()), "median_cos": float(np.median(cos[fin])),
                      "min_cos": float(np.min(cos[fin])), "frac_cos_ge_0.99": float(np.mean(cos[fin] >= 0.99)),
                      "median_rel_err": float(np.median(rel[fin])), "cos_of_batch_means": mean_cos,
                      "median_norm64": float(np.median(np.linalg.norm(g64, axis=1))),
                      "theta_abs_median": float(np.median(np.abs(np.asarray(s_t.qpos)[:, 1])))}), flush=True)
