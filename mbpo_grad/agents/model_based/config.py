"""The model-based agent's static configuration, its traced hyper-parameters and their checks.

``ModelBasedConfig`` extends ``offpolicy.OffPolicyConfig`` (collection, buffer, warm-up,
evaluation) with the model's and SVG(n)'s settings (changing them recompiles) and the defaults of
the float hyper-parameters, each marked ``traced``; ``HParams`` is derived from those fields
(``config.hparams()``: arrays that ``vmap`` over without recompiling). ``validate`` checks a
config against its env, ``check_obs_fns`` the optional ``reward_fn`` / ``done_fn``; every error
names the offending field or argument.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Tuple

import jax
import jax.numpy as jnp

from mbpo_grad import validation as V
from mbpo_grad.agents import common, hyperparams
from mbpo_grad.agents import offpolicy as OP
from mbpo_grad.agents.hyperparams import traced


@hyperparams.derive
@dataclasses.dataclass(frozen=True)
class ModelBasedConfig(OP.OffPolicyConfig):
    """``OffPolicyConfig`` (collection, buffer, warm-up, evaluation) + model and SVG(n) settings.

    Real steps per iteration: ``num_envs × steps_per_iteration``. ``updates_per_iteration``:
    actor (and critic) steps in the model per iteration; ``batch_size``: rollouts per step (and
    real transitions per critic step). ``horizon``: n of SVG(n). Model: ``ensemble_size``
    members, ``elites`` used for rollouts, MLP ``model_hidden``, refitted every iteration for
    ``model_epochs`` epochs on ``fit_size`` buffer transitions (minibatch ``model_batch``,
    Adam ``model_lr``). ``model_noise``: sample ξ (random elite + Gaussian noise) in rollouts,
    else the elites' mean. ``critic_iterations``: critic Adam steps per update.
    ``entropy``: add −α log π to rewards and targets (needs a policy with ``log_prob``).
    ``max_grad_norm_to_skip``: an actor update whose gradient (through the n model steps) is
    non-finite or has a larger norm is skipped (``guards.skip_nonfinite``; metric ``skipped_updates``).

    ``svg``: where the actor's pathwise gradient comes from (static).

    * ``"rollout"`` (default): SVG(n) through ``horizon`` model steps branched from buffer
      observations, fresh ε and ξ (``losses.rollout_return``); the critic regresses on the
      rollouts' TD(λ) targets and, with weight ``real_ratio``, on real one-step targets.
    * ``"replay"``: SVG(1) on replayed transitions (SVG(1)-ER, Heess et al. 2015, docs/theory.md
      §4; ``svg.svg_replay_returns``): a stored (s, a, r, s') is replayed under the current policy
      and the fitted model with inferred noise ε̂ = π⁻¹(a; s), ξ̂ = f⁻¹(s', r; s, a) of a random
      elite, held fixed, and the actor ascends mean_b ρ̄_b J_b with
      J_b = r̂_b − α log π(â_b|s_b) + γ (1 − terminal_b) V'(ŝ'_b) (``losses.replay_return``;
      loss −mean_b ρ̄_b J_b, no 1/n: the horizon is 1). ``horizon`` and ``remat`` are unused.
      Importance weights ρ̄_b = min(π_w(a_b|s_b) / μ(a_b|s_b), ``replay_cap``) (stop-gradient):
      the buffer then also stores ``behaviour_log_prob`` = log μ(a_b|s_b), evaluated at the
      stored float32 action (``policy.log_prob``; −act_dim·log 2 for the uniform warm-up
      actions), the form ``svg.replay_log_ratio`` requires where float32 tanh saturated.
      The critic regresses on the same transitions' real one-step targets only, weighted by
      the same ρ̄ (the self-normalised fixed point is V^π up to the truncation's bias;
      ``real_ratio`` is unused: there are no model rollouts to take TD(λ) targets from).
      Needs a stochastic policy with a density (noise inference, weights) and
      ``model_noise=True`` (the elites' mean has no noise to infer). ``entropy=True`` is
      handled exactly: the V critic is a soft state value, so only s_b gets the −α log π
      bonus (forward from ε̂), not ŝ'_b (``svg.svg_replay_returns``' Q form adds one at s').
      Still biased: the states are the buffer's (not reweighted to π's visitation), and the
      truncation at ``replay_cap`` trades bias for variance.
    """

    env: str = "pendulum"
    num_envs: int = 4
    iterations: int = 30
    steps_per_iteration: int = 25
    updates_per_iteration: int = 40
    batch_size: int = 256
    buffer_size: int = 20_000
    warmup_steps: int = 400
    eval_every: int = 2
    eval_envs: int = 16
    horizon: int = 10
    ensemble_size: int = 5
    elites: int = 3
    model_hidden: Tuple[int, ...] = (128, 128)
    model_epochs: int = 10
    fit_size: int = 2048
    model_batch: int = 256
    model_lr: float = 1e-3
    model_noise: bool = True
    critic_iterations: int = 2
    obs_norm: bool = True
    entropy: bool = False
    max_grad_norm_to_skip: float = 1e6
    remat: Any = False         # the model rollout's backward pass: False | True | "nested" | "dots" | int
    svg: str = "rollout"       # the actor's gradient: "rollout" (SVG(n) through the model) | "replay" (SVG(1)-ER)
    # float hyper-parameters (defaults for HParams)
    actor_lr: float = traced(1e-3)
    critic_lr: float = traced(1e-3)
    gamma: float = traced(0.99)
    lam: float = traced(0.95)
    tau: float = traced(0.05)
    alpha: float = traced(0.0)
    real_ratio: float = traced(0.1)
    max_grad_norm: float = traced(1.0)
    explore_std: float = traced(0.3)
    replay_cap: float = traced(5.0)      # truncation c of the importance weights (svg="replay")


HParams = ModelBasedConfig.HPARAMS


def check_hparams(hp):
    """Value checks of the traced hyper-parameters (tracers pass; a sweep's arrays elementwise)."""
    OP.check_hparams(hp, unit=("gamma", "lam", "tau", "real_ratio"), positive=("actor_lr", "critic_lr"),
                     nonneg=("alpha", "explore_std"), finite=("max_grad_norm",))
    OP.check_hparams(hp, positive=("replay_cap",))


SVG_MODES = ("rollout", "replay")


def validate(config: ModelBasedConfig, env=None):
    """Check the static config; returns (env, episode_length). Errors name the field."""
    env, episode_length = OP.validate(config, ModelBasedConfig, env)
    if not isinstance(config.svg, str) or config.svg not in SVG_MODES:
        raise ValueError(f"svg must be one of {SVG_MODES}, got {config.svg!r}")
    if config.svg == "replay" and not config.model_noise:
        raise ValueError("model_noise: svg='replay' infers the model noise ξ̂ of a sampled elite; "
                         "model_noise=False (the elites' mean) has no noise to infer")
    OP.pos_int(config.horizon, "horizon")
    common.remat_mode(config.remat)
    for name in ("ensemble_size", "elites", "model_epochs", "model_batch", "critic_iterations"):
        OP.pos_int(getattr(config, name), name)
    OP.pos_int(config.fit_size, "fit_size", minimum=2)
    if config.elites > config.ensemble_size:
        raise ValueError(f"elites ({config.elites}) must be <= ensemble_size ({config.ensemble_size})")
    if config.fit_size > config.buffer_size:
        raise ValueError(f"fit_size ({config.fit_size}) must be <= buffer_size ({config.buffer_size})")
    OP.check_hidden(config.model_hidden, "model_hidden")
    thr = config.max_grad_norm_to_skip
    if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not thr > 0:
        raise ValueError(f"max_grad_norm_to_skip must be a float > 0, got {thr!r}")
    if not (isinstance(config.model_lr, (int, float)) and config.model_lr > 0):
        raise ValueError(f"model_lr must be a float > 0, got {config.model_lr!r}")
    check_hparams(config)
    return env, episode_length


def check_obs_fns(env, reward_fn, done_fn):
    """Check ``reward_fn(obs, action) -> r`` and ``done_fn(obs) -> bool``: callables (or None),
    traced once on the env's shapes, each returning shape ()."""
    if reward_fn is not None and not callable(reward_fn):
        raise TypeError(f"reward_fn must be callable reward_fn(obs, action) -> r, got {type(reward_fn).__name__}")
    if done_fn is not None and not callable(done_fn):
        raise TypeError(f"done_fn must be callable done_fn(obs) -> bool, got {type(done_fn).__name__}")
    obs = jax.ShapeDtypeStruct((env.obs_size,), jnp.result_type(float))
    act = jax.ShapeDtypeStruct((env.action_size,), jnp.result_type(float))
    for name, fn, args, sig in (("reward_fn", reward_fn, (obs, act), "reward_fn(obs, action)"),
                                ("done_fn", done_fn, (obs,), "done_fn(obs)")):
        if fn is None:
            continue
        out = V.trace_call(name, fn, *args)
        if not hasattr(out, "shape") or tuple(out.shape) != ():
            got = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
            raise ValueError(f"{name}: {sig} with obs ({env.obs_size},) and action ({env.action_size},) must "
                             f"return a scalar (shape ()), got {got}")


__all__ = ["ModelBasedConfig", "HParams", "SVG_MODES", "check_hparams", "validate", "check_obs_fns"]
