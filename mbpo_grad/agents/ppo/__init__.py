"""Proximal policy optimisation with GAE (Schulman et al. 2017), and REINFORCE with a learned
baseline as a switch of the same agent: score-function agents on the shared driver.

One iteration, for ``num_envs`` environments stepped in parallel:

1. collect — ``unroll_length`` steps of the stochastic policy a = tanh(μ_θ(o) + σ_θ(o) ε) in a
   ``lax.scan`` (plain forward passes: no gradient through the env), auto-reset at episode
   ends; a time limit is a truncation (its next state's V bootstraps the advantage), a
   terminal state is not. Stored: o_t, ε_t, log π_old(a_t|o_t), r_t, o'_t, the end flags.
2. targets — GAE(γ, λ) advantages and λ-return value targets per env (``losses``; the
   truncation bootstrap folded into the reward so that ``returns.gae`` does the recursion),
   advantages normalised over the batch.
3. sgd — ``epochs`` × ``minibatches`` Adam steps (global-norm clip, one optimiser for policy
   and value, guarded by ``guards.skip_nonfinite``) on

       L = −E[min(ρ A, clip(ρ, 1 ± ε) A)] + c_v E[(V_φ(o) − y)²] − c_e Ĥ[π_θ],

   ρ = π_θ / π_old computed pre-squash (``policy.log_ratio``: exact, no atanh), Ĥ the
   reparameterised estimate −log π_θ(ã) on the stored noise.
4. log — observation statistics (fixed during the iteration) updated with its observations;
   episode returns; diagnostics (approx. KL, clip fraction, entropy).

``reinforce_config`` (one epoch of one minibatch, ``clip=False``, ``advantage="reward_to_go"``):
the gradient is −E[(G_t − V(s_t)) ∇ log π(a_t|s_t)], REINFORCE with a learned baseline.

    cfg = PPOConfig(env="pendulum", iterations=200)
    make_policy, params, metrics = train(cfg, jax.random.key(0), run_dir="runs/ppo")

The float hyper-parameters are the ``HParams`` arrays (``cfg.hparams()``: lr, clip_eps, gamma,
lam, entropy_cost, value_cost, max_grad_norm, reward_scale), traced, so ``vmap`` over them reuses
one compiled program (``make_train_fn``, ``make_sweep_fn`` for ``mg.sweep``).

    config.py     PPOConfig, HParams, reinforce_config, validate
    networks.py   the tanh-Gaussian actor, the value critic, the evaluation policy ``act``
    losses.py     advantages with truncations, clipped surrogate, value loss, entropy estimate
    agent.py      PPOState, make_agent / build (init, update, evaluate)
    train.py      train / run (through ``agents.driver``), make_train_fn, make_sweep_fn
"""
from mbpo_grad.agents.ppo.agent import AgentParts, PPOState, Rollout, build, make_agent
from mbpo_grad.agents.ppo.config import (ADVANTAGES, LR_SCHEDULES, HParams, PPOConfig, check_hparams,
                                         reinforce_config, validate)
from mbpo_grad.agents.ppo.networks import default_policy, make_act, make_act_for, value_critic
from mbpo_grad.agents.ppo.train import evaluate, make_sweep_fn, make_train_fn, run, train

__all__ = ["PPOConfig", "HParams", "PPOState", "Rollout", "AgentParts", "reinforce_config", "validate",
           "check_hparams", "make_agent", "build", "make_train_fn", "make_sweep_fn", "run", "train", "evaluate",
           "default_policy", "value_critic", "make_act", "make_act_for", "ADVANTAGES", "LR_SCHEDULES"]
