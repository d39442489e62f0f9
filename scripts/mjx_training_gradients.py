"""Float32 vs float64 per-env gradients along a float32 SHAC run (MJX cart-pole; issue 15).
usage: python scripts/mjx_training_gradients.py [SEED [ITERATIONS [EVERY]]]   (default 9 100 10)
Trains float32 SHAC (the benchmark's setting) and every EVERY iterations takes the actor step's own batch
(``agent.actor_batch``: window starts, noise, normaliser, target critic) and compares the per-env
gradients SHAC averages (``common.per_sample_grads`` of ``agent.actor_objective``) with the same
objective evaluated by a float64 agent on the same batch and parameters (cast up). Also: envs whose
window touches a rail limit (cart within 1 % of the slider range at some step)."""
import json, sys
import jax
import jax.numpy as jnp, numpy as np
from mbpo_grad.agents import common, shac
from mbpo_grad.envs.brax_adapter import cast_floats
seed = int(sys.argv[1]) if len(sys.argv) > 1 else 9
its = int(sys.argv[2]) if len(sys.argv) > 2 else 100
every = int(sys.argv[3]) if len(sys.argv) > 3 else 10
S = dict(horizon=32, num_envs=32, episode_length=200, iterations=800, eval_every=20, eval_envs=32, actor_lr=1e-3)
cfg32 = shac.SHACConfig(env="mjx:inverted_pendulum", critic_minibatches=4, **S)
ag32 = shac.make_agent(cfg32)
hp = cfg32.hparams()
state = jax.jit(ag32.init)(jax.random.PRNGKey(seed), hp)
update = jax.jit(ag32.update)
grads32 = jax.jit(lambda pp, b: common.per_sample_grads(ag32.actor_objective, pp, b))
traj32 = jax.jit(lambda pp, b: ag32.actor_objective(pp, b, return_traj=True)[1].states.env_state.qpos)
from mbpo_grad import envs as E  # the slider's range (the rail limits)
m = E.make("mjx:inverted_pendulum").info["mj_model"]
lo, hi = (float(v) for v in m.jnt_range[0])
keys = jax.random.split(jax.random.PRNGKey(seed + 1000), its)
up64 = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.float64) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x, t)
for i in range(its):
    if i % every == 0:
        batch = jax.jit(ag32.actor_batch)(state, hp, keys[i])
        J32, g32 = grads32(state.policy_params, batch)
        q = np.asarray(traj32(state.policy_params, batch))[..., 0]               # [B, n+1] cart position
        rail = np.any((q <= lo + 0.01 * (hi - lo)) | (q >= hi - 0.01 * (hi - lo)), axis=1)
        b_np, p_np = jax.device_get(batch), jax.device_get(state.policy_params)
        with jax.enable_x64(True):
            ag64 = shac.make_agent(cfg32.replace(x64=True))
            J64, g64 = jax.jit(lambda pp, b: common.per_sample_grads(ag64.actor_objective, pp, b))(up64(p_np), up64(b_np))
            J64, g64 = np.asarray(J64), jax.device_get(g64)
        f = lambda g: np.concatenate([np.asarray(x, np.float64).reshape(x.shape[0], -1) for x in jax.tree.leaves(g)], 1)
        a, b = f(g32), f(g64)
        fin = np.all(np.isfinite(a), 1) & np.all(np.isfinite(b), 1)
        cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-300)
        rel = np.linalg.norm(a - b, axis=1) / (np.linalg.norm(b, axis=1) + 1e-300)
        ma, mb = a[fin].mean(0), b[fin].mean(0)
        print(json.dumps({"iteration": i, "finite": int(fin.sum()), "median_cos": float(np.median(cos[fin])),
                          "min_cos": float(np.min(cos[fin])), "n_cos_lt_0.99": int(np.sum(cos[fin] < 0.99)),
                          "median_rel": float(np.median(rel[fin])), "max_rel": float(np.max(rel[fin])),
                          "cos_of_means": float(ma @ mb / (np.linalg.norm(ma) * np.linalg.norm(mb))),
                          "rel_of_means": float(np.linalg.norm(ma - mb) / np.linalg.norm(mb)),
                          "rail_envs": int(rail.sum()),
                          "median_cos_rail": float(np.median(cos[fin & rail])) if (fin & rail).any() else None,
                          "max_J_gap": float(np.max(np.abs(np.asarray(J32, np.float64) - J64)))}), flush=True)
    state, _ = update(state, hp, keys[i])
