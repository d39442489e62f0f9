"""The ``Agent`` bundle and what agents share: evaluation, the saved-policy form, config checks.

An agent is an ``Agent`` bundle of pure functions of (train_state, hparams, key):

    init(key, hparams)               -> train_state
    update(train_state, hparams, key) -> (train_state, metrics)   # one iteration, scalars in metrics
    evaluate(train_state, hparams, key) -> scalar                  # mean undiscounted episode return

``hparams`` is a NamedTuple of float arrays (learning rates, γ, λ, τ, …): traced, so a sweep can
``vmap`` over them without recompiling. Everything static (shapes, horizon, network sizes)
is closed over when the agent is built.

Beside it: ``agents.loop`` (``make_train_fn`` and ``run``: the block loop), ``agents.optim``
(the optax optimiser), ``agents.timed`` (``TimedState``: time limits as truncations); their
names are re-exported here for the agents' convenience.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from mbpo_grad.policies.base import Policy
from mbpo_grad.validation import check_int, check_policy

PyTree = Any


# --------------------------------------------------------------------------- agent bundle
class Agent(NamedTuple):
    """An agent: pure functions of (train_state, hparams, key), and its evaluation policy.

    policy_params(train_state, hparams) -> params: what the evaluation policy needs, as nested
      dicts of arrays (policy network, observation statistics, ...): the saved policy.
    act(params, obs) -> action: the deterministic evaluation policy on ONE raw observation
      (normalisation inside). ``evaluate`` is ``evaluate_policy`` of exactly this ``act``, so a
      saved policy reproduces the run's evaluations.
    spec: JSON facts a saved policy needs: ``env`` (name), ``obs_size``, ``action_size``,
      ``episode_length``, ``eval_envs``, ``policy`` (the bundle's name).
    actor_objective(policy_params, batch) -> J [B]: the per-sample objective whose gradient
      the actor step of ``update`` ascends (``update`` calls this very function), so
      diagnostics and estimator comparisons measure the gradient that is trained. None for
      agents that do not expose it.
    actor_batch(train_state, hparams, key) -> batch: the ``batch`` the actor step
      differentiates ``actor_objective`` on, with the agent's own key splits: for the window
      agents (SHAC, BPO) exactly ``update(train_state, hparams, key)``'s (``shac.ActorBatch``);
      for the replay agents the first actor step of ``learn`` on the state's buffer as it is
      (``update`` collects first, then learns), e.g. ``offpolicy.ReplayActorBatch``. Either has
      ``axes()`` / ``singletons()`` for ``per_sample_grads``.
    env_axes: a prefix of the train state's structure with 0 where a part carries the env
      batch on its leading axis and None where it is shared (networks, optimisers, counters):
      how ``driver.run(devices=...)`` lays the state out over devices (``mbpo_grad.parallel``).
      None: the agent runs on one device only.
    """

    init: Callable[[jax.Array, Any], PyTree]
    update: Callable[[PyTree, Any, jax.Array], Tuple[PyTree, Dict[str, jax.Array]]]
    evaluate: Callable[[PyTree, Any, jax.Array], jax.Array]
    name: str = "agent"
    policy_params: Optional[Callable[[PyTree, Any], PyTree]] = None
    act: Optional[Callable[[PyTree, jax.Array], jax.Array]] = None
    spec: Optional[Dict[str, Any]] = None
    actor_objective: Optional[Callable[[PyTree, Any], jax.Array]] = None
    actor_batch: Optional[Callable[[PyTree, Any, jax.Array], Any]] = None
    env_axes: Optional[PyTree] = None


def per_sample_grads(actor_objective: Callable, policy_params: PyTree, batch: Any) -> Tuple[jax.Array, PyTree]:
    """(J [B], ∇_θ J_b with a leading axis B): each sample's objective and its own gradient.

    ``vmap`` over samples of ``value_and_grad`` of ``actor_objective`` (an ``Agent``'s) on one-sample
    batches: one backward pass per sample (memory B × |θ|). ``batch`` is an agent's actor batch
    with ``axes()`` (the ``vmap`` in_axes of the sample axis per field, None where shared) and
    ``singletons()`` (a size-1 sample axis inserted after each sample axis), as ``shac.ActorBatch``.
    The mean of these gradients is the gradient the actor step ascends (before clipping); their
    spread is what the gradient-variance diagnostics report.
    """
    def one(pp, one_sample):
        return actor_objective(pp, one_sample)[0]

    return jax.vmap(jax.value_and_grad(one), in_axes=(None, batch.axes()))(policy_params, batch.singletons())


def evaluate_policy(env, act: Callable, params: PyTree, key: jax.Array, *, num_envs: int, episode_length: int,
                    dtype=None, remat: Any = False) -> jax.Array:
    """Mean undiscounted return of ``act(params, obs)`` over ``num_envs`` fresh episodes.

    Every episode runs from ``env.reset`` for ``episode_length`` steps or until ``env.done``
    (through the engine, ``batched_unroll``); the env's own noise, if any, is drawn from
    ``key`` in ``dtype``. Episodes a simulator fault made non-finite are left out of the
    mean (``guards.masked_mean``). The same function evaluates during training and a saved
    policy afterwards (``mg.load_policy``), so both give the same number for the same key.
    """
    from mbpo_grad import guards
    from mbpo_grad.objectives import batched_unroll

    k_reset, k_xi = jax.random.split(key)
    s0 = jax.vmap(env.reset)(jax.random.split(k_reset, num_envs))

    def pi(pp, s, eps):
        del eps
        return act(pp, env.observe(s))

    xi = None
    if tuple(env.noise_shape) != ():
        shape = (episode_length, num_envs) + tuple(env.noise_shape)
        xi = jax.random.normal(k_xi, shape) if dtype is None else jax.random.normal(k_xi, shape, dtype)
    traj = batched_unroll(pi, params, env.step, env.reward, s0, horizon=episode_length,
                          dynamics_noise=xi, done=env.done, remat=remat)
    return guards.masked_mean(jnp.sum(traj.rewards, axis=1))[0]


def agent_spec(env, policy, episode_length: int, eval_envs: int) -> Dict[str, Any]:
    """``Agent.spec`` for an agent on ``env`` running ``policy`` (None for an actor-free agent)."""
    return {"env": env.name, "obs_size": int(env.obs_size), "action_size": int(env.action_size),
            "episode_length": int(episode_length), "eval_envs": int(eval_envs),
            "policy": None if policy is None else policy.name}


def normalised_policy_params(policy_params: PyTree, obs_stats) -> Dict[str, Any]:
    """The saved policy of a policy on normalised observations: its parameters and the
    ``normalizer.RunningStats`` as plain dicts (saved policies hold only dicts of arrays)."""
    return {"policy": policy_params,
            "obs_stats": {"count": obs_stats.count, "mean": obs_stats.mean, "m2": obs_stats.m2}}


def normalised_act(policy: Policy, obs_norm: bool) -> Callable[[PyTree, jax.Array], jax.Array]:
    """``act(params, obs)`` on ``normalised_policy_params``: the bundle's mode (ε = None) on the
    observation normalised with the saved statistics (``obs_norm=False``: the raw observation)."""
    from mbpo_grad import normalizer as N

    def act(params, obs):
        if obs_norm:
            s = params["obs_stats"]
            obs = N.normalize(N.RunningStats(s["count"], s["mean"], s["m2"]), obs)
        return policy.sample(params["policy"], obs, None)

    return act


# --------------------------------------------------------------------------- config validation
def pos_int(value, name, minimum=1):
    """``validation.check_int`` (the one integer check) for config fields."""
    return check_int(value, name, minimum=minimum)


def make_env(name, *, x64: bool = False, **kw):
    """The env a config names (``config.env``): ``envs.make(name, **kw)``, with the simulators
    (``brax:`` / ``mjx:``) built in float64 when ``x64`` (analytic envs follow the dtype of their
    inputs, so they need nothing). Errors name the config field ``env``."""
    from mbpo_grad import envs

    if not isinstance(name, str):
        raise TypeError(f"env must be an environment name (str), got {type(name).__name__}")
    if x64 and name.startswith(envs.FAMILIES):
        kw["x64"] = True
    try:
        return envs.make(name, **kw)
    except ValueError as err:
        raise ValueError(f"env: {err}") from None


REMAT_MODES = ("nested", "dots")


def remat_mode(value: Any, name: str = "remat") -> Any:
    """A config's ``remat`` as the engine takes it (``rollout.unroll``): False (keep every step's
    intermediates), True (checkpoint each step: memory O(n·|state|)), "nested" (checkpointed
    segments of ⌈√n⌉ steps: O(√n·|state|)), "dots" (per-step checkpoint keeping matmul outputs,
    ``jax.checkpoint_policies.dots_with_no_batch_dims_saveable``) or an int k ≥ 1 (segments of k
    steps). Memory grows linearly in the env count at every setting (``benchmarks.memory_vs_horizon
    --batches``): remat is what lets thousands of envs fit one device."""
    if isinstance(value, bool):
        return value
    if value == "dots":
        return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    if value == "nested":
        return value
    if isinstance(value, (int, np.integer)):
        return check_int(value, name)
    raise ValueError(f"{name} must be False, True, one of {REMAT_MODES} or an int >= 1 (segment length), got {value!r}")


def config_env(config, env=None) -> Tuple[Any, int]:
    """(env, episode_length) of a config with ``env`` (a name) and ``episode_length`` fields (and
    optionally ``x64``): the user's ``env`` (checked, ``check_user_env``) or ``make_env(config.env,
    x64=)``; the episode length is the config's, else the env's. Checks that ``x64`` is a bool and
    that 64-bit JAX is on when it is set."""
    x64 = getattr(config, "x64", False)
    if not isinstance(x64, bool):
        raise TypeError(f"x64 must be a bool, got {type(x64).__name__}")
    if x64 and not jax.config.jax_enable_x64:
        raise ValueError(
            "x64=True needs 64-bit JAX: call jax.config.update('jax_enable_x64', True) before creating any "
            "array (experiments.train --x64 does), or build and run inside `with jax.enable_x64(True):`"
        )
    env = make_env(config.env, x64=x64) if env is None else check_user_env(env)
    episode_length = config.episode_length if config.episode_length is not None else env.episode_length
    return env, pos_int(episode_length, "episode_length")


def check_user_env(env):
    """A user's env (any ``envs.base.Env``), checked once with ``envs.check_env``: every function is
    traced with ``jax.eval_shape`` against the declared ``obs_size`` / ``action_size``, so a
    mismatch raises a ``ValueError`` naming the function and the shapes here, not deep inside a
    compiled training step. Returns ``env``."""
    from mbpo_grad import envs

    return envs.check_env(env)


def check_hidden(h, name):
    if not isinstance(h, (tuple, list)) or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in h):
        raise ValueError(f"{name} must be a tuple of positive ints, got {h!r}")


def policy_for(env, policy, default: Callable[[], Any], *, density_error: Optional[str] = None):
    """The policy bundle an agent runs: ``default()`` when ``policy`` is None, else ``policy``,
    checked to be a ``Policy`` whose sizes match ``env``, and traced once (``jax.eval_shape``,
    ``validation.check_policy``) so that an action of the wrong shape raises here instead of
    broadcasting silently. ``density_error``: the message of the ``ValueError`` for a
    deterministic bundle when the agent needs a density (the density is then traced too)."""
    if policy is None:
        policy = default()
    if not isinstance(policy, Policy):
        raise TypeError(f"policy must be a mbpo_grad.policies.Policy bundle, got {type(policy).__name__}")
    if density_error is not None and tuple(policy.noise_shape) == (0,):
        raise ValueError(density_error)
    if policy.obs_dim != env.obs_size or policy.act_dim != env.action_size:
        raise ValueError(f"policy: obs_dim/act_dim ({policy.obs_dim}, {policy.act_dim}) do not match the env "
                         f"({env.obs_size}, {env.action_size})")
    check_policy(policy, env.obs_size, env.action_size, density=density_error is not None)
    return policy


def stack_metrics(metrics: Dict[str, Any]) -> Dict[str, jax.Array]:
    """Every metric as a scalar array (floats as float32, counters keep their int dtype)."""
    out = {}
    for k, v in metrics.items():
        v = jnp.asarray(v).reshape(())
        out[k] = v if jnp.issubdtype(v.dtype, jnp.integer) else v.astype(jnp.float32)
    return out


# The loop, the optimiser and time-limited envs live in their own files; re-exported for the agents.
from mbpo_grad.agents.loop import (RunProgress, TrainProgram, eval_curves_over_seeds,  # noqa: E402,F401
                                   eval_iterations, make_train_fn, run)
from mbpo_grad.agents.optim import init_optimizer, lr_multiplier, lr_schedule, make_optimizer  # noqa: E402,F401
from mbpo_grad.agents.timed import TimedState, reset_timed, reset_where, timed_env  # noqa: E402,F401

__all__ = [
    "Agent", "per_sample_grads", "evaluate_policy", "agent_spec", "normalised_policy_params", "normalised_act",
    "pos_int", "make_env", "config_env", "check_user_env", "check_hidden", "policy_for", "stack_metrics",
    "TrainProgram", "make_train_fn", "run", "RunProgress", "eval_iterations", "eval_curves_over_seeds", "lr_schedule", "lr_multiplier", "make_optimizer", "init_optimizer",
    "TimedState", "timed_env", "reset_timed", "reset_where",
]
