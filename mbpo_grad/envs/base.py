"""The environment interface every system in ``envs/`` exposes (the engine's form).

An ``Env`` is a bundle of pure per-state functions (batch with ``jax.vmap``):

    reset(key) -> state                       one start state (array or pytree)
    step(state, action, xi) -> next_state     xi: dynamics noise or None
    reward(state, action) -> scalar           or mbpo_grad.transition_reward(fn(s, a, s'))
    done(state) -> bool scalar, or None       episode termination (not time limits)
    observe(state) -> obs vector [obs_size]   what a policy / critic sees

Actions live in [-1, 1]^action_size (policies squash with tanh); each env scales
them to its own force/torque range. ``episode_length`` is the time limit.
``noise_shape`` is the shape of one step's ``xi`` (() when the env is
deterministic and ignores it). ``xi`` is always standard normal, N(0, I): the agents,
``evaluate_policy`` and the engine's callers draw it so, and an env that needs another
noise transforms it (``switching_cart`` turns it into Gumbel noise through Φ).

A system with a discrete random mode z_t (a hybrid system, e.g. ``switching_cart``) can
expose it for the DPMB-SF estimator in ``info`` (``hybrid_modes``):

    info["mode_logits"](state, action) -> [K]   log p(z | s, a) up to a constant
    info["mode"](state, action, xi) -> int      the mode ``step(state, action, xi)`` takes

``check_env(env)`` traces every function once with ``jax.eval_shape`` and checks the
shapes and dtypes above against ``obs_size`` / ``action_size`` (agents call it on a
user's env).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from mbpo_grad.validation import check_int, describe_shapes, trace_call


@dataclasses.dataclass(frozen=True)
class Env:
    name: str
    obs_size: int
    action_size: int
    episode_length: int
    reset: Callable[[Any], Any]
    step: Callable[[Any, Any, Any], Any]
    reward: Callable[..., Any]
    observe: Callable[[Any], Any]
    done: Optional[Callable[[Any], Any]] = None
    noise_shape: Tuple[int, ...] = ()
    info: Any = None  # env-specific extras (e.g. LQR matrices)


# --------------------------------------------------------------------------- interface check
def _check_size(value: Any, name: str, minimum: int = 1) -> int:
    return check_int(value, f"env.{name}", minimum=minimum)


def check_env(env: "Env") -> "Env":
    """Check once, at trace time, that ``env``'s functions match its declared sizes; return ``env``.

    With s = reset(key), a = zeros(action_size), ξ of shape ``noise_shape`` (None when it
    is ()), all evaluated with ``jax.eval_shape`` (shapes and dtypes only, no computation):

        observe(s)           shape (obs_size,), floating
        step(s, a, ξ) = s'   the same pytree as s: structure, leaf shapes and dtypes
                             (the engine's ``lax.scan`` carries it; a dtype that drifts,
                             e.g. float32 → float64, or a leaf that grows fails there)
        reward(s, a)         shape () and floating (``reward(s, a, s')`` for a transition reward)
        done(s), done(s')    shape (); bool (a numeric flag such as Brax's float ``done`` is
                             accepted: the engine casts it to bool)

    The action's dtype is the observation's (what a policy fed ``observe(s)`` returns).
    Raises ``ValueError`` naming the function and the shapes (a ``TypeError`` for a missing or
    non-callable field); a function that fails while traced is reported with the shapes it was
    given. Agents call this on every env a user passes them.
    """
    for field in ("reset", "step", "reward", "observe"):
        if not callable(getattr(env, field, None)):
            raise TypeError(f"env.{field} must be callable, got {getattr(env, field, None)!r}")
    done = getattr(env, "done", None)
    if done is not None and not callable(done):
        raise TypeError(f"env.done must be callable or None, got {done!r}")
    obs_size = _check_size(getattr(env, "obs_size", None), "obs_size")
    action_size = _check_size(getattr(env, "action_size", None), "action_size")
    _check_size(getattr(env, "episode_length", None), "episode_length")
    noise_shape = getattr(env, "noise_shape", ())
    if not isinstance(noise_shape, tuple) or any(
            isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0 for n in noise_shape):
        raise ValueError(f"env.noise_shape must be a tuple of ints >= 0, got {noise_shape!r}")

    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    state = trace_call("env.reset", env.reset, key)
    leaves = jax.tree_util.tree_leaves(state)
    if not leaves or not all(hasattr(x, "shape") and hasattr(x, "dtype") for x in leaves):
        raise ValueError(f"env.reset must return a state (an array or a pytree of arrays), got {state!r}")
    if not any(jnp.issubdtype(x.dtype, jnp.floating) for x in leaves):
        raise ValueError(f"env.reset must return a state with a floating-point leaf (gradients flow through "
                         f"states), got {describe_shapes(state)}")

    obs = trace_call("env.observe", env.observe, state)
    if not hasattr(obs, "shape") or tuple(obs.shape) != (obs_size,):
        raise ValueError(f"env.observe must return shape (obs_size,) = ({obs_size},), got "
                         f"{describe_shapes(obs) if hasattr(obs, 'shape') else repr(obs)} (state {describe_shapes(state)})")
    if not jnp.issubdtype(obs.dtype, jnp.floating):
        raise ValueError(f"env.observe must return a floating-point vector, got dtype {obs.dtype}")

    action = jax.ShapeDtypeStruct((action_size,), obs.dtype)
    xi = None if tuple(noise_shape) == () else jax.ShapeDtypeStruct(tuple(noise_shape), obs.dtype)
    nxt = trace_call("env.step", env.step, state, action, xi)
    tree_in, tree_out = jax.tree_util.tree_structure(state), jax.tree_util.tree_structure(nxt)
    if tree_in != tree_out:
        raise ValueError(f"env.step must return a state of the structure reset returns: got {tree_out}, "
                         f"expected {tree_in}")
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(state)[0], jax.tree_util.tree_leaves(nxt)):
        if tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
            where = jax.tree_util.keystr(path) or "state"
            raise ValueError(
                f"env.step changes the state {where}: {tuple(a.shape)} {a.dtype} -> {tuple(b.shape)} {b.dtype} "
                f"(action ({action_size},), action_size = {action_size}); the state must keep its shapes and "
                "dtypes across a step"
            )

    if getattr(env.reward, "uses_next_state", False):
        r = trace_call("env.reward", env.reward, state, action, nxt)
    else:
        r = trace_call("env.reward", env.reward, state, action)
    if not hasattr(r, "shape") or tuple(r.shape) != ():
        raise ValueError(f"env.reward must return a scalar (shape ()), got "
                         f"{describe_shapes(r) if hasattr(r, 'shape') else repr(r)}; e.g. -(s[0]**2 + 0.01 * a[0]**2)")
    if not jnp.issubdtype(r.dtype, jnp.floating):
        raise ValueError(f"env.reward must return a floating-point scalar, got dtype {r.dtype}")

    if done is not None:
        for label, s in (("reset", state), ("step", nxt)):
            d = trace_call("env.done", done, s)
            if not hasattr(d, "shape") or tuple(d.shape) != ():
                raise ValueError(f"env.done must return a bool scalar (shape ()) on the state {label} returns, got "
                                 f"{describe_shapes(d) if hasattr(d, 'shape') else repr(d)}")
            if not (d.dtype == jnp.bool_ or jnp.issubdtype(d.dtype, jnp.number)):
                raise ValueError(f"env.done must return a bool scalar, got dtype {d.dtype}")
    return env


def hybrid_modes(env: "Env") -> Tuple[Callable[[Any, Any], Any], Callable[[Any, Any, Any], Any]]:
    """(mode_logits, mode) of an env with a discrete random mode (module docstring), checked.

    Traces both once on the env's shapes: ``mode_logits(s, a)`` must return [K] floats and
    ``mode(s, a, xi)`` an integer scalar. Raises ``ValueError`` naming ``env.info`` when the
    env does not expose them (its modes are then invisible to the estimator)."""
    info = env.info if isinstance(env.info, dict) else {}
    fns = info.get("mode_logits"), info.get("mode")
    if not all(callable(f) for f in fns):
        raise ValueError(f"env.info: {env.name!r} does not expose its discrete modes; DPMB-SF needs callables "
                         f"env.info['mode_logits'](state, action) -> [K] and env.info['mode'](state, action, xi) "
                         f"-> int (envs.base)")
    s = jax.eval_shape(env.reset, jax.random.PRNGKey(0))
    dtype = jax.tree_util.tree_leaves(s)[0].dtype
    a = jax.ShapeDtypeStruct((env.action_size,), dtype)
    xi = None if tuple(env.noise_shape) == () else jax.ShapeDtypeStruct(tuple(env.noise_shape), dtype)
    logits = trace_call("env.info['mode_logits']", fns[0], s, a)
    if len(logits.shape) != 1 or not jnp.issubdtype(logits.dtype, jnp.floating):
        raise ValueError(f"env.info['mode_logits'](state, action) must return [K] floats, got {logits.shape} "
                         f"{logits.dtype}")
    z = trace_call("env.info['mode']", fns[1], s, a, xi)
    if z.shape != () or not jnp.issubdtype(z.dtype, jnp.integer):
        raise ValueError(f"env.info['mode'](state, action, xi) must return an integer scalar, got {z.shape} {z.dtype}")
    return fns
