"""Fault injection: an ``Env`` wrapper whose state turns NaN (or huge) in some envs at random steps.

Differentiable simulators fail in the field by returning non-finite or absurd states
through stiff contacts, joint limits and solver blow-ups. ``inject_faults`` reproduces
that on purpose so the guards of the training loop (``mbpo_grad.guards``: per-env
gradient masking, skipped updates, resets of non-finite envs) can be tested with real
rollouts instead of mocks:

    env = inject_faults(envs.make("pendulum"), rate=0.02, value=jnp.nan)
    s = env.reset(key)                   # FaultState(env_state, key, steps, faults)
    s = env.step(s, a, xi)               # with probability ``rate`` every floating leaf of
                                         # the new env state is replaced by ``value``

Determinism and purity. The wrapped state carries its own PRNG key (raw ``uint32[2]``
key data, so it can be selected with ``jnp.where``, checkpointed and stop-gradient'ed
like any bookkeeping leaf). Every ``step`` splits it: one half decides whether this
transition faults, the other is carried on. So the fault pattern is a pure function
of the reset key and the step count, independent of actions: ``vmap`` over envs gives
independent patterns per env, ``lax.scan`` over steps works, and two runs with the same
seed fault at the same places. ``faults`` counts the faults injected since the env's
reset (int32), so a test can compare a trainer's ``masked_envs`` counter with the truth.

A fault is a select (``jnp.where``), not arithmetic: the faulted state is the constant
``value`` and the gradient w.r.t. the previous state is zero through the select; the
NaN then reaches the parameter gradient the way a real simulator failure does, through
the reward and the policy evaluated at the poisoned state.

With ``value = 1e30`` in float32 the state is finite but squares overflow (1e60 > 3.4e38),
so rewards such as −θ̇² become −inf: the "exploding" rather than the "NaN" failure.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mbpo_grad.envs.base import Env
from mbpo_grad.validation import check_int

PyTree = Any

__all__ = ["FaultState", "inject_faults", "is_finite_state"]


class FaultState(NamedTuple):
    """The wrapped env's state, the fault PRNG key (uint32[2]), the steps since reset and
    the faults injected since reset (both int32)."""

    env_state: PyTree
    key: jax.Array
    steps: jax.Array
    faults: jax.Array


def _check_rate(rate: Any) -> None:
    if isinstance(rate, bool):
        raise TypeError(f"rate must be a probability in [0, 1], got bool {rate!r}")
    if isinstance(rate, jax.core.Tracer):
        return
    arr = np.asarray(rate)
    if arr.shape != ():
        raise ValueError(f"rate must be a scalar probability, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"rate must be a real number in [0, 1], got dtype {arr.dtype}")
    if not (0.0 <= float(arr) <= 1.0):
        raise ValueError(f"rate must lie in [0, 1], got {float(arr)}")


def _check_value(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        if isinstance(value, (jax.Array, np.ndarray)) and np.ndim(value) == 0:
            return float(value)
        raise TypeError(f"value must be a real scalar (e.g. jnp.nan or 1e30), got {type(value).__name__} {value!r}")
    return float(value)


def _raw_key(key: Any) -> jax.Array:
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return jnp.asarray(key)


def _poison(state: PyTree, value: float) -> PyTree:
    def leaf(x):
        x = jnp.asarray(x)
        if jnp.issubdtype(x.dtype, jnp.inexact):
            return jnp.full_like(x, value)
        return x

    return jax.tree_util.tree_map(leaf, state)


def is_finite_state(state: PyTree) -> jax.Array:
    """bool scalar: every floating leaf of ``state`` (one env, no batch axis) is finite.

    Works on a ``FaultState`` or any env state; vmap it for a batch. Integer leaves
    (step counters, keys) are ignored.
    """
    out = jnp.ones((), bool)
    for x in jax.tree_util.tree_leaves(state):
        x = jnp.asarray(x)
        if jnp.issubdtype(x.dtype, jnp.inexact):
            out = out & jnp.all(jnp.isfinite(x))
    return out


def inject_faults(env: Env, *, rate: Any, value: Any = float("nan"), start_step: int = 0) -> Env:
    """Wrap ``env`` so each transition, with probability ``rate``, returns a poisoned state.

    Args:
      env: any ``envs.base.Env`` (analytic, Brax or MJX adapter).
      rate: per-env, per-step fault probability in [0, 1] (may be a traced scalar).
      value: what every floating leaf of the faulted state becomes: ``jnp.nan`` (default),
        ``jnp.inf`` or a huge finite number such as ``1e30``.
      start_step: no fault during the first ``start_step`` steps after a reset (int >= 0),
        e.g. to let a few clean updates happen first.

    Returns an ``Env`` with the same name (suffixed ``+faults``), sizes, episode length and
    noise shape, whose states are ``FaultState``; ``reward``, ``observe`` and ``done`` read
    the inner state. ``reset(key)`` splits ``key`` into the inner reset key and the fault key.
    """
    if not isinstance(env, Env):
        raise TypeError(f"env must be an envs.base.Env, got {type(env).__name__}")
    _check_rate(rate)
    value = _check_value(value)
    start_step = check_int(start_step, "start_step", minimum=0)

    def reset(key):
        k_env, k_fault = jax.random.split(key)
        zero = jnp.zeros((), jnp.int32)
        return FaultState(env.reset(k_env), _raw_key(k_fault), zero, zero)

    def split_raw(raw):
        # Raw uint32[2] key data in, two raw keys out (the default threefry implementation).
        pair = jax.random.split(jax.random.wrap_key_data(raw))
        return jax.random.key_data(pair[0]), jax.random.key_data(pair[1])

    def step(state: FaultState, action, xi):
        nxt = env.step(state.env_state, action, xi)
        k_carry, k_draw = split_raw(state.key)
        u = jax.random.uniform(jax.random.wrap_key_data(k_draw), ())
        fault = (u < jnp.asarray(rate, u.dtype)) & (state.steps >= start_step)
        poisoned = _poison(nxt, value)
        nxt = jax.tree_util.tree_map(lambda p, c: jnp.where(fault, p, c), poisoned, nxt)
        return FaultState(nxt, k_carry, state.steps + 1, state.faults + fault.astype(jnp.int32))

    reward = env.reward
    if getattr(reward, "uses_next_state", False):
        from mbpo_grad.rollout import transition_reward

        inner_reward = reward
        reward = transition_reward(lambda s, a, s_next: inner_reward(s.env_state, a, s_next.env_state))
    else:
        inner_reward = reward

        def reward(s, a):
            return inner_reward(s.env_state, a)

    done = None
    if env.done is not None:
        inner_done = env.done

        def done(s):
            return inner_done(s.env_state)

    def observe(s):
        return env.observe(s.env_state)

    return dataclasses.replace(
        env, name=f"{env.name}+faults", reset=reset, step=step, reward=reward, observe=observe, done=done,
    )
