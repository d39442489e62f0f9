"""Pendulum swing-up (the classic torque-limited pendulum), pure JAX and differentiable.

State s = [θ, θ̇] with θ = 0 upright. Semi-implicit Euler with dt = 0.05:
    θ̇' = clip(θ̇ + (3g/(2l) sin θ + 3/(m l²) u) dt, −8, 8),  θ' = θ + θ̇' dt,
u = 2·a for a ∈ [−1, 1]. Reward −(θ_n² + 0.1 θ̇² + 0.001 u²), θ_n = θ wrapped to
[−π, π): a random policy scores about −1200 over 200 steps, a swing-up about −150.
Observation [cos θ, sin θ, θ̇].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mbpo_grad.envs.base import Env

G, M, L, DT, MAX_TORQUE, MAX_SPEED = 10.0, 1.0, 1.0, 0.05, 2.0, 8.0


def _wrap(theta):
    return jnp.mod(theta + jnp.pi, 2.0 * jnp.pi) - jnp.pi


def make(episode_length: int = 200) -> Env:
    def reset(key):
        k1, k2 = jax.random.split(key)
        theta = jax.random.uniform(k1, (), minval=-jnp.pi, maxval=jnp.pi)
        theta_dot = jax.random.uniform(k2, (), minval=-1.0, maxval=1.0)
        return jnp.stack([theta, theta_dot]).astype(jnp.result_type(float))

    def step(state, action, xi=None):
        del xi
        theta, theta_dot = state[0], state[1]
        u = MAX_TORQUE * jnp.reshape(action, ())
        theta_dot = theta_dot + (3.0 * G / (2.0 * L) * jnp.sin(theta) + 3.0 / (M * L**2) * u) * DT
        theta_dot = jnp.clip(theta_dot, -MAX_SPEED, MAX_SPEED)
        theta = theta + theta_dot * DT
        return jnp.stack([theta, theta_dot])

    def reward(state, action):
        u = MAX_TORQUE * jnp.reshape(action, ())
        return -(_wrap(state[0]) ** 2 + 0.1 * state[1] ** 2 + 0.001 * u**2)

    def observe(state):
        return jnp.stack([jnp.cos(state[0]), jnp.sin(state[0]), state[1]])

    return Env("pendulum", 3, 1, episode_length, reset, step, reward, observe)
