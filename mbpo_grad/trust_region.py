"""A KL trust-region policy update (docs/theory.md §5: a policy step constrained to a KL ball around the old policy).

Maximise a surrogate L(w) (e.g. the SVG(0) / SAC actor objective on a batch of states)
subject to KL(π_w_old ‖ π_w) ≤ δ, the radius δ adapted from step to step:

1. propose — g = ∇L(w_old); direction d = F⁻¹ g by conjugate gradients with the Fisher
   F = ∇²_w KL_F(π_old ‖ π_w)|_{w_old} (+ damping·I), Fisher-vector products by
   forward-over-reverse autodiff of the KL (``natural=True``, Schulman et al. 2015, TRPO;
   Kakade 2002), or d = g (``natural=False``). The step Δ = β d with β = √(2δ / dᵀF d)
   makes the quadratic model ½ΔᵀFΔ of the KL equal δ; the linear model predicts the
   improvement gᵀΔ.
2. measure — for candidates Δ_k = f^k Δ (k = 0, 1, …, ``max_backtracks`` − 1, f =
   ``backtrack``) in turn: the measured KL_M(π_old ‖ π_{w_old + Δ_k}) and the actual
   improvement L(w_old + Δ_k) − L(w_old).
3. accept — the first candidate whose measured KL is ≤ δ and whose ratio
   ρ = actual / predicted (predicted_k = f^k gᵀΔ) is ≥ ``accept_ratio``; if none, the
   parameters do not change. A step whose measured KL exceeds δ is never accepted.
4. adapt — δ ← ``shrink``·δ when nothing was accepted or ρ < ``low``; δ ← ``grow``·δ when the
   full step (k = 0) was accepted with ρ > ``high``; δ stays in [``min_radius``, ``max_radius``]
   (the classical trust-region radius rule, Nocedal & Wright 2006, Alg. 4.1).

Which KL (``policy_kl(policy, old_params, obs, key)`` builds the pair KL_M, KL_F):

* closed form — a bundle with a ``kl`` field (``gaussian``): KL_M = KL_F = the mean over the
  batch of the per-state closed form. For the tanh-squashed Gaussian that is the KL of the
  pre-squash diagonal Gaussians (KL is invariant under the shared bijection tanh). The
  guarantee is then exact: accepted ⇒ mean_b KL(π_old(·|s_b) ‖ π_new(·|s_b)) ≤ δ, and F is the
  exact Fisher of the batch, of full rank in every parameter direction that moves the mean
  or the log-σ at some state of the batch.
* sampled — any other bundle (flows): ``samples`` = M fresh actions per state, and two
  INDEPENDENT noise sets of B·M draws, fixed across the candidates of the step: KL_F is the
  "k3" ``kl_monte_carlo`` estimate on one; KL_M is the "k3" estimate K̂ on the other plus
  z = ``confidence`` standard errors (ŝ, from the same draws, stratified over the states).
  Why independent: with one sample per state and the same noise in both, the sample Fisher
  has rank ≤ B and the step goes where those samples see no change, so the measured KL
  approves it while the true KL is several times δ (measured, Gaussian, 132 parameters,
  64 states, δ = 0.02: measured 0.003–0.019, true 0.014–0.075, up to 3.8 δ; a flow with 110
  parameters, 16 states: up to 8.6 δ). With the acceptance draws independent of the step,
  K̂ is an unbiased estimate of each candidate's true KL, so by the central limit theorem
  accepted ⇒ true KL ≤ δ with probability ≈ Φ(z) per accepted step (z = 2: ≈ 98%), and
  the plain estimate (z = 0) errs by ≈ ŝ/K̂ relative (√2/√(B·M) for a small step, where
  log r ≈ N(0, 2 KL); more for larger steps). Φ(z) is asymptotic: ŝ itself is poor while
  B·M is near the number of parameters P (the sample Fisher has rank ≤ B·M and the step is
  large where it is weak), so take B·M ≳ 4 P. Measured on the flow above (12 steps, 4
  seeds, true KL from 10⁴ draws per state): z = 0, M = 4 / 32: true KL up to 1.76 δ / 1.20 δ;
  z = 2, M = 8 (B·M = 128 ≈ P): up to 1.12 δ; M = 16: 0.66 δ; M = 32: 0.53 δ.

Pure and jittable: ``state`` is a ``TrustRegionState`` pytree; the float settings may be
traced (vmappable).

    tr = trust_region.init(0.01)
    objective = lambda p: -sac_actor_loss(p, ...)                      # to maximise
    kl = trust_region.policy_kl(policy, old_params, obs, key)          # closed form or sampled
    params, tr, info = trust_region.step(objective, kl, old_params, tr)
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mbpo_grad.policies.base import Policy
from mbpo_grad.policies.gaussian import diag_gaussian_kl
from mbpo_grad.validation import check_int, is_concrete

PyTree = Any

__all__ = ["TrustRegionState", "TrustRegionInfo", "PolicyKL", "init", "step", "policy_kl", "kl_monte_carlo",
           "gaussian_kl", "conjugate_gradient"]


class TrustRegionState(NamedTuple):
    radius: jax.Array   # δ, the KL radius for the next step


class PolicyKL(NamedTuple):
    """The two KL functions of a step (``policy_kl``): each maps new params to KL(π_old ‖ π_new)."""
    measure: Callable[[PyTree], jax.Array]   # KL_M: decides acceptance (info.kl)
    fisher: Callable[[PyTree], jax.Array]    # KL_F: its Hessian at the old params is the CG's Fisher
    exact: bool                              # True: the closed form (measure is fisher)


class TrustRegionInfo(NamedTuple):
    accepted: jax.Array        # bool: the parameters changed
    kl: jax.Array              # measured KL of the accepted candidate (of the last one tried if none)
    radius: jax.Array          # δ used for this step
    new_radius: jax.Array      # δ for the next step
    actual: jax.Array          # L(w_new) − L(w_old) of the accepted / last tried candidate
    predicted: jax.Array       # its linear-model prediction
    ratio: jax.Array           # actual / predicted
    backtracks: jax.Array      # int32: index k of the accepted / last tried candidate
    grad_norm: jax.Array


def _tree_dot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _axpy(alpha, x, y):  # alpha·x + y
    return jax.tree_util.tree_map(lambda u, v: (alpha * u + v).astype(v.dtype), x, y)


def _scale(alpha, x):
    return jax.tree_util.tree_map(lambda u: (alpha * u).astype(u.dtype), x)


def init(radius: Any) -> TrustRegionState:
    """A trust-region state with KL radius δ = ``radius`` (> 0)."""
    if is_concrete(radius):
        r = np.asarray(radius, np.float64)
        if not np.all(np.isfinite(r)) or np.any(r <= 0):
            raise ValueError(f"radius must be a finite float > 0, got {radius}")
    return TrustRegionState(jnp.asarray(radius, jnp.result_type(float)))


def conjugate_gradient(matvec: Callable[[PyTree], PyTree], b: PyTree, iters: int = 10,
                       tol: float = 1e-10) -> PyTree:
    """Approximately solve A x = b for symmetric positive-definite A given by ``matvec`` (pytrees).

    ``iters`` fixed iterations of Hestenes–Stiefel CG from x = 0 (a ``lax.fori_loop``); once
    the residual's squared norm is below ``tol`` the iterate stops moving.
    """
    check_int(iters, "iters")
    x = jax.tree_util.tree_map(jnp.zeros_like, b)
    r = b
    p = b
    rr = _tree_dot(r, r)

    def body(_, carry):
        x, r, p, rr = carry
        ap = matvec(p)
        pap = _tree_dot(p, ap)
        live = (rr > tol) & (pap > 0)
        alpha = jnp.where(live, rr / jnp.where(live, pap, 1.0), 0.0)
        x = _axpy(alpha, p, x)
        r = _axpy(-alpha, ap, r)
        rr_new = _tree_dot(r, r)
        beta = jnp.where(live, rr_new / jnp.where(rr > 0, rr, 1.0), 0.0)
        p = jax.tree_util.tree_map(lambda ri, pi: jnp.where(live, ri + beta * pi, pi), r, p)
        return x, r, p, jnp.where(live, rr_new, rr)

    x, _, _, _ = jax.lax.fori_loop(0, int(iters), body, (x, r, p, rr))
    return x


def step(
    objective: Callable[[PyTree], jax.Array],
    kl: Callable[[PyTree], jax.Array],
    params: PyTree,
    state: TrustRegionState,
    *,
    natural: bool = True,
    cg_iters: int = 10,
    damping: Any = 1e-3,
    max_backtracks: int = 10,
    backtrack: Any = 0.5,
    accept_ratio: Any = 0.0,
    low: Any = 0.25,
    high: Any = 0.75,
    shrink: Any = 0.5,
    grow: Any = 2.0,
    min_radius: Any = 1e-6,
    max_radius: Any = 1.0,
):
    """One trust-region step on ``objective`` (maximised) under KL(π_old ‖ π_new) ≤ ``state.radius``.

    Args:
      objective: L(params) -> scalar to maximise.
      kl: a ``PolicyKL`` (``policy_kl``: the acceptance KL and the Fisher KL), or one function
        KL(π_old ‖ π_params) -> scalar, with π_old the policy at ``params`` (so kl(params) ≈ 0),
        used for both the acceptance test and (its Hessian) the Fisher of the step.
      params: the current (old) parameters.
      state: ``TrustRegionState`` (radius δ).
      natural: natural-gradient direction (CG on the Fisher) or the plain gradient.
      cg_iters, damping: conjugate-gradient iterations and Tikhonov damping of the Fisher.
      max_backtracks, backtrack: candidates f^k Δ, k < max_backtracks.
      accept_ratio: minimum actual/predicted improvement for acceptance (0: any improvement).
      low, high, shrink, grow, min_radius, max_radius: the radius rule (module docstring).

    Returns (new_params, new_state, TrustRegionInfo). Accepted ⇒ info.kl ≤ radius.
    """
    check_int(max_backtracks, "max_backtracks")
    if not callable(objective):
        raise TypeError("objective must be callable: objective(params) -> scalar to maximise")
    if isinstance(kl, PolicyKL):
        kl_measure, kl_fisher = kl.measure, kl.fisher
    elif callable(kl):
        kl_measure = kl_fisher = kl
    else:
        raise TypeError("kl must be a PolicyKL (trust_region.policy_kl) or callable: kl(params) -> KL(pi_old || pi_params)")
    if not (callable(kl_measure) and callable(kl_fisher)):
        raise TypeError("kl: PolicyKL.measure and PolicyKL.fisher must be callable")
    if not isinstance(state, TrustRegionState):
        raise TypeError(f"state must be a TrustRegionState (trust_region.init), got {type(state).__name__}")
    for name, v in (("backtrack", backtrack), ("shrink", shrink)):
        if is_concrete(v) and not 0.0 < float(np.asarray(v)) < 1.0:
            raise ValueError(f"{name} must lie in (0, 1), got {v}")
    if is_concrete(grow) and not float(np.asarray(grow)) >= 1.0:
        raise ValueError(f"grow must be >= 1, got {grow}")

    leaves = jax.tree_util.tree_leaves(params)
    dtype = jnp.result_type(*leaves) if leaves else jnp.float32
    radius = state.radius.astype(dtype)
    f0, g = jax.value_and_grad(objective)(params)
    grad_kl = jax.grad(kl_fisher)

    def fisher_vp(v):
        fv = jax.jvp(grad_kl, (params,), (v,))[1]
        return _axpy(jnp.asarray(damping, dtype), v, fv)

    d = conjugate_gradient(fisher_vp, g, cg_iters) if natural else g
    dfd = _tree_dot(d, fisher_vp(d))
    safe = jnp.isfinite(dfd) & (dfd > 0)
    beta = jnp.where(safe, jnp.sqrt(2.0 * radius / jnp.where(safe, dfd, 1.0)), 0.0)
    delta = _scale(beta, d)
    pred0 = _tree_dot(g, delta)
    f = jnp.asarray(backtrack, dtype)

    def candidate(k):
        scale = f ** k.astype(dtype)
        new = jax.tree_util.tree_map(lambda p, s: (p + scale * s).astype(p.dtype), params, delta)
        actual = objective(new) - f0
        kl_new = kl_measure(new)
        predicted = scale * pred0
        ratio = actual / jnp.where(predicted != 0, predicted, 1.0)
        ok = (jnp.isfinite(kl_new) & jnp.isfinite(actual) & (kl_new <= radius) & (predicted > 0)
              & (ratio >= accept_ratio))
        return new, ok, kl_new, actual, predicted, ratio

    def cond(c):
        k, ok = c[0], c[1]
        return (~ok) & (k < max_backtracks)

    def body(c):
        k = c[0]
        new, ok, kl_new, actual, predicted, ratio = candidate(k)
        return (k + 1, ok, new, kl_new, actual, predicted, ratio)

    zero = jnp.zeros((), dtype)
    init_c = (jnp.zeros((), jnp.int32), jnp.zeros((), bool), params, zero, zero, zero, zero)
    k_end, accepted, new, kl_new, actual, predicted, ratio = jax.lax.while_loop(cond, body, init_c)
    k_used = k_end - 1
    accepted = accepted & safe
    new_params = jax.tree_util.tree_map(lambda n, p: jnp.where(accepted, n, p), new, params)

    lo_r, hi_r = jnp.asarray(min_radius, dtype), jnp.asarray(max_radius, dtype)
    shrink_, grow_ = jnp.asarray(shrink, dtype), jnp.asarray(grow, dtype)
    new_radius = jnp.where(~accepted | (ratio < low), shrink_ * radius,
                           jnp.where((k_used == 0) & (ratio > high), grow_ * radius, radius))
    new_radius = jnp.clip(new_radius, lo_r, hi_r)
    info = TrustRegionInfo(accepted, kl_new, radius, new_radius, actual, predicted, ratio, k_used,
                           jnp.sqrt(_tree_dot(g, g)))
    return new_params, TrustRegionState(new_radius.astype(state.radius.dtype)), info


def _float_dtype(params, obs):
    leaves = [x for x in jax.tree_util.tree_leaves(params) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)]
    if leaves:
        return jnp.result_type(*leaves)
    return obs.dtype if jnp.issubdtype(obs.dtype, jnp.floating) else jnp.result_type(float)


def _check_policy_obs(policy: Policy, obs) -> jax.Array:
    obs = jnp.asarray(obs)
    if obs.ndim != 2 or obs.shape[0] < 1:
        raise ValueError(f"obs must have shape [B, obs_dim] with B >= 1, got {obs.shape}")
    if obs.shape[1] != policy.obs_dim:
        raise ValueError(f"obs must have shape [B, obs_dim={policy.obs_dim}], got {obs.shape}")
    return obs


def policy_kl(policy: Policy, old_params: PyTree, obs: jax.Array, key: Any = None, *,
              samples: int = 8, confidence: Any = 2.0) -> PolicyKL:
    """The KL pair of a trust-region step from ``old_params`` on the states ``obs`` [B, obs_dim].

    * ``policy.kl`` present (``gaussian``): the closed form, mean_b policy.kl(old, new, s_b),
      for both the acceptance test and the Fisher (``exact=True``; ``key`` unused).
    * otherwise (flows, user bundles): ``samples`` = M fresh noise draws per state, two
      independent sets from ``key`` (required): the Fisher KL is ``kl_monte_carlo`` ("k3") on
      one, the acceptance KL is the "k3" estimate on the other PLUS ``confidence`` = z times
      its standard error (stratified: M per state), so that an accepted step has true
      KL ≤ δ with probability ≈ Φ(z) (z = 2: ≈ 98%); z = 0 accepts on the plain estimate
      (``exact=False``; see the module docstring).
    """
    obs = _check_policy_obs(policy, obs)
    if tuple(policy.noise_shape) == (0,):
        raise ValueError("policy: a deterministic policy has no density; use a stochastic bundle (gaussian, flow)")
    old_params = jax.lax.stop_gradient(old_params)
    if getattr(policy, "kl", None) is not None:
        per_state = jax.vmap(policy.kl, in_axes=(None, None, 0))

        def exact(new_params):
            return jnp.mean(per_state(old_params, new_params, obs))

        return PolicyKL(exact, exact, True)
    check_int(samples, "samples")
    if key is None:
        raise ValueError(f"key: policy {policy.name!r} has no closed-form kl, so the sampled KL needs a PRNG key")
    if is_concrete(confidence) and not float(np.asarray(confidence)) >= 0.0:
        raise ValueError(f"confidence must be a float >= 0 (standard errors), got {confidence}")
    dtype = _float_dtype(old_params, obs)
    n = obs.shape[0] * int(samples)
    obs_rep = jnp.repeat(obs, int(samples), axis=0)
    k_measure, k_fisher = jax.random.split(key)
    eps_m = jax.random.normal(k_measure, (n,) + tuple(policy.noise_shape), dtype)
    eps_f = jax.random.normal(k_fisher, (n,) + tuple(policy.noise_shape), dtype)
    z = jnp.asarray(confidence, dtype)
    return PolicyKL(_k3_upper_bound(policy, old_params, obs_rep, eps_m, int(samples), z),
                    lambda p: kl_monte_carlo(policy, old_params, p, obs_rep, eps_f), False)


def kl_monte_carlo(policy: Policy, old_params: PyTree, new_params: PyTree, obs: jax.Array,
                   eps: jax.Array, estimator: str = "k3") -> jax.Array:
    """Monte-Carlo KL(π_old ‖ π_new) on a batch of states, with a_b = sample(old, s_b, ε_b) ~ π_old.

    With log r_b = log π_new(a_b|s_b) − log π_old(a_b|s_b):

    * ``"k3"`` (default): mean_b [exp(log r_b) − 1 − log r_b] — unbiased (E_old[r] = 1) and
      never negative, with a positive semi-definite Hessian at new = old (the sample Fisher
      E[∇log π ∇log πᵀ]), so it suits both the acceptance test and the natural-gradient CG;
    * ``"k1"``: mean_b [−log r_b] — the plain estimator, unbiased but can be negative.

    log r_b: ``policy.log_ratio(old, new, s_b, ε_b)`` when the bundle has it (``gaussian``:
    computed before the squash, exact where float32 tanh has rounded a_b to ±1); otherwise
    ``log_prob(new, s_b, a_b) − log_prob(old, s_b, a_b)``, both by the inverse path at the same
    a_b. Not the forward ``sample_and_log_prob`` for the old term: the new term has no forward
    form, and mixing the two would make log r ≠ 0 at new = old wherever the squash saturates
    (the estimate would then not vanish at the old parameters, nor have the Fisher as its
    Hessian); with the same path on both sides the squash's Jacobian cancels. At a saturated
    a_b that fallback's ratio is the one at the clipped action (``mbpo_grad.policies._squash``).

    obs [B, obs_dim], eps [B, *noise_shape] (keep it fixed across candidates: common random
    numbers make the estimate a smooth deterministic function of ``new_params``; draw it
    independently of the noise that chose the step, see ``policy_kl``). The samples and the
    old log-densities carry no gradient.
    """
    obs = _check_policy_obs(policy, obs)
    if tuple(policy.noise_shape) == (0,):
        raise ValueError("policy: a deterministic policy has no density; use a stochastic bundle (gaussian, flow)")
    if estimator not in ("k1", "k3"):
        raise ValueError(f"estimator must be 'k1' or 'k3', got {estimator!r}")
    eps = jnp.asarray(eps)
    if eps.shape != (obs.shape[0],) + tuple(policy.noise_shape):
        raise ValueError(f"eps must have shape [B={obs.shape[0]}, *noise_shape={tuple(policy.noise_shape)}], "
                         f"got {eps.shape} (obs {obs.shape})")
    log_r = _log_ratios(policy, old_params, new_params, obs, eps)
    if estimator == "k1":
        return jnp.mean(-log_r)
    return jnp.mean(jnp.expm1(log_r) - log_r)


def _log_ratios(policy, old_params, new_params, obs, eps):
    """log π_new(a_b|s_b) − log π_old(a_b|s_b) at a_b = sample(old, s_b, ε_b), shape [B]."""
    old_params = jax.lax.stop_gradient(old_params)
    if getattr(policy, "log_ratio", None) is not None:
        return jax.vmap(policy.log_ratio, in_axes=(None, None, 0, 0))(old_params, new_params, obs, eps)
    a = jax.lax.stop_gradient(jax.vmap(policy.sample, in_axes=(None, 0, 0))(old_params, obs, eps))
    lp_old = jax.vmap(policy.log_prob, in_axes=(None, 0, 0))(old_params, obs, a)
    lp_new = jax.vmap(policy.log_prob, in_axes=(None, 0, 0))(new_params, obs, a)
    return lp_new - lp_old


def _k3_upper_bound(policy, old_params, obs, eps, samples, z):
    """p -> k3 estimate + z · its standard error, stratified over the B states (M per state)."""
    B = obs.shape[0] // samples

    def measure(new_params):
        log_r = _log_ratios(policy, old_params, new_params, obs, eps)
        terms = jnp.expm1(log_r) - log_r
        mean = jnp.mean(terms)
        if samples >= 2:   # Var(mean) = mean_b Var_b / (B M), within-state variances only
            var = jnp.mean(jnp.var(terms.reshape(B, samples), axis=1, ddof=1)) / terms.size
        else:              # one sample per state: the pooled variance (between-state spread included)
            var = jnp.var(terms, ddof=1) / terms.size if terms.size > 1 else jnp.zeros((), terms.dtype)
        return mean + z * jnp.sqrt(var)

    return measure


def gaussian_kl(mu0: jax.Array, log_std0: jax.Array, mu1: jax.Array, log_std1: jax.Array) -> jax.Array:
    """KL(N(μ0, diag σ0²) ‖ N(μ1, diag σ1²)), summed over the last axis
    (``mbpo_grad.policies.gaussian.diag_gaussian_kl``):

        Σ_i [ log σ1_i − log σ0_i + (σ0_i² + (μ0_i − μ1_i)²) / (2 σ1_i²) − ½ ].

    KL is invariant under a shared bijection of the action, so this is also the KL of the
    tanh-squashed Gaussians with these pre-squash parameters.
    """
    return diag_gaussian_kl(mu0, log_std0, mu1, log_std1)
