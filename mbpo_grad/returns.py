"""Return targets over an unrolled window (docs/theory.md §2): reward-to-go, TD(λ), GAE(γ, λ).

All functions act on ONE trajectory, time on axis 0; batch with ``jax.vmap``.
``discounts[t]`` is γ·(1 − terminal_{t+1}): 0 where the episode terminated at
t+1 (no bootstrap past a terminal state), γ otherwise (including a time-limit
truncation, where bootstrapping is correct). Each is one reverse ``lax.scan``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def _check_window(rewards, discounts, values=None):
    """Trace-time shape check: discounts like rewards [T, ...]; values [T+1, ...].

    Without it a values array [T+1, 1] against rewards [T] broadcasts (``gae``: to [T, T])
    and returns plausible, wrong numbers.
    """
    rs, ds = tuple(jnp.shape(rewards)), tuple(jnp.shape(discounts))
    if len(rs) < 1:
        raise ValueError(f"rewards must have a leading time axis [T], got shape {rs}")
    if ds != rs:
        raise ValueError(f"discounts must have the shape of rewards {rs}, got {ds}")
    if values is not None:
        vs = tuple(jnp.shape(values))
        want = (rs[0] + 1,) + rs[1:]
        if vs != want:
            raise ValueError(f"values must have shape [T+1, ...] = {want} (v_0..v_T for rewards {rs}), got {vs}")


def _common_dtype(*arrays):
    """Cast to one floating dtype so the scan carry keeps its type (float32 rewards, float64 values)."""
    dtype = jnp.result_type(*arrays, jnp.float32)
    return tuple(jnp.asarray(a, dtype) for a in arrays)


def reward_to_go(rewards: jax.Array, discounts: jax.Array) -> jax.Array:
    """G_t = r_t + discounts_t · G_{t+1}, G_T = 0. Shapes [T] -> [T] (shapes checked)."""
    _check_window(rewards, discounts)
    rewards, discounts = _common_dtype(rewards, discounts)

    def body(g, x):
        r, d = x
        g = r + d * g
        return g, g

    _, out = lax.scan(body, jnp.zeros(rewards.shape[1:], rewards.dtype), (rewards, discounts), reverse=True)
    return out


def td_lambda(rewards: jax.Array, values: jax.Array, discounts: jax.Array, lam) -> jax.Array:
    """λ-returns G^λ_t = r_t + d_t [(1 − λ) v_{t+1} + λ G^λ_{t+1}], G^λ_T = v_T.

    rewards [T], values [T+1] (v_0..v_T, the last one bootstraps the window),
    discounts [T]; λ may be traced. λ = 0 gives one-step TD targets, λ = 1 the
    n-step Monte-Carlo return bootstrapped at the window's end. Shapes are checked
    (``ValueError`` naming the argument).
    """
    _check_window(rewards, discounts, values)
    rewards, values, discounts = _common_dtype(rewards, values, discounts)
    lam = jnp.asarray(lam, dtype=rewards.dtype)

    def body(g_next, x):
        r, d, v_next = x
        g = r + d * ((1.0 - lam) * v_next + lam * g_next)
        return g, g

    _, out = lax.scan(body, values[-1], (rewards, discounts, values[1:]), reverse=True)
    return out


def gae(rewards: jax.Array, values: jax.Array, discounts: jax.Array, lam) -> jax.Array:
    """Generalised advantage estimates A_t = Σ_l (γλ)^l δ_{t+l}, δ_t = r_t + d_t v_{t+1} − v_t.

    rewards [T], values [T+1], discounts [T] (shapes checked); λ may be traced.
    Reference: Schulman et al. (2016), "High-dimensional continuous control using GAE".
    """
    _check_window(rewards, discounts, values)
    rewards, values, discounts = _common_dtype(rewards, values, discounts)
    lam = jnp.asarray(lam, dtype=rewards.dtype)
    deltas = rewards + discounts * values[1:] - values[:-1]

    def body(a_next, x):
        delta, d = x
        a = delta + d * lam * a_next
        return a, a

    _, out = lax.scan(body, jnp.zeros(deltas.shape[1:], deltas.dtype), (deltas, discounts), reverse=True)
    return out
