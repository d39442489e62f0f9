"""Exact expected return of a linear-Gaussian system under a linear-Gaussian policy (docs/theory.md §6).

    s_{t+1} = A s_t + B a_t + W ξ_t,     ξ_t ~ N(0, I)
    a_t     = −K s_t + σ ⊙ ε_t,          ε_t ~ N(0, I)
    r(s, a) = −(sᵀ Q s + aᵀ R a),        s_0 ~ N(m_0, S_0)

The second moment M_t = E[s_t s_tᵀ] propagates in closed form, because the
noises are zero-mean and independent of s_t:

    M_0     = S_0 + m_0 m_0ᵀ
    M_{t+1} = (A − BK) M_t (A − BK)ᵀ + B diag(σ²) Bᵀ + W Wᵀ
    E r_t   = −tr(Q M_t) − tr(R (K M_t Kᵀ + diag(σ²)))

so J_n(K) = Σ_{t<n} γ^t E r_t (− γ^n tr(P M_n) with a quadratic terminal cost
sᵀ P s). ``jax.grad`` of ``expected_return`` in float64 is the exact policy
gradient that pathwise (SVG(n)) and score-function estimators must reproduce
in expectation. The same system in the engine's form (``policy``, ``step``,
``reward``) lets ``mg.pathwise_objective`` sample it.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from mbpo_grad import validation as V


class LinearGaussianSystem(NamedTuple):
    """Matrices of s' = A s + B a + W ξ with reward −(sᵀQs + aᵀRa). Shapes [d,d], [d,m], [d,k], [d,d], [m,m]."""

    A: jax.Array
    B: jax.Array
    W: jax.Array
    Q: jax.Array
    R: jax.Array


def _check_system(system: LinearGaussianSystem) -> tuple[int, int]:
    if not isinstance(system, LinearGaussianSystem):
        raise TypeError(f"system must be a LinearGaussianSystem, got {type(system).__name__}")
    A, B, W, Q, R = (jnp.asarray(x) for x in system)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"system.A must be square [d, d], got shape {A.shape}")
    d = A.shape[0]
    if B.ndim != 2 or B.shape[0] != d:
        raise ValueError(f"system.B must have shape [d, m] = [{d}, m], got {B.shape}")
    m = B.shape[1]
    if W.ndim != 2 or W.shape[0] != d:
        raise ValueError(f"system.W must have shape [d, k] = [{d}, k], got {W.shape}")
    if Q.shape != (d, d):
        raise ValueError(f"system.Q must have shape [{d}, {d}], got {Q.shape}")
    if R.shape != (m, m):
        raise ValueError(f"system.R must have shape [{m}, {m}], got {R.shape}")
    return d, m


def policy(sigma):
    """The engine's ``policy(K, s, eps) = −K s + σ ε`` (ε None: the mean action)."""

    def pi(K, s, eps):
        mean = -K @ s
        if eps is None:
            return mean
        return mean + sigma * eps

    return pi


def log_prob(K, s, a, sigma) -> jax.Array:
    """log N(a; −K s, diag σ²), summed over action dimensions."""
    sigma = jnp.broadcast_to(jnp.asarray(sigma, dtype=jnp.result_type(a)), jnp.shape(a))
    z = (a + K @ s) / sigma
    return jnp.sum(-0.5 * z**2 - jnp.log(sigma) - 0.5 * jnp.log(2.0 * jnp.pi))


def step(system: LinearGaussianSystem):
    """The engine's ``step(s, a, ξ) = A s + B a + W ξ`` (ξ None: noise-free)."""
    _check_system(system)

    def f(s, a, xi):
        s_next = system.A @ s + system.B @ a
        if xi is None:
            return s_next
        return s_next + system.W @ xi

    return f


def reward(system: LinearGaussianSystem):
    """The engine's ``reward(s, a) = −(sᵀQs + aᵀRa)``."""
    _check_system(system)

    def r(s, a):
        return -(s @ system.Q @ s + a @ system.R @ a)

    return r


def expected_return(
    K: jax.Array,
    system: LinearGaussianSystem,
    *,
    sigma,
    m0: jax.Array,
    S0: jax.Array,
    horizon: int,
    gamma=1.0,
    terminal: Optional[jax.Array] = None,
) -> jax.Array:
    """J_n(K) = E[Σ_{t<n} γ^t r(s_t, a_t)] (− γ^n E[s_nᵀ P s_n] with ``terminal=P``), exactly.

    Args:
      K: gains [m, d] (differentiate with ``jax.grad``).
      system: the matrices (see ``LinearGaussianSystem``).
      sigma: policy noise scale, scalar or [m] (may be traced).
      m0, S0: mean [d] and covariance [d, d] of the start state.
      horizon: n >= 0 (static).
      gamma: discount (may be traced).
      terminal: optional [d, d] matrix P of a terminal cost sᵀ P s.
    """
    horizon = V.check_horizon(horizon)
    d, m = _check_system(system)
    if jnp.shape(K) != (m, d):
        raise ValueError(f"K must have shape [m, d] = [{m}, {d}], got {jnp.shape(K)}")
    if jnp.shape(m0) != (d,):
        raise ValueError(f"m0 must have shape [{d}], got {jnp.shape(m0)}")
    if jnp.shape(S0) != (d, d):
        raise ValueError(f"S0 must have shape [{d}, {d}], got {jnp.shape(S0)}")
    V.check_unit_interval(gamma, "gamma")
    A, B, W, Q, R = system
    dtype = jnp.result_type(K, A)
    sig2 = jnp.broadcast_to(jnp.asarray(sigma, dtype=dtype) ** 2, (m,))
    cov_a = jnp.diag(sig2)
    A_K = A - B @ K
    noise = B @ cov_a @ B.T + W @ W.T
    M0 = S0 + jnp.outer(m0, m0)
    gamma = jnp.asarray(gamma, dtype=dtype)

    def body(carry, _):
        M, disc, total = carry
        er = -jnp.trace(Q @ M) - jnp.trace(R @ (K @ M @ K.T + cov_a))
        total = total + disc * er
        M = A_K @ M @ A_K.T + noise
        return (M, disc * gamma, total), None

    (M_n, disc_n, total), _ = lax.scan(
        body, (M0.astype(dtype), jnp.ones((), dtype), jnp.zeros((), dtype)), None, length=horizon
    )
    if terminal is not None:
        total = total - disc_n * jnp.trace(jnp.asarray(terminal) @ M_n)
    return total


def value_functions(
    K: jax.Array,
    system: LinearGaussianSystem,
    *,
    sigma,
    horizon: int,
    gamma=1.0,
) -> tuple[jax.Array, jax.Array]:
    """Time-indexed state values V_t(s) = E[Σ_{t≤k<n} γ^{k−t} r_k | s_t = s] = −(sᵀ P_t s + c_t).

    Backward recursion with A_K = A − BK and N = B diag(σ²) Bᵀ + W Wᵀ:

        P_n = 0,  c_n = 0
        P_t = Q + KᵀRK + γ A_Kᵀ P_{t+1} A_K
        c_t = tr(R diag(σ²)) + γ (tr(P_{t+1} N) + c_{t+1})

    Returns (P [n+1, d, d], c [n+1]). ``V_t`` is the exact baseline for the
    score-function estimator; E_{s_0}[V_0(s_0)] = ``expected_return``.
    """
    horizon = V.check_horizon(horizon)
    d, m = _check_system(system)
    if jnp.shape(K) != (m, d):
        raise ValueError(f"K must have shape [m, d] = [{m}, {d}], got {jnp.shape(K)}")
    A, B, W, Q, R = system
    dtype = jnp.result_type(K, A)
    cov_a = jnp.diag(jnp.broadcast_to(jnp.asarray(sigma, dtype=dtype) ** 2, (m,)))
    A_K = A - B @ K
    noise = B @ cov_a @ B.T + W @ W.T
    gamma = jnp.asarray(gamma, dtype=dtype)
    Q_K = Q + K.T @ R @ K

    def body(carry, _):
        P, c = carry
        P_t = Q_K + gamma * A_K.T @ P @ A_K
        c_t = jnp.trace(R @ cov_a) + gamma * (jnp.trace(P @ noise) + c)
        return (P_t, c_t), (P_t, c_t)

    zero = (jnp.zeros((d, d), dtype), jnp.zeros((), dtype))
    _, (Ps, cs) = lax.scan(body, zero, None, length=horizon)
    # scan produced P_{n-1}, ..., P_0; reverse and append P_n = 0.
    Ps = jnp.concatenate([Ps[::-1], zero[0][None]], 0)
    cs = jnp.concatenate([cs[::-1], zero[1][None]], 0)
    return Ps, cs


def state_value(P_t: jax.Array, c_t: jax.Array, s: jax.Array) -> jax.Array:
    """V_t(s) = −(sᵀ P_t s + c_t) for one state (see ``value_functions``)."""
    return -(s @ P_t @ s + c_t)


def exact_gradient(K, system, **kw) -> jax.Array:
    """∇_K J_n(K): ``jax.grad`` of ``expected_return`` (use float64 for a reference)."""
    return jax.grad(expected_return)(K, system, **kw)
