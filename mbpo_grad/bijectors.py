"""Bijectors: invertible maps with tractable log-determinants, as bundles of pure functions.

A bijector ``f`` acts on ONE event vector ``x`` of size ``dim`` (callers batch with
``jax.vmap``) and may be conditioned on a context vector ``c`` (the observation for a
policy, ``concat(s, a)`` for a transition-noise model)::

    params          = bij.init(key)
    y, log_det      = bij.forward_and_log_det(params, x, context)   log|det ∂y/∂x|
    x, log_det_inv  = bij.inverse_and_log_det(params, y, context)   log|det ∂x/∂y| = −log_det

``log_det`` is a scalar (summed over the event). ``context`` is ignored (and may be
``None``) by bijectors built with ``context_dim=0``.

Change of variables (docs/theory.md §4): for ``x = f(ε)`` with ``ε ~ N(0, I)``,

    log p(x) = log N(f⁻¹(x); 0, I) + log|det ∂f⁻¹/∂x|,

which ``transformed_normal`` packages as ``sample`` / ``infer_noise`` / ``log_prob``.

Pieces (all written on ``mbpo_grad.nn``; no distrax / tfp):

* ``affine_coupling`` — RealNVP (Dinh et al., 2017): the ``transformed`` coordinates are
  scaled and shifted by a conditioner MLP of the other coordinates AND the context,
  ``y_T = x_T · exp(s) + t``, ``(s, t) = NN(x_C, c)``, ``log_det = Σ s``. The MLP's last
  layer is zero-initialised, so a fresh layer is the identity; the log-scale is
  soft-clamped, ``s = B tanh(s_raw / B)``. Needs ``dim ≥ 2``.
* ``conditional_affine`` — elementwise ``y = μ(c) + exp(log σ(c)) x`` with ``μ, log σ``
  (soft-bounded) from an MLP of the context only (``context_dim = 0``: free parameter vectors, i.e.
  ``elementwise_affine``). This is the 1-D replacement for a coupling layer (a 1-D
  coupling has nothing to condition on but the context) and the state-conditioned base
  layer of a flow policy.
* ``sinh_arcsinh`` — elementwise, monotone, NOT affine:
  ``y = sinh(b · asinh(x) − a)`` (Jones & Pewsey, 2009) with ``a, log b`` from the
  context. Closed-form inverse ``x = sinh((asinh(y) + a) / b)``. Alternated with
  ``conditional_affine`` it lets a 1-D flow bend its density (skew, heavy or light tails,
  two modes), which a stack of affine maps cannot: affine ∘ affine is affine.
* ``permute`` / ``reverse`` — fixed permutations (``log_det = 0``).
* ``tanh`` — squash onto (−1, 1); ``log|1 − tanh²(x)| = 2(log 2 − x − softplus(−2x))``
  (stable for large |x|). Its inverse clips ``y`` to ``±(1 − ε)`` first (ε = 1e-6 in
  float32, 1e-12 in float64; ``tanh_clip_eps``), so ±1 maps to a finite value, never NaN.
* ``chain`` — composition, applied IN LIST ORDER: ``chain([f1, f2, f3])`` maps
  ``x ↦ f3(f2(f1(x)))``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional, Sequence

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np

from jax.scipy.special import log_ndtr, ndtri

from mbpo_grad.nn import mlp
from mbpo_grad.validation import check_int

#: Margin of the tanh inverse for float32 (and wider types without their own entry):
#: ``atanh`` is applied to ``clip(y, −1 + ε, 1 − ε)``. See ``tanh_clip_eps``.
TANH_CLIP_EPS = 1e-6


def tanh_clip_eps(dtype) -> float:
    """The margin ε of the tanh inverse for ``dtype``: 1e-12 (float64), 1e-6 (float32),
    ``8 · finfo(dtype).eps`` for 16-bit floats (so that 1 − ε stays representable)."""
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float64:
        return 1e-12
    return max(TANH_CLIP_EPS, 8.0 * float(jnp.finfo(dtype).eps))


def clip_to_open_unit(y: jax.Array, clip_eps: Optional[float] = None) -> jax.Array:
    """``clip(y, −1 + ε, 1 − ε)`` with ``ε = tanh_clip_eps(y.dtype)`` unless given."""
    eps = tanh_clip_eps(y.dtype) if clip_eps is None else clip_eps
    return jnp.clip(y, -1.0 + eps, 1.0 - eps)


_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class Bijector(NamedTuple):
    """An invertible map on vectors of size ``dim`` as pure functions (see module doc)."""

    init: Callable[[Any], Any]
    forward_and_log_det: Callable[[Any, Any, Any], Any]
    inverse_and_log_det: Callable[[Any, Any, Any], Any]
    dim: int
    context_dim: int
    name: str = "bijector"


# --------------------------------------------------------------------------- helpers

def _check_dim(value: Any, name: str, minimum: int = 1) -> int:
    return check_int(value, name, minimum=minimum)


def _check_positive_float(value: Any, name: str) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value


def _check_event(x: Any, dim: int, name: str) -> jax.Array:
    x = jnp.asarray(x)
    if x.shape != (dim,):
        raise ValueError(
            f"{name} must be ONE event of shape ({dim},), got shape {x.shape}; batch with jax.vmap"
        )
    return x


def _check_context(context: Any, context_dim: int) -> Optional[jax.Array]:
    if context_dim == 0:
        return None
    if context is None:
        raise ValueError(f"context is required (a vector of shape ({context_dim},)), got None")
    context = jnp.asarray(context)
    if context.shape != (context_dim,):
        raise ValueError(f"context must have shape ({context_dim},), got {context.shape}")
    return context


def soft_clamp(x: jax.Array, bound: float) -> jax.Array:
    """``bound · tanh(x / bound)``: ≈ x for |x| ≪ bound, smoothly saturating at ±bound."""
    return bound * jnp.tanh(x / bound)


def soft_clip(x: jax.Array, low: float, high: float) -> jax.Array:
    """Smooth clip onto [low, high]: ``low + softplus(x − low) − softplus(x − high)``.

    Monotone, differentiable everywhere, within [low, high] (the difference of the two
    softplus terms lies in (0, high − low); a final ``clip`` only absorbs rounding), and
    close to the identity well inside the interval (error ≤ softplus(−distance to the
    nearer bound)). Used for bounded log standard deviations.
    """
    y = low + jax.nn.softplus(x - low) - jax.nn.softplus(x - high)
    return jnp.clip(y, low, high)


def log1m_tanh_sq(x: jax.Array) -> jax.Array:
    """``log(1 − tanh²(x)) = 2 (log 2 − x − softplus(−2x))`` (stable for large |x|)."""
    return 2.0 * (math.log(2.0) - x - jax.nn.softplus(-2.0 * x))


def standard_normal_log_prob(eps: jax.Array) -> jax.Array:
    """``log N(eps; 0, I)`` summed over the last axis."""
    return -0.5 * jnp.sum(jnp.square(eps), axis=-1) - eps.shape[-1] * _HALF_LOG_2PI


# Standard-normal noise → Gumbel / exponential noise, accurately in both tails.

def log_neg_log_ndtr(x: jax.Array) -> jax.Array:
    """``log(−log Φ(x))``, accurate in relative terms for every finite x.

    Used for the base noises built from ε ~ N(0, 1) (``policies.bounded``, ``policies.categorical``,
    ``envs.switching_cart``): the Gumbel variate
    ``g = −log(−log Φ(ε)) = −log_neg_log_ndtr(ε)`` and the log of the exponential variate
    ``log E = log(−log(1 − Φ(ε))) = log_neg_log_ndtr(−ε)``. With ``L = log Φ(−|x|)`` (one
    ``log_ndtr`` call, at a non-positive argument, where it is accurate):

        x ≤ 0:   log(−L)                                   (−log Φ(x) ≥ log 2: no cancellation)
        x > 0:   log(−log1p(−e^L))                         (−log Φ(x) = −log(1 − Φ(−x)))
                 L                 where L < −30           (the series p + p²/2 + …, p = e^L < 1e-13)

    (``log_ndtr`` alone computes log Φ(x) for moderate x > 0 as the log of a rounded number: in
    float32 its value at x = 5 is 4 % off, which would be a 4 % error in E.) Finite for every
    finite x; the branches see clamped inputs, so gradients stay finite.
    """
    x = jnp.asarray(x)
    L = log_ndtr(jnp.where(x <= 0.0, x, -x))
    r_neg = jnp.log(-L)
    r_pos = jnp.log(-jnp.log1p(-jnp.exp(jnp.maximum(L, -30.0))))
    return jnp.where(x <= 0.0, r_neg, jnp.where(L < -30.0, L, r_pos))


def ndtri_exp_neg_exp(l: jax.Array) -> jax.Array:
    """``x = Φ⁻¹(exp(−e^l))``, the inverse of ``log_neg_log_ndtr``.

    With ``p = exp(−e^l)``: ``Φ⁻¹(p)`` where p ≤ ½ (``l ≥ log log 2``), else ``−Φ⁻¹(1 − p)``
    with ``1 − p = −expm1(−e^l)`` (accurate when p is near 1); one ``ndtri`` call on the smaller
    of the two. Probabilities below ``16 · finfo.tiny`` are floored there, so |x| ≤ 12.7
    (float32) / 37.4 (float64): the inverse is exact inside that range and clipped outside it
    (probability < 1e-36).
    """
    l = jnp.asarray(l)
    upper = l >= math.log(math.log(2.0))          # p = ½ ⇔ e^l = ln 2
    y = jnp.exp(jnp.clip(l, None, 7.0))            # exp(−e^7) = 0 in every float format
    small = jnp.where(upper, jnp.exp(-y), -jnp.expm1(-y))
    x = ndtri(jnp.maximum(small, 16.0 * float(jnp.finfo(jnp.result_type(l)).tiny)))
    return jnp.where(upper, x, -x)


def _free_or_conditional(context_dim: int, out: int, hidden: Sequence[int], zero_init: bool,
                         activation: Callable):
    """A conditioner producing ``out`` numbers from the context (or free parameters).

    Returns ``(init, apply(params, context))``. With ``context_dim = 0`` the output is a
    free parameter vector initialised to zero.
    """
    if context_dim == 0:
        def init(key):
            del key
            return {"bias": jnp.zeros((out,))}

        def apply(params, context):
            del context
            return params["bias"]

        return init, apply
    net = mlp(context_dim, out, hidden, activation=activation, zero_last=zero_init)
    return net.init, net.apply


# --------------------------------------------------------------------------- bijectors

def affine_coupling(dim: int, context_dim: int = 0, *, parity: int = 0, transformed=None,
                    hidden: Sequence[int] = (64, 64), log_scale_bound: float = 3.0,
                    activation: Callable = linen.tanh) -> Bijector:
    """RealNVP affine coupling conditioned on a context vector.

    ``y_T = x_T ⊙ exp(s) + t``, ``y_C = x_C``, ``(s_raw, t) = NN([x_C, c])``,
    ``s = B tanh(s_raw / B)`` with ``B = log_scale_bound``; ``log|det| = Σ s``.
    Reference: Dinh, Sohl-Dickstein, Bengio, "Density estimation using Real NVP", 2017.

    Args:
      dim: event size, >= 2 (a 1-D coupling conditions on nothing; use
        ``conditional_affine`` / ``sinh_arcsinh`` there).
      context_dim: size of the context vector the conditioner also sees (0: none).
      parity: 0 transforms the second half ``x[dim//2:]`` given the first; 1 transforms the
        first half given the second. Alternate it between layers.
      transformed: optional explicit boolean mask of length ``dim`` (True = transformed);
        overrides ``parity``. Must transform at least one and keep at least one coordinate.
      hidden: conditioner MLP widths; its last layer is zero-initialised (identity map).
      log_scale_bound: B > 0 of the soft clamp on the log-scale.
    """
    dim = _check_dim(dim, "dim", minimum=1)
    context_dim = _check_dim(context_dim, "context_dim", minimum=0)
    if dim < 2:
        raise ValueError(
            "dim must be >= 2 for an affine coupling (a 1-D coupling has no coordinates to "
            "condition on); use conditional_affine / sinh_arcsinh for 1-D events"
        )
    bound = _check_positive_float(log_scale_bound, "log_scale_bound")
    if transformed is None:
        if parity not in (0, 1):
            raise ValueError(f"parity must be 0 or 1, got {parity!r}")
        mask = np.arange(dim) >= dim // 2 if parity == 0 else np.arange(dim) < dim // 2
    else:
        mask = np.asarray(transformed, dtype=bool)
        if mask.shape != (dim,):
            raise ValueError(f"transformed must be a boolean mask of shape ({dim},), got {mask.shape}")
        if mask.all() or not mask.any():
            raise ValueError("transformed must mark at least one transformed and one conditioning coordinate")
    trans_idx = np.flatnonzero(mask)
    cond_idx = np.flatnonzero(~mask)
    n_t = len(trans_idx)
    net = mlp(len(cond_idx) + context_dim, 2 * n_t, hidden, activation=activation, zero_last=True)

    def _shift_and_log_scale(params, x_cond, context):
        inp = x_cond if context is None else jnp.concatenate([x_cond, context.astype(x_cond.dtype)])
        out = net.apply(params, inp)
        log_scale = soft_clamp(out[:n_t], bound)
        shift = out[n_t:]
        return shift, log_scale

    def forward_and_log_det(params, x, context=None):
        x = _check_event(x, dim, "x")
        context = _check_context(context, context_dim)
        shift, log_scale = _shift_and_log_scale(params, x[cond_idx], context)
        y_t = x[trans_idx] * jnp.exp(log_scale) + shift
        return x.at[trans_idx].set(y_t), jnp.sum(log_scale)

    def inverse_and_log_det(params, y, context=None):
        y = _check_event(y, dim, "y")
        context = _check_context(context, context_dim)
        shift, log_scale = _shift_and_log_scale(params, y[cond_idx], context)
        x_t = (y[trans_idx] - shift) * jnp.exp(-log_scale)
        return y.at[trans_idx].set(x_t), -jnp.sum(log_scale)

    return Bijector(net.init, forward_and_log_det, inverse_and_log_det, dim, context_dim, "affine_coupling")


def conditional_affine(dim: int, context_dim: int = 0, *, hidden: Sequence[int] = (64, 64),
                       zero_init: bool = True, log_scale_bound: float = 3.0,
                       log_scale_min: Optional[float] = None, log_scale_max: Optional[float] = None,
                       shift_bound: Optional[float] = None, activation: Callable = linen.tanh) -> Bijector:
    """Elementwise ``y = μ(c) + exp(log σ(c)) ⊙ x`` with ``(μ, log σ_raw) = NN(c)``.

    ``log|det| = Σ log σ``. The conditioner sees only the context, so this is the layer a
    1-D flow uses where a coupling is impossible. ``context_dim = 0``: μ and log σ_raw are
    free parameter vectors (``elementwise_affine``).

    The log-scale is bounded in one of two ways:
    * default: ``log σ = B tanh(log σ_raw / B)``, ``B = log_scale_bound`` (symmetric; a
      zero-initialised layer is exactly the identity);
    * ``log_scale_min`` and ``log_scale_max`` given: ``log σ = soft_clip(log σ_raw, min, max)``
      (the Gaussian policy's bounded log standard deviation).

    ``shift_bound`` S (optional): ``μ = S tanh(μ_raw / S)`` (unbounded by default).

    Args:
      zero_init: zero-initialise the MLP's last layer (μ = 0, log σ_raw = 0 at init).
        ``False`` uses the default Dense initialiser, the usual choice for the mean/scale
        head of a Gaussian policy.
    """
    dim = _check_dim(dim, "dim")
    context_dim = _check_dim(context_dim, "context_dim", minimum=0)
    if (log_scale_min is None) != (log_scale_max is None):
        raise ValueError("log_scale_min and log_scale_max must be given together")
    if log_scale_min is not None:
        if not float(log_scale_min) < float(log_scale_max):
            raise ValueError(f"log_scale_min must be < log_scale_max, got {log_scale_min} and {log_scale_max}")
        lo, hi = float(log_scale_min), float(log_scale_max)

        def bound_log_scale(raw):
            return soft_clip(raw, lo, hi)
    else:
        bound = _check_positive_float(log_scale_bound, "log_scale_bound")

        def bound_log_scale(raw):
            return soft_clamp(raw, bound)

    if shift_bound is not None:
        shift_bound = _check_positive_float(shift_bound, "shift_bound")
    init, apply = _free_or_conditional(context_dim, 2 * dim, hidden, zero_init, activation)

    def _shift_and_log_scale(params, context):
        out = apply(params, context)
        shift = out[:dim] if shift_bound is None else soft_clamp(out[:dim], shift_bound)
        return shift, bound_log_scale(out[dim:])

    def forward_and_log_det(params, x, context=None):
        x = _check_event(x, dim, "x")
        context = _check_context(context, context_dim)
        shift, log_scale = _shift_and_log_scale(params, context)
        return shift + jnp.exp(log_scale) * x, jnp.sum(log_scale)

    def inverse_and_log_det(params, y, context=None):
        y = _check_event(y, dim, "y")
        context = _check_context(context, context_dim)
        shift, log_scale = _shift_and_log_scale(params, context)
        return (y - shift) * jnp.exp(-log_scale), -jnp.sum(log_scale)

    return Bijector(init, forward_and_log_det, inverse_and_log_det, dim, context_dim, "conditional_affine")


def elementwise_affine(dim: int, *, log_scale_bound: float = 3.0) -> Bijector:
    """Unconditional elementwise affine ``y = μ + exp(log σ) ⊙ x`` (free parameters, identity at init)."""
    bij = conditional_affine(dim, 0, log_scale_bound=log_scale_bound)
    return bij._replace(name="elementwise_affine")


def sinh_arcsinh(dim: int, context_dim: int = 0, *, hidden: Sequence[int] = (64, 64),
                 log_tail_bound: float = 2.0, skew_bound: Optional[float] = None,
                 activation: Callable = linen.tanh) -> Bijector:
    """Elementwise monotone ``y = sinh(b · asinh(x) − a)``, ``(a, log b) = NN(c)``.

    ``log b = B tanh(log_b_raw / B)`` with ``B = log_tail_bound`` keeps ``b`` in
    ``(e^{−B}, e^{B})``; ``skew_bound`` A (optional) gives ``a = A tanh(a_raw / A)``.
    Zero-initialised last layer: ``a = 0, b = 1``, the identity.
    ``log|dy/dx| = log b + log cosh(b asinh x − a) − ½ log(1 + x²)``;
    inverse ``x = sinh((asinh y + a) / b)``.
    Reference: Jones & Pewsey, "Sinh-arcsinh distributions", Biometrika 2009.
    """
    dim = _check_dim(dim, "dim")
    context_dim = _check_dim(context_dim, "context_dim", minimum=0)
    bound = _check_positive_float(log_tail_bound, "log_tail_bound")
    if skew_bound is not None:
        skew_bound = _check_positive_float(skew_bound, "skew_bound")
    init, apply = _free_or_conditional(context_dim, 2 * dim, hidden, True, activation)

    def _params(params, context):
        out = apply(params, context)
        skew = out[:dim] if skew_bound is None else soft_clamp(out[:dim], skew_bound)
        return skew, soft_clamp(out[dim:], bound)

    def _log_cosh(w):
        a = jnp.abs(w)
        return a + jnp.log1p(jnp.exp(-2.0 * a)) - math.log(2.0)

    def _log_det(x, skew, log_b):
        w = jnp.exp(log_b) * jnp.arcsinh(x) - skew
        return jnp.sum(log_b + _log_cosh(w) - 0.5 * jnp.log1p(jnp.square(x)))

    def forward_and_log_det(params, x, context=None):
        x = _check_event(x, dim, "x")
        context = _check_context(context, context_dim)
        skew, log_b = _params(params, context)
        y = jnp.sinh(jnp.exp(log_b) * jnp.arcsinh(x) - skew)
        return y, _log_det(x, skew, log_b)

    def inverse_and_log_det(params, y, context=None):
        y = _check_event(y, dim, "y")
        context = _check_context(context, context_dim)
        skew, log_b = _params(params, context)
        x = jnp.sinh((jnp.arcsinh(y) + skew) * jnp.exp(-log_b))
        return x, -_log_det(x, skew, log_b)

    return Bijector(init, forward_and_log_det, inverse_and_log_det, dim, context_dim, "sinh_arcsinh")


def permute(permutation: Sequence[int]) -> Bijector:
    """``y = x[permutation]`` (a fixed permutation, ``log_det = 0``; no parameters)."""
    perm = np.asarray(permutation)
    if perm.ndim != 1 or perm.size == 0 or not np.issubdtype(perm.dtype, np.integer) \
            or sorted(perm.tolist()) != list(range(perm.size)):
        raise ValueError(f"permutation must be a permutation of 0..dim-1, got {permutation!r}")
    dim = int(perm.size)
    inv = np.argsort(perm)

    def init(key):
        del key
        return ()

    def forward_and_log_det(params, x, context=None):
        del params, context
        x = _check_event(x, dim, "x")
        return x[perm], jnp.zeros((), x.dtype)

    def inverse_and_log_det(params, y, context=None):
        del params, context
        y = _check_event(y, dim, "y")
        return y[inv], jnp.zeros((), y.dtype)

    return Bijector(init, forward_and_log_det, inverse_and_log_det, dim, 0, "permute")


def reverse(dim: int) -> Bijector:
    """Reverses the coordinates (the permutation ``dim-1, …, 0``)."""
    dim = _check_dim(dim, "dim")
    return permute(np.arange(dim)[::-1])._replace(name="reverse")


def tanh(dim: int, *, clip_eps: Optional[float] = None) -> Bijector:
    """``y = tanh(x)``, ``log|det| = Σ 2(log 2 − x − softplus(−2x))``.

    The inverse clips ``y`` to ``[−1 + ε, 1 − ε]`` before ``atanh`` (``ε = clip_eps``, by
    default ``tanh_clip_eps(dtype)``: 1e-6 in float32, 1e-12 in float64), so a boundary
    value (float32 ``tanh`` returns exactly ±1 for |x| ≳ 9) maps to a large finite ``x``
    instead of ±inf / NaN; ``tanh(atanh(clip(y)))`` reproduces ``y`` to within ε.
    """
    dim = _check_dim(dim, "dim")
    if clip_eps is not None:
        clip_eps = _check_positive_float(clip_eps, "clip_eps")

    def init(key):
        del key
        return ()

    def forward_and_log_det(params, x, context=None):
        del params, context
        x = _check_event(x, dim, "x")
        return jnp.tanh(x), jnp.sum(log1m_tanh_sq(x))

    def inverse_and_log_det(params, y, context=None):
        del params, context
        y = _check_event(y, dim, "y")
        x = jnp.arctanh(clip_to_open_unit(y, clip_eps))
        return x, -jnp.sum(log1m_tanh_sq(x))

    return Bijector(init, forward_and_log_det, inverse_and_log_det, dim, 0, "tanh")


def chain(bijectors: Sequence[Bijector]) -> Bijector:
    """Composition applied in list order: ``chain([f1, f2])(x) = f2(f1(x))``.

    ``params`` is a tuple with one entry per bijector; the context is passed to every
    member that takes one. ``log_det`` is the sum of the members'. An empty chain is
    not allowed (its event size would be unknown).
    """
    bijectors = tuple(bijectors)
    if not bijectors:
        raise ValueError("bijectors must hold at least one Bijector")
    for i, b in enumerate(bijectors):
        if not isinstance(b, Bijector):
            raise TypeError(f"bijectors[{i}] must be a Bijector, got {type(b).__name__}")
    dims = {b.dim for b in bijectors}
    if len(dims) != 1:
        raise ValueError(f"bijectors must share one event size, got {[b.dim for b in bijectors]}")
    ctx_dims = {b.context_dim for b in bijectors if b.context_dim > 0}
    if len(ctx_dims) > 1:
        raise ValueError(f"bijectors must share one context size, got {[b.context_dim for b in bijectors]}")
    dim = dims.pop()
    context_dim = ctx_dims.pop() if ctx_dims else 0

    def init(key):
        keys = jax.random.split(key, len(bijectors))
        return tuple(b.init(k) for b, k in zip(bijectors, keys))

    def _ctx(b, context):
        return context if b.context_dim > 0 else None

    def forward_and_log_det(params, x, context=None):
        x = _check_event(x, dim, "x")
        context = _check_context(context, context_dim)
        total = jnp.zeros((), x.dtype)
        for b, p in zip(bijectors, params):
            x, ld = b.forward_and_log_det(p, x, _ctx(b, context))
            total = total + ld
        return x, total

    def inverse_and_log_det(params, y, context=None):
        y = _check_event(y, dim, "y")
        context = _check_context(context, context_dim)
        total = jnp.zeros((), y.dtype)
        for b, p in zip(reversed(bijectors), reversed(tuple(params))):
            y, ld = b.inverse_and_log_det(p, y, _ctx(b, context))
            total = total + ld
        return y, total

    return Bijector(init, forward_and_log_det, inverse_and_log_det, dim, context_dim, "chain")


# --------------------------------------------------------------------------- densities

class FlowDensity(NamedTuple):
    """A conditional density ``x = f(ε; c)``, ``ε ~ N(0, I)`` (see ``transformed_normal``)."""

    init: Callable[[Any], Any]
    sample: Callable[[Any, Any, Any], Any]
    infer_noise: Callable[[Any, Any, Any], Any]
    log_prob: Callable[[Any, Any, Any], Any]
    dim: int
    context_dim: int
    sample_and_log_prob: Optional[Callable[[Any, Any, Any], Any]] = None


def transformed_normal(bijector: Bijector) -> FlowDensity:
    """Pushes a standard normal through ``bijector``: a reparameterised conditional density.

    ``sample(params, eps, context) = f(eps; c)``;
    ``infer_noise(params, x, context) = f⁻¹(x; c)`` (exact);
    ``log_prob(params, x, context) = log N(f⁻¹(x); 0, I) + log|det ∂f⁻¹/∂x|``;
    ``sample_and_log_prob(params, eps, context) = (f(eps; c), log N(eps) − log|det ∂f/∂eps|)``,
    the same density computed FORWARD from the noise: exact even where the inverse is not
    (a float32 ``tanh`` that rounded to ±1 loses the pre-squash value the inverse needs).
    With ``context = concat(s, a)`` this is a transition-noise model ``s' = f(ξ; s, a)``.
    """
    if not isinstance(bijector, Bijector):
        raise TypeError(f"bijector must be a Bijector, got {type(bijector).__name__}")

    def sample(params, eps, context=None):
        y, _ = bijector.forward_and_log_det(params, eps, context)
        return y

    def infer_noise(params, x, context=None):
        eps, _ = bijector.inverse_and_log_det(params, x, context)
        return eps

    def log_prob(params, x, context=None):
        eps, log_det_inv = bijector.inverse_and_log_det(params, x, context)
        return standard_normal_log_prob(eps) + log_det_inv

    def sample_and_log_prob(params, eps, context=None):
        y, log_det = bijector.forward_and_log_det(params, eps, context)
        return y, standard_normal_log_prob(eps) - log_det

    return FlowDensity(bijector.init, sample, infer_noise, log_prob, bijector.dim, bijector.context_dim,
                       sample_and_log_prob)


__all__ = [
    "Bijector", "FlowDensity", "TANH_CLIP_EPS", "tanh_clip_eps", "clip_to_open_unit",
    "affine_coupling", "conditional_affine", "elementwise_affine", "sinh_arcsinh",
    "permute", "reverse", "tanh", "chain", "transformed_normal",
    "soft_clamp", "soft_clip", "log1m_tanh_sq", "standard_normal_log_prob",
]
