"""The policy bundle: pure per-observation functions (optax-style), batched by the caller.

    params = pol.init(key)
    a   = pol.sample(params, obs, eps)         reparameterised; eps ~ N(0, I) of shape pol.noise_shape
                                               (eps=None: the noise-free / mode action)
    eps = pol.infer_noise(params, obs, a)      exact inverse of sample in eps
    lp  = pol.log_prob(params, obs, a)         scalar, summed over action dimensions
    a, lp = pol.sample_and_log_prob(params, obs, eps)
                                               the action and its log-density computed FORWARD
                                               from eps (None for a bundle without a density)
    kl  = pol.kl(params_old, params_new, obs)  optional: KL(π_old(·|obs) ‖ π_new(·|obs)) in closed
                                               form (None where the family has none, e.g. flows)
    lr  = pol.log_ratio(params_old, params_new, obs, eps)
                                               optional: log π_new(a|obs) − log π_old(a|obs) at
                                               a = sample(params_old, obs, eps), computed without
                                               inverting the squash (its Jacobian cancels)

Why ``sample_and_log_prob``: a squashed policy's ``log_prob(a)`` must first undo the squash,
``u = atanh(a)``. In float32 ``tanh(u)`` rounds to exactly ±1 once |u| ≳ 9, so the inverse
sees a clipped action and returns the density of a different pre-squash value. Computed
forward from ε, ``log π = log N(ε) − log|det ∂a/∂ε|`` needs no inverse and stays exact.
Entropy terms on the policy's own samples (SVG, SAC) therefore use the module function
``sample_and_log_prob(pol, params, obs, eps)``, which falls back to ``log_prob(sample(...))``
for a user bundle that does not provide the field.

``kl`` and ``log_ratio`` serve the KL trust region (``mbpo_grad.trust_region.policy_kl``): the
closed form where there is one, else a sampled estimate built from ``log_ratio`` (or, for a
user bundle without either, from two ``log_prob`` calls at the same sampled action).

``as_engine_policy(pol, observe)`` adapts a bundle to the engine's
``policy(params, state, eps)`` form.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Tuple


class Policy(NamedTuple):
    init: Callable[[Any], Any]
    sample: Callable[[Any, Any, Any], Any]
    infer_noise: Callable[[Any, Any, Any], Any]
    log_prob: Callable[[Any, Any, Any], Any]
    noise_shape: Tuple[int, ...]
    obs_dim: int
    act_dim: int
    name: str = "policy"
    sample_and_log_prob: Optional[Callable[[Any, Any, Any], Any]] = None
    kl: Optional[Callable[[Any, Any, Any], Any]] = None
    log_ratio: Optional[Callable[[Any, Any, Any, Any], Any]] = None


def sample_and_log_prob(pol: Policy, params, obs, eps):
    """``(a, log π(a|obs))`` for ``a = pol.sample(params, obs, eps)``, the density computed forward.

    Uses ``pol.sample_and_log_prob`` when the bundle has one (gaussian, flow); otherwise
    ``pol.log_prob(params, obs, pol.sample(params, obs, eps))``.
    """
    if getattr(pol, "sample_and_log_prob", None) is not None:
        return pol.sample_and_log_prob(params, obs, eps)
    action = pol.sample(params, obs, eps)
    return action, pol.log_prob(params, obs, action)


def log_ratio(pol: Policy, params_old, params_new, obs, eps, action, log_prob_old):
    """log π_new(a|obs) − log π_old(a|obs) at a = ``pol.sample(params_old, obs, eps)`` (= ``action``,
    whose old log-density ``log_prob_old`` the caller computed forward): the bundle's own
    ``log_ratio`` where it has one (the squash's Jacobian cancels, no inverse of a saturated
    action), else ``pol.log_prob(params_new, obs, action) − log_prob_old``."""
    if getattr(pol, "log_ratio", None) is not None:
        return pol.log_ratio(params_old, params_new, obs, eps)
    return pol.log_prob(params_new, obs, action) - log_prob_old


def as_engine_policy(pol: Policy, observe: Callable[[Any], Any] = lambda s: s):
    """``policy(params, state, eps) = pol.sample(params, observe(state), eps)``."""

    def policy(params, state, eps):
        return pol.sample(params, observe(state), eps)

    return policy
