"""SHAC estimator="auto" on Brax half-cheetah at experiments.estimator_choice's settings (32 envs,
windows of 32, 150 iterations, time limit 200, seed 0) with one change (issue 14 diagnostics,
docs/estimator_choice.md "Half-cheetah").
usage: python scripts/halfcheetah_auto_variants.py VARIANT OUT.json
VARIANT: base (no change), sdstd (PPO's state-dependent σ policy), gamma95 (γ = 0.95), critic10 (critic_iterations=10),
constlr (lr_schedule="constant")."""
import json, sys, time
import jax, jax.numpy as jnp, numpy as np
from mbpo_grad.agents import common, shac
from mbpo_grad.policies.gaussian import gaussian

variant, out = sys.argv[1], sys.argv[2]
if variant not in ("base", "sdstd", "gamma95", "critic10", "constlr"):
    sys.exit(f"VARIANT must be base, sdstd, gamma95, critic10 or constlr, got {variant!r}")
kw = dict(env="brax:halfcheetah", estimator="auto", num_envs=32, horizon=32, iterations=150, eval_every=15,
          episode_length=200)
policy = None
if variant == "sdstd":
    env = common.make_env("brax:halfcheetah")
    policy = gaussian(env.obs_size, env.action_size, (64, 64))
elif variant == "gamma95":
    kw["gamma"] = 0.95
elif variant == "critic10":
    kw["critic_iterations"] = 10
elif variant == "constlr":
    kw["lr_schedule"] = "constant"
cfg = shac.SHACConfig(**kw)
t0 = time.perf_counter()
fn = jax.jit(shac.make_train_fn(cfg, policy=policy))
_, metrics, evals = jax.device_get(fn(jax.random.key(0), cfg.hparams()))
evals = np.asarray(evals)
res = {"variant": variant, "eval": evals.tolist(), "final": float(evals[-2:].mean()), "wall_s": time.perf_counter() - t0,
       "alpha_eff": float(np.mean(metrics["alpha_effective"])), "score_kl": float(np.mean(metrics["score_kl"]))}
print(res)
json.dump(res, open(out, "w"))
