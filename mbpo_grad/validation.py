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


class IntTypeError(TypeError, ValueError):
    """A non-integer where an int is required. Both a TypeError (the kind of the mistake) and a
    ValueError, so ``except ValueError`` around a config catches every bad setting."""


def check_int(value: Any, name: str, *, minimum: int = 1, allow_none: bool = False,
              why: str = "") -> Any:
    """The one integer-setting check: ``value`` is an int (Python or NumPy, not bool) >= ``minimum``
    (None passes with ``allow_none``). Returns ``int(value)``. Raises ``IntTypeError`` for a
    non-int, ValueError below the minimum; both messages name the argument (``why`` is appended
    to the type error, e.g. "it fixes array shapes, so it is static")."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        extra = " or None" if allow_none else ""
        raise IntTypeError(f"{name} must be an int{extra}{f' ({why})' if why else ''}; "
                           f"got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def check_horizon(horizon: Any, name: str = "horizon") -> int:
    return check_int(horizon, name, minimum=0, why="it fixes array shapes, so it is static")


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


def check_same_shape(x: Any, name: str, reference: Any, reference_name: str) -> None:
    """``x`` and ``reference`` have equal shapes (no silent broadcasting of per-sample arrays).

    The hazard: a per-sample array of shape [B] against one of shape [B, 1] broadcasts
    to [B, B], and a mean over it is a plausible but wrong number. Shapes are static, so
    this costs nothing under ``jit``.
    """
    xs, rs = tuple(jnp.shape(x)), tuple(jnp.shape(reference))
    if xs != rs:
        hint = ""
        if len(xs) == len(rs) + 1 and xs[-1:] == (1,) and xs[:-1] == rs:
            hint = f"; drop the trailing axis, e.g. {name}[..., 0] or {name}.reshape({rs})"
        elif len(rs) == len(xs) + 1 and rs[-1:] == (1,) and rs[:-1] == xs:
            hint = f"; {reference_name} has a trailing axis of 1: drop it with {reference_name}[..., 0]"
        raise ValueError(
            f"{name} must have the shape of {reference_name} {rs} (per-sample arrays are not broadcast), "
            f"got {xs}{hint}"
        )


def describe_shapes(tree: Any, max_leaves: int = 6) -> str:
    """Shapes and dtypes of a pytree of arrays / ``ShapeDtypeStruct`` (for error messages)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    if treedef.num_leaves == 1 and treedef.num_nodes == 1:
        return f"{tuple(leaves[0].shape)} {leaves[0].dtype}"
    items = [f"{jax.tree_util.keystr(path)}: {tuple(leaf.shape)} {leaf.dtype}"
             for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]
    more = f", ... ({len(items)} leaves)" if len(items) > max_leaves else ""
    return "{" + ", ".join(items[:max_leaves]) + more + "}"


def trace_call(label: str, fn: Any, *args) -> Any:
    """``jax.eval_shape(fn, *args)``; an error inside ``fn`` becomes a ValueError naming it and the input shapes."""
    try:
        return jax.eval_shape(fn, *args)
    except Exception as err:  # noqa: BLE001 - re-raised with the function and the shapes it was given
        given = ", ".join("None" if a is None else describe_shapes(a) for a in args)
        text = str(err)
        text = text if len(text) <= 600 else text[:600] + " ..."
        raise ValueError(f"{label} failed when traced on inputs of shapes ({given}) "
                         f"[{type(err).__name__}: {text}]") from err


def check_policy(policy: Any, obs_size: int, action_size: int, *, density: bool = False, dtype: Any = None) -> None:
    """Trace a policy bundle once (``jax.eval_shape``, no computation) against an env's sizes.

    With params = policy.init(key), obs of shape (obs_size,) and ε of shape
    ``policy.noise_shape``: ``policy.sample(params, obs, ε)`` and ``policy.sample(params, obs, None)``
    (the agents' greedy action) must return shape (action_size,); with ``density``,
    ``sample_and_log_prob`` must return that action and a scalar log π, and
    ``log_prob(params, obs, a)`` a scalar. A wrong action size would otherwise broadcast
    silently against the env or the critic. Raises ``ValueError`` naming the policy,
    the function and the shapes.
    """
    from mbpo_grad.policies.base import sample_and_log_prob

    dtype = jnp.result_type(float) if dtype is None else dtype
    label = f"policy {getattr(policy, 'name', type(policy).__name__)!r}"
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    params = trace_call(f"{label}.init", policy.init, key)
    obs = jax.ShapeDtypeStruct((int(obs_size),), dtype)
    eps = jax.ShapeDtypeStruct(tuple(policy.noise_shape), dtype)
    want = (int(action_size),)

    def check_action(out, what):
        if not hasattr(out, "shape") or tuple(out.shape) != want:
            got = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
            raise ValueError(f"{label}: {what} must return an action of shape (env.action_size,) = {want} for an "
                             f"observation of shape (env.obs_size,) = ({int(obs_size)},), got {got}")

    check_action(trace_call(f"{label}.sample", policy.sample, params, obs, eps),
                 f"sample(params, obs, eps of shape {tuple(policy.noise_shape)})")
    check_action(trace_call(f"{label}.sample", lambda p, o: policy.sample(p, o, None), params, obs),
                 "sample(params, obs, None)")
    if density:
        a, lp = trace_call(f"{label}.sample_and_log_prob",
                            lambda p, o, e: sample_and_log_prob(policy, p, o, e), params, obs, eps)
        check_action(a, "sample_and_log_prob")
        for what, out in (("sample_and_log_prob", lp),
                          ("log_prob", trace_call(f"{label}.log_prob", policy.log_prob, params, obs,
                                                   jax.ShapeDtypeStruct(want, dtype)))):
            if not hasattr(out, "shape") or tuple(out.shape) != ():
                got = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
                raise ValueError(f"{label}: {what} must return a scalar log-density (shape ()), got {got}")
