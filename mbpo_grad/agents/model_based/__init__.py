"""A model-based actor-critic: SVG(n) through a learned ensemble, branching from real states.

The MBPO recipe (Janner et al. 2019, "When to trust your model") with the policy trained by
pathwise gradients through the learned model, as in MAAC (Clavera et al. 2020, "Model-augmented
actor-critic") and SVG(n) (Heess et al. 2015). One iteration (``offpolicy``'s shared loop):

1. collect — ``num_envs × steps_per_iteration`` real transitions (obs, a, r, obs', 1 − terminal)
   with the behaviour policy into the replay buffer: a stochastic policy acts with fresh
   ε ~ N(0, I); a deterministic one gets clipped Gaussian noise of std ``explore_std``. The first
   ``warmup_steps`` transitions use uniform random actions and no learning happens before.
2. fit — the probabilistic ensemble (``mg.models.gaussian_ensemble``) on ``fit_size`` distinct
   transitions drawn from the buffer (fixed size, so ``fit`` compiles once), ``model_epochs``
   passes, warm-started from the previous parameters.
3. ``updates_per_iteration`` actor-critic steps, each on ``batch_size`` start observations
   s_0 drawn from the buffer (branched rollouts: real states, model futures). With ε_t ~ N(0, I)
   and model noise ξ_t = ``model.sample_noise`` (a random elite per step and per rollout,
   Gaussian aleatoric noise; ``model_noise=False`` steps with the elites' mean)

       J_n(w) = mean_b [ Σ_{t<n} γ^t r̃_t + γ^n V'(s_n) ],        a_t = π(s_t, ε_t; w),
       (s_{t+1}, r_t) = f̂(s_t, a_t, ξ_t),   r̃_t = r_t − α log π(a_t|s_t)   (``entropy=True``),

   actor step: ascend ∇_w J_n (``mg.pathwise_returns``, the engine; global-norm clipping → Adam).
   The per-rollout J_b is ``Agent.actor_objective(policy_params, batch)`` on the ``ActorBatch``
   ``Agent.actor_batch(state, hp, key)`` (s_0, ε, ξ, observation statistics, model, target
   critic, α, γ): each actor step of ``learn`` differentiates that very function on the batch
   it draws with the same builder and key splits (``common.per_sample_grads`` gives each
   rollout's own gradient).
   Critic V (on observations): regress on TD(λ) targets of the same model rollouts
   (``critics.td_lambda_targets``, target critic V') and, with weight ``real_ratio``, on
   one-step targets of real transitions y = r + γ (1 − terminal) V'(s') − α log π(ã|s) with a fresh
   ã ~ π(·|s) (its density forward from ε: the entropy part of the soft V target needs no stored
   action). Then V' ← polyak(V', V, τ).

   Off-policy real targets: r + γ V'(s') uses the behaviour action a_b of the stored transition
   without an importance weight π/μ, so it regresses toward V^μ of the older policies (and of the
   uniform warm-up actions) rather than V^π. The buffer does not keep the behaviour densities
   (and a deterministic policy has none), so no weight is applied; instead the bias was measured
   on pendulum against on-policy targets E_{a~π}[r + γ V'(f(s, a))] from the true simulator
   (64 fresh actions per stored state, the agent's own V'): after 30 iterations (3000 real steps,
   eval return −118) mean(y_b − y_π) = −2.3 (1.3% of |y|; −5.5 on the warm-up data, −1.8 on policy
   data), against a critic error mean|V − y_π| = 3.4; through ``real_ratio`` = 0.1 that moves the
   critic's fixed point by about −0.23 (after 12 iterations: −0.94 → −0.09, critic error 9.9).
   Small at the default ``real_ratio``; it grows in proportion to it.
4. evaluate — the policy's mode (ε = None) on ``eval_envs`` real episodes.

SVG(1) on replayed data (``svg="replay"``; SVG(1)-ER, Heess et al. 2015, docs/theory.md §4):
step 3's actor works on M stored transitions (s, a, r, s', d) instead of model rollouts. The
current policy and the fitted model infer the noise that reproduces each one, ε̂ = π⁻¹(a; s) and
ξ̂ = f̂⁻¹(s', r; s, a) of a random elite, held fixed (``svg.replay_noise``); the actor ascends

    mean_b ρ̄_b J_b,   J_b = r̂_b − α log π(â_b|s_b) + γ d_b V'(ŝ'_b),   â_b = π(s_b, ε̂_b; w),
    (ŝ'_b, r̂_b) = f̂(s_b, â_b, ξ̂_b),   ρ̄_b = min(π_w(a_b|s_b) / μ(a_b|s_b), ``replay_cap``)

(``svg.svg_replay_returns``; the values equal the stored ones, the derivatives are pathwise;
horizon 1, so no 1/n). The buffer then stores the behaviour policy's log-density of each action
(``behaviour_log_prob``, at the stored float32 action; −act_dim·log 2 in the uniform warm-up),
so the weights are exact importance ratios up to the truncation. The critic regresses on the
same transitions' real one-step targets, weighted by ρ̄ (no model targets, ``real_ratio``
unused). With ``entropy`` the soft V critic takes the −α log π bonus at s_b only. The per-sample
objective ``Agent.actor_objective`` is then ρ̄_b J_b on a ``ReplayBatch``. Metric
``replay_weight``: the mean ρ̄ of the actor batches.

Observations: the model, the policy and the critic all work on observation vectors
``env.observe(state)`` (pendulum: the state is [θ, θ̇], the observation [cos θ, sin θ, θ̇]), so
analytic and Brax envs go through the same code. The policy and critic see observations
standardised by the statistics of the whole buffer (``obs_norm``); the model has its own
standardisers.

Reward: learned by default — the ensemble predicts (Δobs, r) jointly and the model's engine
step carries r in ``ModelState.reward`` (``model.as_reward()``). Pass ``reward_fn(obs, action)``
to ``make_agent`` to use a known reward of the observation instead (MBPO's setting).
Termination: model rollouts never terminate unless ``done_fn(obs) -> bool`` is passed (the
model does not learn a termination classifier); real transitions keep the env's terminal flag
for the critic's real-data targets, and time limits are truncations (bootstrapped).

    cfg = ModelBasedConfig(env="pendulum", iterations=30)
    make_policy, params, metrics = train(cfg, jax.random.key(0))
    metrics["eval_env_steps"], metrics["eval_return"]      # real steps vs return

The package, one idea per file:

    config.py     ModelBasedConfig, HParams (derived from its traced fields), validate, check_hparams
    networks.py   the default policy, the value critic, the model, the evaluation policy (make_act_for)
    data.py       what learn reads from the buffer: the model's fit set, the observation statistics
    losses.py     ActorBatch, the n-step rollout objective J_n (V' bootstrap, entropy), actor loss,
                  the critic's model / real targets and its loss; ReplayBatch and the replayed
                  one-step objective of svg="replay" (replay_return, replay_critic_loss)
    agent.py      MBLearner, make_algo (the OffPolicyAlgo: learn = fit + actor / critic steps,
                  actor_objective, actor_batch) and make_agent
    train.py      train / run (through ``offpolicy`` and ``agents.driver``), make_train_fn
"""
from mbpo_grad.agents.model_based.agent import (MBLearner, actor_optimizer, learn_keys, make_agent, make_algo,
                                                update_keys)
from mbpo_grad.agents.model_based.config import HParams, ModelBasedConfig, check_hparams, check_obs_fns, validate
from mbpo_grad.agents.model_based.data import buffer_obs_stats, fit_data, fit_indices
from mbpo_grad.agents.model_based.losses import ActorBatch, ReplayBatch, actor_loss, replay_return, rollout_return
from mbpo_grad.agents.model_based.networks import (_model_for, _policy_for, default_model, default_policy,  # noqa: F401
                                                   make_act_for, normalised_policy, value_critic)
from mbpo_grad.agents.model_based.train import _split_kw, make_train_fn, run, train  # noqa: F401

__all__ = ["ModelBasedConfig", "HParams", "MBLearner", "ActorBatch", "ReplayBatch", "replay_return",
           "fit_indices", "buffer_obs_stats", "fit_data",
           "validate", "check_hparams", "check_obs_fns", "make_algo", "make_agent", "make_train_fn", "run", "train",
           "make_act_for", "normalised_policy", "default_policy", "default_model", "value_critic", "rollout_return",
           "actor_loss", "actor_optimizer", "learn_keys", "update_keys"]
