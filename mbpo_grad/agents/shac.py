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
2. targets — TD(λ) targets from the window's (stop-gradient) rewards and target-critic
   values (``critics.td_lambda_targets``).
3. critic step — ``critic_iterations`` epochs of shuffled minibatch regression of V on
   the targets, then target ← polyak(target, V, τ).
4. log — observation statistics are updated with the window's states; envs whose
   episode ended are reset; per-iteration metrics are reduced on device.

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
from mbpo_grad import normalizer as N
from mbpo_grad.agents import common
from mbpo_grad.agents.common import Agent, TimedState
from mbpo_grad.objectives import batched_unroll, pathwise_returns
from mbpo_grad.policies.base import Policy
from mbpo_grad.policies.deterministic import deterministic

PyTree = Any

LR_SCHEDULES = ("constant", "linear", "cosine")


class HParams(NamedTuple):
    """Float hyper-parameters, as arrays (vmappable without recompiling)."""

    actor_lr: jax.Array
    critic_lr: jax.Array
    gamma: jax.Array
    lam: jax.Array
    tau: jax.Array
    max_grad_norm: jax.Array


@dataclasses.dataclass(frozen=True)
class SHACConfig:
    """Static configuration (+ defaults for the float hyper-parameters, see ``hparams()``).

    horizon: the window n (``use_critic=False`` and ``horizon = episode_length`` is BPO).
    episode_length: the time limit; None takes the env's own.
    critic_iterations × critic_minibatches: critic Adam steps per iteration.
    tau: Polyak weight of the online critic (SHAC's α = 0.2 for the target is τ = 0.8).
    stagger: start env b at episode step ⌊b·episode_length/num_envs⌋ (its first episode is
      shorter), so the envs' episodes are out of phase and every window mixes early
      (swing-up) and late (balancing) states. Ignored when a window spans the whole episode.

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
    # float hyper-parameters (defaults for HParams)
    actor_lr: float = 1e-2
    critic_lr: float = 1e-3
    gamma: float = 0.99
    lam: float = 0.95
    tau: float = 0.8
    max_grad_norm: float = 1.0

    def hparams(self, **overrides) -> HParams:
        """The float hyper-parameters as float32 arrays (``overrides`` replace fields)."""
        vals = {f: overrides.pop(f, getattr(self, f)) for f in HParams._fields}
        if overrides:
            raise TypeError(f"hparams: unknown hyper-parameter(s) {sorted(overrides)}; expected {HParams._fields}")
        return HParams(**{k: jnp.asarray(v, jnp.float32) for k, v in vals.items()})

    def replace(self, **kw) -> "SHACConfig":
        return dataclasses.replace(self, **kw)


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


# --------------------------------------------------------------------------- validation
def _pos_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _make_env(name, **kw):
    import envs

    if not isinstance(name, str):
        raise TypeError(f"env must be an environment name (str), got {type(name).__name__}")
    try:
        return envs.make(name, **kw)
    except ValueError as err:
        raise ValueError(f"env: {err}") from None


def validate(config: SHACConfig, env=None) -> Tuple[Any, int]:
    """Check the static config; returns (env, episode_length). Errors name the field."""
    if not isinstance(config, SHACConfig):
        raise TypeError(f"config must be a SHACConfig, got {type(config).__name__}")
    if env is None:
        env = _make_env(config.env)
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
    if policy is None:
        policy = deterministic(env.obs_size, env.action_size, config.actor_hidden)
    if not isinstance(policy, Policy):
        raise TypeError(f"policy must be a mbpo_grad.policies.Policy bundle, got {type(policy).__name__}")
    if policy.obs_dim != env.obs_size or policy.act_dim != env.action_size:
        raise ValueError(
            f"policy: obs_dim/act_dim ({policy.obs_dim}, {policy.act_dim}) do not match the env "
            f"({env.obs_size}, {env.action_size})"
        )
    stochastic = tuple(policy.noise_shape) != (0,)
    dyn_noise = tuple(env.noise_shape) != ()
    critic = C.v_critic(env.obs_size, config.critic_hidden)
    step, reward, done, terminal = common.timed_env(env, episode_length)
    n_mb = int(config.critic_minibatches)
    mb_size = (n * B) // n_mb
    critic_steps = int(config.critic_iterations) * n_mb

    def actor_opt(hp):
        return common.make_optimizer(hp.actor_lr, hp.max_grad_norm, total_steps=config.iterations,
                                     schedule=config.lr_schedule, b1=config.adam_b1, b2=config.adam_b2)

    def critic_opt(hp):
        # SHAC clips only the actor's gradient; the critic's lr follows the same schedule.
        return common.make_optimizer(hp.critic_lr, 0.0, total_steps=config.iterations * critic_steps,
                                     schedule=config.lr_schedule, b1=config.adam_b1, b2=config.adam_b2)

    def observe(stats, ts):
        obs = env.observe(ts.env_state)
        return N.normalize(stats, obs) if config.obs_norm else obs

    def init(key, hp):
        k_pol, k_crit, k_env = jax.random.split(key, 3)
        pp = policy.init(k_pol)
        cp = critic.init(k_crit)
        ts = common.reset_timed(env, jax.random.split(k_env, B))
        if config.stagger and n < episode_length:
            ts = ts._replace(t=(jnp.arange(B) * episode_length // B).astype(jnp.int32))
        zeros = jnp.zeros((B,), jnp.float32)
        return SHACState(
            pp, cp, cp, actor_opt(hp).init(pp), critic_opt(hp).init(cp), N.init(env.obs_size), ts,
            zeros, zeros, jnp.zeros((B,), bool), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
        )

    def update(state: SHACState, hp: HParams, key):
        k_eps, k_xi, k_crit, k_reset = jax.random.split(key, 4)
        stats = state.obs_stats
        policy_noise = None
        if stochastic:
            policy_noise = jax.random.normal(k_eps, (n + 1, B) + tuple(policy.noise_shape))
        dynamics_noise = jax.random.normal(k_xi, (n, B) + tuple(env.noise_shape)) if dyn_noise else None

        def pi(params, ts, eps):
            return policy.sample(params, observe(stats, ts), eps)

        def value(params, ts):
            return critic.apply(params, observe(stats, ts))

        bootstrap = (lambda ts, a: value(state.target_params, ts)) if config.use_critic else None
        gamma = hp.gamma

        # ---- collect + actor objective
        def actor_loss(pp):
            rets, traj = pathwise_returns(
                pi, pp, step, reward, state.env_state, horizon=n, gamma=gamma, bootstrap=bootstrap,
                policy_noise=policy_noise, dynamics_noise=dynamics_noise, done=done, remat=config.remat,
            )
            if config.use_critic:
                # Time-limit truncations inside the window: + γ^k V'(s_k) at the cut (k = 1..n).
                v_all = jax.vmap(jax.vmap(lambda s: value(state.target_params, s)))(traj.states)
                term = jax.vmap(jax.vmap(terminal))(traj.states).astype(v_all.dtype)
                cut = traj.alive[:, :-1] * (1.0 - traj.alive[:, 1:]) * (1.0 - term[:, 1:])
                disc = gamma ** jnp.arange(1, n + 1, dtype=v_all.dtype)
                rets = rets + jnp.sum(cut * disc * v_all[:, 1:], axis=1)
            return -jnp.mean(rets) / n, (traj, rets)

        (a_loss, (traj, rets)), grads = jax.value_and_grad(actor_loss, has_aux=True)(state.policy_params)
        grad_norm = optax.tree.norm(grads)
        updates, a_opt = actor_opt(hp).update(grads, state.actor_opt, state.policy_params)
        pp = optax.apply_updates(state.policy_params, updates)
        traj = jax.lax.stop_gradient(traj)
        live = traj.alive[:, :-1]  # [B, n]

        # ---- targets + critic step
        cp, tp, c_opt, c_loss = state.critic_params, state.target_params, state.critic_opt, jnp.zeros(())
        if config.use_critic:
            obs = jax.vmap(jax.vmap(lambda s: observe(stats, s)))(traj.states)          # [B, n+1, d]
            v_targ = jax.vmap(jax.vmap(lambda o: critic.apply(state.target_params, o)))(obs)
            term = jax.vmap(jax.vmap(terminal))(traj.states)
            targets = jax.vmap(C.td_lambda_targets, in_axes=(0, 0, 0, 0, None, None))(
                traj.rewards, v_targ, traj.alive, term, gamma, hp.lam)                     # [B, n]
            x = obs[:, :-1].reshape((n * B, -1))
            y = targets.reshape((n * B,))
            w = live.reshape((n * B,))
            opt = critic_opt(hp)

            def minibatch(carry, idx):
                params, ostate = carry
                loss, g = jax.value_and_grad(lambda p: C.v_loss(critic, p, x[idx], y[idx], w[idx]))(params)
                upd, ostate = opt.update(g, ostate, params)
                return (optax.apply_updates(params, upd), ostate), loss

            def epoch(carry, k):
                perm = jax.random.permutation(k, n * B)[: n_mb * mb_size].reshape((n_mb, mb_size))
                return jax.lax.scan(minibatch, carry, perm)

            (cp, c_opt), losses = jax.lax.scan(epoch, (cp, c_opt), jax.random.split(k_crit, config.critic_iterations))
            c_loss = jnp.mean(losses[-1])
            tp = C.polyak(tp, cp, hp.tau)

        # ---- bookkeeping: obs statistics, episode returns, resets
        new_stats = stats
        if config.obs_norm:
            raw = jax.vmap(jax.vmap(lambda s: env.observe(s.env_state)))(
                jax.tree_util.tree_map(lambda a: a[:, :-1], traj.states))
            new_stats = N.update(stats, raw, live)
        acc = state.ep_return + jnp.sum(traj.rewards, axis=1)
        ended = traj.alive[:, -1] <= 0
        last_return = jnp.where(ended, acc, state.last_return)
        finished = state.finished | ended
        ep_return = jnp.where(ended, 0.0, acc)
        s_n = jax.tree_util.tree_map(lambda a: a[:, -1], traj.states)
        env_state = common.reset_where(env, s_n, ended, k_reset)
        env_steps = state.env_steps + jnp.sum(live).astype(jnp.int32)
        n_fin = jnp.sum(finished)
        episode_return = jnp.where(n_fin > 0, jnp.sum(jnp.where(finished, last_return, 0.0)) / jnp.maximum(n_fin, 1),
                                   jnp.nan)
        new_state = SHACState(pp, cp, tp, a_opt, c_opt, new_stats, env_state, ep_return, last_return, finished,
                              env_steps, state.iteration + 1)
        metrics = common.stack_metrics({
            "env_steps": env_steps,
            "episode_return": episode_return,
            "window_return": jnp.mean(rets),
            "reward_per_step": jnp.sum(traj.rewards) / jnp.maximum(jnp.sum(live), 1.0),
            "actor_loss": a_loss,
            "critic_loss": c_loss,
            "grad_norm": grad_norm,
        })
        return new_state, metrics

    def evaluate(state: SHACState, hp: HParams, key):
        del hp
        k_reset, k_xi = jax.random.split(key)
        s0 = jax.vmap(env.reset)(jax.random.split(k_reset, config.eval_envs))
        stats = state.obs_stats

        def pi(params, s, eps):
            obs = env.observe(s)
            obs = N.normalize(stats, obs) if config.obs_norm else obs
            return policy.sample(params, obs, None)

        xi = (jax.random.normal(k_xi, (episode_length, config.eval_envs) + tuple(env.noise_shape))
              if dyn_noise else None)
        traj = batched_unroll(pi, state.policy_params, env.step, env.reward, s0, horizon=episode_length,
                              dynamics_noise=xi, done=env.done, remat=config.remat)
        return jnp.mean(jnp.sum(traj.rewards, axis=1))

    name = "shac" if config.use_critic else ("bpo" if n == episode_length else "truncated-bpo")
    return Agent(init, update, evaluate, name)


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


def train(config: SHACConfig, key: jax.Array, *, hparams: Optional[HParams] = None, env=None,
          policy: Optional[Policy] = None, progress: bool = True, stream=None) -> Tuple[SHACState, Dict[str, Any]]:
    """Train SHAC (or BPO) and return (final state, metrics).

    metrics: per-iteration NumPy arrays (``env_steps``, ``episode_return`` — the mean return of
    each env's last finished training episode, NaN before any finished — ``window_return``,
    ``reward_per_step``, ``actor_loss``, ``critic_loss``, ``grad_norm``), plus the evaluations
    (deterministic policy, ``eval_envs`` fresh resets, full episodes) every ``eval_every``
    iterations and at the end: ``eval_iteration``, ``eval_env_steps``, ``eval_return``; and
    ``wall_s``. The final evaluation is ``metrics["eval_return"][-1]``.
    """
    hparams = config.hparams() if hparams is None else hparams
    if not isinstance(hparams, HParams):
        raise TypeError(f"hparams must be a shac.HParams, got {type(hparams).__name__}")
    _check_hparam_values(hparams)
    agent = make_agent(config, env=env, policy=policy)

    def describe(it, last, ev):
        ret = last["episode_return"]
        ret_s = "      n/a" if not np.isfinite(ret) else f"{ret:9.2f}"
        return (f"[{agent.name}] it {it:5d}/{config.iterations}  env_steps {int(last['env_steps']):9d}  "
                f"train_return {ret_s}  eval_return {ev:9.2f}  grad_norm {last['grad_norm']:8.3g}")

    state, metrics, evals = common.run(agent, key, hparams, iterations=config.iterations,
                                       eval_every=config.eval_every, progress=progress,
                                       describe=describe, stream=stream)
    its = evals["iteration"]
    metrics["eval_iteration"] = its
    metrics["eval_env_steps"] = metrics["env_steps"][its - 1]
    metrics["eval_return"] = evals["eval_return"]
    metrics["wall_s"] = evals["wall_s"]
    return state, metrics


def evaluate(config: SHACConfig, state: SHACState, key: jax.Array, *, env=None,
             policy: Optional[Policy] = None) -> float:
    """Mean undiscounted return of the deterministic policy over ``eval_envs`` fresh episodes."""
    agent = make_agent(config, env=env, policy=policy)
    return float(jax.jit(agent.evaluate)(state, config.hparams(), key))


__all__ = ["SHACConfig", "HParams", "SHACState", "bpo_config", "validate", "make_agent", "make_train_fn",
           "make_sweep_fn", "train", "evaluate"]
