"""The environment interface every system in ``envs/`` exposes (the engine's form).

An ``Env`` is a bundle of pure per-state functions (batch with ``jax.vmap``):

    reset(key) -> state                       one start state (array or pytree)
    step(state, action, xi) -> next_state     xi: dynamics noise or None
    reward(state, action) -> scalar           or mbpo_grad.transition_reward(fn(s, a, s'))
    done(state) -> bool scalar, or None       episode termination (not time limits)
    observe(state) -> obs vector [obs_size]   what a policy / critic sees

Actions live in [-1, 1]^action_size (policies squash with tanh); each env scales
them to its own force/torque range. ``episode_length`` is the time limit.
``noise_shape`` is the shape of one step's ``xi`` (() when the env is
deterministic and ignores it).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Tuple


@dataclasses.dataclass(frozen=True)
class Env:
    name: str
    obs_size: int
    action_size: int
    episode_length: int
    reset: Callable[[Any], Any]
    step: Callable[[Any, Any, Any], Any]
    reward: Callable[..., Any]
    observe: Callable[[Any], Any]
    done: Optional[Callable[[Any], Any]] = None
    noise_shape: Tuple[int, ...] = ()
    info: Any = None  # env-specific extras (e.g. LQR matrices)
