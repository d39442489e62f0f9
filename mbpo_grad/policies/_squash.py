"""Shared input checks for the squashed stochastic policies (gaussian, flow).

Out-of-range actions (documented behaviour, both policies):
* a CONCRETE action (a NumPy / eager JAX array) with a non-finite entry or an entry
  outside the closed interval [−1, 1] raises ``ValueError`` naming ``action``;
* inside ``jit`` / ``vmap`` / ``grad`` values are unknown at trace time, so ``infer_noise``
  and ``log_prob`` clip the action to ``[−1 + ε, 1 − ε]`` before ``atanh``
  (``ε = mbpo_grad.bijectors.tanh_clip_eps(dtype)``: 1e-6 in float32, 1e-12 in float64):
  the result is always finite, never NaN.
  The boundary values ±1 (float32 ``tanh`` saturates to exactly ±1 for |u| ≳ 9) are
  legal and take the same clip in eager mode too.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from mbpo_grad.validation import is_concrete


def check_vector(x: Any, size: int, name: str) -> jnp.ndarray:
    x = jnp.asarray(x)
    if x.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},) (one observation; batch with jax.vmap), got {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must be floating point, got dtype {x.dtype}")
    return x


def check_action(action: Any, act_dim: int, name: str = "action") -> jnp.ndarray:
    action = check_vector(action, act_dim, name)
    if is_concrete(action):
        arr = np.asarray(action)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be finite, got {arr}")
        if np.any(np.abs(arr) > 1.0):
            raise ValueError(
                f"{name} must lie in the squash interval [-1, 1] (tanh policy), got {arr}; "
                "under jit such actions are clipped to ±(1 - eps), eps = 1e-6 (float32) / 1e-12 (float64)"
            )
    return action
