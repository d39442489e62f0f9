"""Critics: V(s), Q(s, a), twin Q, Polyak target networks, regression losses, TD(λ) targets.

Every critic is a ``Net`` bundle (``init(key) -> params``, ``apply(params, ...) -> value``)
built on the project's Linen MLP (``mbpo_grad.nn``) and acting on ONE input; batch
with ``jax.vmap``. The losses take batches.

    V(s)        v_critic(obs_dim).apply(params, obs)                 -> scalar
    Q(s, a)     q_critic(obs_dim, act_dim).apply(params, obs, a)     -> scalar
    twin Q      twin_q(obs_dim, act_dim).apply(params, obs, a)       -> [2]; min over axis -1
                (two independent networks; TD3's clipped double-Q target uses the minimum,
                Fujimoto et al. 2018)
    targets     polyak(target, online, tau) = (1 − τ)·target + τ·online  (Lillicrap et al. 2016)
    TD(λ)       td_lambda_targets(...) wires ``mbpo_grad.returns.td_lambda`` to a window
                from the engine (alive mask, terminal vs time-limit ends).

Regression losses are mean squared errors to ``lax.stop_gradient``-ed targets, so a
target computed from the same parameters never receives gradient.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mbpo_grad import returns as R
from mbpo_grad import validation as V
from mbpo_grad.nn import MLP, Net

PyTree = Any


def _check_dim(value, name):
    V.check_int(value, name)


def v_critic(obs_dim: int, hidden: Sequence[int] = (64, 64), activation: Callable = nn.elu,
             layer_norm: bool = False) -> Net:
    """State-value critic V(obs) -> scalar, an MLP on the observation vector."""
    _check_dim(obs_dim, "obs_dim")
    module = MLP(tuple(hidden), 1, activation, False, layer_norm)

    def init(key):
        return module.init(key, jnp.zeros((obs_dim,)))["params"]

    def apply(params, obs):
        return module.apply({"params": params}, obs)[0]

    return Net(init, apply)


def q_critic(obs_dim: int, act_dim: int, hidden: Sequence[int] = (64, 64), activation: Callable = nn.elu,
             layer_norm: bool = False) -> Net:
    """Action-value critic Q(obs, action) -> scalar, an MLP on concat(obs, action)."""
    _check_dim(obs_dim, "obs_dim")
    _check_dim(act_dim, "act_dim")
    module = MLP(tuple(hidden), 1, activation, False, layer_norm)

    def init(key):
        return module.init(key, jnp.zeros((obs_dim + act_dim,)))["params"]

    def apply(params, obs, action):
        return module.apply({"params": params}, jnp.concatenate([obs, jnp.reshape(action, (-1,))], -1))[0]

    return Net(init, apply)


def twin_q(obs_dim: int, act_dim: int, hidden: Sequence[int] = (64, 64), activation: Callable = nn.elu,
           layer_norm: bool = False) -> Net:
    """Two independent Q networks with stacked parameters; ``apply`` returns both values, shape [2].

    ``init`` draws the two from independent keys; use ``twin_min`` (or ``jnp.min(..., -1)``)
    for the clipped double-Q value and train both heads on the same targets.
    """
    single = q_critic(obs_dim, act_dim, hidden, activation, layer_norm)

    def init(key):
        return jax.vmap(single.init)(jax.random.split(key, 2))

    def apply(params, obs, action):
        return jax.vmap(single.apply, in_axes=(0, None, None))(params, obs, action)

    return Net(init, apply)


def twin_min(twin: Net, params: PyTree, obs: jax.Array, action: jax.Array) -> jax.Array:
    """min(Q1(obs, a), Q2(obs, a)) for a ``twin_q`` bundle."""
    return jnp.min(twin.apply(params, obs, action), axis=-1)


def polyak(target: PyTree, online: PyTree, tau: Any) -> PyTree:
    """target ← (1 − τ)·target + τ·online, leaf by leaf (τ may be traced; τ = 1 copies online)."""
    def mix(t, o):
        tau_ = jnp.asarray(tau, dtype=jnp.result_type(t))
        return (1.0 - tau_) * t + tau_ * o

    return jax.tree_util.tree_map(mix, target, online)


def mse(predictions: jax.Array, targets: jax.Array, weights: Optional[jax.Array] = None) -> jax.Array:
    """Σ w (pred − sg(target))² / Σ w over all elements (plain mean without weights).

    ``targets`` and ``weights`` must have the shape of ``predictions`` (checked at trace
    time; a ``ValueError`` names the argument): per-sample arrays are never broadcast,
    since targets [B, 1] against predictions [B] would silently average a [B, B] matrix
    of cross errors. An all-zero weight vector gives 0. Entries of weight 0 feed neither
    the value nor the gradient even where their target is NaN (a prediction computed from a
    NaN input still back-propagates 0 · NaN into the critic: mask such inputs first).
    """
    V.check_same_shape(targets, "targets", predictions, "predictions")
    if weights is not None:
        V.check_same_shape(weights, "weights", predictions, "predictions")
    diff = predictions - jax.lax.stop_gradient(targets)
    if weights is None:
        return jnp.mean(diff ** 2)
    w = jnp.asarray(weights, diff.dtype)
    # Zero-weight entries (dead steps, masked envs) are selected away before the square:
    # w · err with a NaN target would be NaN in value and 0 · NaN in the gradient.
    diff = jnp.where(w > 0, diff, jnp.zeros_like(diff))
    return jnp.sum(w * diff ** 2) / jnp.maximum(jnp.sum(w), 1e-12)


def _check_batch(obs, name="obs"):
    if jnp.ndim(obs) < 1:
        raise ValueError(f"{name} must carry a leading batch axis B, got shape {jnp.shape(obs)}")
    return jnp.shape(obs)[0]


def _check_per_sample(x, name, batch):
    if x is not None and tuple(jnp.shape(x)) != (batch,):
        raise ValueError(f"{name} must have shape [B] = ({batch},) (one value per sample), got {tuple(jnp.shape(x))}")


def v_loss(critic: Net, params: PyTree, obs: jax.Array, targets: jax.Array,
           weights: Optional[jax.Array] = None) -> jax.Array:
    """MSE of V over a batch: obs [B, obs_dim], targets [B], weights [B] or None (shapes checked)."""
    B = _check_batch(obs)
    _check_per_sample(targets, "targets", B)
    _check_per_sample(weights, "weights", B)
    values = jax.vmap(critic.apply, in_axes=(None, 0))(params, obs)
    _check_per_sample(values, "critic.apply output (batched)", B)
    return mse(values, targets, weights)


def q_loss(critic: Net, params: PyTree, obs: jax.Array, actions: jax.Array, targets: jax.Array,
           weights: Optional[jax.Array] = None) -> jax.Array:
    """MSE of Q over a batch: obs [B, obs_dim], actions [B, act_dim], targets [B], weights [B]
    or None (shapes checked); for a ``twin_q`` bundle both heads regress on the same targets
    (the loss is summed over the two heads)."""
    B = _check_batch(obs)
    if _check_batch(actions, "actions") != B:
        raise ValueError(f"actions must have the batch size of obs ({B}), got shape {tuple(jnp.shape(actions))}")
    _check_per_sample(targets, "targets", B)
    _check_per_sample(weights, "weights", B)
    values = jax.vmap(critic.apply, in_axes=(None, 0, 0))(params, obs, actions)
    if values.ndim == 2:  # twin: [B, 2]
        heads = values.shape[-1]
        t = jnp.broadcast_to(jnp.asarray(targets)[:, None], values.shape)
        w = None if weights is None else jnp.broadcast_to(jnp.asarray(weights)[:, None], values.shape)
        return heads * mse(values, t, w)
    return mse(values, targets, weights)


def one_step_targets(reward: jax.Array, discount: jax.Array, gamma: Any, next_value: jax.Array) -> jax.Array:
    """y = r + γ d v' per transition, [B]; v' is read only where d > 0.

    ``discount`` d is 1 − terminal (the replay schema). At a terminal transition v' is
    selected away instead of multiplied by 0, so a critic that is non-finite at a terminal
    next state (a body under the floor) cannot turn the target into 0 · NaN = NaN.
    Reference: the one-step Bellman target of DQN / DDPG (Mnih et al. 2015; Lillicrap et al. 2016).
    """
    reward = jnp.asarray(reward)
    for x, name in ((discount, "discount"), (next_value, "next_value")):
        V.check_same_shape(x, name, reward, "reward")
    discount = jnp.asarray(discount, reward.dtype)
    tail = jnp.where(discount > 0, discount * next_value, jnp.zeros_like(reward))
    return reward + jnp.asarray(gamma, reward.dtype) * tail


def td_lambda_targets(rewards: jax.Array, values: jax.Array, alive: jax.Array, terminal: jax.Array,
                      gamma: Any, lam: Any) -> jax.Array:
    """TD(λ) targets for ONE window of an engine ``Trajectory`` (time on axis 0).

    Args:
      rewards: r_0..r_{T-1}, shape [T].
      values: v_0..v_T = V(s_0..s_T) (from a target critic; not differentiated), [T+1].
      alive: the engine's mask, [T+1]: 1 while s_t belongs to the episode; the first t
        with alive_t = 0 is the state where the episode ended.
      terminal: [T+1], 1 where s_t is a true terminal state (no value beyond it).
        An episode end that is not terminal is a time-limit truncation and bootstraps
        from V of the state where it was cut.
      gamma, lam: discount and λ (may be traced).

    Returns [T]: G^λ_t = r_t + d_t [(1 − λ) v_{t+1} + λ G^λ_{t+1}] (``returns.td_lambda``), with
    d_t = γ (1 − terminal_{t+1}) for live steps and G^λ_T = v_T. Steps past the end
    (alive_t = 0) get G_t = v_t, so the last live step sees a full bootstrap γ v_{k}
    at a truncation and none at a termination. Only entries with alive_t = 1 are
    meaningful targets (weight the loss with ``alive[:-1]``).
    Reference: Sutton & Barto (2018) §12.1; Xu et al. (2022) use these targets for SHAC.
    """
    rewards = jnp.asarray(rewards)
    T = rewards.shape[0] if rewards.ndim == 1 else None
    if T is None:
        raise ValueError(f"rewards must have shape [T] (one window; batch with jax.vmap), got {rewards.shape}")
    for name, x in (("values", values), ("alive", alive), ("terminal", terminal)):
        if tuple(jnp.shape(x)) != (T + 1,):
            raise ValueError(f"{name} must have shape [T+1] = ({T + 1},) for rewards of shape ({T},), "
                             f"got {tuple(jnp.shape(x))}")
    dtype = rewards.dtype
    values = jnp.asarray(values, dtype)
    live = jnp.asarray(alive, dtype)[:-1] > 0
    term_next = jnp.asarray(terminal, dtype)[1:] > 0
    gamma = jnp.asarray(gamma, dtype)
    discounts = jnp.where(live, gamma * (1.0 - term_next.astype(dtype)), 0.0)
    rewards = jnp.where(live, rewards, values[:-1])
    return R.td_lambda(rewards, values, discounts, lam)


__all__ = [
    "v_critic", "q_critic", "twin_q", "twin_min", "polyak", "mse", "v_loss", "q_loss", "one_step_targets", "td_lambda_targets",
]
