"""Guards that keep non-finite or exploding gradients away from the parameters.

Pathwise gradients multiply one Jacobian per unrolled step, so through long
horizons and stiff contacts they explode (norms of 1e18 or inf) or turn NaN
(Suh et al. 2022, "Do differentiable simulators give better policy
gradients?"; Xu et al. 2022, SHAC, §3). Three layers, all pure functions:

1. Per environment. ``masked_grad_mean`` averages per-environment gradients
   over the environments whose gradient (and, optionally, value) is finite and
   not larger than ``max_norm``; ``masked_mean`` does the same for values such
   as per-trajectory returns from ``mg.pathwise_returns``. Both report how many
   entries they dropped. Why per-environment *gradients*: masking a NaN return
   out of the batch mean does not clean the parameter gradient, because
   reverse mode multiplies the zero cotangent by the NaN/inf Jacobian of that
   environment's rollout (0 · inf = NaN). Computing the gradient per
   environment (``jax.vmap(jax.grad(loss))`` over environments; memory B × |θ|)
   and masking afterwards is exact: the kept environments' mean is the gradient
   of their mean return.
2. Per update. ``skip_nonfinite(inner)`` wraps an optax transformation: when
   the global gradient norm is non-finite or above ``max_grad_norm_to_skip``
   (or the loss passed as ``value=`` is non-finite, or ``skip=True`` is passed)
   the update is zero and the inner state (Adam moments, counts) does not
   advance. Its state records ``skipped``, ``grad_norm`` (before any clipping
   inside ``inner``) and the running totals. Unlike ``optax.apply_if_finite``,
   which after ``max_consecutive_errors`` bad steps gives up and applies the
   non-finite update, this wrapper never lets a non-finite update through, also
   skips finite-but-exploding ones, and reports the norm.
3. Per run (host side). ``skip_rate_message`` / ``SkipMonitor`` turn a skip rate
   that stays above a threshold into a message naming the likely causes and
   remedies, so an agent stops with an explanation instead of training on noise.

Typical actor update::

    opt = guards.skip_nonfinite(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr)),
                                max_grad_norm_to_skip=1e6)
    per_env_j, per_env_g = jax.vmap(jax.value_and_grad(loss_one_env), in_axes=(None, 0))(params, envs)
    grads, n_masked = guards.masked_grad_mean(per_env_g, values=per_env_j)
    updates, opt_state = opt.update(grads, opt_state, params, skip=n_masked == B)
    metrics = {"masked_envs": n_masked, **guards.skip_stats(opt_state)}
"""
from __future__ import annotations

import collections
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mbpo_grad.validation import check_int

PyTree = Any

__all__ = [
    "finite_mask", "masked_mean", "masked_grad_mean", "safe_global_norm",
    "SkipNonFiniteState", "skip_nonfinite", "skip_stats",
    "skip_rate_message", "SkipMonitor", "SkipRateExceeded",
]


def _batch_size(tree: PyTree, name: str) -> int:
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        raise ValueError(f"{name} is an empty pytree; expected leaves with a leading batch axis B")
    sizes = set()
    for leaf in leaves:
        if jnp.ndim(leaf) == 0:
            raise ValueError(f"{name} must have a leading batch axis B on every leaf; found a scalar leaf")
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            raise TypeError(f"{name} must be floating point, got dtype {jnp.result_type(leaf)}")
        sizes.add(jnp.shape(leaf)[0])
    if len(sizes) != 1:
        raise ValueError(f"{name}: every leaf must share the leading batch axis B; found sizes {sorted(sizes)}")
    return sizes.pop()


def finite_mask(tree: PyTree) -> jax.Array:
    """bool [B]: entry b is True when every leaf's slice ``[b]`` is finite.

    ``tree``: a pytree whose leaves share a leading batch axis B (per-environment
    values or per-environment gradients).
    """
    _batch_size(tree, "tree")
    masks = [jnp.all(jnp.isfinite(jnp.reshape(x, (x.shape[0], -1))), axis=1) for x in jax.tree_util.tree_leaves(tree)]
    out = masks[0]
    for m in masks[1:]:
        out = out & m
    return out


def masked_mean(values: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """Mean over the finite entries of ``values`` [B] and the number dropped.

        mean = Σ_b m_b v_b / max(Σ_b m_b, 1),   m_b = isfinite(v_b)

    The non-finite entries are replaced by 0 with ``jnp.where`` before the sum,
    so the gradient w.r.t. ``values`` is ``m_b / Σ m`` (finite; 0 for dropped
    entries) — a select, not a multiplication by NaN. It does not clean NaN
    *Jacobians upstream* of ``values``; for parameter gradients through a rollout
    use ``masked_grad_mean``. When every entry is dropped the mean is 0.

    Returns ``(mean, n_masked)`` with ``n_masked`` an int32 scalar.
    """
    values = jnp.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"values must have shape [B], got {values.shape}")
    if not jnp.issubdtype(values.dtype, jnp.inexact):
        raise TypeError(f"values must be floating point, got dtype {values.dtype}")
    keep = jnp.isfinite(values)
    safe = jnp.where(keep, values, jnp.zeros_like(values))
    n_keep = jnp.sum(keep)
    mean = jnp.sum(safe) / jnp.maximum(n_keep, 1).astype(values.dtype)
    return mean, (values.shape[0] - n_keep).astype(jnp.int32)


def _per_entry_sq_norm(tree: PyTree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return sum(jnp.sum(jnp.reshape(x, (x.shape[0], -1)) ** 2, axis=1) for x in leaves)


def masked_grad_mean(
    per_env_grads: PyTree,
    *,
    values: Optional[jax.Array] = None,
    max_norm: Any = None,
) -> Tuple[PyTree, jax.Array]:
    """Mean of per-environment gradients over the environments that are safe to use.

        g = Σ_b m_b g_b / max(Σ_b m_b, 1),
        m_b = all(isfinite(g_b)) ∧ isfinite(values_b) ∧ ‖g_b‖ <= max_norm

    Args:
      per_env_grads: gradient pytree with a leading axis B on every leaf, e.g.
        ``jax.vmap(jax.grad(loss_one_env), in_axes=(None, 0))(params, envs)``.
      values: optional per-environment losses/returns [B]; a non-finite value
        drops its environment too.
      max_norm: optional threshold (may be a traced scalar) on each environment's
        gradient norm; larger ones count as exploding and are dropped.

    Returns ``(mean_grads, n_masked)``; with every environment dropped the mean
    is all zeros and ``n_masked == B`` (pass ``skip=n_masked == B`` to
    ``skip_nonfinite`` so the optimizer does not step on it).
    """
    batch = _batch_size(per_env_grads, "per_env_grads")
    keep = finite_mask(per_env_grads)
    if values is not None:
        values = jnp.asarray(values)
        if values.shape != (batch,):
            raise ValueError(f"values must have shape [B] = [{batch}] like per_env_grads, got {values.shape}")
        keep = keep & jnp.isfinite(values)
    if max_norm is not None:
        sq = _per_entry_sq_norm(jax.tree_util.tree_map(lambda g: jnp.where(jnp.isfinite(g), g, 0), per_env_grads))
        keep = keep & (jnp.sqrt(sq) <= max_norm)
    n_keep = jnp.sum(keep)

    def mean(g):
        k = jnp.reshape(keep, (batch,) + (1,) * (g.ndim - 1))
        safe = jnp.where(k, g, jnp.zeros_like(g))
        return jnp.sum(safe, axis=0) / jnp.maximum(n_keep, 1).astype(g.dtype)

    return jax.tree_util.tree_map(mean, per_env_grads), (batch - n_keep).astype(jnp.int32)


def safe_global_norm(tree: PyTree) -> jax.Array:
    """‖tree‖₂ over all leaves, computed as m·sqrt(Σ (x/m)²) with m = max|x|.

    The scaling keeps exploding gradients reportable: in float32 the plain sum
    of squares overflows to inf beyond ~1.8e19, this stays finite up to ~3e38.
    NaN or inf anywhere gives a non-finite norm.
    """
    leaves = [jnp.asarray(x) for x in jax.tree_util.tree_leaves(tree)]
    if not leaves:
        return jnp.zeros(())
    dtype = jnp.result_type(*leaves)
    m = jnp.max(jnp.stack([jnp.max(jnp.abs(x)).astype(dtype) for x in leaves]))
    scale = jnp.where((m > 0) & jnp.isfinite(m), m, jnp.ones_like(m))
    ssq = sum(jnp.sum((x.astype(dtype) / scale) ** 2) for x in leaves)
    return jnp.where(jnp.isfinite(m), scale * jnp.sqrt(ssq), m)


class SkipNonFiniteState(NamedTuple):
    """State of ``skip_nonfinite``: the inner state plus the counters agents log."""

    inner_state: Any
    skipped: jax.Array          # int32 0/1: was the last update skipped
    grad_norm: jax.Array        # global norm of the last incoming gradient (before clipping)
    total_skipped: jax.Array    # int32: skipped updates so far
    count: jax.Array            # int32: updates seen so far (skipped or not)


def skip_nonfinite(inner: optax.GradientTransformation, *, max_grad_norm_to_skip: Any = float("inf")):
    """Wrap ``inner`` so a non-finite or exploding gradient produces no update at all.

    An update is skipped when ``safe_global_norm(grads)`` is NaN/inf or larger
    than ``max_grad_norm_to_skip``, when the ``value=`` extra argument (the loss)
    is non-finite, or when ``skip=True`` is passed (e.g. every environment was
    masked). A skipped update returns zeros and keeps ``inner``'s state as it
    was; ``inner`` only ever sees finite gradients. Works under ``jit`` and
    ``vmap`` (selects, no Python branching); ``max_grad_norm_to_skip`` may be a
    traced scalar. Extra arguments other than ``skip`` are passed on to
    ``inner``.

    Returns an ``optax.GradientTransformationExtraArgs`` whose state is a
    ``SkipNonFiniteState``.
    """
    inner = optax.with_extra_args_support(inner)
    if isinstance(max_grad_norm_to_skip, (int, float)) and not isinstance(max_grad_norm_to_skip, bool):
        if not max_grad_norm_to_skip > 0:
            raise ValueError(f"max_grad_norm_to_skip must be > 0, got {max_grad_norm_to_skip}")

    def init(params):
        return SkipNonFiniteState(
            inner_state=inner.init(params),
            skipped=jnp.zeros((), jnp.int32),
            grad_norm=jnp.zeros(()),
            total_skipped=jnp.zeros((), jnp.int32),
            count=jnp.zeros((), jnp.int32),
        )

    def update(updates, state, params=None, **extra_args):
        force = extra_args.pop("skip", False)
        norm = safe_global_norm(updates)
        bad = ~jnp.isfinite(norm) | (norm > max_grad_norm_to_skip) | jnp.asarray(force, bool)
        if extra_args.get("value") is not None:
            bad = bad | ~jnp.all(jnp.isfinite(jnp.asarray(extra_args["value"])))
        clean = jax.tree_util.tree_map(lambda g: jnp.where(bad, jnp.zeros_like(g), g), updates)
        new_updates, new_inner = inner.update(clean, state.inner_state, params, **extra_args)
        new_updates = jax.tree_util.tree_map(lambda u: jnp.where(bad, jnp.zeros_like(u), u), new_updates)
        inner_state = jax.tree_util.tree_map(lambda new, old: jnp.where(bad, old, new), new_inner, state.inner_state)
        skipped = bad.astype(jnp.int32)
        return new_updates, SkipNonFiniteState(
            inner_state=inner_state,
            skipped=skipped,
            grad_norm=norm.astype(state.grad_norm.dtype),
            total_skipped=state.total_skipped + skipped,
            count=state.count + 1,
        )

    return optax.GradientTransformationExtraArgs(init, update)


def skip_stats(opt_state: PyTree) -> Dict[str, jax.Array]:
    """``{"skipped_updates", "total_skipped", "grad_norm"}`` from the first
    ``SkipNonFiniteState`` inside ``opt_state`` (also inside ``optax.chain``)."""
    found = [s for s in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, SkipNonFiniteState))
             if isinstance(s, SkipNonFiniteState)]
    if not found:
        raise ValueError("opt_state holds no SkipNonFiniteState; wrap the optimizer with skip_nonfinite")
    s = found[0]
    return {"skipped_updates": s.skipped, "total_skipped": s.total_skipped, "grad_norm": s.grad_norm}


class SkipRateExceeded(RuntimeError):
    """Raised by agents when ``skip_rate_message`` reports a persistent skip rate."""


def skip_rate_message(
    skipped: Sequence[Any],
    *,
    window: int = 100,
    threshold: float = 0.5,
    horizon: Optional[int] = None,
    dtype: Any = None,
    grad_norms: Optional[Sequence[float]] = None,
) -> Optional[str]:
    """A diagnosis when more than ``threshold`` of the last ``window`` updates were skipped.

    Args:
      skipped: host-side history of per-update skip flags (0/1), oldest first.
      window: how many recent updates to judge; fewer recorded updates give None.
      threshold: skip fraction in [0, 1) above which the run should stop.
      horizon: the unroll length n, if known (names it and suggests a shorter one).
      dtype: the floating dtype the run uses (float32 adds the --x64 remedy).
      grad_norms: recent gradient norms (before clipping) to quote.

    Returns None when the rate is acceptable, else one message to raise.
    """
    check_int(window, "window")
    if not 0.0 <= float(threshold) < 1.0:
        raise ValueError(f"threshold must lie in [0, 1), got {threshold}")
    flags = np.asarray(list(skipped), dtype=np.float64).reshape(-1)
    if flags.size < window:
        return None
    rate = float(np.mean(flags[-window:] > 0))
    if rate <= threshold:
        return None

    parts = [f"{rate:.0%} of the last {window} updates were skipped (threshold {float(threshold):.0%}): "
             "the policy gradients are non-finite or exploding, so training has stopped making progress."]
    if grad_norms is not None:
        norms = np.asarray(list(grad_norms), dtype=np.float64).reshape(-1)
        if norms.size:
            n_bad = int(np.sum(~np.isfinite(norms)))
            finite = norms[np.isfinite(norms)]
            desc = f"Recent gradient norms: {n_bad} of {norms.size} non-finite"
            if finite.size:
                desc += f", largest finite {finite.max():.3g}"
            parts.append(desc + ".")
    h = f" (n={horizon})" if horizon is not None else ""
    is64 = dtype is not None and np.dtype(dtype) == np.float64
    causes = [f"the unroll horizon{h} is too long: the gradient multiplies one Jacobian per step and grows "
              "geometrically through chaotic or contact-rich dynamics"]
    if is64:
        causes.append("stiff contacts or joint limits make the dynamics' derivatives huge even in float64")
    else:
        causes.append("float32 arithmetic through stiff contacts and joint limits overflows")
    parts.append("Likely causes: " + "; ".join(f"({i + 1}) {c}" for i, c in enumerate(causes)) + ".")
    shorter = f" (e.g. n={max(1, horizon // 4)})" if isinstance(horizon, (int, np.integer)) and horizon > 1 else ""
    remedies = [f"use a shorter horizon{shorter} with a critic bootstrap (short-horizon actor-critic / SVG(n)) "
                "instead of full-episode backpropagation"]
    if not is64:
        remedies.append("run in float64 (--x64)")
    remedies.append("clip gradients (optax.clip_by_global_norm) or lower the learning rate")
    parts.append("Try: " + "; ".join(remedies) + ".")
    return " ".join(parts)


class SkipMonitor:
    """Host-side running check over the last ``window`` updates (wraps ``skip_rate_message``).

        monitor = SkipMonitor(window=100, threshold=0.5, horizon=n, dtype=jnp.float32)
        msg = monitor.update(metrics["skipped_updates"], metrics["grad_norm"])   # per update or per chunk
        if msg: raise SkipRateExceeded(msg)
    """

    def __init__(self, window: int = 100, threshold: float = 0.5, *, horizon: Optional[int] = None, dtype: Any = None):
        skip_rate_message([], window=window, threshold=threshold)  # validates the arguments
        self.window, self.threshold, self.horizon, self.dtype = window, threshold, horizon, dtype
        self._skipped: collections.deque = collections.deque(maxlen=window)
        self._norms: collections.deque = collections.deque(maxlen=window)

    def update(self, skipped: Any, grad_norm: Any = None) -> Optional[str]:
        """Record one flag or a chunk of flags (and norms); return the message if the rate is too high."""
        self._skipped.extend(np.asarray(skipped, dtype=np.float64).reshape(-1).tolist())
        if grad_norm is not None:
            self._norms.extend(np.asarray(grad_norm, dtype=np.float64).reshape(-1).tolist())
        return skip_rate_message(
            self._skipped, window=self.window, threshold=self.threshold, horizon=self.horizon,
            dtype=self.dtype, grad_norms=self._norms if self._norms else None,
        )
