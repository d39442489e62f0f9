"""The agents' optimiser: optax global-norm clipping → Adam → a scheduled learning rate, with the
rate and the clip norm injected hyper-parameters in the optimiser state (``optax.inject_hyperparams``),
so one optimiser is built per agent and a run's traced values are set in ``init_optimizer``.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import optax

PyTree = Any


def lr_schedule(schedule: str, learning_rate, total_steps: int) -> optax.Schedule:
    """The learning rate at optimiser step k of K = ``total_steps`` as an optax schedule:
    'constant' lr (``optax.constant_schedule``), 'linear' lr·(1 − k/K) (SHAC's,
    ``optax.linear_schedule`` to 0), 'cosine' lr·½(1 + cos(π k/K)) (``optax.cosine_decay_schedule``);
    k past K keeps the final value. ``learning_rate`` may be a traced array."""
    total = max(int(total_steps), 1)
    if schedule == "constant":
        return optax.constant_schedule(learning_rate)
    if schedule == "linear":
        return optax.linear_schedule(learning_rate, 0.0, total)
    if schedule == "cosine":
        return optax.cosine_decay_schedule(learning_rate, total)
    raise ValueError(f"lr_schedule must be 'constant', 'linear' or 'cosine', got {schedule!r}")


def lr_multiplier(schedule: str, count, total_steps: int):
    """Learning-rate factor at optimiser step ``count`` of ``total_steps`` (``lr_schedule`` of a unit rate)."""
    return jnp.asarray(lr_schedule(schedule, 1.0, total_steps)(count), jnp.float32)


def make_optimizer(learning_rate=None, max_grad_norm=0.0, *, total_steps: int, schedule: str = "linear",
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformationExtraArgs:
    """clip_by_global_norm(max_grad_norm) → Adam(b1, b2, eps) → −lr_schedule(learning_rate)(k).

    All optax: ``optax.clip_by_global_norm``, ``optax.scale_by_adam``,
    ``optax.scale_by_learning_rate`` of ``lr_schedule``, inside ``optax.inject_hyperparams``, so
    ``learning_rate`` and ``max_grad_norm`` are hyper-parameters held in the optimiser state
    (``state.hyperparams``): ``init`` stores them and ``update`` reads them from the state. An agent
    builds its optimiser once, leaving both None/default, and sets a run's (traced, possibly
    vmapped) values with ``init_optimizer(tx, params, learning_rate=hp.lr, ...)``; a sweep over
    them then carries a batched learning rate in the state and compiles once.
    ``max_grad_norm <= 0`` disables clipping (the clip norm becomes +inf). A ``learning_rate``
    left None is NaN until set, so forgetting to set it cannot pass unnoticed.
    """
    lr_schedule(schedule, 1.0, total_steps)  # validate the name eagerly

    def adam_chain(learning_rate, max_grad_norm):
        limit = jnp.asarray(max_grad_norm, jnp.float32)
        return optax.chain(
            optax.clip_by_global_norm(jnp.where(limit > 0, limit, jnp.inf)),
            optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
            optax.scale_by_learning_rate(lr_schedule(schedule, learning_rate, total_steps)),
        )

    return optax.inject_hyperparams(adam_chain)(
        learning_rate=float("nan") if learning_rate is None else learning_rate, max_grad_norm=max_grad_norm)


def init_optimizer(tx: optax.GradientTransformation, params: PyTree, **hyperparams) -> PyTree:
    """``tx.init(params)`` with the injected hyper-parameters named in ``hyperparams`` (e.g.
    ``learning_rate``, ``max_grad_norm`` of ``make_optimizer``, also inside wrappers such as
    ``guards.skip_nonfinite``) set to the given, possibly traced, values (``optax.tree.set``), in
    the dtype the state keeps them in (so ``lax.scan`` carries keep one type)."""
    state = tx.init(params)
    values = {}
    for name, value in hyperparams.items():
        try:
            current = optax.tree.get(state, name)
        except KeyError as err:
            raise ValueError(f"init_optimizer: the optimiser state holds no single hyper-parameter {name!r} ({err})") \
                from None
        if current is None:
            raise ValueError(f"init_optimizer: the optimiser state holds no hyper-parameter {name!r}")
        value = jnp.asarray(value)
        if value.shape != jnp.shape(current):
            raise ValueError(f"init_optimizer: {name} must be a scalar, got shape {value.shape}")
        values[name] = value.astype(jnp.asarray(current).dtype)
    return optax.tree.set(state, **values)


__all__ = ["lr_schedule", "lr_multiplier", "make_optimizer", "init_optimizer"]
