"""SHAC's static configuration, its traced hyper-parameters and their checks.

``SHACConfig`` holds the static settings (shapes, window, schedule: changing them recompiles) and
the defaults of the float hyper-parameters, each declared once and marked ``traced``;
``HParams`` is derived from those fields (``config.hparams()``: arrays that ``vmap`` over
without recompiling). ``validate`` checks a config against its env and names the offending field.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Tuple

import numpy as np

from mbpo_grad.agents import common, hyperparams
from mbpo_grad.agents.hyperparams import traced

LR_SCHEDULES = ("constant", "linear", "cosine")
GUARDS = ("per_env", "batch")
ESTIMATORS = ("pathwise", "score", "auto", "dpmb_sf")
SCORE_ESTIMATORS = ("score", "auto")   # the ones that take the policy's score: a density, per-env gradients


@hyperparams.derive
@dataclasses.dataclass(frozen=True)
class SHACConfig(hyperparams.Config):
    """Static configuration (+ defaults for the float hyper-parameters, see ``hparams()``).

    horizon: the window n (``use_critic=False`` and ``horizon = episode_length`` is BPO).
    episode_length: the time limit; None takes the env's own.
    critic_iterations × critic_minibatches: critic Adam steps per iteration.
    tau: Polyak weight of the online critic (SHAC's α = 0.2 for the target is τ = 0.8).
    stagger: start env b at episode step ⌊b·episode_length/num_envs⌋ (its first episode is
      shorter), so the envs' episodes are out of phase and every window mixes early
      (swing-up) and late (balancing) states. Ignored when a window spans the whole episode.
    guard: "per_env" (default) differentiates each env's window return separately
      (``vmap`` of ``grad``; memory num_envs × |actor params|) and averages the gradients of
      the envs whose return and gradient are finite and whose gradient norm is at most
      ``max_grad_norm_to_skip`` (``guards.masked_grad_mean``): a NaN or an explosion in one env
      costs that env, not the update. "batch" takes the gradient of the batch mean (one
      backward pass, cheapest for big actors); any bad env then makes the whole update skip.
    max_grad_norm_to_skip: an actor update whose gradient norm (before clipping) is non-finite
      or above this is skipped: no parameter or Adam-moment change (``guards.skip_nonfinite``).
    skip_window, skip_threshold: ``train`` stops with ``guards.SkipRateExceeded`` when more than
      ``skip_threshold`` of the last ``skip_window`` updates were unhealthy (skipped, or more
      than half of the envs masked); checked after each block of ``eval_every`` iterations.
    x64: run in float64 (parameters, normaliser, env states; Brax / MJX envs are built with
      ``x64=True``). Needs ``jax_enable_x64`` on before any array is created.
    actor_warmup: the first iterations train only the critic (the actor's gradient is computed
      but not applied). Where the reward's own pathwise gradient is zero (Brax's inverted
      pendulum pays +1 while alive) the actor's only signal is V at the window end, and an
      untrained critic turns it into noise that Adam follows at full step size.
    estimator: the actor's gradient of E[J]. "pathwise" (SHAC, BPO): J differentiated through
      the system. "score": the score-function estimate on the same windows, Σ_t ∇log π(a_t|o_t)
      (C_t − γ^t V'(o_t)) (``losses.score_window_loss``; no derivative of the system is taken).
      "auto": both per env, mixed by ``mixing.alpha_order`` (α-order rule with the bias bound
      ``auto_z``; pathwise samples that are zero, non-finite or above ``max_grad_norm_to_skip``
      fall back to the env's score-function estimate); α and the variances are logged each
      update. "score" and "auto" need a policy with a density (default: a tanh Gaussian with a
      free log σ, ``actor_hidden``) and ``guard="per_env"``. "dpmb_sf": for an env with a
      discrete random mode (``envs.base.hybrid_modes``: ``env.info["mode_logits"]`` and
      ``env.info["mode"]``, e.g. the switching cart), the pathwise gradient with the sampled
      modes held fixed plus the score terms of the modes, Σ_t ∇log p(z_t|s_t, a_t)(C_t − γ^t b_t)
      (``losses.mode_score_term``; DPMB-SF, ``docs/theory.md`` §3): unbiased where the pathwise
      gradient alone misses how the policy moves the mode probabilities. Any policy (default
      the deterministic one), either guard.
    adaptive_horizon: shorten the actor's window where its pathwise gradient explodes. The
      actor differentiates J_h, the first h ≤ n steps of each window bootstrapped with
      γ^h V'(s_h) (``losses.window_return(cut=h)``; the env still steps n and the critic fits
      all n). After each update h ← max(horizon_min, ⌊h/2⌋) when the largest per-env pathwise
      gradient norm (before clipping) is above ``horizon_norm_limit`` or non-finite, else
      h ← min(n, h + 1); h starts at n and is logged as ``horizon``. A gradient-norm criterion
      (AHAC, Georgiev et al. 2024, shortens the window before stiff contact, measured by the
      contact forces; a norm test needs no simulator internals). Not with ``estimator="score"``.
    score_epochs, score_minibatches: with ``estimator="score"/"auto"`` and ``score_epochs`` ≥ 1
      (default 10 × 4), the score-function part of the update is PPO's: ``score_epochs`` passes
      of ``score_minibatches`` Adam steps (lr ``score_lr``, clip ``score_max_grad_norm``) on the
      clipped surrogate of the window's samples (ratios against the policy that sampled them,
      clip ε ``score_clip``; GAE(γ, λ) advantages from the target critic, normalised). "auto"
      then takes its pathwise part as its own step and weights the two steps by the α rule:
      θ ← θ + α_eff Δθ_pathwise, then the PPO steps each scaled by 1 − α_eff (α_eff = α times the
      share of envs whose pathwise sample did not fall back); α = 1 is SHAC's step, α = 0 PPO's
      on SHAC's windows (GI-PPO's structure, Son et al. 2023). ``score_epochs=0``: one step on
      the mixed gradient α ḡ_pathwise + (1 − α) ḡ_score with the actor's optimiser.

    Defaults follow the SHAC paper's cart-pole setting (actor lr 1e-2, critic lr 1e-3, Adam
    betas (0.7, 0.95), λ = 0.95, γ = 0.99, τ = 0.8, clip 1.0, linear decay, n = 32) at a CPU
    size: 32 envs, 4 critic epochs × 4 minibatches, 400 iterations (≈ 366k env steps; cart-pole
    swing-up evaluation returns ≈ 155–163 on 24 of 24 seeds tried).
    """

    env: str = "cartpole"
    num_envs: int = 32
    horizon: int = 32
    episode_length: Optional[int] = None
    iterations: int = 400
    actor_hidden: Tuple[int, ...] = (64, 64)
    critic_hidden: Tuple[int, ...] = (64, 64)
    critic_iterations: int = 4
    critic_minibatches: int = 4
    use_critic: bool = True
    stagger: bool = True
    obs_norm: bool = True
    lr_schedule: str = "linear"
    adam_b1: float = 0.7
    adam_b2: float = 0.95
    eval_every: int = 50
    eval_envs: int = 32
    remat: Any = False         # False | True | "nested" | "dots" | int: see common.remat_mode
    actor_warmup: int = 0
    # reliability (see "Guards" in the module docstring)
    guard: str = "per_env"
    max_grad_norm_to_skip: float = 1e6
    skip_window: int = 20
    skip_threshold: float = 0.5
    x64: bool = False
    estimator: str = "pathwise"
    adaptive_horizon: bool = False
    horizon_min: int = 1
    score_epochs: int = 10
    score_minibatches: int = 4
    # float hyper-parameters (defaults for HParams)
    actor_lr: float = traced(1e-2)
    critic_lr: float = traced(1e-3)
    gamma: float = traced(0.99)
    lam: float = traced(0.95)
    tau: float = traced(0.8)
    max_grad_norm: float = traced(1.0)
    auto_z: float = traced(2.0)   # estimator="auto": bias bound in standard errors (mixing.alpha_order)
    horizon_norm_limit: float = traced(1e3)   # adaptive_horizon: per-env gradient norm that halves h
    score_lr: float = traced(1e-3)         # the PPO steps of estimator="score"/"auto" (score_epochs >= 1)
    score_clip: float = traced(0.3)
    score_max_grad_norm: float = traced(0.5)


HParams = SHACConfig.HPARAMS


def bpo_config(env: str = "cartpole", **kw) -> SHACConfig:
    """BPO: no critic, one whole episode per iteration (``horizon`` = the episode length)."""
    episode_length = kw.pop("episode_length", None)
    if episode_length is None:
        episode_length = common.make_env(env).episode_length
    kw.setdefault("lr_schedule", "linear")
    return SHACConfig(env=env, episode_length=episode_length, horizon=episode_length, use_critic=False, **kw)


def validate(config: SHACConfig, env=None) -> Tuple[Any, int]:
    """Check the static config; returns (env, episode_length). Errors name the field."""
    if not isinstance(config, SHACConfig):
        raise TypeError(f"config must be a SHACConfig, got {type(config).__name__}")
    env, episode_length = common.config_env(config, env)
    common.pos_int(config.horizon, "horizon")  # the window n of steps per iteration
    if config.horizon > episode_length:
        raise ValueError(f"horizon ({config.horizon}) must be <= episode_length ({episode_length})")
    common.pos_int(config.num_envs, "num_envs")
    common.pos_int(config.iterations, "iterations")
    common.pos_int(config.critic_iterations, "critic_iterations")
    common.pos_int(config.critic_minibatches, "critic_minibatches")
    common.pos_int(config.eval_every, "eval_every")
    common.pos_int(config.eval_envs, "eval_envs")
    common.pos_int(config.actor_warmup, "actor_warmup", minimum=0)
    if config.critic_minibatches > config.horizon * config.num_envs:
        raise ValueError(
            f"critic_minibatches ({config.critic_minibatches}) must be <= horizon*num_envs "
            f"({config.horizon * config.num_envs}) samples per iteration"
        )
    if config.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {config.lr_schedule!r}")
    for name in ("actor_hidden", "critic_hidden"):
        h = getattr(config, name)
        if not isinstance(h, (tuple, list)) or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in h):
            raise ValueError(f"{name} must be a tuple of positive ints, got {h!r}")
    for name in ("adam_b1", "adam_b2"):
        v = getattr(config, name)
        if not 0.0 <= v < 1.0:
            raise ValueError(f"{name} must lie in [0, 1), got {v}")
    if config.guard not in GUARDS:
        raise ValueError(f"guard must be one of {GUARDS}, got {config.guard!r}")
    if config.estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {config.estimator!r}")
    if config.estimator in SCORE_ESTIMATORS and config.guard != "per_env":
        raise ValueError(f"estimator={config.estimator!r} needs guard='per_env' (it mixes or masks per-env "
                         f"gradients), got guard={config.guard!r}")
    if not isinstance(config.adaptive_horizon, bool):
        raise ValueError(f"adaptive_horizon must be a bool, got {config.adaptive_horizon!r}")
    common.pos_int(config.horizon_min, "horizon_min")
    common.pos_int(config.score_epochs, "score_epochs", minimum=0)
    common.pos_int(config.score_minibatches, "score_minibatches")
    if config.score_minibatches > config.horizon * config.num_envs:
        raise ValueError(
            f"score_minibatches ({config.score_minibatches}) must be <= horizon*num_envs "
            f"({config.horizon * config.num_envs}) samples per iteration"
        )
    if config.horizon_min > config.horizon:
        raise ValueError(f"horizon_min ({config.horizon_min}) must be <= horizon ({config.horizon})")
    if config.adaptive_horizon and config.estimator == "score":
        raise ValueError("adaptive_horizon shortens the pathwise window: it needs estimator='pathwise' or 'auto', "
                         "got estimator='score'")
    thr = config.max_grad_norm_to_skip
    if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not thr > 0:
        raise ValueError(f"max_grad_norm_to_skip must be a float > 0 (inf never skips a finite gradient), got {thr!r}")
    common.remat_mode(config.remat)
    common.pos_int(config.skip_window, "skip_window")
    if not isinstance(config.skip_threshold, (int, float)) or not 0.0 <= config.skip_threshold < 1.0:
        raise ValueError(f"skip_threshold must lie in [0, 1), got {config.skip_threshold!r}")
    check_hparams(config)
    return env, episode_length


def check_hparams(hp) -> None:
    """Value checks of the traced hyper-parameters (any shape: a sweep's arrays are checked elementwise)."""
    def val(name):
        return float(np.asarray(getattr(hp, name)).max()), float(np.asarray(getattr(hp, name)).min())

    for name in ("gamma", "lam", "tau"):
        hi, lo = val(name)
        if not (0.0 <= lo and hi <= 1.0):
            raise ValueError(f"{name} must lie in [0, 1], got {getattr(hp, name)}")
    for name in ("actor_lr", "critic_lr"):
        hi, lo = val(name)
        if not lo > 0.0 or not np.isfinite(hi):
            raise ValueError(f"{name} must be a finite float > 0, got {getattr(hp, name)}")
    hi, lo = val("auto_z")
    if not (lo >= 0.0 and np.isfinite(hi)):
        raise ValueError(f"auto_z must be a finite float >= 0, got {hp.auto_z}")
    hi, lo = val("horizon_norm_limit")
    if not lo > 0.0:
        raise ValueError(f"horizon_norm_limit must be a float > 0, got {hp.horizon_norm_limit}")
    for name in ("max_grad_norm", "score_max_grad_norm"):
        hi, lo = val(name)
        if not np.isfinite(hi):
            raise ValueError(f"{name} must be finite (<= 0 disables clipping), got {getattr(hp, name)}")
    for name in ("score_lr", "score_clip"):
        hi, lo = val(name)
        if not lo > 0.0 or not np.isfinite(hi):
            raise ValueError(f"{name} must be a finite float > 0, got {getattr(hp, name)}")
