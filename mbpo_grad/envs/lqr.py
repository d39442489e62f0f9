"""Linear-quadratic regulator: a differentiable system with exact returns and gradients.

Dynamics, reward and observation (one state, no batch axis):

    s' = A s + B a + noise_scale · ξ,      ξ ~ N(0, I_d)  (noise_shape (d,) when noise_scale ≠ 0)
    r(s, a) = −(sᵀ Q s + aᵀ R a)
    observe(s) = s

Unlike every other environment in ``envs/``, LQR actions are NOT squashed to
[−1, 1]: a linear policy a = −K s acts on the raw control, otherwise the closed
forms below would not hold. Pair it with an unsquashed (linear) policy.

Exact references (docs/theory.md §6). For the linear policy a = −K s the closed loop is
s_{t+1} = L s_t with L = A − B K and the per-step cost is s_tᵀ M s_t with
M = Q + Kᵀ R K. The discounted cost-to-go from step t is s_tᵀ P_t s_t with the
backward (Lyapunov) recursion

    P_n = P_terminal (0 when absent),     P_t = M + γ Lᵀ P_{t+1} L,

so over start states with empirical second moment Σ_0 = (1/N) Σ_i s_0^i s_0^iᵀ

    J_n(K) = −tr(P_0 Σ_0)
           = −mean_i [ Σ_{t<n} γ^t s_tᵀ M s_t + γ^n s_nᵀ P_terminal s_n ].

Perturbing K (dL = −B dK, dM = dKᵀ R K + Kᵀ R dK) and unrolling the recursion
gives dP_0 = Σ_t γ^t (L^t)ᵀ (dKᵀ G_t + G_tᵀ dK) L^t, hence

    ∇_K cost = 2 Σ_{t<n} γ^t G_t Σ_t,     G_t = (R + γ Bᵀ P_{t+1} B) K − γ Bᵀ P_{t+1} A,
    Σ_t = L^t Σ_0 (L^t)ᵀ,

and ∇_K J_n = −∇_K cost. The infinite discounted horizon replaces the sums by the
fixed points P = M + γ Lᵀ P L and Σ = Σ_0 + γ L Σ Lᵀ (Fazel et al. 2018, "Global
convergence of policy gradient methods for the linear quadratic regulator",
state the undiscounted case). These are computed here without autodiff, so they
are an independent check of ``mbpo_grad.pathwise_objective``.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from mbpo_grad.envs.base import Env
from mbpo_grad.validation import check_horizon


class LQRSystem(NamedTuple):
    """The matrices of an LQR (``env.info`` of an LQR env)."""

    A: jax.Array  # [d, d]
    B: jax.Array  # [d, m]
    Q: jax.Array  # [d, d], symmetric PSD
    R: jax.Array  # [m, m], symmetric PD
    noise_scale: Any = 0.0
    init_scale: Any = 1.0


@functools.partial(jax.jit, static_argnames=("state_dim", "action_dim"))
def random_system(key: jax.Array, state_dim: int, action_dim: int, *, spectral_norm: float = 0.9) -> LQRSystem:
    """A random open-loop-stable LQR with well-conditioned random costs.

    A = spectral_norm · G / ‖G‖₂ for Gaussian G, so ‖A‖₂ = spectral_norm and the
    spectral radius is at most that (norm rather than eigenvalues: ``eigvals``
    runs only on CPU). B is Gaussian / √d. Q = I + W Wᵀ / d and R = I + V Vᵀ / m
    are symmetric positive definite.
    """
    if int(state_dim) < 1 or int(action_dim) < 1:
        raise ValueError(f"state_dim and action_dim must be >= 1, got {state_dim}, {action_dim}")
    dtype = jnp.result_type(float)
    d, m = state_dim, action_dim
    z = jax.random.normal(key, (2 * d * d + d * m + m * m,), dtype)  # one draw: one cheap compile
    g, z = z[: d * d].reshape(d, d), z[d * d:]
    b, z = z[: d * m].reshape(d, m), z[d * m:]
    w, v = z[: d * d].reshape(d, d), z[d * d:].reshape(m, m)
    A = spectral_norm * g / jnp.linalg.norm(g, ord=2)
    B = b / jnp.sqrt(jnp.asarray(d, dtype))
    Q = jnp.eye(d, dtype=dtype) + w @ w.T / d
    R = jnp.eye(m, dtype=dtype) + v @ v.T / m
    return LQRSystem(A, B, Q, R)


def _check_matrix(x, name, shape):
    if tuple(jnp.shape(x)) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(jnp.shape(x))}")


def make(
    A=None,
    B=None,
    Q=None,
    R=None,
    *,
    episode_length: int = 50,
    key: Optional[jax.Array] = None,
    seed: int = 0,
    state_dim: int = 2,
    action_dim: int = 1,
    noise_scale: float = 0.0,
    init_scale: float = 1.0,
) -> Env:
    """An LQR ``Env``: s' = A s + B a + noise_scale · ξ, r = −(sᵀQs + aᵀRa), observe = identity.

    With ``A`` and ``B`` both None a system is drawn by ``random_system`` from
    ``key`` (or ``PRNGKey(seed)``) with the given dimensions; its random Q and R
    are used unless ``Q``/``R`` are given. Otherwise Q and R default to the
    identity. Actions are unbounded (not squashed to [−1, 1]). ``reset`` draws
    s_0 ~ N(0, init_scale² I). ``env.info`` is the ``LQRSystem``.
    """
    dtype = jnp.result_type(float)
    if (A is None) != (B is None):
        raise ValueError("A and B must be given together (or both None for a random system)")
    if A is None:
        if key is None:
            key = jax.random.PRNGKey(seed)
        sys = random_system(key, state_dim, action_dim)
        A, B = sys.A, sys.B
        Q = sys.Q if Q is None else Q
        R = sys.R if R is None else R
    A = jnp.asarray(A, dtype)
    B = jnp.asarray(B, dtype)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be a square matrix [d, d], got shape {A.shape}")
    d = A.shape[0]
    if B.ndim != 2 or B.shape[0] != d:
        raise ValueError(f"B must have shape [d, m] = [{d}, m], got {B.shape}")
    m = B.shape[1]
    Q = jnp.eye(d, dtype=dtype) if Q is None else jnp.asarray(Q, dtype)
    R = jnp.eye(m, dtype=dtype) if R is None else jnp.asarray(R, dtype)
    _check_matrix(Q, "Q", (d, d))
    _check_matrix(R, "R", (m, m))
    check_horizon(episode_length, "episode_length")
    system = LQRSystem(A, B, Q, R, noise_scale, init_scale)

    def reset(key):
        return init_scale * jax.random.normal(key, (d,), dtype)

    def step(state, action, xi=None):
        nxt = A @ state + B @ action
        if xi is not None and noise_scale != 0:
            nxt = nxt + noise_scale * xi
        return nxt

    def reward(state, action):
        return -(state @ Q @ state + action @ R @ action)

    def observe(state):
        return state

    noise_shape = (d,) if noise_scale != 0 else ()
    return Env("lqr", d, m, episode_length, reset, step, reward, observe, None, noise_shape, system)


# ---------------------------------------------------------------------------------------------
# Exact references for a linear policy a = −K s (docs/theory.md §6). No autodiff, no Python time loops.
# ---------------------------------------------------------------------------------------------

def _closed_loop(A, B, Q, R, K):
    L = A - B @ K
    M = Q + K.T @ R @ K
    return L, M


def second_moment(S0: jax.Array) -> jax.Array:
    """Σ_0 = (1/N) Σ_i s_iᵀ s_i over the rows of ``S0`` [N, d] (a single state [d] is N = 1)."""
    S0 = jnp.atleast_2d(S0)
    return S0.T @ S0 / S0.shape[0]


@functools.partial(jax.jit, static_argnames=("horizon",))
def finite_horizon_cost_matrices(A, B, Q, R, K, horizon: int, gamma=1.0, P_terminal=None) -> jax.Array:
    """P_0..P_n, shape [n+1, d, d]: P_n = P_terminal (or 0), P_t = Q + KᵀRK + γ Lᵀ P_{t+1} L, L = A − BK.

    s_tᵀ P_t s_t is the discounted cost from step t to the horizon under a = −K s.
    """
    horizon = check_horizon(horizon)
    L, M = _closed_loop(A, B, Q, R, K)
    gamma = jnp.asarray(gamma, M.dtype)
    P_n = jnp.zeros_like(M) if P_terminal is None else jnp.asarray(P_terminal, M.dtype)

    def body(P_next, _):
        P = M + gamma * (L.T @ P_next @ L)
        return P, P

    _, Ps = lax.scan(body, P_n, None, length=horizon, reverse=True)  # Ps[t] = P_t, t < n
    return jnp.concatenate([Ps, P_n[None]], axis=0)


@functools.partial(jax.jit, static_argnames=("horizon",))
def closed_form_return(A, B, Q, R, K, S0, horizon: int, gamma=1.0, P_terminal=None) -> jax.Array:
    """J_n(K) = −tr(P_0 Σ_0): the mean over rows of S0 of −Σ_{t<n} γ^t s_tᵀ(Q+KᵀRK)s_t − γ^n s_nᵀ P_terminal s_n.

    Equals ``pathwise_objective`` with policy a = −K s and ``bootstrap = −sᵀ P_terminal s``.
    """
    Ps = finite_horizon_cost_matrices(A, B, Q, R, K, horizon, gamma, P_terminal)
    return -jnp.trace(Ps[0] @ second_moment(S0))


@functools.partial(jax.jit, static_argnames=("horizon",))
def closed_form_gradient(A, B, Q, R, K, S0, horizon: int, gamma=1.0, P_terminal=None) -> jax.Array:
    """∇_K J_n = −2 Σ_{t<n} γ^t [(R + γ Bᵀ P_{t+1} B) K − γ Bᵀ P_{t+1} A] Σ_t,  Σ_t = L^t Σ_0 (L^t)ᵀ.

    Shape of K ([m, d]). Derived in the module docstring; one forward ``lax.scan``.
    """
    Ps = finite_horizon_cost_matrices(A, B, Q, R, K, horizon, gamma, P_terminal)
    L, _ = _closed_loop(A, B, Q, R, K)
    gamma = jnp.asarray(gamma, L.dtype)
    sigma0 = second_moment(S0).astype(L.dtype)

    def body(carry, P_next):
        sigma, disc, grad = carry
        G = (R + gamma * (B.T @ P_next @ B)) @ K - gamma * (B.T @ P_next @ A)
        grad = grad + 2.0 * disc * (G @ sigma)
        return (L @ sigma @ L.T, disc * gamma, grad), None

    init = (sigma0, jnp.ones((), L.dtype), jnp.zeros_like(K, dtype=L.dtype))
    (_, _, grad), _ = lax.scan(body, init, Ps[1:])
    return -grad


def _solve_discrete_lyapunov(F, C, gamma):
    """X = C + γ F X Fᵀ by vectorisation (row-major vec(F X Fᵀ) = (F ⊗ F) vec X); needs √γ ρ(F) < 1."""
    d = F.shape[0]
    lhs = jnp.eye(d * d, dtype=F.dtype) - gamma * jnp.kron(F, F)
    return jnp.linalg.solve(lhs, C.reshape(-1)).reshape(d, d)


@jax.jit
def discounted_cost_matrix(A, B, Q, R, K, gamma) -> jax.Array:
    """P with P = Q + KᵀRK + γ Lᵀ P L: the infinite-horizon discounted cost matrix (needs √γ ρ(L) < 1)."""
    L, M = _closed_loop(A, B, Q, R, K)
    return _solve_discrete_lyapunov(L.T, M, jnp.asarray(gamma, M.dtype))


@jax.jit
def discounted_return(A, B, Q, R, K, S0, gamma) -> jax.Array:
    """J_∞(K) = −tr(P Σ_0) for the discounted infinite horizon."""
    return -jnp.trace(discounted_cost_matrix(A, B, Q, R, K, gamma) @ second_moment(S0))


@jax.jit
def discounted_gradient(A, B, Q, R, K, S0, gamma) -> jax.Array:
    """∇_K J_∞ = −2 [(R + γBᵀPB) K − γ BᵀPA] Σ_K, Σ_K = Σ_0 + γ L Σ_K Lᵀ (Fazel et al. 2018, discounted)."""
    L, _ = _closed_loop(A, B, Q, R, K)
    gamma = jnp.asarray(gamma, L.dtype)
    P = discounted_cost_matrix(A, B, Q, R, K, gamma)
    sigma = _solve_discrete_lyapunov(L, second_moment(S0).astype(L.dtype), gamma)
    G = (R + gamma * (B.T @ P @ B)) @ K - gamma * (B.T @ P @ A)
    return -2.0 * G @ sigma


@functools.partial(jax.jit, static_argnames=("iterations",))
def optimal_gain(A, B, Q, R, gamma=1.0, iterations: int = 1000) -> jax.Array:
    """The optimal stationary gain K* (a* = −K* s) by discounted Riccati value iteration.

    P ← Q + γAᵀPA − γ² AᵀPB (R + γBᵀPB)⁻¹ BᵀPA from P = 0, then
    K* = γ (R + γBᵀPB)⁻¹ BᵀPA (where ``discounted_gradient`` vanishes).
    """
    gamma = jnp.asarray(gamma, A.dtype)

    def gain(P):
        return gamma * jnp.linalg.solve(R + gamma * (B.T @ P @ B), B.T @ P @ A)

    def body(_, P):
        K = gain(P)
        L = A - B @ K
        return Q + K.T @ R @ K + gamma * (L.T @ P @ L)

    P = lax.fori_loop(0, iterations, body, jnp.zeros_like(Q))
    return gain(P)
