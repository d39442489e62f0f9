"""Running mean / variance of observations, as pure functions over a small pytree.

The statistics of everything seen so far are kept as (count, mean, M2) with
M2 = Σ (x − mean)². A new batch with its own (n_b, mean_b, M2_b) is merged by the
parallel form of Welford's update (Chan, Golub & LeVeque 1979):

    n   = n_a + n_b
    δ   = mean_b − mean_a
    mean = mean_a + δ · n_b / n
    M2   = M2_a + M2_b + δ² · n_a n_b / n

which is exact (it equals the two-pass statistics of the concatenated data) and
stable in float32. ``normalize`` maps x to clip((x − mean) / sqrt(var + eps)).

    stats = normalizer.init(obs_size)
    stats = normalizer.update(stats, batch_of_obs)     # leading axes are batch axes
    z = normalizer.normalize(stats, obs)

Everything is jit/vmap-able; the state is a ``RunningStats`` NamedTuple (a pytree).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence, Union

import jax
import jax.numpy as jnp


class RunningStats(NamedTuple):
    """count: scalar (float, so huge counts do not overflow); mean, m2: feature-shaped."""

    count: jax.Array
    mean: jax.Array
    m2: jax.Array

    @property
    def var(self) -> jax.Array:
        """Population variance M2 / count (0 before any data)."""
        return self.m2 / jnp.maximum(self.count, 1.0)


def init(shape: Union[int, Sequence[int]], dtype=None) -> RunningStats:
    """Empty statistics for features of ``shape`` (an int or a shape tuple)."""
    if isinstance(shape, bool) or not isinstance(shape, (int, tuple, list)):
        raise TypeError(f"shape must be an int or a tuple of ints, got {type(shape).__name__}")
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if any((not isinstance(d, int)) or d < 0 for d in shape):
        raise ValueError(f"shape must hold non-negative ints, got {shape}")
    dtype = dtype or jnp.result_type(float)
    return RunningStats(jnp.zeros((), dtype), jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def update(stats: RunningStats, batch: jax.Array, weights: jax.Array | None = None) -> RunningStats:
    """Merge a batch whose trailing axes match ``stats.mean`` (all leading axes are batch axes).

    ``weights`` (optional, the batch's leading shape, values 0/1 or non-negative) excludes
    or down-weights samples, e.g. states past the end of an episode.
    """
    batch = jnp.asarray(batch, dtype=stats.mean.dtype)
    feat = stats.mean.ndim
    if batch.ndim < feat or batch.shape[batch.ndim - feat:] != stats.mean.shape:
        raise ValueError(
            f"batch: trailing axes must equal the feature shape {stats.mean.shape}; got shape {batch.shape}"
        )
    flat = batch.reshape((-1,) + stats.mean.shape)
    if weights is None:
        w = jnp.ones((flat.shape[0],), flat.dtype)
    else:
        weights = jnp.asarray(weights, flat.dtype)
        if weights.shape != batch.shape[: batch.ndim - feat]:
            raise ValueError(
                f"weights: expected the batch's leading shape {batch.shape[: batch.ndim - feat]}, got {weights.shape}"
            )
        w = weights.reshape((-1,))
    wb = w.reshape((-1,) + (1,) * feat)
    n_b = jnp.sum(w)
    mean_b = jnp.sum(wb * flat, axis=0) / jnp.maximum(n_b, 1e-12)
    m2_b = jnp.sum(wb * (flat - mean_b) ** 2, axis=0)
    n = stats.count + n_b
    delta = mean_b - stats.mean
    safe_n = jnp.maximum(n, 1e-12)
    mean = stats.mean + delta * n_b / safe_n
    m2 = stats.m2 + m2_b + delta**2 * stats.count * n_b / safe_n
    return RunningStats(n, mean, m2)


def _check_features(stats: RunningStats, x, name: str) -> None:
    """The trailing axes of ``x`` are the feature shape (leading axes broadcast as batch axes)."""
    shape, feat = tuple(jnp.shape(x)), tuple(stats.mean.shape)
    if len(shape) < len(feat) or shape[len(shape) - len(feat):] != feat:
        raise ValueError(f"{name}: trailing axes must equal the feature shape {feat}; got shape {shape}")


def normalize(stats: RunningStats, x: jax.Array, *, eps: float = 1e-5, clip: float = 10.0) -> jax.Array:
    """clip((x − mean) / sqrt(var + eps), −clip, clip); the identity map shifted by 0 before any data.

    ``x``: features [..., *feature_shape] (checked: a wrong-sized vector would otherwise broadcast).
    """
    _check_features(stats, x, "x")
    var = stats.var
    # Before any data var = 0: divide by 1 instead of sqrt(eps) so early outputs stay O(x).
    scale = jnp.where(stats.count > 0, jnp.sqrt(var + eps), jnp.ones_like(var))
    z = (x - stats.mean) / scale
    return jnp.clip(z, -clip, clip)


def denormalize(stats: RunningStats, z: jax.Array, *, eps: float = 1e-5) -> jax.Array:
    """Inverse of ``normalize`` (ignoring the clip); ``z`` as ``x`` there (shape checked)."""
    _check_features(stats, z, "z")
    scale = jnp.where(stats.count > 0, jnp.sqrt(stats.var + eps), jnp.ones_like(stats.var))
    return z * scale + stats.mean


__all__ = ["RunningStats", "init", "update", "normalize", "denormalize"]
