"""Tanh-squashed Gaussian policy: ``a = tanh(μ_w(obs) + σ_w(obs) ⊙ ε)``, ``ε ~ N(0, I)``.

The SAC / SVG actor (theory §1, §4, §5). Per observation (batch with ``jax.vmap``)::

    pol = gaussian(obs_dim, act_dim)
    params = pol.init(key)
    a   = pol.sample(params, obs, eps)        eps=None → the mode tanh(μ)
    eps = pol.infer_noise(params, obs, a)     ε = (atanh(a) − μ) / σ     (exact inverse)
    lp  = pol.log_prob(params, obs, a)        exact, summed over action dimensions
    a, lp = pol.sample_and_log_prob(params, obs, eps)   the same density from u = μ + σ ε
                                              (no atanh: exact where float32 tanh saturates)

With ``u = atanh(a)``, ``ε = (u − μ)/σ``, the change of variables through the affine map
and the squash gives

    log π(a|s) = Σ_i [ log N(ε_i; 0, 1) − log σ_i − log(1 − tanh²(u_i)) ],
    log(1 − tanh²(u)) = 2 (log 2 − u − softplus(−2u))      (stable for large |u|).

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


def _check_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a Python int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


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

    pol = Policy(init, sample, infer_noise, log_prob, (act_dim,), obs_dim, act_dim, "gaussian",
                 sample_and_log_prob)
    return pol


__all__ = ["gaussian"]
