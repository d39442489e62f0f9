"""Reparameterised distributions (docs/theory.md §3): ``x = g(noise; params)`` with exact densities.

Every constructor returns a ``Distribution`` bundle of pure functions over a ``params``
dict (a pytree, so ``jit`` / ``vmap`` / ``grad`` apply)::

    d = truncated_normal()
    u = d.noise(key, shape)                  the base noise (here U(0, 1))
    x = d.sample(params, u)                  differentiable in params
    u = d.infer_noise(params, x)             the noise that reproduces x (SVG on replayed data)
    lp = d.log_prob(params, x)               log density of x

| constructor        | params                              | noise        | event   |
|--------------------|-------------------------------------|--------------|---------|
| ``truncated_normal`` | loc, scale, low, high             | U(0, 1)      | scalar  |
| ``kumaraswamy``    | a, b (> 0)                          | U(0, 1)      | scalar  |
| ``gumbel_softmax`` | logits [..., K], temperature τ (> 0)| Gumbel(0, 1) | [K]     |
| ``diag_gaussian``  | loc [..., d], scale [..., d]        | N(0, I)      | [d]     |
| ``full_gaussian``  | loc [d], scale_tril [d, d] (Cholesky)| N(0, I)     | [d]     |

(``full_gaussian`` shares one ``loc`` / ``scale_tril`` across any leading axes of the noise.)

Scalar-event distributions act elementwise (parameters broadcast against the noise);
vector-event ones sum / reduce over the last axis. Parameter values are checked when they
are concrete (``ValueError`` naming e.g. ``params['scale']``); traced values pass.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln, log_ndtr, ndtr, ndtri

from mbpo_grad.validation import is_concrete

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class Distribution(NamedTuple):
    """A reparameterised distribution as pure functions (see module docstring)."""

    sample: Callable[[Any, Any], Any]
    log_prob: Callable[[Any, Any], Any]
    infer_noise: Callable[[Any, Any], Any]
    noise: Callable[..., Any]
    name: str
    event_ndims: int


# --------------------------------------------------------------------------- helpers

def _get(params: Mapping, keys, name: str):
    if not isinstance(params, Mapping):
        raise TypeError(f"params of {name} must be a dict with keys {list(keys)}, got {type(params).__name__}")
    missing = [k for k in keys if k not in params]
    if missing:
        raise ValueError(f"params of {name} is missing keys {missing}; expected {list(keys)}")
    return [jnp.asarray(params[k]) for k in keys]


def _check_positive(value, label: str) -> None:
    if is_concrete(value):
        arr = np.asarray(value)
        if not np.all(arr > 0):
            raise ValueError(f"{label} must be > 0, got {arr if arr.ndim else float(arr)}")


def _uniform_noise(key, shape=(), dtype=jnp.float32):
    """U(0, 1) noise that never hits 0 exactly (``minval`` = the smallest normal number)."""
    return jax.random.uniform(key, shape, dtype, minval=jnp.finfo(dtype).tiny, maxval=1.0)


def _normal_noise(key, shape=(), dtype=jnp.float32):
    return jax.random.normal(key, shape, dtype)


def _gumbel_noise(key, shape=(), dtype=jnp.float32):
    return jax.random.gumbel(key, shape, dtype)


def _float(x):
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


# --------------------------------------------------------------------------- truncated normal

def truncated_normal() -> Distribution:
    """N(loc, scale²) restricted to [low, high], by inverse-CDF reparameterisation.

    With ``α = (low − loc)/scale``, ``β = (high − loc)/scale``, ``Z = Φ(β) − Φ(α)``:

        x = loc + scale · Φ⁻¹(Φ(α) + u · Z),                 u ~ U(0, 1)
        log p(x) = log φ((x − loc)/scale) − log scale − log Z,   low ≤ x ≤ high (else −inf)

    For an interval in the upper tail (α > 0) the mirror image −x is computed instead, so
    Φ is always evaluated where it is accurate; ``log Z`` uses ``log_ndtr``. Infinite
    bounds are allowed (``low = -inf``: a one-sided truncation). In float32 intervals
    beyond about 12 standard deviations from ``loc`` underflow Φ.
    Reference: docs/theory.md §3; Burkardt, "The truncated normal distribution", 2014.
    """
    keys = ("loc", "scale", "low", "high")

    def _standardised(params):
        loc, scale, low, high = _get(params, keys, "truncated_normal")
        _check_positive(scale, "params['scale']")
        if is_concrete(low) and is_concrete(high) and not np.all(np.asarray(low) < np.asarray(high)):
            raise ValueError(f"params['low'] must be < params['high'], got {np.asarray(low)} and {np.asarray(high)}")
        alpha = (low - loc) / scale
        beta = (high - loc) / scale
        flip = alpha > 0
        # Mirror the interval into the lower half-line when it lies in the upper tail.
        a_ = jnp.where(flip, -beta, alpha)
        b_ = jnp.where(flip, -alpha, beta)
        return loc, scale, alpha, beta, flip, a_, b_

    def sample(params, u):
        loc, scale, alpha, beta, flip, a_, b_ = _standardised(params)
        u = _float(u)
        u_ = jnp.where(flip, 1.0 - u, u)
        cdf_a = ndtr(a_)
        z_ = ndtri(cdf_a + u_ * (ndtr(b_) - cdf_a))
        z = jnp.clip(jnp.where(flip, -z_, z_), alpha, beta)
        return loc + scale * z

    def _log_normaliser(a_, b_):
        log_cdf_b = log_ndtr(b_)
        return log_cdf_b + jnp.log1p(-jnp.exp(log_ndtr(a_) - log_cdf_b))

    def log_prob(params, x):
        loc, scale, alpha, beta, flip, a_, b_ = _standardised(params)
        x = _float(x)
        z = (x - loc) / scale
        lp = -0.5 * z * z - _HALF_LOG_2PI - jnp.log(scale) - _log_normaliser(a_, b_)
        inside = (z >= alpha) & (z <= beta)
        return jnp.where(inside, lp, -jnp.inf)

    def infer_noise(params, x):
        loc, scale, alpha, beta, flip, a_, b_ = _standardised(params)
        z = (_float(x) - loc) / scale
        z_ = jnp.where(flip, -z, z)
        cdf_a = ndtr(a_)
        u_ = (ndtr(z_) - cdf_a) / (ndtr(b_) - cdf_a)
        return jnp.clip(jnp.where(flip, 1.0 - u_, u_), 0.0, 1.0)

    return Distribution(sample, log_prob, infer_noise, _uniform_noise, "truncated_normal", 0)


# --------------------------------------------------------------------------- Kumaraswamy

def kumaraswamy() -> Distribution:
    """Kumaraswamy(a, b) on [0, 1]: density ``a b x^{a−1} (1 − x^a)^{b−1}``.

    CDF ``F(x) = 1 − (1 − x^a)^b``, so the inverse-CDF reparameterisation is

        x = (1 − (1 − u)^{1/b})^{1/a},        u ~ U(0, 1)

    (increasing in u). The chapter prints ``x = 1 − (1 − u^a)^{1/b}``, which is not the
    inverse of this CDF (its density differs from the one it states); this module follows
    the CDF. Computed in log space: ``(1 − u)^{1/b} = exp(log1p(−u)/b)``, ``1 − e^t = −expm1(t)``.
    Reference: Kumaraswamy, J. Hydrology 1980; Nalisnick & Smyth, ICLR 2017.
    """
    keys = ("a", "b")

    def _ab(params):
        a, b = _get(params, keys, "kumaraswamy")
        _check_positive(a, "params['a']")
        _check_positive(b, "params['b']")
        return a, b

    def sample(params, u):
        a, b = _ab(params)
        u = _float(u)
        x_pow_a = -jnp.expm1(jnp.log1p(-u) / b)             # x^a = 1 − (1 − u)^{1/b}
        return jnp.exp(jnp.log(x_pow_a) / a)

    def log_prob(params, x):
        a, b = _ab(params)
        x = _float(x)
        inside = (x > 0) & (x < 1)
        xs = jnp.where(inside, x, 0.5)
        log_x = jnp.log(xs)
        lp = jnp.log(a) + jnp.log(b) + (a - 1.0) * log_x + (b - 1.0) * jnp.log1p(-jnp.exp(a * log_x))
        return jnp.where(inside, lp, -jnp.inf)

    def infer_noise(params, x):
        a, b = _ab(params)
        x = _float(x)
        return -jnp.expm1(b * jnp.log1p(-jnp.power(x, a)))   # u = F(x) = 1 − (1 − x^a)^b

    return Distribution(sample, log_prob, infer_noise, _uniform_noise, "kumaraswamy", 0)


# --------------------------------------------------------------------------- Gumbel-softmax

def gumbel_softmax() -> Distribution:
    """Gumbel-softmax / Concrete(logits, τ) on the simplex, event = the last axis (size K).

        x = softmax((logits + g) / τ),        g_k ~ Gumbel(0, 1) iid

    Density (Maddison, Mnih & Teh, "The Concrete distribution", ICLR 2017), with respect
    to Lebesgue measure on the first K − 1 coordinates (x_K = 1 − Σ_{k<K} x_k):

        log p(x) = log (K−1)! + (K−1) log τ + Σ_k (l_k − (τ+1) log x_k) − K logsumexp_k(l_k − τ log x_k)

    As τ → 0 samples approach one-hot draws of Categorical(softmax(logits)) (the Gumbel-max
    trick). ``infer_noise`` returns ``g = τ log x − logits``: the Gumbel noise is fixed by x
    only up to an additive constant shared by all k, which changes neither the sample nor
    its gradient, so this representative replays x exactly.
    """
    keys = ("logits", "temperature")

    def _lt(params):
        logits, tau = _get(params, keys, "gumbel_softmax")
        if logits.ndim < 1 or logits.shape[-1] < 2:
            raise ValueError(f"params['logits'] must have a last axis of size K >= 2, got shape {logits.shape}")
        _check_positive(tau, "params['temperature']")
        return _float(logits), tau

    def sample(params, g):
        logits, tau = _lt(params)
        return jax.nn.softmax((logits + _float(g)) / jnp.expand_dims(tau, -1), axis=-1)

    def log_prob(params, x):
        logits, tau = _lt(params)
        x = _float(x)
        k = x.shape[-1]
        if logits.shape[-1] != k:
            raise ValueError(f"x must have a last axis of size K = {logits.shape[-1]}, got shape {x.shape}")
        log_x = jnp.log(x)
        tau_e = jnp.expand_dims(tau, -1)
        return (gammaln(float(k)) + (k - 1) * jnp.log(tau)
                + jnp.sum(logits - (tau_e + 1.0) * log_x, axis=-1)
                - k * jax.nn.logsumexp(logits - tau_e * log_x, axis=-1))

    def infer_noise(params, x):
        logits, tau = _lt(params)
        return jnp.expand_dims(tau, -1) * jnp.log(_float(x)) - logits

    return Distribution(sample, log_prob, infer_noise, _gumbel_noise, "gumbel_softmax", 1)


# --------------------------------------------------------------------------- Gaussians

def diag_gaussian() -> Distribution:
    """N(loc, diag(scale²)), event = the last axis: ``x = loc + scale ⊙ ε``."""
    keys = ("loc", "scale")

    def _ls(params):
        loc, scale = _get(params, keys, "diag_gaussian")
        _check_positive(scale, "params['scale']")
        return _float(loc), scale

    def sample(params, eps):
        loc, scale = _ls(params)
        return loc + scale * _float(eps)

    def infer_noise(params, x):
        loc, scale = _ls(params)
        return (_float(x) - loc) / scale

    def log_prob(params, x):
        loc, scale = _ls(params)
        z = (_float(x) - loc) / scale
        return jnp.sum(-0.5 * z * z - _HALF_LOG_2PI - jnp.log(scale) * jnp.ones_like(z), axis=-1)

    return Distribution(sample, log_prob, infer_noise, _normal_noise, "diag_gaussian", 1)


def full_gaussian() -> Distribution:
    """N(loc, L Lᵀ) with a Cholesky factor ``L = params['scale_tril']``; ``eps`` / ``x`` may carry
    leading batch axes (``loc`` [d] and ``L`` [d, d] are shared).

        x = loc + L ε,    log p(x) = −½ ‖L⁻¹(x − loc)‖² − Σ_i log L_ii − (d/2) log 2π

    Only the lower triangle of ``scale_tril`` is read; its diagonal must be positive.
    ``full_gaussian_params(loc, covariance)`` builds the params from a covariance.
    """
    keys = ("loc", "scale_tril")

    def _ll(params):
        loc, tril = _get(params, keys, "full_gaussian")
        d = loc.shape[-1] if loc.ndim else None
        if loc.ndim != 1 or tril.shape != (d, d):
            raise ValueError(
                f"params['loc'] must have shape (d,) and params['scale_tril'] (d, d); got {loc.shape} and {tril.shape}"
            )
        tril = jnp.tril(_float(tril))
        if is_concrete(tril):
            _check_positive(jnp.diagonal(tril), "the diagonal of params['scale_tril']")
        return _float(loc), tril

    def sample(params, eps):
        loc, tril = _ll(params)
        return loc + _float(eps) @ tril.T

    def _whiten(tril, centred):  # L⁻¹ (x − loc), broadcast over leading axes of x
        solve = jnp.vectorize(lambda r: jax.scipy.linalg.solve_triangular(tril, r, lower=True),
                              signature="(d)->(d)")
        return solve(centred)

    def infer_noise(params, x):
        loc, tril = _ll(params)
        return _whiten(tril, _float(x) - loc)

    def log_prob(params, x):
        loc, tril = _ll(params)
        z = _whiten(tril, _float(x) - loc)
        diag = jnp.diagonal(tril)
        return -0.5 * jnp.sum(z * z, axis=-1) - jnp.sum(jnp.log(diag)) - loc.shape[0] * _HALF_LOG_2PI

    return Distribution(sample, log_prob, infer_noise, _normal_noise, "full_gaussian", 1)


def full_gaussian_params(loc, covariance) -> dict:
    """``{"loc": loc, "scale_tril": cholesky(covariance)}``; ValueError if not positive definite."""
    loc = _float(loc)
    covariance = _float(covariance)
    tril = jnp.linalg.cholesky(covariance)
    if is_concrete(tril) and not np.all(np.isfinite(np.asarray(tril))):
        raise ValueError("covariance must be symmetric positive definite (its Cholesky factorisation failed)")
    return {"loc": loc, "scale_tril": tril}


__all__ = [
    "Distribution", "truncated_normal", "kumaraswamy", "gumbel_softmax",
    "diag_gaussian", "full_gaussian", "full_gaussian_params",
]
