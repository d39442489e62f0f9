"""Deterministic tanh-squashed MLP policy a = tanh(μ_w(obs)); noise is ignored."""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp

from mbpo_grad.nn import mlp
from mbpo_grad.policies.base import Policy


def deterministic(obs_dim: int, act_dim: int, hidden: Sequence[int] = (64, 64), zero_last: bool = False) -> Policy:
    """A deterministic policy bundle. ``log_prob`` raises: a point mass has no density."""
    net = mlp(obs_dim, act_dim, hidden, zero_last=zero_last)

    def sample(params, obs, eps=None):
        del eps
        return jnp.tanh(net.apply(params, obs))

    def infer_noise(params, obs, action):
        del params, obs
        return jnp.zeros((0,), dtype=jnp.result_type(action))

    def log_prob(params, obs, action):
        raise ValueError("log_prob: a deterministic policy has no density; use mg.policies.gaussian or flow")

    return Policy(net.init, sample, infer_noise, log_prob, (0,), obs_dim, act_dim, "deterministic")
