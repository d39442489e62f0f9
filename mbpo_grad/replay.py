"""A functional replay buffer: fixed-capacity arrays in a pytree, pure and jittable.

    buf = replay.init(capacity, example)        # example: ONE item (any pytree, no batch axis)
    buf = replay.add(buf, batch)                # batch: items with a leading axis m
    items = replay.sample(buf, key, n)          # n items drawn uniformly (with replacement) from the stored ones

The buffer is a ring: item i of a batch added when ``insert == p`` lands in slot
(p + i) mod capacity, overwriting the oldest items once the buffer is full.
``capacity`` and the batch sizes are static (they fix shapes); ``size`` and
``insert`` are int32 arrays, so ``add`` / ``sample`` trace once and run under
``jit``, ``lax.scan`` and ``vmap`` (one buffer per seed).
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from mbpo_grad.validation import check_int, is_concrete

PyTree = Any

TRANSITION_FIELDS = ("obs", "action", "reward", "next_obs")
"""The one transition schema: what the agents store (plus ``discount`` = 1 − terminal) and what
``models.fit`` and the SVG replay estimators read. Leading axis N (one row per transition)."""
_OLD_FIELDS = {"s": "obs", "a": "action", "r": "reward", "s_next": "next_obs"}


def transition_field(batch: Any, name: str, what: str = "batch") -> Any:
    """``batch[name]`` (or ``batch.name``) of a transition batch, with an error naming ``what`` and the
    schema (``TRANSITION_FIELDS``) when it is missing; the pre-0.2 names s / a / r / s_next are
    refused with the rename."""
    has = (lambda k: k in batch) if isinstance(batch, Mapping) else (lambda k: hasattr(batch, k))
    get = (lambda k: batch[k]) if isinstance(batch, Mapping) else (lambda k: getattr(batch, k))
    if has(name):
        return get(name)
    old = [k for k in _OLD_FIELDS if has(k)]
    if old:
        renames = ", ".join(f"{k} -> {_OLD_FIELDS[k]}" for k in old)
        raise ValueError(f"{what}: transition fields are named {', '.join(TRANSITION_FIELDS)} (as the replay "
                         f"buffer stores them); rename {renames}")
    raise ValueError(f"{what}: missing field {name!r}; expected {', '.join(TRANSITION_FIELDS)}")


class ReplayBuffer(NamedTuple):
    """data: the item pytree with a leading [capacity] axis; size: items stored; insert: next slot."""

    data: PyTree
    size: jax.Array
    insert: jax.Array

    @property
    def capacity(self) -> int:
        return jax.tree_util.tree_leaves(self.data)[0].shape[0]


def init(capacity: int, example: PyTree) -> ReplayBuffer:
    """An empty buffer of ``capacity`` items shaped and typed like ``example`` (one item, no batch axis)."""
    check_int(capacity, "capacity")
    leaves = jax.tree_util.tree_leaves(example)
    if not leaves:
        raise ValueError("example is an empty pytree; pass one item, e.g. {'s': obs, 'a': action, ...}")
    data = jax.tree_util.tree_map(
        lambda x: jnp.zeros((int(capacity),) + jnp.shape(x), jnp.result_type(x)), example
    )
    return ReplayBuffer(data, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def _batch_size(buffer: ReplayBuffer, batch: PyTree) -> int:
    buf_def = jax.tree_util.tree_structure(buffer.data)
    batch_def = jax.tree_util.tree_structure(batch)
    if buf_def != batch_def:
        raise ValueError(f"batch: structure {batch_def} does not match the buffer's items {buf_def}")
    sizes = set()
    for slot, item in zip(jax.tree_util.tree_leaves(buffer.data), jax.tree_util.tree_leaves(batch)):
        shape = jnp.shape(item)
        if len(shape) != slot.ndim or tuple(shape[1:]) != tuple(slot.shape[1:]):
            raise ValueError(
                f"batch: every leaf needs a leading batch axis and item shape {tuple(slot.shape[1:])}; "
                f"got shape {tuple(shape)}"
            )
        sizes.add(shape[0])
    if len(sizes) != 1:
        raise ValueError(f"batch: leaves disagree on the batch size: {sorted(sizes)}")
    return sizes.pop()


def add(buffer: ReplayBuffer, batch: PyTree) -> ReplayBuffer:
    """Write the m items of ``batch`` (leading axis m) after the newest ones, overwriting the oldest.

    Equivalent to adding the items one at a time in order; when m > capacity only
    the last ``capacity`` items survive. Values are cast to the buffer's dtypes.
    """
    m = _batch_size(buffer, batch)
    cap = buffer.capacity
    if m == 0:
        return buffer
    skip = max(m - cap, 0)  # items that a one-at-a-time insertion would overwrite within this batch
    kept = jax.tree_util.tree_map(lambda x: jnp.asarray(x)[skip:], batch)
    slots = (buffer.insert + skip + jnp.arange(m - skip, dtype=jnp.int32)) % cap
    data = jax.tree_util.tree_map(lambda d, x: d.at[slots].set(x.astype(d.dtype)), buffer.data, kept)
    size = jnp.minimum(buffer.size + m, cap).astype(jnp.int32)
    insert = ((buffer.insert + m) % cap).astype(jnp.int32)
    return ReplayBuffer(data, size, insert)


def sample_indices(buffer: ReplayBuffer, key: jax.Array, n: int) -> jax.Array:
    """n slot indices uniform over the stored items (with replacement); int32 [n]."""
    check_int(n, "n", minimum=0, why="it fixes the output shape")
    if is_concrete(buffer.size) and int(buffer.size) == 0:
        raise ValueError("buffer is empty: add items before sampling")
    return jax.random.randint(key, (int(n),), 0, jnp.maximum(buffer.size, 1)).astype(jnp.int32)


def sample(buffer: ReplayBuffer, key: jax.Array, n: int) -> PyTree:
    """n items drawn uniformly with replacement from the stored ones: the item pytree with leading axis n.

    Under ``jit`` an empty buffer cannot be detected and yields zero items (slot 0); outside ``jit`` it raises.
    """
    idx = sample_indices(buffer, key, n)
    return jax.tree_util.tree_map(lambda d: d[idx], buffer.data)


def valid_mask(buffer: ReplayBuffer) -> jax.Array:
    """bool [capacity]: which slots hold items (the first ``size`` slots; a full buffer holds all)."""
    return jnp.arange(buffer.capacity) < buffer.size
