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
theory §1), which suffers the exploding / vanishing gradients of long horizons that the
short window with a critic avoids.

    cfg = SHACConfig(env="cartpole", horizon=32, num_envs=64, iterations=300)
    state, metrics = train(cfg, jax.random.key(0))
    metrics["eval_return"][-1]          # final deterministic evaluation

Static configuration lives in ``SHACConfig`` (changing it recompiles); the float
hyper-parameters are the ``HParams`` arrays (``cfg.hparams()``), traced, so ``vmap`` over
them (and over keys) reuses one compiled program: see ``make_train_fn`` (pure
``(key, hparams) -> (state, metrics, eval_returns)``) and ``make_sweep_fn`` (for ``mg.sweep``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mbpo_grad import critics as C
from mbpo_grad import guards
from mbpo_grad import normalizer as N
from mbpo_grad.agents import common, driver, hyperparams
from mbpo_grad.agents.hyperparams import traced
from mbpo_grad.agents.common import Agent, TimedState
from mbpo_grad.objectives import pathwise_returns
from mbpo_grad.rollout import gate_gradient
from mbpo_grad.policies.base import Policy
from mbpo_grad.policies.deterministic import deterministic

PyTree = Any

LR_SCHEDULES = ("constant", "linear", "cosine")
GUARDS = ("per_env", "batch")


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
    remat: bool = False
    actor_warmup: int = 0
    # reliability (see "Guards" in the module docstring)
    guard: str = "per_env"
    max_grad_norm_to_skip: float = 1e6
    skip_window: int = 20
    skip_threshold: float = 0.5
    x64: bool = False
    # float hyper-parameters (defaults for HParams)
    actor_lr: float = traced(1e-2)
    critic_lr: float = traced(1e-3)
    gamma: float = traced(0.99)
    lam: float = traced(0.95)
    tau: float = traced(0.8)
    max_grad_norm: float = traced(1.0)


HParams = SHACConfig.HPARAMS


def bpo_config(env: str = "cartpole", **kw) -> SHACConfig:
    """BPO: no critic, one whole episode per iteration (``horizon`` = the episode length)."""
    episode_length = kw.pop("episode_length", None)
    if episode_length is None:
        episode_length = _make_env(env).episode_length
    kw.setdefault("lr_schedule", "linear")
    return SHACConfig(env=env, episode_length=episode_length, horizon=episode_length, use_critic=False, **kw)


class SHACState(NamedTuple):
    policy_params: PyTree
    critic_params: PyTree
    target_params: PyTree
    actor_opt: PyTree
    critic_opt: PyTree
    obs_stats: N.RunningStats
    env_state: TimedState
    ep_return: jax.Array       # [B] undiscounted return of the running episode so far
    last_return: jax.Array     # [B] return of each env's last finished episode
    finished: jax.Array        # [B] bool: has finished an episode
    env_steps: jax.Array       # int: environment transitions taken (live steps only)
    iteration: jax.Array


class ActorBatch(NamedTuple):
    """What one actor step differentiates on: ``Agent.actor_objective(policy_params, batch)``.

    env_state: ``TimedState`` [B] — the envs' window start states s_0 (episode step ``t`` inside).
    policy_noise: [n+1, B, *policy.noise_shape] ε of a stochastic policy, or None.
    dynamics_noise: [n, B, *env.noise_shape] ξ of a noisy env, or None.
    obs_stats: the observation normaliser's ``RunningStats`` (held fixed in the window).
    target_params: the target critic V' (bootstrap at the window end and at truncations).
    gamma: the discount γ (a traced hyper-parameter).

    ``Agent.actor_batch(state, hp, key)`` builds it with ``update``'s own key splits. Env b's
    inputs sit on axis ``axes()`` of each field; ``singletons()`` makes that axis B one-env
    batches (``vmap`` over ``axes()`` of it hands one env's ``ActorBatch`` with B = 1).
    """

    env_state: TimedState
    policy_noise: Optional[jax.Array]
    dynamics_noise: Optional[jax.Array]
    obs_stats: N.RunningStats
    target_params: PyTree
    gamma: jax.Array

    def axes(self) -> "ActorBatch":
        """``vmap`` in_axes of the env axis per field (None: shared by every env)."""
        return ActorBatch(0, None if self.policy_noise is None else 1, None if self.dynamics_noise is None else 1,
                          None, None, None)

    def singletons(self) -> "ActorBatch":
        """The batch with a size-1 env axis inserted after each env axis (for per-env ``vmap``)."""
        grow = lambda tree, ax: None if tree is None else jax.tree_util.tree_map(
            lambda x: jnp.expand_dims(x, ax + 1), tree)
        return self._replace(env_state=grow(self.env_state, 0), policy_noise=grow(self.policy_noise, 1),
                             dynamics_noise=grow(self.dynamics_noise, 1))


def per_env_grads(actor_objective, policy_params: PyTree, batch: ActorBatch) -> Tuple[jax.Array, PyTree]:
    """(J [B], ∇_θ J_b with a leading axis B): each env's objective and its own gradient.

    ``vmap`` over envs of ``value_and_grad`` of ``actor_objective`` on a one-env batch: one
    backward pass per env (memory B × |θ|), the gradients ``update``'s per-env guard averages
    (it descends −J_b / n). Used by diagnostics (``experiments.compare_unroll_lengths``).
    """
    def one(pp, one_env):
        return actor_objective(pp, one_env)[0]

    return jax.vmap(jax.value_and_grad(one), in_axes=(None, batch.axes()))(policy_params, batch.singletons())


# --------------------------------------------------------------------------- validation
_pos_int, _make_env = common.pos_int, common.make_env


def validate(config: SHACConfig, env=None) -> Tuple[Any, int]:
    """Check the static config; returns (env, episode_length). Errors name the field."""
    if not isinstance(config, SHACConfig):
        raise TypeError(f"config must be a SHACConfig, got {type(config).__name__}")
    if not isinstance(config.x64, bool):
        raise TypeError(f"x64 must be a bool, got {type(config.x64).__name__}")
    if config.x64 and not jax.config.jax_enable_x64:
        raise ValueError(
            "x64=True needs 64-bit JAX: call jax.config.update('jax_enable_x64', True) before creating any "
            "array (experiments.train --x64 does), or build and run inside `with jax.enable_x64(True):`"
        )
    if env is None:
        simulator = isinstance(config.env, str) and config.env.split(":")[0] in ("brax", "mjx")
        env = _make_env(config.env, **({"x64": True} if config.x64 and simulator else {}))
    else:
        env = common.check_user_env(env)
    episode_length = config.episode_length if config.episode_length is not None else env.episode_length
    episode_length = _pos_int(episode_length, "episode_length")
    if isinstance(config.horizon, bool) or not isinstance(config.horizon, (int, np.integer)):
        raise TypeError(f"horizon must be an int, got {type(config.horizon).__name__}")
    if config.horizon < 1:
        raise ValueError(f"horizon must be >= 1 (the window n of steps per iteration), got {config.horizon}")
    if config.horizon > episode_length:
        raise ValueError(f"horizon ({config.horizon}) must be <= episode_length ({episode_length})")
    _pos_int(config.num_envs, "num_envs")
    _pos_int(config.iterations, "iterations")
    _pos_int(config.critic_iterations, "critic_iterations")
    _pos_int(config.critic_minibatches, "critic_minibatches")
    _pos_int(config.eval_every, "eval_every")
    _pos_int(config.eval_envs, "eval_envs")
    _pos_int(config.actor_warmup, "actor_warmup", minimum=0)
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
    thr = config.max_grad_norm_to_skip
    if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not thr > 0:
        raise ValueError(f"max_grad_norm_to_skip must be a float > 0 (inf never skips a finite gradient), got {thr!r}")
    _pos_int(config.skip_window, "skip_window")
    if not isinstance(config.skip_threshold, (int, float)) or not 0.0 <= config.skip_threshold < 1.0:
        raise ValueError(f"skip_threshold must lie in [0, 1), got {config.skip_threshold!r}")
    _check_hparam_values(config)
    return env, episode_length


def _check_hparam_values(hp):
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
    hi, lo = val("max_grad_norm")
    if not np.isfinite(hi):
        raise ValueError(f"max_grad_norm must be finite (<= 0 disables clipping), got {hp.max_grad_norm}")


# --------------------------------------------------------------------------- the agent
def make_agent(config: SHACConfig, *, env=None, policy: Optional[Policy] = None) -> Agent:
    """The SHAC / BPO ``Agent`` (init, update, evaluate) for ``config``.

    env: an ``envs.Env`` to use instead of ``config.env`` (its episode length applies unless
    ``config.episode_length`` is set). policy: any ``Policy`` bundle (default: a deterministic
    tanh MLP with ``actor_hidden``); a stochastic one (``noise_shape != (0,)``) gets fresh
    ε ~ N(0, I) of shape [n+1, num_envs, *noise_shape] each iteration and acts with ε = None
    (its mode) in evaluation.
    """
    env, episode_length = validate(config, env)
    n, B = int(config.horizon), int(config.num_envs)
    policy = common.policy_for(env, policy, lambda: default_policy(config, env.obs_size, env.action_size))
    stochastic = tuple(policy.noise_shape) != (0,)
    dyn_noise = tuple(env.noise_shape) != ()
    critic = C.v_critic(env.obs_size, config.critic_hidden)
    step, reward, done, terminal = common.timed_env(env, episode_length)
    n_mb = int(config.critic_minibatches)
    mb_size = (n * B) // n_mb
    critic_steps = int(config.critic_iterations) * n_mb
    fdtype = jnp.float64 if config.x64 else jnp.float32
    per_env = config.guard == "per_env"
    skip_norm = float(config.max_grad_norm_to_skip)

    # Built once: the learning rates and the clip norm are hyper-parameters in the optimiser
    # states (optax.inject_hyperparams), set from the run's hparams in ``init``.
    actor_opt = guards.skip_nonfinite(
        common.make_optimizer(total_steps=config.iterations, schedule=config.lr_schedule,
                              b1=config.adam_b1, b2=config.adam_b2),
        max_grad_norm_to_skip=skip_norm)
    # SHAC clips only the actor's gradient; the critic's lr follows the same schedule.
    # A non-finite critic gradient (it should not happen: bad envs are weighted out) is skipped.
    critic_opt = guards.skip_nonfinite(
        common.make_optimizer(total_steps=config.iterations * critic_steps, schedule=config.lr_schedule,
                              b1=config.adam_b1, b2=config.adam_b2))

    def observe(stats, ts):
        obs = env.observe(ts.env_state)
        return N.normalize(stats, obs) if config.obs_norm else obs

    def to_float(tree):
        return jax.tree_util.tree_map(
            lambda x: x.astype(fdtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x, tree)

    def init(key, hp):
        k_pol, k_crit, k_env = jax.random.split(key, 3)
        pp = to_float(policy.init(k_pol))
        cp = to_float(critic.init(k_crit))
        ts = common.reset_timed(env, jax.random.split(k_env, B))
        if config.stagger and n < episode_length:
            ts = ts._replace(t=(jnp.arange(B) * episode_length // B).astype(jnp.int32))
        zeros = jnp.zeros((B,), fdtype)
        return SHACState(
            pp, cp, cp, common.init_optimizer(actor_opt, pp, learning_rate=hp.actor_lr, max_grad_norm=hp.max_grad_norm),
            common.init_optimizer(critic_opt, cp, learning_rate=hp.critic_lr), N.init(env.obs_size, fdtype), ts,
            zeros, zeros, jnp.zeros((B,), bool), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
        )

    def value(stats, params, ts):
        return critic.apply(params, observe(stats, ts))

    def env_window(pp, ts0, eps, xi, stats, target_params, gamma):
        """One env's window (no batch axis): (J, its trajectory); see ``actor_objective``."""
        def pi(params, ts, e):
            return policy.sample(params, observe(stats, ts), e)

        bootstrap = (lambda ts, a: value(stats, target_params, ts)) if config.use_critic else None
        one = lambda tree, axis: None if tree is None else jax.tree_util.tree_map(
            lambda x: jnp.expand_dims(x, axis), tree)
        rets, traj = pathwise_returns(
            pi, pp, step, reward, one(ts0, 0), horizon=n, gamma=gamma, bootstrap=bootstrap,
            policy_noise=one(eps, 1), dynamics_noise=one(xi, 1), done=done, remat=config.remat,
        )
        ret, traj = rets[0], jax.tree_util.tree_map(lambda x: x[0], traj)
        if config.use_critic:
            # Time-limit truncations inside the window: + γ^k V'(s_k) at the cut (k = 1..n).
            term = jax.vmap(terminal)(traj.states).astype(traj.alive.dtype)
            cut = traj.alive[:-1] * (1.0 - traj.alive[1:]) * (1.0 - term[1:])
            # Only the cut state's V is read: the others get stop-gradient inputs and are
            # selected away (a "double where", as in the engine), so a critic that is
            # non-finite at a true terminal state cannot reach the gradient as 0 · NaN.
            cut_states = gate_gradient(cut > 0, jax.tree_util.tree_map(lambda x: x[1:], traj.states))
            v_cut = jax.vmap(lambda s: value(stats, target_params, s))(cut_states)
            disc = gamma ** jnp.arange(1, n + 1, dtype=v_cut.dtype)
            ret = ret + jnp.sum(jnp.where(cut > 0, disc * v_cut, 0.0))
        return ret, traj

    def actor_objective(pp, batch: ActorBatch, return_traj: bool = False):
        """J_b [B], the per-env window objective the actor step ascends (loss −mean_b J_b / n):

            J_b = Σ_{t<k_b} γ^t r_t + γ^{k_b} V'(s_{k_b}) · [the window did not end in a terminal state],

        k_b = n, or the step at which env b's episode ended inside the window (a time limit
        is a truncation: bootstrapped with V'; a terminal state is not); V' the target critic
        on observations normalised with ``batch.obs_stats`` (no V' term with
        ``use_critic=False``). Pure in ``pp``: differentiate it (``per_env_grads`` for each
        env's own gradient). ``return_traj=True`` also returns the engine's ``Trajectory``
        ([B, ...]). Any env count B works (``batch`` fixes it).
        """
        ax = batch.axes()
        rets, traj = jax.vmap(env_window, in_axes=(None, ax.env_state, ax.policy_noise, ax.dynamics_noise,
                                                   None, None, None))(
            pp, batch.env_state, batch.policy_noise, batch.dynamics_noise, batch.obs_stats, batch.target_params,
            batch.gamma)
        return (rets, traj) if return_traj else rets

    def actor_batch(state: SHACState, hp: HParams, key) -> ActorBatch:
        """The actor step's ``ActorBatch`` for ``state`` and an iteration key (``update``'s own key
        splits: ``update(state, hp, key)`` differentiates ``actor_objective`` on exactly this)."""
        k_eps, k_xi, _, _ = jax.random.split(key, 4)
        policy_noise = None
        if stochastic:
            policy_noise = jax.random.normal(k_eps, (n + 1, B) + tuple(policy.noise_shape), fdtype)
        dynamics_noise = jax.random.normal(k_xi, (n, B) + tuple(env.noise_shape), fdtype) if dyn_noise else None
        return ActorBatch(state.env_state, policy_noise, dynamics_noise, state.obs_stats, state.target_params,
                          hp.gamma)

    def update(state: SHACState, hp: HParams, key):
        _, _, k_crit, k_reset = jax.random.split(key, 4)
        stats = state.obs_stats
        gamma = hp.gamma
        batch = actor_batch(state, hp, key)

        # ---- collect + actor objective
        params = state.policy_params
        if per_env:
            def env_loss(pp, one_env):  # one env's batch (env axis of size 1)
                rets, traj = actor_objective(pp, one_env, return_traj=True)
                ret = rets[0]
                return -ret / n, (jax.tree_util.tree_map(lambda x: x[0], traj), ret)

            (env_losses, (traj, rets)), env_grads = jax.vmap(
                jax.value_and_grad(env_loss, has_aux=True), in_axes=(None, batch.axes()))(params, batch.singletons())
            env_norms = jax.vmap(guards.safe_global_norm)(env_grads)                        # [B]
            # An exploding env counts like a non-finite one: its value is NaN for the mask.
            checked = jnp.where(env_norms <= skip_norm, rets, jnp.nan)
            keep = guards.finite_mask(env_grads) & jnp.isfinite(checked)
            grads, masked = guards.masked_grad_mean(env_grads, values=checked)
            max_env_norm = jnp.max(env_norms)                                                # NaN if any is NaN
            all_masked = masked == B
            loss = guards.masked_mean(jnp.where(keep, env_losses, jnp.nan))[0]
        else:
            def batch_loss(pp):
                rets, traj = actor_objective(pp, batch, return_traj=True)
                return -jnp.mean(rets) / n, (traj, rets)

            # A NaN return can come with a finite gradient (a fault in the last transition only
            # reaches the bootstrap value), so the loss is checked too (``value=``).
            (loss, (traj, rets)), grads = jax.value_and_grad(batch_loss, has_aux=True)(params)
            keep = jnp.isfinite(rets)
            masked = (B - jnp.sum(keep)).astype(jnp.int32)
            max_env_norm = guards.safe_global_norm(grads)
            all_masked = jnp.zeros((), bool)
        updates, a_opt = actor_opt.update(grads, state.actor_opt, params, skip=all_masked, value=loss)
        pp = optax.apply_updates(params, updates)
        actor_stats = guards.skip_stats(a_opt)  # reported even in warm-up: the gradient that was not applied
        if config.actor_warmup > 0:  # critic-only iterations: keep the actor and its optimiser
            warm = state.iteration < config.actor_warmup
            keep_old = lambda new, old: jnp.where(warm, old, new)
            pp = jax.tree_util.tree_map(keep_old, pp, params)
            a_opt = jax.tree_util.tree_map(keep_old, a_opt, state.actor_opt)
        traj = jax.lax.stop_gradient(traj)

        # Envs whose window is unusable (masked, or any state / reward non-finite) feed neither
        # the critic nor the normaliser nor the episode statistics, and are reset below.
        def finite_rows(tree):  # [B] over every floating leaf with leading axis B
            out = jnp.ones((B,), bool)
            for x in jax.tree_util.tree_leaves(tree):
                if jnp.issubdtype(x.dtype, jnp.inexact):
                    out = out & jnp.all(jnp.isfinite(x.reshape((B, -1))), axis=1)
            return out

        ok = keep & finite_rows(traj.states) & finite_rows(traj.rewards)                    # [B]
        okf = ok.astype(fdtype)
        live = traj.alive[:, :-1] * okf[:, None]  # [B, n]: live steps of usable envs
        rewards = jnp.where(ok[:, None], traj.rewards, 0.0)
        a_loss = -guards.masked_mean(jnp.where(ok, rets, jnp.nan))[0] / n

        # ---- targets + critic step
        cp, tp, c_opt, c_loss = state.critic_params, state.target_params, state.critic_opt, jnp.zeros((), fdtype)
        critic_skipped = jnp.zeros((), jnp.int32)
        if config.use_critic:
            obs = jax.vmap(jax.vmap(lambda s: observe(stats, s)))(traj.states)          # [B, n+1, d]
            obs = jnp.where(ok[:, None, None], obs, 0.0)
            v_targ = jax.vmap(jax.vmap(lambda o: critic.apply(state.target_params, o)))(obs)
            term = jax.vmap(jax.vmap(terminal))(traj.states)
            targets = jax.vmap(C.td_lambda_targets, in_axes=(0, 0, 0, 0, None, None))(
                rewards, v_targ, traj.alive, term, gamma, hp.lam)                          # [B, n]
            x = obs[:, :-1].reshape((n * B, -1))
            y = jnp.where(live > 0, targets, 0.0).reshape((n * B,))
            w = live.reshape((n * B,))
            opt = critic_opt
            skipped_before = state.critic_opt.total_skipped

            def minibatch(carry, idx):
                params, ostate = carry
                loss, g = jax.value_and_grad(lambda p: C.v_loss(critic, p, x[idx], y[idx], w[idx]))(params)
                upd, ostate = opt.update(g, ostate, params, value=loss)
                return (optax.apply_updates(params, upd), ostate), loss

            def epoch(carry, k):
                perm = jax.random.permutation(k, n * B)[: n_mb * mb_size].reshape((n_mb, mb_size))
                return jax.lax.scan(minibatch, carry, perm)

            (cp, c_opt), losses = jax.lax.scan(epoch, (cp, c_opt), jax.random.split(k_crit, config.critic_iterations))
            c_loss = jnp.mean(losses[-1])
            critic_skipped = (c_opt.total_skipped - skipped_before).astype(jnp.int32)
            tp = C.polyak(tp, cp, hp.tau)

        # ---- bookkeeping: obs statistics, episode returns, resets
        new_stats = stats
        if config.obs_norm:
            raw = jax.vmap(jax.vmap(lambda s: env.observe(s.env_state)))(
                jax.tree_util.tree_map(lambda a: a[:, :-1], traj.states))
            raw = jnp.where(ok[:, None, None], raw, 0.0)
            new_stats = N.update(stats, raw, live)
        acc = state.ep_return + jnp.sum(rewards, axis=1)
        ended = traj.alive[:, -1] <= 0
        counted = ended & ok
        last_return = jnp.where(counted, acc, state.last_return)
        finished = state.finished | counted
        ep_return = jnp.where(ended | ~ok, 0.0, acc)            # a bad env's episode is abandoned
        s_n = jax.tree_util.tree_map(lambda a: a[:, -1], traj.states)
        env_state = common.reset_where(env, s_n, ended | ~ok, k_reset)
        env_steps = state.env_steps + jnp.sum(traj.alive[:, :-1]).astype(jnp.int32)
        n_fin = jnp.sum(finished)
        episode_return = jnp.where(n_fin > 0, jnp.sum(jnp.where(finished, last_return, 0.0)) / jnp.maximum(n_fin, 1),
                                   jnp.nan)
        new_state = SHACState(pp, cp, tp, a_opt, c_opt, new_stats, env_state, ep_return, last_return, finished,
                              env_steps, state.iteration + 1)
        metrics = common.stack_metrics({
            "env_steps": env_steps,
            "episode_return": episode_return,
            "window_return": guards.masked_mean(jnp.where(ok, rets, jnp.nan))[0],
            "reward_per_step": jnp.sum(rewards) / jnp.maximum(jnp.sum(live), 1.0),
            "actor_loss": a_loss,
            "critic_loss": c_loss,
            "grad_norm": actor_stats["grad_norm"],
            "max_env_grad_norm": max_env_norm,
            "skipped_updates": actor_stats["skipped_updates"],
            "total_skipped": actor_stats["total_skipped"],
            "masked_envs": masked,
            "reset_envs": jnp.sum(~ok).astype(jnp.int32),
            "critic_skipped": critic_skipped,
        })
        return new_state, metrics

    act = make_act(config, policy)

    def policy_params(state: SHACState, hp: HParams):
        del hp
        return common.normalised_policy_params(state.policy_params, state.obs_stats)

    def evaluate(state: SHACState, hp: HParams, key):
        return common.evaluate_policy(env, act, policy_params(state, hp), key, num_envs=config.eval_envs,
                                      episode_length=episode_length, dtype=fdtype, remat=config.remat)

    name = "shac" if config.use_critic else ("bpo" if n == episode_length else "truncated-bpo")
    return Agent(init, update, evaluate, name, policy_params, act,
                 common.agent_spec(env, policy, episode_length, config.eval_envs),
                 actor_objective=actor_objective, actor_batch=actor_batch)


def default_policy(config: SHACConfig, obs_size: int, action_size: int) -> Policy:
    """The policy ``make_agent`` builds when none is given: a deterministic tanh MLP (``actor_hidden``)."""
    return deterministic(obs_size, action_size, config.actor_hidden)


def make_act(config: SHACConfig, policy: Policy):
    """The evaluation policy ``act(params, obs)``: the bundle's mode (ε = None) on the normalised obs.

    ``params`` = ``{"policy": ..., "obs_stats": {"count", "mean", "m2"}}`` (``Agent.policy_params``).
    """
    return common.normalised_act(policy, config.obs_norm)


def make_act_for(config: SHACConfig, spec: Dict[str, Any], policy: Optional[Policy] = None):
    """``act(params, obs)`` of a saved run (``mg.load_policy``): ``policy`` or the default bundle."""
    if policy is None:
        policy = default_policy(config, int(spec["obs_size"]), int(spec["action_size"]))
    return make_act(config, policy)


def make_train_fn(config: SHACConfig, *, env=None, policy: Optional[Policy] = None):
    """A pure ``train_fn(key, hparams) -> (state, metrics, eval_returns)`` for jit / vmap / sweeps."""
    agent = make_agent(config, env=env, policy=policy)
    return common.make_train_fn(agent, config.iterations, config.eval_every)


def make_sweep_fn(config: SHACConfig, *, env=None, policy: Optional[Policy] = None):
    """``fn(key, hp) -> {"eval_return", "eval_env_steps", "final_return"}`` for ``mg.sweep``.

    ``hp`` maps any subset of the ``HParams`` names to traced scalars; the others come from
    ``config``. Example: ``mg.sweep(make_sweep_fn(cfg), seeds=8, hparams={"actor_lr": [3e-3, 1e-2]})``.
    """
    train_fn = make_train_fn(config, env=env, policy=policy)
    defaults = config.hparams()
    its = np.minimum(np.arange(1, -(-config.iterations // config.eval_every) + 1) * config.eval_every,
                     config.iterations)

    def fn(key, hp):
        unknown = set(hp) - set(HParams._fields)
        if unknown:
            raise TypeError(f"hp: unknown hyper-parameter(s) {sorted(unknown)}; expected {HParams._fields}")
        full = defaults._replace(**{k: jnp.asarray(v, jnp.float32) for k, v in hp.items()})
        _, metrics, evals = train_fn(key, full)
        return {"eval_return": evals, "eval_env_steps": metrics["env_steps"][its - 1], "final_return": evals[-1]}

    return fn


def checkpoint_config(config: SHACConfig, key: jax.Array, hparams: HParams, *, env=None,
                      policy: Optional[Policy] = None) -> Dict[str, Any]:
    """The JSON dict a checkpoint of this run is guarded by (``driver.guard_config``)."""
    return driver.guard_config(make_agent(config, env=env, policy=policy), config, key, hparams, env=env,
                               policy=policy)


class SkipHealth(driver.Health):
    """Stops a run whose skip rate stays above ``config.skip_threshold`` (``guards.SkipMonitor``).

    An update counts as unhealthy when it was skipped or more than half of its envs were masked.
    """

    error = guards.SkipRateExceeded

    def __init__(self, config: SHACConfig):
        self.num_envs = int(config.num_envs)
        self.monitor = guards.SkipMonitor(window=config.skip_window, threshold=config.skip_threshold,
                                          horizon=int(config.horizon),
                                          dtype=np.float64 if config.x64 else np.float32)

    def update(self, metrics, new):
        bad = (np.asarray(metrics["skipped_updates"][new]) > 0) | \
              (2 * np.asarray(metrics["masked_envs"][new]) > self.num_envs)
        msg = self.monitor.update(bad, metrics["max_env_grad_norm"][new])
        if msg:
            return (f"{msg} (An update counts as skipped when it was skipped or more than half of its "
                    "environments were masked; the parameters were left finite.)")
        return None


def _describe(agent: Agent, config: SHACConfig):
    def describe(it, last, ev):
        ret = last["episode_return"]
        ret_s = "      n/a" if not np.isfinite(ret) else f"{ret:9.2f}"
        return (f"[{agent.name}] it {it:5d}/{config.iterations}  env_steps {int(last['env_steps']):9d}  "
                f"train_return {ret_s}  eval_return {ev:9.2f}  grad_norm {last['grad_norm']:8.3g}  "
                f"skipped {int(last['total_skipped'])}  masked_envs {int(last['masked_envs'])}")

    return describe


def run(config: SHACConfig, key: jax.Array, *, hparams: Optional[HParams] = None, env=None,
        policy: Optional[Policy] = None, **run_kw) -> Tuple[SHACState, Dict[str, Any]]:
    """Train SHAC (or BPO) and return (final ``SHACState``, metrics); ``train`` without the policy step.

    metrics: per-iteration NumPy arrays (``env_steps``, ``episode_return`` — the mean return of
    each env's last finished training episode, NaN before any finished — ``window_return``,
    ``reward_per_step``, ``actor_loss``, ``critic_loss``, ``grad_norm`` (the applied actor
    gradient's norm before clipping), ``max_env_grad_norm`` (largest per-env norm, NaN/inf
    when an env's gradient was non-finite; the batch norm under ``guard="batch"``),
    ``skipped_updates`` (0/1), ``total_skipped``, ``masked_envs``, ``reset_envs`` (envs reset
    because their window was unusable) and ``critic_skipped`` (critic minibatch steps skipped)),
    plus the evaluations (deterministic policy, ``eval_envs`` fresh resets, full episodes)
    every ``eval_every`` iterations and at the end: ``eval_iteration``, ``eval_env_steps``,
    ``eval_return``; and ``wall_s``. The final evaluation is ``metrics["eval_return"][-1]``.

    ``run_kw`` go to ``driver.run``: ``progress``, ``stream``, ``progress_fn(step, metrics)``,
    ``checkpoint_dir`` / ``checkpoint_every`` (a multiple of ``eval_every``) / ``resume`` /
    ``keep_checkpoints`` (exact resume from atomic checkpoints, refused under another config,
    hyper-parameters or seed), ``run_dir`` (the run folder), ``tensorboard``, ``info``.

    Raises:
      guards.SkipRateExceeded: more than ``config.skip_threshold`` of the last
        ``config.skip_window`` updates were unhealthy (skipped, or more than half of the envs
        masked). The message names the likely causes and remedies; the exception carries
        ``state`` (the last state: its parameters are finite, bad updates never reached them),
        ``metrics`` and ``iteration``.
    """
    agent, config, key, hparams, kw = _prepare(config, key, hparams, env, policy, run_kw)
    return driver.run(agent, config, key, hparams, **kw)


def _prepare(config: SHACConfig, key, hparams, env, policy, run_kw):
    """(agent, config, key, hparams) and the driver keywords (progress line, skip-rate health) of a run."""
    hparams = config.checked_hparams(hparams, _check_hparam_values)
    agent = make_agent(config, env=env, policy=policy)
    run_kw.setdefault("describe", _describe(agent, config))
    return agent, config, key, hparams, dict(env=env, policy=policy, health=SkipHealth(config), **run_kw)


def train(config: SHACConfig, key: jax.Array, *, hparams: Optional[HParams] = None, env=None,
          policy: Optional[Policy] = None, **run_kw):
    """Train SHAC (or BPO): ``(make_policy, params, metrics)`` (the Brax convention).

    ``make_policy(params)`` is the jitted deterministic policy ``act(obs)`` (normalisation
    inside) that every evaluation used; ``params`` the final policy parameters and observation
    statistics; ``metrics`` as in ``run`` (which returns the whole train state instead).

        make_policy, params, metrics = shac.train(SHACConfig(), jax.random.key(0), run_dir="runs/a")
        act = make_policy(params); act(obs)
    """
    agent, config, key, hparams, kw = _prepare(config, key, hparams, env, policy, run_kw)
    return driver.train(agent, config, key, hparams, **kw)


def evaluate(config: SHACConfig, state: SHACState, key: jax.Array, *, env=None,
             policy: Optional[Policy] = None) -> float:
    """Mean undiscounted return of the deterministic policy over ``eval_envs`` fresh episodes."""
    agent = make_agent(config, env=env, policy=policy)
    return float(jax.jit(agent.evaluate)(state, config.hparams(), key))


__all__ = ["SHACConfig", "HParams", "SHACState", "ActorBatch", "per_env_grads", "bpo_config", "validate", "make_agent", "make_train_fn",
           "make_sweep_fn", "run", "train", "evaluate", "checkpoint_config", "default_policy", "make_act", "make_act_for",
           "SkipHealth", "GUARDS"]
