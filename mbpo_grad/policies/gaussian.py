"""Tanh-squashed Gaussian policy: ``a = tanh(μ_w(obs) + σ_w(obs) ⊙ ε)``, ``ε ~ N(0, I)``.

The SAC / SVG actor (docs/theory.md §1, §4, §5). Per observation (batch with ``jax.vmap``)::

    pol = gaussian(obs_dim, act_dim)
    params = pol.init(key)
    a   = pol.sample(params, obs, eps)        eps=None → the mode tanh(μ)
    eps = pol.infer_noise(params, obs, a)     ε = (atanh(a) − μ) / σ     (exact inverse)
    lp  = pol.log_prob(params, obs, a)        exact, summed over action dimensions
    a, lp = pol.sample_and_log_prob(params, obs, eps)   the same density from u = μ + σ ε
                                              (no atanh: exact where float32 tanh saturates)
    kl  = pol.kl(params_old, params_new, obs)          closed-form KL(π_old ‖ π_new) at obs
    lr  = pol.log_ratio(params_old, params_new, obs, eps)   log π_new(a) − log π_old(a) at
                                              a = sample(params_old, obs, eps), pre-squash

With ``u = atanh(a)``, ``ε = (u − μ)/σ``, the change of variables through the affine map
and the squash gives

    log π(a|s) = Σ_i [ log N(ε_i; 0, 1) − log σ_i − log(1 − tanh²(u_i)) ],
    log(1 − tanh²(u)) = 2 (log 2 − u − softplus(−2u))      (stable for large |u|).

KL: tanh is a bijection shared by both policies, and KL is invariant under a shared
bijection of the variable, so KL(π_old ‖ π_new) at a state is the closed form between the
pre-squash diagonal Gaussians (``diag_gaussian_kl``); the same cancellation of the squash
Jacobian lets ``log_ratio`` work with ``u = μ_old + σ_old ε`` and never take ``atanh``.

Log standard deviation: ``log σ = soft_clip(raw, log_std_min, log_std_max)``, a smooth
clip (≈ identity inside the interval, never outside it) so gradients never vanish at a
hard bound. Out-of-range actions: see ``mbpo_grad.policies._squash`` (concrete actions
outside [−1, 1] raise; traced ones are clipped to ±(1 − ε), ε = 1e-6 in float32 and
1e-12 in float64; never NaN).
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp

from mbpo_grad.bijectors import clip_to_open_unit, log1m_tanh_sq, soft_clip, standard_normal_log_prob
from mbpo_grad.nn import mlp
from mbpo_grad.policies._squash import check_action, check_vector
from mbpo_grad.policies.base import Policy
from mbpo_grad.validation import check_int


def _check_int(value, name, minimum=1):
    return check_int(value, name, minimum=minimum)


def diag_gaussian_kl(mu0, log_std0, mu1, log_std1):
    """KL(N(μ0, diag σ0²) ‖ N(μ1, diag σ1²)), summed over the last axis:

        Σ_i [ log σ1_i − log σ0_i + (σ0_i² + (μ0_i − μ1_i)²) / (2 σ1_i²) − ½ ]

    (written with ``exp(2 (log σ0 − log σ1))`` so that no variance overflows or underflows).
    """
    d = log_std0 - log_std1
    return jnp.sum(-d + 0.5 * (jnp.exp(2.0 * d) + jnp.square((mu0 - mu1) * jnp.exp(-log_std1))) - 0.5, axis=-1)


def gaussian(obs_dim: int, act_dim: int, hidden: Sequence[int] = (64, 64), log_std_min: float = -5.0,
             log_std_max: float = 2.0, state_dependent_std: bool = True) -> Policy:
    """A tanh-squashed Gaussian policy bundle.

    Args:
      obs_dim, act_dim: observation and action sizes.
      hidden: MLP widths (``mbpo_grad.nn.mlp``, tanh activations).
      log_std_min, log_std_max: bounds of the smooth clip on log σ.
      state_dependent_std: True: one MLP outputs ``[μ, log σ_raw]`` (``params = {"net"}``).
        False: the MLP outputs μ and ``log σ_raw`` is a free vector initialised at 0
        (``params = {"net", "log_std"}``).
    """
    obs_dim = _check_int(obs_dim, "obs_dim")
    act_dim = _check_int(act_dim, "act_dim")
    lo, hi = float(log_std_min), float(log_std_max)
    if not lo < hi:
        raise ValueError(f"log_std_min must be < log_std_max, got {log_std_min} and {log_std_max}")
    net = mlp(obs_dim, 2 * act_dim if state_dependent_std else act_dim, hidden)

    def init(key):
        params = {"net": net.init(key)}
        if not state_dependent_std:
            params["log_std"] = jnp.zeros((act_dim,))
        return params

    def mean_and_log_std(params, obs):
        out = net.apply(params["net"], obs)
        if state_dependent_std:
            mu, raw = out[:act_dim], out[act_dim:]
        else:
            mu, raw = out, params["log_std"]
        return mu, soft_clip(raw, lo, hi)

    def sample(params, obs, eps=None):
        obs = check_vector(obs, obs_dim, "obs")
        mu, log_std = mean_and_log_std(params, obs)
        if eps is None:
            return jnp.tanh(mu)
        eps = check_vector(eps, act_dim, "eps")
        return jnp.tanh(mu + jnp.exp(log_std) * eps)

    def _pre_squash(action):
        return jnp.arctanh(clip_to_open_unit(action))

    def infer_noise(params, obs, action):
        obs = check_vector(obs, obs_dim, "obs")
        action = check_action(action, act_dim)
        mu, log_std = mean_and_log_std(params, obs)
        return (_pre_squash(action) - mu) * jnp.exp(-log_std)

    def log_prob(params, obs, action):
        obs = check_vector(obs, obs_dim, "obs")
        action = check_action(action, act_dim)
        mu, log_std = mean_and_log_std(params, obs)
        u = _pre_squash(action)
        eps = (u - mu) * jnp.exp(-log_std)
        return standard_normal_log_prob(eps) - jnp.sum(log_std) - jnp.sum(log1m_tanh_sq(u))

    def sample_and_log_prob(params, obs, eps):
        obs = check_vector(obs, obs_dim, "obs")
        eps = check_vector(eps, act_dim, "eps")
        mu, log_std = mean_and_log_std(params, obs)
        u = mu + jnp.exp(log_std) * eps
        return jnp.tanh(u), standard_normal_log_prob(eps) - jnp.sum(log_std) - jnp.sum(log1m_tanh_sq(u))

    def kl(params_old, params_new, obs):
        obs = check_vector(obs, obs_dim, "obs")
        return diag_gaussian_kl(*mean_and_log_std(params_old, obs), *mean_and_log_std(params_new, obs))

    def log_ratio(params_old, params_new, obs, eps):
        obs = check_vector(obs, obs_dim, "obs")
        eps = check_vector(eps, act_dim, "eps")
        mu0, log_std0 = mean_and_log_std(params_old, obs)
        mu1, log_std1 = mean_and_log_std(params_new, obs)
        eps1 = (mu0 + jnp.exp(log_std0) * eps - mu1) * jnp.exp(-log_std1)
        return (standard_normal_log_prob(eps1) - jnp.sum(log_std1)) - (standard_normal_log_prob(eps) - jnp.sum(log_std0))

    pol = Policy(init, sample, infer_noise, log_prob, (act_dim,), obs_dim, act_dim, "gaussian",
                 sample_and_log_prob, kl, log_ratio)
    return pol


__all__ = ["gaussian", "diag_gaussian_kl"]
