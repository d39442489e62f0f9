"""The policy bundle: pure per-observation functions (optax-style), batched by the caller.

    params = pol.init(key)
    a   = pol.sample(params, obs, eps)         reparameterised; eps ~ N(0, I) of shape pol.noise_shape
                                               (eps=None: the noise-free / mode action)
    eps = pol.infer_noise(params, obs, a)      exact inverse of sample in eps
    lp  = pol.log_prob(params, obs, a)         scalar, summed over action dimensions

``as_engine_policy(pol, observe)`` adapts a bundle to the engine's
``policy(params, state, eps)`` form.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Tuple


class Policy(NamedTuple):
    init: Callable[[Any], Any]
    sample: Callable[[Any, Any, Any], Any]
    infer_noise: Callable[[Any, Any, Any], Any]
    log_prob: Callable[[Any, Any, Any], Any]
    noise_shape: Tuple[int, ...]
    obs_dim: int
    act_dim: int
    name: str = "policy"


def as_engine_policy(pol: Policy, observe: Callable[[Any], Any] = lambda s: s):
    """``policy(params, state, eps) = pol.sample(params, observe(state), eps)``."""

    def policy(params, state, eps):
        return pol.sample(params, observe(state), eps)

    return policy
