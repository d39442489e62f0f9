"""Kumaraswamy policy: bounded actions ``a = 2x − 1 ∈ (−1, 1)``, ``x ~ Kumaraswamy(α, β)``, no squash.

Per observation (batch with ``jax.vmap``)::

    pol = kumaraswamy_policy(obs_dim, act_dim)
    a   = pol.sample(params, obs, eps)        eps ~ N(0, I) of shape (act_dim,); eps=None → the median
    eps = pol.infer_noise(params, obs, a)     exact inverse (|ε| ≤ 12.7 in float32, ≤ 37.4 in float64)
    lp  = pol.log_prob(params, obs, a)        exact, summed over action dimensions
    a, lp = pol.sample_and_log_prob(params, obs, eps)   the same density forward from ε
    lr  = pol.log_ratio(params_old, params_new, obs, eps)   log π_new(a) − log π_old(a),
                                              a = sample(params_old, obs, eps), from ε (no inverse)
    pol.kl is None                            (no closed form, see below)

Why Kumaraswamy rather than a truncated normal: its CDF ``F(x) = 1 − (1 − x^α)^β`` inverts in
closed form, so sample, density and noise inference are a few ``log`` / ``expm1`` calls that
can be written entirely in log space and stay finite in float32 for every ε and every
parameter value. The truncated normal needs ``Φ⁻¹`` of tail masses, which underflow in float32
once [−1, 1] lies ~12 standard deviations from the mean (``distributions.truncated_normal``);
the price is that Kumaraswamy-to-Kumaraswamy KL has no closed form, so ``kl`` is None and
``trust_region.policy_kl`` uses its sampled estimate from ``log_ratio``.

The law (Kumaraswamy 1980; Nalisnick & Smyth 2017; docs/theory.md §3), per dimension:

    p(x) = α β x^{α−1} (1 − x^α)^{β−1},    F(x) = 1 − (1 − x^α)^β,    x ∈ (0, 1)
    a = 2x − 1,    log π(a|s) = Σ_i [log p(x_i) − log 2]          (the affine Jacobian dx/da = ½)

Reparameterisation from the agents' Gaussian noise: ``u = Φ(ε) ~ U(0, 1)`` and
``E = −log(1 − u) = −log Φ(−ε) ~ Exp(1)``; then ``x^α = 1 − exp(−E/β)`` (the inverse CDF
``x = (1 − (1 − u)^{1/β})^{1/α}``). Everything is computed from ``ℓ = log E`` and
``q = ℓ − log β = log(E/β)``:

    s = log x^α = log(1 − exp(−e^q)),    log(1 − x^α) = −e^q,    log x = s / α,
    log p(x) = log α + log β + (1 − 1/α) s + e^q − e^ℓ         ((β − 1) log(1 − x^α) = e^q − e^ℓ)

``ℓ`` comes from ``log_neg_log_ndtr(−ε)`` (accurate in relative terms for every ε, unlike
``log(−log_ndtr)`` whose value near 0 is rounded), and ``s`` from series expansions where
``e^q`` under- or overflows. These are ``distributions.kumaraswamy``'s formulas (the law the
tests check against) rewritten in log space: that module takes u and x themselves, and float32
cannot hold 1 − u below 6e-8, nor 1 − x^α where x^α is near 1. The action ``a`` itself rounds to ±1 where x is within float
resolution of 0 or 1; ``sample_and_log_prob`` and ``log_ratio`` never read ``a`` back, so they
stay exact there (the same design as ``gaussian``'s pre-squash density).

Parameterisation: the MLP outputs ``[r_α, r_m]`` (each of size act_dim);
``log α = soft_clip(r_α, log_alpha_min, log_alpha_max)`` and the MEDIAN ``x_m = sigmoid(z)``,
``z = soft_clip(r_m, −max_median_logit, max_median_logit)``; β is whatever puts F(x_m) = ½:

    log β = log log 2 − log(−log(1 − x_m^α)).

So ``r_m`` moves the location and ``r_α`` the concentration (std(log x) ≈ 1.28/α for large α);
with ``(log α, log β)`` as free outputs a concentrated policy away from x = 0 would need
log β ≈ α log(1/x_m), a coupling the network would have to learn. ``eps = None`` returns the
median action ``2 x_m − 1`` (= ``sample`` at ε = 0, as for ``gaussian`` / ``flow``). Densities
below about −e^{80} (float32) / −e^{700} (float64) are floored at that value instead of
overflowing to −inf (only reachable with parameters at their bounds far from the action).

Out-of-range actions: a concrete action outside [−1, 1] or non-finite raises ``ValueError``
naming ``action``; traced actions are clipped to ±(1 − ε), ε = 1e-6 (float32) / 1e-12
(float64), as for the squashed policies (``bijectors.clip_to_open_unit``).
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mbpo_grad.bijectors import clip_to_open_unit, log_neg_log_ndtr, ndtri_exp_neg_exp, soft_clip
from mbpo_grad.nn import mlp
from mbpo_grad.policies._squash import check_vector
from mbpo_grad.policies.base import Policy
from mbpo_grad.validation import check_int, is_concrete

_LN2 = math.log(2.0)
_LOG_LN2 = math.log(_LN2)      # log E at the median: E = ln 2 ⇔ u = ½
_SERIES = -20.0                # below this, log(1 − e^{−y}) and log(−log(1 − y)) use their series


def _tiny(x) -> float:
    return float(jnp.finfo(jnp.result_type(x)).tiny)


def _exp_cap(x) -> float:
    """The largest exponent whose exp (times a few) stays finite: 80 in float32, 700 in float64."""
    return math.log(float(jnp.finfo(jnp.result_type(x)).max)) - 8.0


# --------------------------------------------------------------------------- log-space helpers

def _log1mexp(s):
    """``log(1 − e^s)`` for s < 0 (Mächler 2012: expm1 near 0, log1p far from it); s ≤ −tiny."""
    s = jnp.minimum(s, -_tiny(s))
    near = jnp.maximum(s, -_LN2)
    far = jnp.minimum(s, -_LN2)
    return jnp.where(s > -_LN2, jnp.log(-jnp.expm1(near)), jnp.log1p(-jnp.exp(far)))


def _log_neg_log1mexp(s):
    """``log(−log(1 − e^s))`` for s < 0; for s < −20 the series ``s + e^s/2``."""
    deep = jnp.minimum(s, _SERIES)
    shallow = jnp.maximum(s, _SERIES)
    return jnp.where(s < _SERIES, deep + 0.5 * jnp.exp(deep), jnp.log(-_log1mexp(shallow)))


def _log1mexp_negexp(q):
    """``log(1 − exp(−e^q))`` (= log x^α at q = log(E/β)); for q < −20 the series ``q − e^q/2``.
    For q > 7 the value is 0 to every float precision."""
    deep = jnp.minimum(q, _SERIES)
    shallow = jnp.clip(q, _SERIES, 7.0)
    return jnp.where(q < _SERIES, deep - 0.5 * jnp.exp(deep), _log1mexp(-jnp.exp(shallow)))


def _log_density_x(log_alpha, log_beta, s, n):
    """log p(x) of Kumaraswamy(α, β) per dimension, at the point given by ``s = log x^α`` and
    ``n = log(−log(1 − x^α))``: ``log α + log β + (1 − 1/α) s + e^n − e^{log β + n}``
    (exponents capped, see the module docstring)."""
    cap = _exp_cap(s)
    return (log_alpha + log_beta + (1.0 - jnp.exp(-log_alpha)) * s
            + jnp.exp(jnp.minimum(n, cap)) - jnp.exp(jnp.minimum(log_beta + n, cap)))


def _log_x_of_action(action):
    """``log x = log((1 + a)/2)`` without cancellation on either side (a in the open interval)."""
    return jnp.where(action < 0.0, jnp.log(0.5 * (1.0 + action)), jnp.log1p(-0.5 * (1.0 - action)))


def _action_of_log_x(log_x):
    """``a = 2x − 1``, from 1 − x = −expm1(log x) where x > ½ (so 1 − a keeps its digits)."""
    x = jnp.exp(log_x)
    return jnp.where(x < 0.5, 2.0 * x - 1.0, 1.0 + 2.0 * jnp.expm1(log_x))


# --------------------------------------------------------------------------- parameters

def kumaraswamy_parameters(raw: jax.Array, log_alpha_min: float = -1.0, log_alpha_max: float = 4.0,
                           max_median_logit: float = 6.0):
    """``(log α, log β, z)`` per dimension from the MLP output ``raw = [r_α, r_m]`` (size 2·act_dim).

        log α = soft_clip(r_α, log_alpha_min, log_alpha_max),
        z = soft_clip(r_m, −max_median_logit, max_median_logit),   x_m = sigmoid(z) (the median),
        log β = log log 2 − log(−log(1 − x_m^α))                   (F(x_m) = ½)
    """
    act_dim = raw.shape[-1] // 2
    log_alpha = soft_clip(raw[..., :act_dim], log_alpha_min, log_alpha_max)
    z = soft_clip(raw[..., act_dim:], -max_median_logit, max_median_logit)
    log_x_m = -jax.nn.softplus(-z)
    log_beta = _LOG_LN2 - _log_neg_log1mexp(jnp.exp(log_alpha) * log_x_m)
    return log_alpha, log_beta, z


def _check_bound(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _check_action(action, act_dim):
    action = check_vector(action, act_dim, "action")
    if is_concrete(action):
        arr = np.asarray(action)
        if not np.all(np.isfinite(arr)) or np.any(np.abs(arr) > 1.0):
            raise ValueError(f"action must be finite and lie in [-1, 1] (the Kumaraswamy policy's range), got {arr}; "
                             "under jit such actions are clipped to ±(1 - eps), eps = 1e-6 (float32) / 1e-12 "
                             "(float64)")
    return action


# --------------------------------------------------------------------------- the bundle

def kumaraswamy_policy(obs_dim: int, act_dim: int, hidden: Sequence[int] = (64, 64), log_alpha_min: float = -1.0,
                       log_alpha_max: float = 4.0, max_median_logit: float = 6.0) -> Policy:
    """A bounded-action policy bundle ``a = 2x − 1``, ``x ~ Kumaraswamy(α(s), β(s))`` per dimension.

    Args:
      obs_dim, act_dim: observation and action sizes.
      hidden: MLP widths (``mbpo_grad.nn.mlp``, tanh activations); the MLP outputs
        ``[r_α, r_m]`` (``kumaraswamy_parameters``). ``params = {"net"}``.
      log_alpha_min, log_alpha_max: bounds of the smooth clip on log α (α < 1: mass piles up
        at the ends; large α: concentrated, std(a) ≈ 2.6 x_m / α).
      max_median_logit: bound of the smooth clip on the median's logit (median action within
        ±tanh(max_median_logit / 2); 6 → ±0.995).

    ``kl`` is None: Kumaraswamy distributions have no closed-form KL between each other.
    """
    obs_dim = check_int(obs_dim, "obs_dim")
    act_dim = check_int(act_dim, "act_dim")
    lo = _check_bound(log_alpha_min, "log_alpha_min")
    hi = _check_bound(log_alpha_max, "log_alpha_max")
    if not lo < hi <= lo + 20.0:    # log_ratio's near-one branch needs |log(α1/α0)| < 30
        raise ValueError(f"log_alpha_min must be < log_alpha_max <= log_alpha_min + 20, got {log_alpha_min} and "
                         f"{log_alpha_max}")
    zmax = _check_bound(max_median_logit, "max_median_logit")
    if not zmax > 0:
        raise ValueError(f"max_median_logit must be > 0, got {max_median_logit}")
    net = mlp(obs_dim, 2 * act_dim, hidden)

    def init(key):
        return {"net": net.init(key)}

    def head(params, obs):
        return kumaraswamy_parameters(net.apply(params["net"], obs), lo, hi, zmax)

    def forward(params, obs, eps):
        """(log α, log β, ℓ = log E, q = log(E/β), s = log x^α) from ε."""
        log_alpha, log_beta, _ = head(params, obs)
        ell = log_neg_log_ndtr(-eps)
        q = ell - log_beta
        return log_alpha, log_beta, ell, q, _log1mexp_negexp(q)

    def sample(params, obs, eps=None):
        obs = check_vector(obs, obs_dim, "obs")
        if eps is None:
            _, _, z = head(params, obs)
            return jax.nn.sigmoid(z) - jax.nn.sigmoid(-z)          # 2 x_m − 1
        eps = check_vector(eps, act_dim, "eps")
        log_alpha, _, _, _, s = forward(params, obs, eps)
        return _action_of_log_x(s * jnp.exp(-log_alpha))

    def sample_and_log_prob(params, obs, eps):
        obs = check_vector(obs, obs_dim, "obs")
        eps = check_vector(eps, act_dim, "eps")
        log_alpha, log_beta, _, q, s = forward(params, obs, eps)
        lp = jnp.sum(_log_density_x(log_alpha, log_beta, s, q)) - act_dim * _LN2
        return _action_of_log_x(s * jnp.exp(-log_alpha)), lp

    def _point(params, obs, action):
        """(log α, log β, s, n) at a given action (the inverse path)."""
        log_alpha, log_beta, _ = head(params, obs)
        s = jnp.exp(log_alpha) * _log_x_of_action(clip_to_open_unit(action))
        return log_alpha, log_beta, s, _log_neg_log1mexp(s)

    def log_prob(params, obs, action):
        obs = check_vector(obs, obs_dim, "obs")
        action = _check_action(action, act_dim)
        log_alpha, log_beta, s, n = _point(params, obs, action)
        return jnp.sum(_log_density_x(log_alpha, log_beta, s, n)) - act_dim * _LN2

    def infer_noise(params, obs, action):
        obs = check_vector(obs, obs_dim, "obs")
        action = _check_action(action, act_dim)
        _, log_beta, _, n = _point(params, obs, action)
        return -ndtri_exp_neg_exp(log_beta + n)                   # log E = log β + n, E = −log Φ(−ε)

    def log_ratio(params_old, params_new, obs, eps):
        """At x from the old parameters (s0 = log x^{α0}, log(1 − x^{α0}) = −e^{q0}), the new
        parameters see s1 = (α1/α0) s0 and n1 = log(−log(1 − x^{α1})): from s1, or, where x^{α0}
        is within e^{−30} of 1 (s1 may have underflowed), from 1 − x^{α1} = 1 − (1 − w)^{α1/α0},
        w = e^{−e^{q0}}: n1 = log(e^{q0} − log(α1/α0)) (error O(w))."""
        obs = check_vector(obs, obs_dim, "obs")
        eps = check_vector(eps, act_dim, "eps")
        la0, lb0, _, q0, s0 = forward(params_old, obs, eps)
        la1, lb1, _ = head(params_new, obs)
        s1 = jnp.exp(la1 - la0) * s0
        q0_near_one = jnp.maximum(q0, math.log(30.0))
        n1_near_one = jnp.log(jnp.exp(jnp.minimum(q0_near_one, _exp_cap(q0))) - (la1 - la0))
        n1 = jnp.where(q0 > math.log(30.0), n1_near_one, _log_neg_log1mexp(s1))
        return jnp.sum(_log_density_x(la1, lb1, s1, n1) - _log_density_x(la0, lb0, s0, q0))

    return Policy(init, sample, infer_noise, log_prob, (act_dim,), obs_dim, act_dim, "kumaraswamy",
                  sample_and_log_prob, None, log_ratio)


__all__ = ["kumaraswamy_policy", "kumaraswamy_parameters"]
