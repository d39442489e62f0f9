"""Where a rollout's value or pathwise gradient first turns non-finite: step and primitive.

``jax_debug_nans`` stops at the first NaN the compiled program produces, but inside
``lax.scan`` it only names the scan, and harmless NaNs (a ``where`` branch that is
never selected) stop it as well. This probe answers two questions for the engine's
objective J = Σ_{t<n} γ^t r_t along one trajectory (docs/theory.md §1):

    forward:   a_t = π(s_t, ε_t; w),  s_{t+1} = f(s_t, a_t, ξ_t),  r_t = r(s_t, a_t[, s_{t+1}])
               → the first t at which a_t, s_{t+1} or r_t holds a non-finite value;
    backward:  λ_n = 0,  (λ_t, g_t) = VJP of (s_t, w) ↦ (s_{t+1}, r_t) applied to (λ_{t+1}, γ^t)
               → the first t, counting down from n−1, at which the state cotangent
               λ_t = ∂J/∂s_t or the step's parameter cotangent g_t is non-finite
               (dJ/dw = Σ_t g_t is the pathwise gradient ``jax.grad`` would return).

Within the offending step it evaluates the step's jaxpr (for the backward pass, the
jaxpr of the step's VJP: forward equations followed by their transposes) equation by
equation and reports the *origin*: the earliest equation, among those the non-finite
output depends on, whose inputs are all finite and whose output is not (e.g. ``div``
with a denominator of 1e-23, ``sqrt`` of a negative). An origin that is itself a
sub-program (``pjit``, ``scan``, ``while``, ``cond``, ``custom_jvp_call``, ``checkpoint``)
is entered, down to the iteration of a loop at which it first happens, so the
report names a primitive with its source line, its input magnitudes and the chain
of enclosing sub-programs.

This is a debugging tool, not a hot path: the steps run in a host-side Python loop
(one compiled step and one compiled step-VJP, reused for every t), and the
equation-by-equation evaluation binds each primitive eagerly. Use it on one start
state that misbehaves (``jax.vmap(jax.grad(...))`` per environment, then the index of
a non-finite row; ``guards.masked_grad_mean`` counts them).

    report = nan_probe.locate_nan(policy, params, env.step, env.reward, s0, horizon=128)
    print(report)            # forward step/origin, backward step/origin, or "all finite"

``origin(fn, *args)`` is the equation-level search on its own, for any function.
Episode termination (``done``) is not modelled: probe the window before the end.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from mbpo_grad.rollout import _call_reward
from mbpo_grad.validation import check_int

PyTree = Any
_MAX_LOOP = 1_000_000  # while-loop iterations replayed on the host before giving up


@dataclasses.dataclass(frozen=True)
class Origin:
    """The equation at which a non-finite value first appears (finite inputs, non-finite output).

    primitive: the JAX primitive (``div``, ``sqrt``, ``log``, ``dot_general``, ...).
    source:    ``file:line (function)`` of the user frame that emitted it ('' if unknown).
    name_stack: JAX's transformation/name stack, e.g. ``transpose(jvp(step))`` for a
               backward-pass equation.
    path:      the enclosing sub-programs from the outside in, e.g.
               ``("scan iteration 1/2", "pjit solve")``.
    equation:  the equation as JAX prints it (truncated).
    inputs:    per input: shape, dtype and the smallest / largest |x| (a zero or a
               denormal denominator shows up here).
    n_nonfinite: number of non-finite entries in its outputs.
    then:      for an overflow (an inf from finite inputs), the equation at which that
               inf first became a NaN (e.g. ``mul`` of 0 and inf), else None.
    """

    primitive: str
    source: str
    name_stack: str
    path: Tuple[str, ...]
    equation: str
    inputs: Tuple[str, ...]
    n_nonfinite: int
    then: Optional["Origin"] = None

    def __str__(self) -> str:
        where = " > ".join(self.path) if self.path else "top level"
        lines = [f"{self.primitive} at {self.source or '<unknown source>'}",
                 f"  in: {where}", f"  name stack: {self.name_stack or '-'}",
                 f"  equation: {self.equation}", f"  non-finite outputs: {self.n_nonfinite}"]
        lines += [f"  input {i}: {s}" for i, s in enumerate(self.inputs)]
        if self.then is not None:
            lines.append("  then became NaN at: " + str(self.then).replace("\n", "\n    "))
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class NanReport:
    """What ``locate_nan`` found; ``None`` fields mean "all finite" for that pass.

    forward_step:  first t with a non-finite a_t, s_{t+1} or r_t.
    forward_what:  which of ``action`` / ``next_state`` / ``reward`` it was.
    forward_origin: the origin inside that step (``policy``, ``step`` and ``reward`` traced together).
    backward_step: first t (from n−1 down) with a non-finite λ_t or g_t; not searched when the
                   forward pass is already non-finite.
    backward_what: ``state cotangent`` and/or ``params cotangent``.
    backward_origin: the origin inside that step's VJP.
    """

    horizon: int
    forward_step: Optional[int] = None
    forward_what: Tuple[str, ...] = ()
    forward_origin: Optional[Origin] = None
    backward_step: Optional[int] = None
    backward_what: Tuple[str, ...] = ()
    backward_origin: Optional[Origin] = None

    @property
    def finite(self) -> bool:
        return self.forward_step is None and self.backward_step is None

    def __str__(self) -> str:
        if self.finite:
            return f"all finite: forward and backward over {self.horizon} steps"
        out = []
        if self.forward_step is not None:
            out.append(f"forward: first non-finite at step t={self.forward_step} ({', '.join(self.forward_what)})")
            out.append(str(self.forward_origin) if self.forward_origin else "  (origin not found)")
            out.append("backward: not searched (the forward pass is already non-finite)")
        else:
            out.append(f"forward: finite over {self.horizon} steps")
            out.append(f"backward: first non-finite at step t={self.backward_step} "
                       f"({', '.join(self.backward_what)}), counting down from t={self.horizon - 1}")
            out.append(str(self.backward_origin) if self.backward_origin else "  (origin not found)")
        return "\n".join(out)


# --------------------------------------------------------------------------- value checks
def _all_finite(tree: PyTree) -> bool:
    for x in jax.tree_util.tree_leaves(tree):
        x = np.asarray(x)
        if np.issubdtype(x.dtype, np.inexact) and not np.all(np.isfinite(x)):
            return False
    return True


def _n_nonfinite(tree: PyTree) -> int:
    n = 0
    for x in jax.tree_util.tree_leaves(tree):
        x = np.asarray(x)
        if np.issubdtype(x.dtype, np.inexact):
            n += int(np.size(x) - np.sum(np.isfinite(x)))
    return n


def _summary(x: Any) -> str:
    x = np.asarray(x)
    head = f"{x.dtype}{list(x.shape)}"
    if not np.issubdtype(x.dtype, np.inexact) or x.size == 0:
        return head if x.size != 1 else f"{head} = {x.reshape(())!r}"
    a = np.abs(x[np.isfinite(x)])
    bad = x.size - a.size
    if a.size == 0:
        return f"{head} all non-finite"
    text = f"{head} min|x|={a.min():.3g} max|x|={a.max():.3g}"
    if x.size == 1:
        text = f"{head} = {x.reshape(()).item():.6g}"
    n_nan = int(np.sum(np.isnan(x)))
    return text + (f" ({n_nan} nan, {bad - n_nan} inf)" if bad else "")


# --------------------------------------------------------------------------- jaxpr evaluation
def _is_literal(v) -> bool:
    return isinstance(v, jcore.Literal)


def _bind(eqn, invals: Sequence[Any]) -> List[Any]:
    params = eqn.primitive.get_bind_params(eqn.params)
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*invals, **params)
    return list(out) if eqn.primitive.multiple_results else [out]


def _run(jaxpr, consts: Sequence[Any], args: Sequence[Any]):
    """Evaluate ``jaxpr`` eagerly, one equation at a time; return (env, outputs)."""
    env = {}

    def read(v):
        return v.val if _is_literal(v) else env[v]

    for v, x in zip(jaxpr.constvars, consts):
        env[v] = x
    for v, x in zip(jaxpr.invars, args):
        env[v] = x
    for eqn in jaxpr.eqns:
        outs = _bind(eqn, [read(v) for v in eqn.invars])
        for v, x in zip(eqn.outvars, outs):
            if not isinstance(v, jcore.Var) or type(v).__name__ == "DropVar":
                continue
            env[v] = x
    return env, [read(v) for v in jaxpr.outvars]


def _has_nan(tree: PyTree) -> bool:
    for x in jax.tree_util.tree_leaves(tree):
        x = np.asarray(x)
        if np.issubdtype(x.dtype, np.inexact) and np.any(np.isnan(x)):
            return True
    return False


def _nonfinite(tree: PyTree) -> bool:
    return not _all_finite(tree)


def _sub_jaxpr(eqn):
    """(jaxpr, consts) of a call-like equation's body, or None."""
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = eqn.params.get(key)
        if isinstance(sub, jcore.ClosedJaxpr):
            return sub.jaxpr, sub.consts
        if isinstance(sub, jcore.Jaxpr):
            return sub, []
    return None


def _closed_fn(closed):
    return jax.jit(jcore.jaxpr_as_fun(closed))


def _describe(eqn, invals, outs, path) -> Origin:
    from jax._src import source_info_util

    try:
        source = source_info_util.summarize(eqn.source_info)
    except Exception:  # noqa: BLE001 - source info is best effort
        source = ""
    try:
        name_stack = str(eqn.source_info.name_stack)
    except Exception:  # noqa: BLE001
        name_stack = ""
    text = " ".join(str(eqn).split())
    if len(text) > 300:
        text = text[:300] + " ..."
    return Origin(eqn.primitive.name, source, name_stack, tuple(path), text,
                  tuple(_summary(x) for x in invals), _n_nonfinite(outs))


def _search(jaxpr, consts, args, path, targets=None) -> Optional[Origin]:
    """Evaluate ``jaxpr`` and find the origin of its non-finite outputs (those in ``targets``).

    NaN first: the earliest equation with a NaN output and no NaN input (``0 · inf``,
    ``inf − inf``, ``sqrt(−1)``). If an inf it read was produced by an equation, the inf
    is followed back to the equation that made it from finite inputs (an overflow such
    as y⁻² at |y| = 1e-20 in float32); that overflow is reported, with the NaN it turned
    into as ``then``. Sub-programs on a chain (jit, scan, while, cond, custom_jvp, ...) are
    entered, at the loop iteration where the value first goes bad.
    """
    env, _ = _run(jaxpr, consts, args)
    producer = {v: i for i, eqn in enumerate(jaxpr.eqns) for v in eqn.outvars}
    outs = [v for k, v in enumerate(jaxpr.outvars)
            if (targets is None or k in targets) and not _is_literal(v)]
    nan_start = [v for v in outs if _has_nan(env[v])]
    if nan_start:
        found = _walk(jaxpr, env, nan_start, _has_nan, producer, path)
        if found is not None:
            i, nan_site = found
            infs = [u for u in jaxpr.eqns[i].invars
                    if not _is_literal(u) and u in producer and _nonfinite(env[u])]
            over = _walk(jaxpr, env, infs, _nonfinite, producer, path) if infs else None
            if over is not None and over[1] is not None:
                return dataclasses.replace(over[1], then=nan_site)
            return nan_site
    start = [v for v in outs if _nonfinite(env[v])]
    found = _walk(jaxpr, env, start, _nonfinite, producer, path) if start else None
    return None if found is None else found[1]


def _walk(jaxpr, env, start, bad, producer, path):
    """(index, Origin) of the earliest origin reached back from ``start`` along ``bad`` values.

    An equation is an origin when none of its inputs is ``bad``, or when it is a
    sub-program inside which the ``bad`` outputs arise. A ``bad`` program input or
    constant (MuJoCo's ±inf "unlimited" ranges) is given, not produced: a chain that
    reaches it ends there.
    """
    stack, seen, found = list(start), set(), []
    while stack:
        v = stack.pop()
        i = producer.get(v)
        if i is None or i in seen:
            continue
        seen.add(i)
        eqn = jaxpr.eqns[i]
        invals = [u.val if _is_literal(u) else env[u] for u in eqn.invars]
        outs = [env[w] for w in eqn.outvars if w in env]
        targets = [k for k, w in enumerate(eqn.outvars) if w in env and bad(env[w])]
        bad_in = [u for u in eqn.invars if not _is_literal(u) and u in env and bad(env[u])]
        inner = _enter(eqn, invals, path, targets)
        if inner is not None:
            found.append((i, inner))
        elif not bad_in:
            found.append((i, _describe(eqn, invals, outs, path)))
        else:
            stack.extend(bad_in)
    return min(found, key=lambda f: f[0]) if found else None


def _enter(eqn, invals, path, targets) -> Optional[Origin]:
    """Search inside a sub-program equation for the origin of its outputs ``targets``; None if not one."""
    name = eqn.primitive.name
    p = eqn.params
    if name == "scan":
        body = p["jaxpr"]
        nc, nk, length = p["num_consts"], p["num_carry"], p["length"]
        consts, carry, xs = invals[:nc], list(invals[nc:nc + nk]), invals[nc + nk:]
        fn = _closed_fn(body)
        order = range(length - 1, -1, -1) if p["reverse"] else range(length)
        for k in order:
            x_k = [x[k] for x in xs]
            out = fn(*consts, *carry, *x_k)
            hit = [j for j in targets if _nonfinite(out[j]) and not (j < nk and _nonfinite(carry[j]))]
            if hit:
                return _search(body.jaxpr, body.consts, [*consts, *carry, *x_k],
                               path + [f"scan iteration {k}/{length}"], hit)
            carry = list(out[:nk])
        return None
    if name == "while":
        cj, bj = p["cond_jaxpr"], p["body_jaxpr"]
        cn, bn = p["cond_nconsts"], p["body_nconsts"]
        cconsts, bconsts, carry = invals[:cn], invals[cn:cn + bn], list(invals[cn + bn:])
        cond, body = _closed_fn(cj), _closed_fn(bj)
        for k in range(_MAX_LOOP):
            if not bool(np.asarray(cond(*cconsts, *carry)[0])):
                return None
            out = body(*bconsts, *carry)
            hit = [j for j in targets if _nonfinite(out[j]) and not _nonfinite(carry[j])]
            if hit:
                return _search(bj.jaxpr, bj.consts, [*bconsts, *carry], path + [f"while iteration {k}"], hit)
            carry = list(out)
        return None
    if name == "cond":
        branches = p["branches"]
        index = int(np.clip(np.asarray(invals[0]), 0, len(branches) - 1))
        br = branches[index]
        return _search(br.jaxpr, br.consts, invals[1:], path + [f"cond branch {index}"], targets)
    sub = _sub_jaxpr(eqn)
    if sub is not None and len(sub[0].invars) == len(invals) and len(sub[0].outvars) == len(eqn.outvars):
        label = p.get("name", "")
        return _search(sub[0], sub[1], invals, path + [f"{name} {label}".strip()], targets)
    return None


def origin(fn: Callable, *args) -> Optional[Origin]:
    """The first equation of ``fn(*args)`` whose output is non-finite from finite inputs.

    "First" is the earliest (in program order) of the origins that the non-finite
    outputs depend on; an origin that is a loop or call is entered (see the module
    docstring). Returns None when every output of ``fn(*args)`` is finite (or when a
    non-finite output comes straight from a non-finite argument).
    """
    closed = jax.make_jaxpr(fn)(*args)
    flat = jax.tree_util.tree_leaves(args)
    return _search(closed.jaxpr, closed.consts, flat, [])


# --------------------------------------------------------------------------- the rollout probe
def _float_split(state: PyTree):
    leaves, treedef = jax.tree_util.tree_flatten(state)
    is_float = [jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact) for x in leaves]
    floats = [x for x, f in zip(leaves, is_float) if f]
    others = [x for x, f in zip(leaves, is_float) if not f]

    def rebuild(fl, ot):
        fi, oi = iter(fl), iter(ot)
        return jax.tree_util.tree_unflatten(treedef, [next(fi) if f else next(oi) for f in is_float])

    return floats, others, rebuild


def _check_leading(tree, name: str, length: int):
    if tree is None:
        return
    for x in jax.tree_util.tree_leaves(tree):
        if jnp.ndim(x) == 0 or jnp.shape(x)[0] < length:
            raise ValueError(f"{name}: every leaf needs a leading axis of length >= {length}, "
                             f"got shape {jnp.shape(x)}")


def _at(tree, t):
    return None if tree is None else jax.tree_util.tree_map(lambda x: x[t], tree)


def locate_nan(
    policy: Callable[[PyTree, PyTree, Any], jax.Array],
    params: PyTree,
    step: Callable[[PyTree, jax.Array, Any], PyTree],
    reward: Callable[..., jax.Array],
    state: PyTree,
    *,
    horizon: int,
    gamma: float = 1.0,
    policy_noise: Optional[PyTree] = None,
    dynamics_noise: Optional[PyTree] = None,
    find_origin: bool = True,
) -> NanReport:
    """Probe one trajectory (no batch axis) of J = Σ_{t<n} γ^t r_t for its first non-finite value.

    Args are the engine's (``mbpo_grad.unroll``): ``policy(params, state, eps)``,
    ``step(state, action, xi)``, ``reward(state, action)`` or a ``transition_reward``,
    one start ``state``; ``horizon`` n >= 1; ``policy_noise`` with leading axis >= n
    (ε_0..ε_{n-1} are used), ``dynamics_noise`` with leading axis >= n, or None.
    ``find_origin=False`` reports the steps only (no equation search).

    Returns a ``NanReport`` (``str(report)`` is a readable summary). The backward pass
    is the exact per-step factorisation of reverse mode: summing the g_t it computes
    gives ``jax.grad`` of the same J (up to float rounding).
    """
    horizon = check_int(horizon, "horizon", why="it fixes array shapes, so it is static")
    if not callable(policy) or not callable(step) or not callable(reward):
        raise TypeError("policy, step and reward must be callable")
    _check_leading(policy_noise, "policy_noise", horizon)
    _check_leading(dynamics_noise, "dynamics_noise", horizon)
    floats, others, rebuild = _float_split(state)
    if not floats:
        raise ValueError("state: needs at least one floating-point leaf (gradients flow through states)")

    def transition(p, fl, ot, eps, xi):
        s = rebuild(fl, ot)
        a = policy(p, s, eps)
        s_next = step(s, a, xi)
        r = _call_reward(reward, s, a, s_next)
        if jnp.shape(r) != ():
            raise ValueError(f"reward: expected a scalar per state (shape ()), got shape {jnp.shape(r)}")
        nf, no, _ = _float_split(s_next)
        return a, nf, no, r

    fwd = jax.jit(transition)

    # Forward: host loop, recording the (float, other) leaves of every state.
    states = [(floats, others)]
    report = dict(horizon=horizon)
    for t in range(horizon):
        fl, ot = states[-1]
        eps, xi = _at(policy_noise, t), _at(dynamics_noise, t)
        a, nf, no, r = fwd(params, fl, ot, eps, xi)
        what = tuple(n for n, v in (("action", a), ("next_state", nf), ("reward", r)) if not _all_finite(v))
        if what:
            report.update(forward_step=t, forward_what=what)
            if find_origin:
                report["forward_origin"] = origin(transition, params, fl, ot, eps, xi)
            return NanReport(**report)
        states.append((list(nf), list(no)))

    # Backward: λ_n = 0, then the step VJP from t = n-1 down to 0.
    def step_vjp(p, fl, ot, eps, xi, lam, w):
        def f(p_, fl_):
            _, nf, _, r = transition(p_, fl_, ot, eps, xi)
            return nf, r
        (_, r), pullback = jax.vjp(f, p, fl)
        return pullback((lam, jnp.asarray(w, r.dtype)))

    bwd = jax.jit(step_vjp)
    lam = [jnp.zeros_like(x) for x in states[-1][0]]
    for t in range(horizon - 1, -1, -1):
        fl, ot = states[t]
        eps, xi = _at(policy_noise, t), _at(dynamics_noise, t)
        w = jnp.asarray(gamma ** t)
        g_t, lam_t = bwd(params, fl, ot, eps, xi, lam, w)
        what = tuple(n for n, v in (("state cotangent", lam_t), ("params cotangent", g_t)) if not _all_finite(v))
        if what:
            report.update(backward_step=t, backward_what=what)
            if find_origin:
                report["backward_origin"] = origin(step_vjp, params, fl, ot, eps, xi, lam, w)
            return NanReport(**report)
        lam = list(lam_t)
    return NanReport(**report)


def pathwise_gradient(policy, params, step, reward, state, *, horizon, gamma=1.0,
                      policy_noise=None, dynamics_noise=None):
    """dJ/dw by the same host-loop factorisation ``locate_nan`` uses (for checking the probe).

    Returns (J, grad). Not a hot path: use ``jax.grad`` of ``mbpo_grad.pathwise_objective``.
    """
    floats, others, rebuild = _float_split(state)

    def transition(p, fl, ot, eps, xi):
        s = rebuild(fl, ot)
        a = policy(p, s, eps)
        s_next = step(s, a, xi)
        nf, no, _ = _float_split(s_next)
        return nf, no, _call_reward(reward, s, a, s_next)

    fwd = jax.jit(transition)
    states, total = [(floats, others)], 0.0
    for t in range(horizon):
        nf, no, r = fwd(params, *states[-1], _at(policy_noise, t), _at(dynamics_noise, t))
        total = total + gamma ** t * r
        states.append((list(nf), list(no)))

    def step_vjp(p, fl, ot, eps, xi, lam, w):
        (_, r), pullback = jax.vjp(lambda p_, fl_: (lambda o: (o[0], o[2]))(transition(p_, fl_, ot, eps, xi)), p, fl)
        return pullback((lam, jnp.asarray(w, r.dtype)))

    bwd = jax.jit(step_vjp)
    lam = [jnp.zeros_like(x) for x in states[-1][0]]
    grad = jax.tree_util.tree_map(jnp.zeros_like, params)
    for t in range(horizon - 1, -1, -1):
        w = jnp.asarray(gamma ** t)
        g_t, lam = bwd(params, *states[t], _at(policy_noise, t), _at(dynamics_noise, t), lam, w)
        grad = jax.tree_util.tree_map(jnp.add, grad, g_t)
    return total, grad


__all__ = ["Origin", "NanReport", "origin", "locate_nan", "pathwise_gradient"]
