"""Exact policy-gradient references for tabular MDPs with a softmax policy (docs/theory.md §6).

    π(a|s) = softmax(θ[s])_a,     P_π[s, s'] = Σ_a π(a|s) P[s, a, s'],     r_π(s) = Σ_a π(a|s) r(s, a)
    v   = (I − γ P_π)^{-1} r_π,    q(s, a) = r(s, a) + γ Σ_{s'} P[s, a, s'] v(s')
    J   = αᵀ v,                    x_αᵀ = αᵀ (I − γ P_π)^{-1}   (discounted visitation, unnormalised)
    ∇J  = Σ_s x_α(s) Σ_a ∇π(a|s) q(s, a)          (policy-gradient theorem, Sutton et al. 2000)

For the softmax, ∂π(a|s)/∂θ[s, b] = π(a|s)(1[a = b] − π(b|s)), so

    ∂J/∂θ[s, b] = x_α(s) π(b|s) (q(s, b) − v(s)).

``gae_expected_gradient`` is the exact mean of the GAE(γ, λ) score-function
estimator for an ARBITRARY value table u (infinite horizon):

    δ̂(s, a)   = r(s, a) + γ (P u)(s, a) − u(s),      δ̄(s) = Σ_a π(a|s) δ̂(s, a)
    E[A^λ_t | s_t = s, a_t = a] = δ̂(s, a) + γλ (P (I − γλ P_π)^{-1} δ̄)(s, a)

since E[δ_{t+l} | s_t, a_t] = (P P_π^{l−1} δ̄)(s_t, a_t) for l ≥ 1. With u = v,
δ̄ = 0 and δ̂ = q − v: unbiased for every λ; with λ = 1 the sum telescopes to
q − u(s), and u(s) drops out of Σ_a ∇π(a|s)(·): unbiased for every u.

``sample_episodes`` draws fixed-length episodes (``lax.scan`` over time, vmapped
over episodes) for the Monte-Carlo estimators of ``mbpo_grad.score_function``.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from mbpo_grad import validation as V


class TabularMDP(NamedTuple):
    """P [S, A, S] (rows sum to 1), r [S, A], alpha [S] start distribution, gamma in [0, 1)."""

    P: jax.Array
    r: jax.Array
    alpha: jax.Array
    gamma: jax.Array


class Episodes(NamedTuple):
    """A batch of sampled episodes (leading axis N; drop it under vmap).

    states [N, T+1] int, actions [N, T] int, rewards [N, T],
    discounts [N, T]: γ (``termination="discount"``) or 1{episode continues past t}
    (``termination="geometric"``); in both, Σ_t w_t r_t with w_t = Π_{k<t} discounts_k
    is an unbiased sample of J (up to the truncation at T).
    """

    states: jax.Array
    actions: jax.Array
    rewards: jax.Array
    discounts: jax.Array


def check_mdp(mdp: TabularMDP) -> tuple[int, int]:
    if not isinstance(mdp, TabularMDP):
        raise TypeError(f"mdp must be a TabularMDP, got {type(mdp).__name__}")
    P, r, alpha = jnp.asarray(mdp.P), jnp.asarray(mdp.r), jnp.asarray(mdp.alpha)
    if P.ndim != 3 or P.shape[0] != P.shape[2]:
        raise ValueError(f"mdp.P must have shape [S, A, S], got {P.shape}")
    S, A = P.shape[:2]
    if r.shape != (S, A):
        raise ValueError(f"mdp.r must have shape [S, A] = [{S}, {A}], got {r.shape}")
    if alpha.shape != (S,):
        raise ValueError(f"mdp.alpha must have shape [S] = [{S}], got {alpha.shape}")
    V.check_unit_interval(mdp.gamma, "mdp.gamma")
    if V.is_concrete(mdp.gamma) and float(jnp.asarray(mdp.gamma)) >= 1.0:
        raise ValueError(f"mdp.gamma must be < 1 (the discounted values need I − γP_π invertible), got {mdp.gamma}")
    return S, A


def _check_theta(theta, S, A):
    if jnp.shape(theta) != (S, A):
        raise ValueError(f"theta must have shape [S, A] = [{S}, {A}], got {jnp.shape(theta)}")


def random_mdp(key, num_states: int, num_actions: int, gamma: float = 0.9, *, dtype=None) -> TabularMDP:
    """A random MDP: uniform-on-the-simplex (Dirichlet(1)) transition rows and start distribution,
    N(0, 1) rewards. Dirichlet(1) draws are normalised Exp(1) variables (cheap to compile)."""
    if num_states < 1 or num_actions < 1:
        raise ValueError(f"num_states and num_actions must be >= 1, got {num_states}, {num_actions}")
    V.check_unit_interval(gamma, "gamma")
    dtype = dtype or jnp.result_type(float)
    k1, k2, k3 = jax.random.split(key, 3)
    E = jax.random.exponential(k1, (num_states, num_actions, num_states), dtype)
    r = jax.random.normal(k2, (num_states, num_actions), dtype)
    e0 = jax.random.exponential(k3, (num_states,), dtype)
    return TabularMDP(E / E.sum(-1, keepdims=True), r, e0 / e0.sum(), jnp.asarray(gamma, dtype))


def policy_probs(theta: jax.Array) -> jax.Array:
    """π [S, A] = softmax(θ, axis=-1)."""
    return jax.nn.softmax(theta, axis=-1)


def log_prob(theta: jax.Array, state, action) -> jax.Array:
    """log π(a|s) = log_softmax(θ[s])[a] (one observation; the score-function ``log_prob``)."""
    return jax.nn.log_softmax(theta[state])[action]


def transition_matrix(mdp: TabularMDP, theta: jax.Array) -> jax.Array:
    """P_π [S, S]."""
    S, A = check_mdp(mdp)
    _check_theta(theta, S, A)
    return jnp.einsum("sa,sat->st", policy_probs(theta), mdp.P)


def values(mdp: TabularMDP, theta: jax.Array) -> jax.Array:
    """v = (I − γ P_π)^{-1} r_π, shape [S]."""
    S, _ = check_mdp(mdp)
    pi = policy_probs(theta)
    P_pi = transition_matrix(mdp, theta)
    r_pi = jnp.sum(pi * mdp.r, axis=-1)
    return jnp.linalg.solve(jnp.eye(S, dtype=P_pi.dtype) - mdp.gamma * P_pi, r_pi)


def q_values(mdp: TabularMDP, theta: jax.Array) -> jax.Array:
    """q = r + γ P v, shape [S, A]."""
    v = values(mdp, theta)
    return mdp.r + mdp.gamma * jnp.einsum("sat,t->sa", mdp.P, v)


def visitation(mdp: TabularMDP, theta: jax.Array) -> jax.Array:
    """x_α = (I − γ P_π)^{-T} α: discounted state visitation from α (sums to 1/(1−γ))."""
    S, _ = check_mdp(mdp)
    P_pi = transition_matrix(mdp, theta)
    return jnp.linalg.solve((jnp.eye(S, dtype=P_pi.dtype) - mdp.gamma * P_pi).T, mdp.alpha)


def expected_return(mdp: TabularMDP, theta: jax.Array) -> jax.Array:
    """J(θ) = αᵀ v (differentiable: ``jax.grad`` of it is the exact gradient too)."""
    return mdp.alpha @ values(mdp, theta)


def _softmax_pg(x, pi, adv_sa):
    """∂/∂θ[s, b] of Σ_s x(s) Σ_a π(a|s) adv(s, a) with adv held fixed."""
    return x[:, None] * pi * (adv_sa - jnp.sum(pi * adv_sa, axis=-1, keepdims=True))


def policy_gradient(mdp: TabularMDP, theta: jax.Array) -> jax.Array:
    """∇J = Σ_s x_α(s) Σ_a ∇π(a|s) q(s, a) (policy-gradient theorem), shape [S, A]."""
    return _softmax_pg(visitation(mdp, theta), policy_probs(theta), q_values(mdp, theta))


def gae_expected_gradient(mdp: TabularMDP, theta: jax.Array, value_table: jax.Array, lam) -> jax.Array:
    """The exact mean of the GAE(γ, λ) estimator Σ_t γ^t ∇log π(a_t|s_t) A^λ_t with values ``value_table`` [S].

    Equal to ``policy_gradient`` when value_table is the true v (any λ) or λ = 1
    (any value table); biased otherwise.
    """
    S, A = check_mdp(mdp)
    if jnp.shape(value_table) != (S,):
        raise ValueError(f"value_table must have shape [S] = [{S}], got {jnp.shape(value_table)}")
    V.check_unit_interval(lam, "lam")
    gamma = mdp.gamma
    pi = policy_probs(theta)
    P_pi = transition_matrix(mdp, theta)
    u = value_table
    delta = mdp.r + gamma * jnp.einsum("sat,t->sa", mdp.P, u) - u[:, None]
    delta_bar = jnp.sum(pi * delta, axis=-1)
    tail = jnp.linalg.solve(jnp.eye(S, dtype=P_pi.dtype) - gamma * lam * P_pi, delta_bar)
    adv = delta + gamma * lam * jnp.einsum("sat,t->sa", mdp.P, tail)
    return _softmax_pg(visitation(mdp, theta), pi, adv)


def sample_episodes(
    key: jax.Array,
    mdp: TabularMDP,
    theta: jax.Array,
    *,
    horizon: int,
    num_episodes: int,
    termination: str = "discount",
) -> Episodes:
    """Draw ``num_episodes`` episodes of ``horizon`` steps from α under π_θ.

    termination="discount": every step continues; discounts = γ (weights γ^t).
    termination="geometric": the episode ends after each step with probability
    1 − γ; discounts = 1 while it continues, 0 at the end (weights 1{alive}),
    the steps after the end are still simulated but carry weight 0.
    Both give unbiased samples of the discounted objective up to the truncation
    at ``horizon`` (a bias of order γ^horizon).
    """
    S, A = check_mdp(mdp)
    _check_theta(theta, S, A)
    horizon = V.check_horizon(horizon)
    num_episodes = V.check_horizon(num_episodes, "num_episodes")
    if termination not in ("discount", "geometric"):
        raise ValueError(f"termination must be 'discount' or 'geometric', got {termination!r}")
    logits = jax.nn.log_softmax(theta, axis=-1)
    logP = jnp.log(mdp.P)
    dtype = jnp.result_type(mdp.r)
    gamma = jnp.asarray(mdp.gamma, dtype)

    def episode(k):
        k0, kr = jax.random.split(k)
        s0 = jax.random.categorical(k0, jnp.log(mdp.alpha))

        def body(s, kt):
            ka, ks, kd = jax.random.split(kt, 3)
            a = jax.random.categorical(ka, logits[s])
            s_next = jax.random.categorical(ks, logP[s, a])
            if termination == "discount":
                d = gamma
            else:
                d = (jax.random.uniform(kd, dtype=dtype) < gamma).astype(dtype)
            return s_next, (s, a, mdp.r[s, a], d)

        s_T, (ss, aa, rr, dd) = lax.scan(body, s0, jax.random.split(kr, horizon))
        return Episodes(jnp.concatenate([ss, s_T[None]]), aa, rr, dd)

    return jax.vmap(episode)(jax.random.split(key, num_episodes))
