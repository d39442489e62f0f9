"""A 1-D thruster with three thrust levels: dynamics piecewise constant in the action.

State s = [x]; the action a ∈ [−1, 1] is quantised to a thrust level

    q(a) = −1 if a < −1/3,   0 if |a| ≤ 1/3,   +1 if a > 1/3,
    x_{t+1} = x_t + δ q(a_t),                    δ = 0.1,
    r(s_t, a_t) = exp(−x_{t+1}² / w²),           w = 0.5,

x_0 ~ U([−2, −1] ∪ [1, 2]), T = 50 steps, no termination, deterministic (noise_shape ()).
The reward reads the next position (recomputed from (s, a), so it is a plain reward(s, a)
that every agent and model can use); it is smooth in the state and has its peak r = 1 at
the target x = 0. The width w = 0.5 keeps the reward visible from the nearest starts
(f(1) = e^−4 ≈ 0.018; with w = 0.25 it would be e^−16), so a score-function learner gets
signal early, while a policy that never moves still earns almost nothing (below).

Why: ∂q/∂a = 0 wherever it exists (the quantiser is built from ``jnp.where`` with constant
branches; no straight-through surrogate), so ∂x_{t+1}/∂a_t = ∂r_t/∂a_t = 0 and every
pathwise gradient through the simulator (BPO, SVG(∞), the reward sum of a SHAC / DPMB-R-n
window; with or without policy noise) is exactly zero: the states never depend on the policy
parameters along a differentiated path. (A window's bootstrap γ^n Q(s_n, π(s_n)) still passes
a gradient through a learned critic's ∂Q/∂a, which is smooth where the true one is not, so
critic-based actors are not blocked the same way.) The expected return under a stochastic policy still depends on them: with
a = tanh(μ + σ ε) the level probabilities are Gaussian tail masses,

    P(q = +1) = Φ((μ − c)/σ),   P(q = −1) = Φ((−c − μ)/σ),   c = atanh(1/3) = ½ ln 2,

smooth in (μ, σ), so a score-function (likelihood-ratio) estimator Σ_t ∇ log π(a_t|s_t) · R
is unbiased and nonzero, and PPO / REINFORCE can learn. The thresholds sit at ±1/3 on the
squashed action, so a tanh-Gaussian policy at μ = 0, σ = 1 picks each nonzero level with
probability Φ(−c) ≈ 0.36 (a random walk that explores).

Optimum (exact, any start x_0 and horizon T; ``optimal_return``). From x_0 the reachable
positions after t steps are x_0 + kδ with |k| ≤ t, and the reward f(x) = exp(−x²/w²) is
decreasing in |x|. Let k* = round(−x_0/δ) be the lattice step nearest the target and
m = |k*|. Since |x_0 + kδ| is convex in k and minimised over the integers at k*, the best
reward reachable at step t (reading x_{t+1}, |k| ≤ t+1) is at k = sign(k*) min(t+1, m).
The policy "move toward 0 while |x| > δ/2, then hold" (``optimal_action``) is at exactly that
point at every step, so it attains the per-step upper bound at every step at once:

    J*(x_0) = Σ_{t=0}^{T−1} f(x_0 + sign(k*) min(t+1, m) δ).

Moving past the nearest lattice point, or any detour, can only lower some step's reward.
(At a tie, |x_0 + k*δ| = δ/2, both nearest points give the same return.) A policy that never
moves earns T f(x_0); over the start distribution that is 0.26 % of the mean optimum (39.81)
(``mean_optimal_return``; the numbers are in ``tests/test_quantized_env.py``).
``exact_expected_return`` gives the exact expected return of a stochastic policy over a short
horizon by enumerating the 3^T level sequences (the reference for gradient checks).
"""
from __future__ import annotations

import itertools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr

from mbpo_grad.envs.base import Env
from mbpo_grad.validation import check_int

STEP_SIZE = 0.1             # δ: the position change per step at full thrust
REWARD_WIDTH = 0.5          # w in r = exp(−x'²/w²)
THRESHOLD = 1.0 / 3.0       # |a| > 1/3 fires the thruster
START_RANGE = (1.0, 2.0)    # |x_0| ~ U[1, 2], either sign
EPISODE_LENGTH = 50
MAX_ENUMERATION_HORIZON = 12   # 3^12 = 531441 sequences


def _check_positive(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not math.isfinite(float(value)) or float(value) <= 0.0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def quantize(action):
    """q(a) ∈ {−1, 0, +1} (in a's dtype) for an action of shape (1,) or (); dq/da = 0 exactly."""
    a = jnp.reshape(action, ())
    one = jnp.ones_like(a)
    return jnp.where(a > THRESHOLD, one, jnp.where(a < -THRESHOLD, -one, jnp.zeros_like(a)))


def next_position(state, action, step_size=STEP_SIZE):
    """x' = x + δ q(a), shape (1,), in the state's dtype."""
    return state + step_size * quantize(action).astype(state.dtype)


def position_reward(x, width=REWARD_WIDTH):
    """f(x) = exp(−x²/w²), elementwise."""
    return jnp.exp(-jnp.square(x) / width**2)


def optimal_action(state, step_size=STEP_SIZE):
    """An optimal action, shape (1,): −sign(x) (full thrust toward 0) while |x| > δ/2, else 0 (hold)."""
    x = jnp.reshape(state, ())
    a = jnp.where(jnp.abs(x) > 0.5 * step_size, -jnp.sign(x), jnp.zeros_like(x))
    return jnp.reshape(a, (1,))


def optimal_return(x0, episode_length=EPISODE_LENGTH, *, step_size=STEP_SIZE, width=REWARD_WIDTH):
    """J*(x_0) = Σ_{t<T} f(x_0 + sign(k*) min(t+1, |k*|) δ), k* = round(−x_0/δ); x0 any shape.

    Exact (see the module docstring for the argument); returns an array of x0's shape.
    """
    episode_length = check_int(episode_length, "episode_length")
    step_size = _check_positive(step_size, "step_size")
    width = _check_positive(width, "width")
    x0 = jnp.asarray(x0)
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        raise ValueError(f"x0 must be floating point (start positions), got dtype {x0.dtype}")
    k_star = jnp.round(-x0 / step_size)
    t = jnp.arange(1, episode_length + 1, dtype=x0.dtype)
    steps = jnp.minimum(t, jnp.abs(k_star)[..., None])
    positions = x0[..., None] + jnp.sign(k_star)[..., None] * steps * step_size
    return jnp.sum(position_reward(positions, width), axis=-1)


def mean_optimal_return(episode_length=EPISODE_LENGTH, *, step_size=STEP_SIZE, width=REWARD_WIDTH,
                        start_range=START_RANGE):
    """E_{x_0}[J*(x_0)] over |x_0| ~ U[lo, hi] (either sign, the same by symmetry), in closed form.

    On the cell where round(x_0/δ) = j the optimal path's t-th reward is f(x_0 − min(t+1, j) δ),
    and ∫_a^b exp(−(x − c)²/w²) dx = (w√π/2)[erf((b − c)/w) − erf((a − c)/w)]; summed over the
    cells meeting [lo, hi] and divided by hi − lo (Python floats, double precision).
    """
    episode_length = check_int(episode_length, "episode_length")
    step_size = _check_positive(step_size, "step_size")
    width = _check_positive(width, "width")
    if not isinstance(start_range, (tuple, list)) or len(start_range) != 2:
        raise ValueError(f"start_range must be (lo, hi), got {start_range!r}")
    lo, hi = (_check_positive(v, "start_range") for v in start_range)
    if not lo < hi:
        raise ValueError(f"start_range must be (lo, hi) with 0 < lo < hi, got {start_range!r}")
    total = 0.0
    for j in range(max(int(lo / step_size) - 1, 0), int(hi / step_size) + 2):   # every cell that can meet [lo, hi]
        a, b = max(lo, (j - 0.5) * step_size), min(hi, (j + 0.5) * step_size)
        if b <= a:
            continue
        c = [min(ti, j) * step_size for ti in range(1, episode_length + 1)]
        total += sum(0.5 * width * math.sqrt(math.pi) * (math.erf((b - ci) / width) - math.erf((a - ci) / width))
                     for ci in c)
    return total / (hi - lo)


def gaussian_level_probabilities(mean, std):
    """[P(q=−1), P(q=0), P(q=+1)] for a = tanh(mean + std ε), ε ~ N(0, 1) (scalars):
    Φ((−c − μ)/σ), 1 − the others, Φ((μ − c)/σ) with c = atanh(1/3)."""
    c = math.atanh(THRESHOLD)
    p_minus = ndtr((-c - mean) / std)
    p_plus = ndtr((mean - c) / std)
    return jnp.stack([p_minus, 1.0 - p_minus - p_plus, p_plus])


def exact_expected_return(level_probabilities: Callable, x0, horizon, *, step_size=STEP_SIZE,
                          width=REWARD_WIDTH):
    """E[Σ_{t<T} r_t] from one start x0 (shape (1,)) for a stochastic policy, by enumeration.

    ``level_probabilities(state) -> [3]``: the policy's probabilities of q = (−1, 0, +1) at a
    state (e.g. ``gaussian_level_probabilities(μ(x), σ(x))``). Sums P(sequence) · return over
    all 3^T level sequences (T ≤ 12); differentiable in whatever the probabilities depend on.
    """
    horizon = check_int(horizon, "horizon")
    if horizon > MAX_ENUMERATION_HORIZON:
        raise ValueError(f"horizon must be <= {MAX_ENUMERATION_HORIZON} (3^T sequences), got {horizon}")
    seqs = jnp.asarray(list(itertools.product(range(3), repeat=horizon)), dtype=jnp.int32)  # [3^T, T]
    x0 = jnp.asarray(x0)

    def one(seq):
        def body(carry, idx):
            x, weight = carry
            p = level_probabilities(x)
            x = x + step_size * (idx - 1).astype(x.dtype)
            return (x, weight * p[idx]), jnp.reshape(position_reward(x, width), ())
        (_, weight), rewards = jax.lax.scan(body, (x0, jnp.ones((), x0.dtype)), seq)
        return weight * jnp.sum(rewards)

    return jnp.sum(jax.vmap(one)(seqs))


def make(episode_length: int = EPISODE_LENGTH, step_size: float = STEP_SIZE,
         reward_width: float = REWARD_WIDTH) -> Env:
    """The env (``envs.make("quantized_thruster", ...)``); ``info`` holds ``quantize``, ``optimal_action``,
    ``optimal_return(x0, T=episode_length)`` and ``mean_optimal_return`` bound to these settings."""
    episode_length = check_int(episode_length, "episode_length")
    step_size = _check_positive(step_size, "step_size")
    reward_width = _check_positive(reward_width, "reward_width")
    lo, hi = START_RANGE

    def reset(key):
        k1, k2 = jax.random.split(key)
        magnitude = jax.random.uniform(k1, (), minval=lo, maxval=hi)
        sign = jnp.where(jax.random.bernoulli(k2), 1.0, -1.0)
        return jnp.reshape(sign * magnitude, (1,)).astype(jnp.result_type(float))

    def step(state, action, xi=None):
        del xi
        return next_position(state, action, step_size)

    def reward(state, action):
        return jnp.reshape(position_reward(next_position(state, action, step_size), reward_width), ())

    def observe(state):
        return state

    info = {
        "quantize": quantize,
        "optimal_action": lambda s: optimal_action(s, step_size),
        "optimal_return": lambda x0, T=episode_length: optimal_return(x0, T, step_size=step_size, width=reward_width),
        "mean_optimal_return": mean_optimal_return(episode_length, step_size=step_size, width=reward_width),
        "step_size": step_size, "reward_width": reward_width, "threshold": THRESHOLD, "start_range": START_RANGE,
    }
    return Env("quantized_thruster", 1, 1, episode_length, reset, step, reward, observe,
               done=None, noise_shape=(), info=info)
