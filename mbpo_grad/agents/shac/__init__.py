"""Short-horizon actor-critic through a differentiable env (SHAC, Xu et al. 2022), and BPO.

One iteration, for ``num_envs`` environments stepped in parallel (``vmap``):

1. collect + actor step — unroll ``n`` steps from the envs' current states with the
   engine (``mg.pathwise_returns``) and ascend the pathwise gradient of

       J_n = mean_b [ Σ_{t<n} γ^t r_t + γ^n V'(s_n) ] ,   actor loss = −J_n / n,

   V' the (Polyak-averaged) target critic on normalised observations. An episode that hits
   its time limit inside the window is a truncation: its return is bootstrapped with
   γ^k V'(s_k) at the cut (``timed_env`` marks the limit as ``done`` so the engine stops the
   rewards and the gradient path there). Gradients are clipped to a global norm before
   Adam; the learning rate follows a schedule (linear decay to 0 by default, as in SHAC).
   The per-env J_b is ``Agent.actor_objective(policy_params, batch)`` on the ``ActorBatch``
   ``Agent.actor_batch(state, hp, key)`` (start states, noise, observation statistics, target
   critic): ``update`` differentiates that very function, and so do diagnostics
   (``per_env_grads``; the gradient statistics of ``experiments.compare_unroll_lengths``).
2. targets — TD(λ) targets from the window's (stop-gradient) rewards and target-critic
   values (``critics.td_lambda_targets``).
3. critic step — ``critic_iterations`` epochs of shuffled minibatch regression of V on
   the targets, then target ← polyak(target, V, τ).
4. log — observation statistics are updated with the window's states; envs whose
   episode ended are reset; per-iteration metrics are reduced on device.

Guards (issue 6: non-finite or exploding gradients never reach the parameters). With the
default ``guard="per_env"`` step 1 differentiates each env's window return on its own
(``vmap`` of ``value_and_grad`` over envs) and averages the gradients of the envs whose return
and gradient are finite and whose gradient norm is at most ``max_grad_norm_to_skip``
(``guards.masked_grad_mean``; masking a NaN *return* alone would not do: reverse mode
multiplies its zero cotangent by the env's NaN Jacobians). The actor optimiser is wrapped in
``guards.skip_nonfinite``: an update whose (masked) gradient is non-finite or above the
threshold, or that has no env left, changes neither parameters nor Adam moments; the critic
optimiser likewise skips non-finite steps. Masked envs (or envs whose window states or
rewards are non-finite) are left out of the critic targets, the observation statistics and the
episode returns, and are reset. Metrics ``skipped_updates``, ``total_skipped``,
``masked_envs``, ``grad_norm`` (before clipping), ``max_env_grad_norm``, ``reset_envs`` and
``critic_skipped`` count it all; the progress line shows them. ``train`` stops with
``guards.SkipRateExceeded`` (a message naming the likely cause — horizon too long, float32
through contacts — and the remedies) when the skip rate stays above ``skip_threshold``.
``x64=True`` runs everything in float64. ``train(..., checkpoint_dir=, checkpoint_every=,
resume=)`` writes and resumes atomic checkpoints.

``use_critic=False`` drops the bootstrap and the critic; with ``horizon = episode_length``
every iteration is one whole episode from reset: backprop policy optimisation (BPO,
docs/theory.md §1), which suffers the exploding / vanishing gradients of long horizons that the
short window with a critic avoids.

    cfg = SHACConfig(env="cartpole", horizon=32, num_envs=64, iterations=300)
    state, metrics = train(cfg, jax.random.key(0))
    metrics["eval_return"][-1]          # final deterministic evaluation

Static configuration lives in ``SHACConfig`` (changing it recompiles); the float
hyper-parameters are the ``HParams`` arrays (``cfg.hparams()``), traced, so ``vmap`` over
them (and over keys) reuses one compiled program: see ``make_train_fn`` (pure
``(key, hparams) -> (state, metrics, eval_returns)``) and ``make_sweep_fn`` (for ``mg.sweep``).

The package, one idea per file:

    config.py     SHACConfig, HParams (derived from its traced fields), bpo_config, validate
    networks.py   the default actor, the value critic, the evaluation policy ``act``
    losses.py     window return with its truncation bootstrap, actor loss, TD(λ) targets, critic loss
    agent.py      SHACState and make_agent (init, update, evaluate, actor_objective, actor_batch)
    train.py      train / run (through ``agents.driver``), make_train_fn, make_sweep_fn, SkipHealth
"""
from mbpo_grad.agents.shac.agent import SHACState, make_agent
from mbpo_grad.agents.shac.config import GUARDS, LR_SCHEDULES, HParams, SHACConfig, bpo_config, check_hparams, validate
from mbpo_grad.agents.shac.losses import ActorBatch, per_env_grads
from mbpo_grad.agents.shac.networks import default_policy, make_act, make_act_for, value_critic
from mbpo_grad.agents.shac.train import (SkipHealth, checkpoint_config, evaluate, make_sweep_fn, make_train_fn, run,
                                         train)

__all__ = ["SHACConfig", "HParams", "SHACState", "ActorBatch", "per_env_grads", "bpo_config", "validate",
           "check_hparams", "make_agent", "make_train_fn", "make_sweep_fn", "run", "train", "evaluate",
           "checkpoint_config", "default_policy", "value_critic", "make_act", "make_act_for", "SkipHealth", "GUARDS",
           "LR_SCHEDULES"]
