"""PPO's losses as pure functions: advantages and value targets of an unroll with time-limit
truncations, the clipped surrogate, the value regression, the entropy estimate, their sum.

Advantages (one env's unroll of T steps, auto-reset inside; Schulman et al. 2016). Step t
goes from o_t to o'_t (the next observation before any reset); it ends the episode when o'_t is
terminal (``terminal_t``) or its time limit was reached (``truncated_t``: a truncation, not a
terminal state, so V(o'_t) bootstraps it). Folding the truncation bootstrap into the reward,

    r̃_t = r_t + γ · truncated_t · V(o'_t),      d_t = γ (1 − terminal_t)(1 − truncated_t),
    v_t = V(o_t) for t < T,  v_T = V(o'_{T−1})  (the unroll's end bootstraps),

makes every case one recursion (``returns.gae``, ``returns.reward_to_go``):

    δ_t = r̃_t + d_t v_{t+1} − v_t        (r_t + γ V(o'_t) − v_t at a cut by the time limit,
                                          r_t − v_t at a terminal state, r_t + γ v_{t+1} − v_t
                                          inside an episode, where o_{t+1} = o'_t)
    A_t = δ_t + λ d_t A_{t+1}             (GAE(γ, λ); the recursion stops at every episode end)
    y_t = A_t + v_t                       (the value target: the λ-return)

``advantage="reward_to_go"``: A_t = G_t − v_t with G_t = r̃_t + d_t G_{t+1}, G_T = v_T (the
Monte-Carlo return inside the unroll, bootstrapped at cuts and at its end): REINFORCE with a
learned baseline, equal to GAE with λ = 1 (the δ's telescope).

Surrogate (Schulman et al. 2017, "Proximal policy optimization algorithms", eq. 7), with
ρ = π_θ(a|o) / π_old(a|o) and the advantages held fixed (normalised per batch):

    L_clip = −E[ min(ρ A, clip(ρ, 1 − ε, 1 + ε) A) ]

At ρ = 1 its gradient is −E[A ∇ log π_θ(a|o)], the score-function (REINFORCE) gradient of the
usual PPO objective: the mean over steps carries no γ^t weight, so with exact advantages it is
Σ_s d(s) Σ_a ∇π(a|s) q(s, a) with d the undiscounted visitation, not the gradient of the
discounted return (``score_function``'s ``weight_by_discount`` and docs/theory.md §2; checked
exactly against ``tabular`` in tests/test_ppo_tabular.py); a
sample whose ratio has left [1 − ε, 1 + ε] in the direction its advantage pushes (ρ > 1 + ε
with A > 0, ρ < 1 − ε with A < 0) contributes no gradient. The total loss is

    L = L_clip + c_v E[(V_φ(o) − y)²] − c_e H[π_θ(·|o)],

H estimated by −log π_θ(ã|o) at ã = tanh(μ_θ + σ_θ ε) on the stored noise ε (a
reparameterised sample: an unbiased estimate of the tanh-Gaussian's entropy, which has no
closed form, and of its gradient). Every mean is weighted (weight 0: a step a simulator fault
made non-finite).
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import jax
import jax.numpy as jnp

from mbpo_grad import critics as C
from mbpo_grad import returns as R

sg = jax.lax.stop_gradient


def weighted_mean(x: jax.Array, weights: Optional[jax.Array] = None) -> jax.Array:
    """Σ w x / Σ w (plain mean without weights; 0 when every weight is 0). Zero-weight
    entries are selected away first, so a NaN there reaches neither the value nor the gradient."""
    if weights is None:
        return jnp.mean(x)
    w = jnp.asarray(weights, x.dtype)
    x = jnp.where(w > 0, x, jnp.zeros_like(x))
    return jnp.sum(w * x) / jnp.maximum(jnp.sum(w), 1e-12)


def _folded(rewards, values, next_values, terminal, truncated, gamma):
    """(r̃ [T], d [T], v [T+1]) of one unroll (see the module docstring)."""
    T = jnp.shape(rewards)[0] if jnp.ndim(rewards) == 1 else None
    if T is None:
        raise ValueError(f"rewards must be one unroll of shape [T] (batch with jax.vmap), got {jnp.shape(rewards)}")
    for name, x in (("values", values), ("next_values", next_values), ("terminal", terminal),
                    ("truncated", truncated)):
        if tuple(jnp.shape(x)) != (T,):
            raise ValueError(f"{name} must have shape [T] = ({T},) like rewards, got {tuple(jnp.shape(x))}")
    dtype = jnp.result_type(rewards, values, next_values, jnp.float32)
    rewards, values, next_values = (jnp.asarray(x, dtype) for x in (rewards, values, next_values))
    gamma = jnp.asarray(gamma, dtype)
    term = jnp.asarray(terminal, bool)
    trunc = jnp.asarray(truncated, bool) & ~term
    # where, not multiply: a value at an ignored cut cannot turn the target into 0 · NaN.
    r = rewards + jnp.where(trunc, gamma * next_values, 0.0)
    d = jnp.where(term | trunc, 0.0, gamma)
    v = jnp.concatenate([values, next_values[-1:]])
    return r, d, v


def advantages_and_targets(rewards: jax.Array, values: jax.Array, next_values: jax.Array, terminal: jax.Array,
                           truncated: jax.Array, gamma: Any, lam: Any,
                           mode: str = "gae") -> Tuple[jax.Array, jax.Array]:
    """(A [T], y [T]) of one env's unroll (time on axis 0; ``vmap`` over envs).

    rewards r_t, values V(o_t), next_values V(o'_t) (o'_t: the next observation before any
    reset), terminal_t / truncated_t (o'_t is a terminal state / the time limit was reached at
    o'_t), all [T]. ``mode``: "gae" (A = GAE(γ, λ), y = A + v) or "reward_to_go"
    (y = G the bootstrapped Monte-Carlo return, A = G − v; λ unused). See the module docstring.
    """
    r, d, v = _folded(rewards, values, next_values, terminal, truncated, gamma)
    if mode == "gae":
        adv = R.gae(r, v, d, lam)
        return adv, adv + v[:-1]
    if mode == "reward_to_go":
        # the window-end bootstrap d_{T−1} v_T enters as a reward of the last step
        r_end = r.at[-1].add(d[-1] * v[-1])
        g = R.reward_to_go(r_end, d)
        return g - v[:-1], g
    raise ValueError(f"mode must be 'gae' or 'reward_to_go', got {mode!r}")


def normalize_advantages(adv: jax.Array, weights: Optional[jax.Array] = None, eps: float = 1e-8) -> jax.Array:
    """(A − mean) / (std + eps) over the whole batch (weighted)."""
    mean = weighted_mean(adv, weights)
    std = jnp.sqrt(weighted_mean(jnp.square(adv - mean), weights))
    return (adv - mean) / (std + eps)


def clipped_surrogate(log_ratio: jax.Array, advantages: jax.Array, clip_eps: Any,
                      weights: Optional[jax.Array] = None) -> jax.Array:
    """L_clip = −E_w[min(ρ A, clip(ρ, 1 − ε, 1 + ε) A)], ρ = exp(log_ratio); A held fixed."""
    ratio = jnp.exp(log_ratio)
    adv = sg(advantages)
    eps = jnp.asarray(clip_eps, ratio.dtype)
    clipped = jnp.clip(ratio, 1.0 - eps, 1.0 + eps)
    return -weighted_mean(jnp.minimum(ratio * adv, clipped * adv), weights)


def ratio_surrogate(log_ratio: jax.Array, advantages: jax.Array, weights: Optional[jax.Array] = None) -> jax.Array:
    """L = −E_w[ρ A] (no clip); at ρ = 1 its gradient is −E[A ∇ log π], REINFORCE's."""
    return -weighted_mean(jnp.exp(log_ratio) * sg(advantages), weights)


def value_loss(values: jax.Array, targets: jax.Array, weights: Optional[jax.Array] = None) -> jax.Array:
    """E_w[(V_φ(o) − y)²] with y held fixed (``critics.mse``)."""
    return C.mse(values, targets, weights)


def entropy_estimate(log_probs: jax.Array, weights: Optional[jax.Array] = None) -> jax.Array:
    """Ĥ = −E_w[log π_θ(ã|o)] at reparameterised samples ã of the current policy."""
    return -weighted_mean(log_probs, weights)


def total_loss(policy_loss: jax.Array, v_loss: jax.Array, entropy: jax.Array, value_cost: Any,
               entropy_cost: Any) -> jax.Array:
    """L = L_π + c_v L_V − c_e Ĥ."""
    return policy_loss + value_cost * v_loss - entropy_cost * entropy


def approx_kl(log_ratio: jax.Array, weights: Optional[jax.Array] = None) -> jax.Array:
    """E_old[(ρ − 1) − log ρ] ≥ 0: a low-variance estimate of KL(π_old ‖ π_θ) (a diagnostic)."""
    return weighted_mean(jnp.expm1(log_ratio) - log_ratio, weights)


def clip_fraction(log_ratio: jax.Array, clip_eps: Any, weights: Optional[jax.Array] = None) -> jax.Array:
    """Share of samples whose ratio lies outside [1 − ε, 1 + ε] (a diagnostic)."""
    out = jnp.abs(jnp.exp(log_ratio) - 1.0) > clip_eps
    return weighted_mean(out.astype(log_ratio.dtype), weights)


__all__ = ["weighted_mean", "advantages_and_targets", "normalize_advantages", "clipped_surrogate",
           "ratio_surrogate", "value_loss", "entropy_estimate", "total_loss", "approx_kl", "clip_fraction"]
