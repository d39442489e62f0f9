"""A 1-D cart whose friction mode switches at random: a hybrid continuous/discrete system.

State s = [x, v]; action a (scaled to a force u = F·a); at every step a friction
mode z_t ∈ {0: sliding, 1: sticking} is drawn from a KNOWN state- and
action-dependent distribution (sticking is likely when the cart is slow and the
push is weak, as with static friction):

    p(z_t = 1 | s_t, a_t) = sigmoid(c_0 − c_v v_t² − c_u u_t²)
    v_{t+1} = v_t + dt (u_t − μ_{z_t} v_t),     x_{t+1} = x_t + dt v_{t+1}
    r(s, a) = −(x² + 0.1 a²)

The mode cannot be reparameterised (it is discrete), so a pathwise gradient
that holds the sampled modes fixed misses how the policy shifts the mode
probabilities: it is biased. The DPMB-SF hybrid (``mbpo_grad.score_function``)
adds the score term Σ_t ∇ log p(z_t | s_t, a_t) · (reward after t) and is
unbiased; ``mbpo_grad.score_function.exact_hybrid_return`` enumerates all
2^T mode sequences for an exact reference.

Engine form: ``step(s, a, xi)`` with xi ~ N(0, I) of shape [2], the noise every
agent draws for an env's ``noise_shape`` (``envs.base``); it is turned into
standard Gumbel noise g = −log(−log Φ(xi)) and the mode is z = argmax(logits + g),
an exact draw (Gumbel-max). ``mode_logits`` / ``step_mode`` are the pieces
``hybrid_unroll`` uses (it takes the Gumbel noise itself); ``info["mode_logits"]`` and
``info["mode"]`` (``sampled_mode``) expose the mode to agents (``envs.base.hybrid_modes``; SHAC's
``estimator="dpmb_sf"``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mbpo_grad.envs.base import Env

DT = 0.2
MAX_FORCE = 2.0
FRICTION = (0.2, 3.0)        # μ for mode 0 (sliding) and mode 1 (sticking)
STICK_BIAS, STICK_SPEED, STICK_FORCE = 1.0, 8.0, 0.5
NUM_MODES = 2


def mode_logits(state, action):
    """[0, ℓ] with ℓ = c_0 − c_v v² − c_u u²: log-odds of sticking (mode 1) vs sliding (mode 0)."""
    v = state[1]
    u = MAX_FORCE * jnp.reshape(action, ())
    ell = STICK_BIAS - STICK_SPEED * v**2 - STICK_FORCE * u**2
    return jnp.stack([jnp.zeros_like(ell), ell])


def step_mode(state, action, mode):
    """Deterministic semi-implicit Euler step given the friction mode (an int)."""
    x, v = state[0], state[1]
    u = MAX_FORCE * jnp.reshape(action, ())
    mu = jnp.asarray(FRICTION, dtype=jnp.result_type(state))[mode]
    v_next = v + DT * (u - mu * v)
    x_next = x + DT * v_next
    return jnp.stack([x_next, v_next])


def gumbel_from_normal(xi):
    """Standard Gumbel noise from ξ ~ N(0, 1): g = −log(−log Φ(ξ)) (accurate in both tails)."""
    from mbpo_grad.bijectors import log_neg_log_ndtr
    return -log_neg_log_ndtr(xi)


def sampled_mode(state, action, xi):
    """The mode ``step`` takes: z = argmax(ℓ + g), g = Gumbel noise from xi ~ N(0, I) [2] (Gumbel-max,
    an exact draw from softmax(ℓ)); xi None: the likelier mode. No gradient (an integer)."""
    logits = jax.lax.stop_gradient(mode_logits(state, action))
    return jnp.argmax(logits if xi is None else logits + gumbel_from_normal(jax.lax.stop_gradient(xi)))


def step(state, action, xi):
    """Sample the mode from xi ~ N(0, I) [2] (``sampled_mode``) and step; xi None: the likelier mode.

    Before the fifth session ``xi`` was read as Gumbel noise directly, while the agents feed every
    env N(0, I): under the agents sticking had probability Φ(ℓ/√2), not sigmoid(ℓ)."""
    return step_mode(state, action, sampled_mode(state, action, xi))


def reward(state, action):
    a = jnp.reshape(action, ())
    return -(state[0] ** 2 + 0.1 * a**2)


def make(episode_length: int = 6) -> Env:
    def reset(key):
        k1, k2 = jax.random.split(key)
        x = jax.random.uniform(k1, (), minval=-1.5, maxval=1.5)
        v = jax.random.uniform(k2, (), minval=-0.5, maxval=0.5)
        return jnp.stack([x, v]).astype(jnp.result_type(float))

    def observe(state):
        return state

    info = {"mode_logits": mode_logits, "mode": sampled_mode, "step_mode": step_mode, "num_modes": NUM_MODES}
    return Env("switching_cart", 2, 1, episode_length, reset, step, reward, observe,
               done=None, noise_shape=(NUM_MODES,), info=info)
