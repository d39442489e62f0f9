"""Envs with time limits for the window agents: an env state and its step count within the
episode (``TimedState``), so a time limit is a truncation the critic bootstraps over, not a
terminal state.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mbpo_grad.rollout import TransitionReward, transition_reward

PyTree = Any


class TimedState(NamedTuple):
    """An env state and its step count ``t`` within the current episode (int32)."""

    env_state: PyTree
    t: jax.Array


def timed_env(env, episode_length: int):
    """Engine functions on ``TimedState``: (step, reward, done, terminal).

    done(ts) = time limit reached (t >= episode_length) or the env's own ``done``;
    terminal(ts) = the env's own ``done`` only (a time limit is a truncation, not a terminal
    state, so critics bootstrap over it).
    """
    def step(ts, action, xi):
        return TimedState(env.step(ts.env_state, action, xi), ts.t + 1)

    if isinstance(env.reward, TransitionReward) or getattr(env.reward, "uses_next_state", False):
        reward = transition_reward(lambda ts, a, ts_next: env.reward(ts.env_state, a, ts_next.env_state))
    else:
        def reward(ts, action):
            return env.reward(ts.env_state, action)

    def terminal(ts):
        if env.done is None:
            return jnp.zeros((), bool)
        return jnp.asarray(env.done(ts.env_state), bool)

    def done(ts):
        return (ts.t >= episode_length) | terminal(ts)

    return step, reward, done, terminal


def reset_timed(env, keys) -> TimedState:
    """Fresh ``TimedState`` batch from a batch of keys."""
    states = jax.vmap(env.reset)(keys)
    return TimedState(states, jnp.zeros((keys.shape[0],), jnp.int32))


def reset_where(env, ts: TimedState, mask: jax.Array, key) -> TimedState:
    """Replace the envs where ``mask`` [B] holds by fresh resets (t = 0); keep the others.

    Pass ``mask = traj.alive[:, -1] == 0`` after a window from the engine: an episode that
    ended inside the window (time limit or terminal) starts over.
    """
    fresh = reset_timed(env, jax.random.split(key, mask.shape[0]))

    def pick(f, s):
        m = jnp.reshape(mask, mask.shape + (1,) * (jnp.ndim(s) - 1))
        return jnp.where(m, f, s)

    return jax.tree_util.tree_map(pick, fresh, ts)


__all__ = ["TimedState", "timed_env", "reset_timed", "reset_where"]
