"""State-conditioned normalizing-flow policy with exact noise inference (docs/theory.md §4).

    ε ~ N(0, I)  →  [base: x = μ(s) + σ(s) ⊙ ε]  →  f_1(·; s) → … → f_K(·; s)  →  a = tanh(x)

* base layer (``base_affine=True``): the Gaussian policy's mean / log-σ head
  (``conditional_affine`` with a default-initialised MLP and log σ soft-clipped to
  ``[log_std_min, log_std_max]``). With ``layers=0`` the flow IS ``gaussian(...)``: same
  parameters (``params[0]`` ↔ ``gaussian_params["net"]``), same samples and densities.
* ``act_dim ≥ 2``: each of the K layers is a RealNVP ``affine_coupling`` whose conditioner
  sees the untouched half AND the observation; the transformed half alternates between
  layers (parity k mod 2), so every coordinate is transformed.
* ``act_dim = 1``: a coupling has nothing to condition on, so each layer is instead
  ``sinh_arcsinh`` followed by ``conditional_affine``, both conditioned on the
  observation only. The sinh-arcsinh map is what makes a 1-D flow non-Gaussian (skew,
  tails, two modes); a stack of affine layers alone would collapse to one affine map.
  Tail, skew and scale parameters share budgets split over the K layers, so a deep stack
  cannot blow the pre-squash value up (see ``flow``).
* every layer after the base has a zero-initialised last layer: a fresh flow is the
  Gaussian policy given by the base layer.

Bundle (per observation; batch with ``jax.vmap``)::

    a   = pol.sample(params, obs, eps)         eps=None → the image of ε = 0
    eps = pol.infer_noise(params, obs, a)      exact inverse through every layer
    lp  = pol.log_prob(params, obs, a)         log N(ε) − Σ_k log|det ∂f_k|
    a, lp = pol.sample_and_log_prob(params, obs, eps)   the same, forward from ε (exact where
                                               float32 tanh has rounded the action to ±1)

``eps=None`` returns the action at the base mode ε = 0 (for ``layers=0`` the Gaussian's
mode ``tanh(μ)``; a multimodal flow's density need not peak there). Out-of-range actions:
see ``mbpo_grad.policies._squash``.
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp

from mbpo_grad import bijectors as bj
from mbpo_grad.policies._squash import check_action, check_vector
from mbpo_grad.policies.base import Policy
from mbpo_grad.policies.gaussian import _check_int


def flow_bijector(obs_dim: int, act_dim: int, layers: int = 4, hidden: Sequence[int] = (64, 64),
                  base_affine: bool = True, log_std_min: float = -5.0, log_std_max: float = 2.0,
                  log_scale_bound: float = 3.0, log_tail_bound: float = 2.0, skew_bound: float = 3.0,
                  shift_bound: float = 3.0) -> bj.Bijector:
    """The chain ``[base] → K layers → tanh`` used by ``flow`` (context = observation)."""
    obs_dim = _check_int(obs_dim, "obs_dim")
    act_dim = _check_int(act_dim, "act_dim")
    layers = _check_int(layers, "layers", minimum=0)
    for name, value in (("log_scale_bound", log_scale_bound), ("log_tail_bound", log_tail_bound),
                        ("skew_bound", skew_bound), ("shift_bound", shift_bound)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    parts = []
    if base_affine:
        parts.append(bj.conditional_affine(act_dim, obs_dim, hidden=hidden, zero_init=False,
                                           log_scale_min=log_std_min, log_scale_max=log_std_max))
    for k in range(layers):
        if act_dim >= 2:
            parts.append(bj.affine_coupling(act_dim, obs_dim, parity=k % 2, hidden=hidden,
                                            log_scale_bound=log_scale_bound))
        else:  # budgets shared by the K layers: the stack's growth does not compound with K
            parts.append(bj.sinh_arcsinh(1, obs_dim, hidden=hidden, log_tail_bound=log_tail_bound / layers,
                                         skew_bound=skew_bound / layers))
            parts.append(bj.conditional_affine(1, obs_dim, hidden=hidden, zero_init=True,
                                               log_scale_bound=log_scale_bound / layers,
                                               shift_bound=shift_bound))
    parts.append(bj.tanh(act_dim))
    return bj.chain(parts)


def flow(obs_dim: int, act_dim: int, layers: int = 4, hidden: Sequence[int] = (64, 64),
         base_affine: bool = True, log_std_min: float = -5.0, log_std_max: float = 2.0,
         log_scale_bound: float = 3.0, log_tail_bound: float = 2.0, skew_bound: float = 3.0,
         shift_bound: float = 3.0) -> Policy:
    """A normalizing-flow policy bundle (see module docstring).

    Args:
      obs_dim, act_dim: observation and action sizes.
      layers: K, the number of coupling layers (1-D: sinh-arcsinh + affine pairs).
      hidden: conditioner MLP widths (every layer has its own MLP).
      base_affine: start with the state-conditioned affine base ``μ(s) + σ(s) ε``.
      log_std_min, log_std_max: smooth-clip bounds of the base layer's log σ.
      log_scale_bound: soft-clamp bound of each coupling layer's log-scale; for a 1-D flow
        the budget of the K affine layers together (each gets ``log_scale_bound / K``).
      log_tail_bound, skew_bound: 1-D flows only: budgets of the K sinh-arcsinh layers'
        log tail parameter ``log b`` and skew ``a`` (each layer gets ``/ K``).
      shift_bound: 1-D flows only: soft-clamp bound of each affine layer's shift (the base
        layer's mean stays free).

    Why budgets for 1-D: ``sinh(b asinh x)`` grows like ``|x|^b`` and the affine layers in
    between multiply before the next power, so per-layer bounds compound. With ``log b`` up
    to 2 in each of K = 2 layers and free shifts, SHAC drove a pendulum policy to
    pre-squash values ~1e30 and NaN gradients (0 · inf through the saturated tanh). With
    shared budgets the worst case over |ε| ≤ 5 and a base mean of 100 stays below ~1e26
    for every K (float32 holds 3e38); K = 1 keeps its tail and scale ranges.

    ``params`` is a tuple with one entry per bijector of ``flow_bijector(...)``.
    """
    bijector = flow_bijector(obs_dim, act_dim, layers, hidden, base_affine, log_std_min, log_std_max,
                             log_scale_bound, log_tail_bound, skew_bound, shift_bound)
    density = bj.transformed_normal(bijector)

    def sample(params, obs, eps=None):
        obs = check_vector(obs, obs_dim, "obs")
        if eps is None:
            eps = jnp.zeros((act_dim,), obs.dtype)
        eps = check_vector(eps, act_dim, "eps")
        return density.sample(params, eps, obs)

    def infer_noise(params, obs, action):
        obs = check_vector(obs, obs_dim, "obs")
        action = check_action(action, act_dim)
        return density.infer_noise(params, action, obs)

    def log_prob(params, obs, action):
        obs = check_vector(obs, obs_dim, "obs")
        action = check_action(action, act_dim)
        return density.log_prob(params, action, obs)

    def sample_and_log_prob(params, obs, eps):
        obs = check_vector(obs, obs_dim, "obs")
        eps = check_vector(eps, act_dim, "eps")
        return density.sample_and_log_prob(params, eps, obs)

    return Policy(density.init, sample, infer_noise, log_prob, (act_dim,), obs_dim, act_dim, "flow",
                  sample_and_log_prob)


__all__ = ["flow", "flow_bijector"]
