"""What ``learn`` reads from the replay buffer besides the actor's start observations: the
model's fit set and the observation statistics.

    fit set    ``fit_size`` distinct stored transitions (a uniformly random ordering of the stored
               slots; fixed size, so ``model.fit`` compiles once)
    obs stats  μ, σ² of all stored observations (empty slots weighted 0): the policy's and the
               critic's normaliser (``obs_norm``)
"""
from __future__ import annotations

from typing import Dict

import jax
import jax.numpy as jnp

from mbpo_grad import normalizer as N
from mbpo_grad import replay


def fit_indices(buffer: replay.ReplayBuffer, key: jax.Array, n: int) -> jax.Array:
    """n slot indices of stored items, distinct while the buffer holds >= n items (then cycling).

    A uniformly random ordering of the stored slots (stored slots get U(0, 1) keys, empty ones 2,
    argsort); index i takes ordered slot i mod size. Fixed output shape [n] for a fixed-size ``fit``.
    """
    u = jax.random.uniform(key, (buffer.capacity,))
    order = jnp.argsort(jnp.where(replay.valid_mask(buffer), u, 2.0))
    return order[jnp.arange(n) % jnp.maximum(buffer.size, 1)].astype(jnp.int32)


def buffer_obs_stats(buffer: replay.ReplayBuffer, obs_dim: int) -> N.RunningStats:
    """Exact mean / variance of the stored observations (empty slots weighted 0)."""
    return N.update(N.init(obs_dim), buffer.data["obs"], replay.valid_mask(buffer).astype(jnp.float32))


def fit_data(buffer: replay.ReplayBuffer, key: jax.Array, n: int) -> Dict[str, jax.Array]:
    """The model's training set: ``n`` stored transitions (``fit_indices``) in the buffer's own
    schema (``replay.TRANSITION_FIELDS``, what ``model.fit`` reads)."""
    idx = fit_indices(buffer, key, n)
    return {k: buffer.data[k][idx] for k in replay.TRANSITION_FIELDS}


__all__ = ["fit_indices", "buffer_obs_stats", "fit_data"]
