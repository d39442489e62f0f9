"""Exploration noise for deterministic behaviour policies, as pure (scan-able) functions.

Ornstein–Uhlenbeck noise (Uhlenbeck & Ornstein 1930; used for exploration by DDPG,
Lillicrap et al. 2016) is the solution of dN = θ(μ − N) dt + σ dW. Its Euler–Maruyama
discretisation with step Δt is

    N_{t+1} = N_t + θ (μ − N_t) Δt + σ √Δt ε_t,        ε_t ~ N(0, I)            (docs/theory.md §5)

an AR(1) process N_{t+1} − μ = (1 − θΔt)(N_t − μ) + σ√Δt ε_t. For 0 < θΔt < 2 it is
stationary with mean μ and variance

    Var_Δt = σ² Δt / (1 − (1 − θΔt)²) = σ² / (θ (2 − θΔt))  →  σ² / (2θ)   as Δt → 0,

the stationary variance of the continuous process (``ou_stationary_variance``). The lag-k
autocorrelation is (1 − θΔt)^k ≈ exp(−θ k Δt).

    n = ou_init(shape, mu)                          # start at the mean
    n = ou_step(n, eps, theta=0.15, mu=0.0, sigma=0.2, dt=1e-2)
    n_T, path = ou_sequence(n, eps_seq, ...)        # lax.scan over eps_seq's leading axis

θ, μ, σ, Δt may be traced arrays (vmappable hyper-parameters); they broadcast against N.
``gaussian_noise`` is the uncorrelated alternative (TD3, FQI).
"""
from __future__ import annotations

from typing import Any, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from mbpo_grad.validation import is_concrete

__all__ = [
    "ou_init", "ou_step", "ou_sequence", "ou_sample", "ou_stationary_variance",
    "ou_discrete_stationary_variance", "gaussian_noise",
]


def _check_params(theta, sigma, dt):
    for name, v in (("theta", theta), ("sigma", sigma), ("dt", dt)):
        if is_concrete(v):
            arr = np.asarray(v)
            if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
                raise TypeError(f"{name} must be a real number, got dtype {arr.dtype}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} must be finite, got {arr}")
            if name == "sigma" and np.any(arr < 0):
                raise ValueError(f"sigma must be >= 0, got {arr}")
            if name in ("theta", "dt") and np.any(arr <= 0):
                raise ValueError(f"{name} must be > 0, got {arr}")
    if is_concrete(theta) and is_concrete(dt):
        prod = np.asarray(theta) * np.asarray(dt)
        if np.any(prod >= 2):
            raise ValueError(f"theta*dt must be < 2 for a stable (stationary) Euler–Maruyama scheme, got {prod}")


def ou_init(shape, mu: Any = 0.0, dtype=jnp.float32) -> jax.Array:
    """An OU state at its mean μ (broadcast to ``shape``)."""
    return jnp.broadcast_to(jnp.asarray(mu, dtype), tuple(shape)).astype(dtype)


def ou_step(noise: jax.Array, eps: jax.Array, *, theta: Any = 0.15, mu: Any = 0.0, sigma: Any = 0.2,
            dt: Any = 1e-2) -> jax.Array:
    """One Euler–Maruyama step N + θ(μ − N)Δt + σ√Δt ε (``eps`` standard normal, shaped like ``noise``)."""
    noise = jnp.asarray(noise)
    eps = jnp.asarray(eps, noise.dtype)
    if eps.shape != noise.shape:
        raise ValueError(f"eps must have the shape of noise {noise.shape}, got {eps.shape}")
    _check_params(theta, sigma, dt)
    dtype = noise.dtype
    theta, mu, sigma, dt = (jnp.asarray(x, dtype) for x in (theta, mu, sigma, dt))
    return noise + theta * (mu - noise) * dt + sigma * jnp.sqrt(dt) * eps


def ou_sequence(noise: jax.Array, eps: jax.Array, *, theta: Any = 0.15, mu: Any = 0.0, sigma: Any = 0.2,
                dt: Any = 1e-2) -> Tuple[jax.Array, jax.Array]:
    """Run ``ou_step`` over the leading axis of ``eps`` [T, *noise.shape] with ``lax.scan``.

    Returns (N_T, [N_1, …, N_T]) — the final state and the path (without N_0).
    """
    noise = jnp.asarray(noise)
    eps = jnp.asarray(eps, noise.dtype)
    if eps.ndim != noise.ndim + 1 or eps.shape[1:] != noise.shape:
        raise ValueError(f"eps must have shape [T, *{noise.shape}], got {eps.shape}")

    def body(n, e):
        n = ou_step(n, e, theta=theta, mu=mu, sigma=sigma, dt=dt)
        return n, n

    return jax.lax.scan(body, noise, eps)


def ou_sample(noise: jax.Array, key: jax.Array, **params) -> jax.Array:
    """``ou_step`` with ε drawn from ``key``."""
    noise = jnp.asarray(noise)
    return ou_step(noise, jax.random.normal(key, noise.shape, noise.dtype), **params)


def ou_stationary_variance(theta: Any, sigma: Any) -> jax.Array:
    """σ² / (2θ): the stationary variance of the continuous OU process."""
    return jnp.asarray(sigma) ** 2 / (2.0 * jnp.asarray(theta))


def ou_discrete_stationary_variance(theta: Any, sigma: Any, dt: Any) -> jax.Array:
    """σ² / (θ (2 − θΔt)): the stationary variance of the Euler–Maruyama chain (0 < θΔt < 2)."""
    theta = jnp.asarray(theta)
    return jnp.asarray(sigma) ** 2 / (theta * (2.0 - theta * jnp.asarray(dt)))


def gaussian_noise(key: jax.Array, shape, sigma: Any, clip: Any = None, dtype=jnp.float32) -> jax.Array:
    """σ ε, ε ~ N(0, I); with ``clip`` c, clipped to [−c, c] (TD3's target-policy smoothing)."""
    out = jnp.asarray(sigma, dtype) * jax.random.normal(key, tuple(shape), dtype)
    if clip is not None:
        c = jnp.asarray(clip, dtype)
        out = jnp.clip(out, -c, c)
    return out
