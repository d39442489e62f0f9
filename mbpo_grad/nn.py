"""The project's neural-network stack: Flax Linen modules used as pure functions.

Why Linen: ``module.init`` / ``module.apply`` are already pure functions over a
parameter pytree, so ``jax.jit``, ``vmap``, ``grad``, ``lax.scan`` and
sharding apply with no split/merge step, and policies, critics and models can be
bundles of pure functions (``init``, ``apply``) like optax transformations.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
    """Dense → activation → … → Dense(out). ``zero_last`` starts the output at 0."""

    hidden: Sequence[int]
    out: int
    activation: Callable = nn.tanh
    zero_last: bool = False
    layer_norm: bool = False

    @nn.compact
    def __call__(self, x):
        for width in self.hidden:
            x = nn.Dense(width)(x)
            if self.layer_norm:
                x = nn.LayerNorm()(x)
            x = self.activation(x)
        if self.zero_last:
            x = nn.Dense(self.out, kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros)(x)
        else:
            x = nn.Dense(self.out)(x)
        return x


class Net(NamedTuple):
    """A network as two pure functions: ``init(key) -> params``, ``apply(params, x) -> y``."""

    init: Callable
    apply: Callable


def mlp(in_dim: int, out: int, hidden: Sequence[int] = (64, 64), activation: Callable = nn.tanh,
        zero_last: bool = False, layer_norm: bool = False) -> Net:
    """An MLP as a ``Net`` bundle acting on one input vector of size ``in_dim``."""
    module = MLP(tuple(hidden), out, activation, zero_last, layer_norm)

    def init(key):
        return module.init(key, jnp.zeros((in_dim,)))["params"]

    def apply(params, x):
        return module.apply({"params": params}, x)

    return Net(init, apply)
