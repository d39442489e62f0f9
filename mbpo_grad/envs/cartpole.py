"""Cart-pole swing-up, pure JAX and differentiable.

State s = [x, ẋ, θ, θ̇], θ = 0 upright, start hanging (θ ≈ π). Classic cart-pole
equations of motion (Barto, Sutton & Anderson 1983; Florian 2007 for the
frictionless form) with g = 9.8, cart mass 1, pole mass 0.1, half-length 0.5,
force F = 10·a for a ∈ [−1, 1], 4 semi-implicit Euler substeps per dt = 0.05:

    temp = (F + m_p l θ̇² sin θ) / m_tot
    θ̈ = (g sin θ − cos θ · temp) / (l (4/3 − m_p cos²θ / m_tot))
    ẍ = temp − m_p l θ̈ cos θ / m_tot

Reward, per step (≤ 1), with θ_w = θ wrapped to [−π, π):

    r = 1 − 2 (θ_w/π)² − 0.05 x² − 0.01 θ̇² − 0.001 F²

Hanging still scores −1 a step, upright, still and centred +1. The wrapped-angle
term (rather than cos θ) has a nonzero slope on either side of the hanging state
(cos θ is flat there, so pathwise gradients from a still, hanging pole vanish);
the term is continuous at the wrap, with a kink at θ_w = ±π. The θ̇² term makes
spinning the pole through the top cost more than balancing it. The x² term is
unbounded below if the cart runs away; in our SHAC runs it trained faster and more
reliably than bounded (saturating) cart penalties, which stop pulling a far-away cart
back. Over 200 steps a policy that swings up within ~2 s and balances scores above 100
(trained ones reach about 160).
Observation [x, ẋ, cos θ, sin θ, θ̇].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mbpo_grad.envs.base import Env

G, M_CART, M_POLE, HALF_LEN, MAX_FORCE, DT, SUBSTEPS = 9.8, 1.0, 0.1, 0.5, 10.0, 0.05, 4
M_TOT = M_CART + M_POLE


def _accelerations(state, force):
    _, _, theta, theta_dot = state[0], state[1], state[2], state[3]
    sin, cos = jnp.sin(theta), jnp.cos(theta)
    temp = (force + M_POLE * HALF_LEN * theta_dot**2 * sin) / M_TOT
    theta_acc = (G * sin - cos * temp) / (HALF_LEN * (4.0 / 3.0 - M_POLE * cos**2 / M_TOT))
    x_acc = temp - M_POLE * HALF_LEN * theta_acc * cos / M_TOT
    return x_acc, theta_acc


def make(episode_length: int = 200) -> Env:
    def reset(key):
        noise = 0.05 * jax.random.normal(key, (4,))
        return (jnp.array([0.0, 0.0, jnp.pi, 0.0]) + noise).astype(jnp.result_type(float))

    def step(state, action, xi=None):
        del xi
        force = MAX_FORCE * jnp.reshape(action, ())
        h = DT / SUBSTEPS

        def sub(s, _):
            x_acc, theta_acc = _accelerations(s, force)
            x_dot = s[1] + h * x_acc
            theta_dot = s[3] + h * theta_acc
            return jnp.stack([s[0] + h * x_dot, x_dot, s[2] + h * theta_dot, theta_dot]), None

        state, _ = jax.lax.scan(sub, state, None, length=SUBSTEPS, unroll=True)  # 4 fixed sub-steps: unrolled, cheaper in reverse mode
        return state

    def reward(state, action):
        force = MAX_FORCE * jnp.reshape(action, ())
        theta_w = jnp.mod(state[2] + jnp.pi, 2.0 * jnp.pi) - jnp.pi
        return (1.0 - 2.0 * (theta_w / jnp.pi) ** 2 - 0.05 * state[0] ** 2 - 0.01 * state[3] ** 2
                - 0.001 * force**2)

    def observe(state):
        return jnp.stack([state[0], state[1], jnp.cos(state[2]), jnp.sin(state[2]), state[3]])

    return Env("cartpole", 5, 1, episode_length, reset, step, reward, observe)
