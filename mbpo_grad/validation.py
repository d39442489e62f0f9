"""Input checks shared by the public entry points: errors name the argument.

Checks run at trace time on shapes and dtypes (static information), so they cost
nothing inside a compiled program. Values are only checked when they are
concrete (a Python float, a NumPy array); traced hyper-parameters such as a
vmapped ``gamma`` pass through unchecked.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _leaves(tree: Any):
    return jax.tree_util.tree_leaves(tree)


def is_concrete(x: Any) -> bool:
    """True when ``x`` holds a value now (not a tracer)."""
    return not isinstance(x, jax.core.Tracer)


def check_horizon(horizon: Any, name: str = "horizon") -> int:
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)):
        raise TypeError(
            f"{name} must be a Python int (it fixes array shapes, so it is static); got {type(horizon).__name__} {horizon!r}"
        )
    if horizon < 0:
        raise ValueError(f"{name} must be >= 0, got {horizon}")
    return int(horizon)


def check_unit_interval(value: Any, name: str) -> None:
    """Checks 0 <= value <= 1 when the value is concrete (tracers pass)."""
    leaves = _leaves(value)
    for leaf in leaves:
        if not is_concrete(leaf):
            return
        arr = np.asarray(leaf)
        if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"{name} must be a real number, got dtype {arr.dtype}")
        if not np.all(np.isfinite(arr)) or np.any(arr < 0) or np.any(arr > 1):
            raise ValueError(f"{name} must lie in [0, 1], got {arr if arr.ndim else float(arr)}")


def check_states(states: Any, name: str = "states") -> int:
    """A batch of start states: every leaf has the same leading axis B; floating values.

    A single-array state must be floating. A pytree state (a Brax or MJX state)
    must hold at least one floating leaf; integer bookkeeping leaves (step
    counters) are allowed there, they carry no gradient.
    Returns B.
    """
    leaves = _leaves(states)
    if not leaves:
        raise ValueError(f"{name} is an empty pytree; expected a batch of start states with a leading axis B")
    sizes = set()
    for leaf in leaves:
        shape = jnp.shape(leaf)
        if len(shape) == 0:
            raise ValueError(
                f"{name} must carry a leading batch axis B on every leaf; found a scalar leaf. "
                "For a single start state add an axis: states[None]"
            )
        sizes.add(shape[0])
    if len(sizes) != 1:
        raise ValueError(f"{name}: every leaf must share the leading batch axis B; found sizes {sorted(sizes)}")
    floating = [jnp.issubdtype(jnp.result_type(leaf), jnp.floating) for leaf in leaves]
    if len(leaves) == 1 and not floating[0]:
        raise TypeError(
            f"{name} must be floating point (gradients flow through states); got dtype {jnp.result_type(leaves[0])}. "
            "Cast with states.astype(jnp.float32)"
        )
    if not any(floating):
        raise TypeError(f"{name} holds no floating-point leaf; gradients need floating-point states")
    return sizes.pop()


def check_noise(noise: Any, name: str, length: int, batch: int, length_desc: str) -> None:
    """Noise with leading axes [length, batch, ...] on every leaf."""
    if noise is None:
        return
    leaves = _leaves(noise)
    if not leaves:
        return
    for leaf in leaves:
        shape = jnp.shape(leaf)
        if len(shape) < 2 or shape[0] != length or shape[1] != batch:
            raise ValueError(
                f"{name} must have leading axes [{length_desc}, B] = [{length}, {batch}]; got shape {tuple(shape)}"
            )
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise TypeError(f"{name} must be floating point, got dtype {jnp.result_type(leaf)}")


def check_callable(fn: Any, name: str, signature: str, optional: bool = False) -> None:
    if fn is None and optional:
        return
    if not callable(fn):
        raise TypeError(f"{name} must be a callable {signature}; got {type(fn).__name__}")
