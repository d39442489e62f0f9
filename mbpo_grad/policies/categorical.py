"""Gumbel-softmax policy: per action dimension, a choice among K fixed levels ``c_1 < … < c_K``.

Per observation (batch with ``jax.vmap``); ε ~ N(0, I) of shape ``(act_dim, K)``::

    pol = gumbel_softmax_policy(obs_dim, act_dim, levels=(-1.0, 0.0, 1.0), temperature=0.5)
    a   = pol.sample(params, obs, eps)        relaxed level mixture (hard=True: the level itself)
    a   = pol.sample(params, obs, None)       the most probable level c_{argmax l}
    lp  = pol.log_prob(params, obs, a)        log P(k(a)): the categorical pmf of a's nearest level
    a, lp = pol.sample_and_log_prob(params, obs, eps)   lp = log P(k*), k* the Gumbel-max choice of ε
    lr  = pol.log_ratio(params_old, params_new, obs, eps)
    eps = pol.infer_noise(params, obs, a)     a noise that reproduces a (a right inverse, see below)

The law. An MLP gives logits ``l(s) ∈ R^{act_dim × K}``; per dimension i (independently) the
discrete choice is ``k_i ~ Categorical(softmax(l_i))``. From ε: ``u = Φ(ε)``, Gumbel noise
``g = −log(−log u)`` (``bijectors.log_neg_log_ndtr``, accurate for every ε), and

    k*_i = argmax_k (l_ik + g_ik)                 (Gumbel-max: exactly Categorical(softmax(l_i)))
    y_i  = softmax((l_i + g_i) / τ)               (Gumbel-softmax / Concrete(l_i, τ) on the simplex)
    a_i  = Σ_k y_ik c_k          (hard=False)     relaxed: pathwise-differentiable, in [c_1, c_K]
    a_i  = c_{k*_i} + (Σ_k y_ik c_k − sg(Σ_k y_ik c_k))   (hard=True) straight-through: the value is
                                                  the level, the gradient that of the relaxed mixture

(Jang, Gu & Poole 2017; Maddison, Mnih & Teh 2017; docs/theory.md §3, which also proves the
Gumbel-max identity.) ``distributions.gumbel_softmax`` computes y.

What each density refers to (precisely):

* ``log_prob(a)`` and ``sample_and_log_prob`` are the categorical pmf of the HARD choice,
  ``Σ_i log softmax(l_i)_{k_i}`` (a density with respect to counting measure on the level
  grid): at ``k_i`` = the level nearest to ``a_i`` for ``log_prob``, at ``k*`` (from ε) for
  ``sample_and_log_prob``. With hard=True the sample is a level and the two agree exactly;
  this is the policy's entropy term (``−E log P(k*) = H(Categorical)``). With hard=False the
  relaxed sample has a density only as a point y of the simplex (Concrete); the mixture
  ``a = y · c`` is a projection of y with no closed-form density for K ≥ 3, so ``log_prob`` of a
  relaxed action is the pmf of its nearest level (a convention, not the relaxed law), and the
  nearest level need not be k* (e.g. y = (0.45, 0.1, 0.45) gives a = 0, k* ∈ {1, 3}).
* ``log_ratio(old, new, obs, eps)`` is the likelihood ratio of what the env receives:
    hard=True:  ``Σ_i [log softmax(l_new,i)_{k*_i} − log softmax(l_old,i)_{k*_i}]``, k* from
                ``l_old + g`` (the env sees the level c_{k*});
    hard=False: the Concrete density ratio of y = softmax((l_old + g)/τ),
                ``log q_new(y) − log q_old(y) = Σ_i [Σ_k δ_ik − K (lse_k(δ_ik − g_ik) − lse_k(−g_ik))]``,
                δ = l_new − l_old (τ and the τ-dependent terms cancel; no log y is formed, so
                it is finite where y underflows). The env's input a = y · c is a function of y,
                so ``E[∇ log q(y) R] = ∇ E[R]`` for whatever the env does with a.
  SHAC's ``estimator="score"`` / ``"auto"`` (``agents.shac.agent.score_log_prob``), PPO and the
  sampled trust-region KL call this, so the score-function estimator is unbiased for the same
  objective the pathwise estimator differentiates: with hard=False both estimate ∇E[R] for the
  relaxed actions (``"auto"`` mixes two unbiased estimates); with hard=True the score one is
  unbiased for the discrete policy the env really runs, the straight-through pathwise one is
  biased. (The hard-choice ratio with relaxed env actions would be biased: R depends on g
  through y, not through k* alone; that combination is deliberately not offered.)
* ``kl``: hard=True, the closed form ``Σ_i Σ_k p_old (log p_old − log p_new)`` (categorical);
  hard=False, None (no closed form between Concretes; the trust region's sampled estimate from
  ``log_ratio`` is then the KL of the relaxed law).

``infer_noise`` is a right inverse: K Gumbels per dimension map to one number, so the noise of
a draw cannot be recovered; it returns an ε with ``sample(params, obs, ε) = a``. hard=False:
the simplex point ``y ∝ exp(β c)`` with β solved by bisection so that y · c = a (unique, since
the mean of c under this tilt increases with β); for K = 2 this is THE y of the draw and the
pathwise gradient at the returned ε equals the original one (g is determined up to a shift
per dimension, which softmax ignores). hard=True: l + g = onehot(k(a)) (+ const). Gumbels are
shifted to min_k g_ik = −1 and must stay below ≈ 85 (float32; ≈ 700 in float64) to be
representable as ε (``bijectors.ndtri_exp_neg_exp``), i.e. logits within ~85 of each other.

Out-of-range actions: a concrete action outside [c_1, c_K] or non-finite raises ``ValueError``
naming ``action``; traced ones are clipped (``log_prob`` takes the nearest level anyway).
Extreme logits are safe in float32 (log-softmax / logsumexp throughout).
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from mbpo_grad.bijectors import tanh_clip_eps
from mbpo_grad.distributions import gumbel_softmax
from mbpo_grad.nn import mlp
from mbpo_grad.policies._squash import check_vector
from mbpo_grad.policies.base import Policy
from mbpo_grad.bijectors import log_neg_log_ndtr, ndtri_exp_neg_exp
from mbpo_grad.validation import check_int, is_concrete

_BISECTION_STEPS = 80
_G_FLOOR = -1.0        # infer_noise: the smallest Gumbel of a dimension (ε ≈ −1.5)


def _check_levels(levels) -> np.ndarray:
    if isinstance(levels, (int, np.integer)) and not isinstance(levels, bool):
        k = check_int(levels, "levels", minimum=2)
        return np.linspace(-1.0, 1.0, k)
    try:
        arr = np.asarray(levels, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"levels must be an int K >= 2 or a sequence of K >= 2 numbers, got {levels!r}") from None
    if arr.ndim != 1 or arr.shape[0] < 2:
        raise ValueError(f"levels must be an int K >= 2 or a 1-D sequence of K >= 2 numbers, got {levels!r}")
    if not np.all(np.isfinite(arr)) or not np.all(np.diff(arr) > 0):
        raise ValueError(f"levels must be finite and strictly increasing, got {levels!r}")
    return arr


def _check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(temperature)) or float(temperature) <= 0.0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def gumbel_softmax_policy(obs_dim: int, act_dim: int = 1, hidden: Sequence[int] = (64, 64),
                          levels: Union[int, Sequence[float]] = (-1.0, 0.0, 1.0), temperature: float = 0.5,
                          hard: bool = False) -> Policy:
    """A discrete-action policy bundle over fixed action levels, reparameterised by Gumbel-softmax.

    Args:
      obs_dim, act_dim: observation size and the number of action dimensions (each picks a level).
      hidden: MLP widths (``mbpo_grad.nn.mlp``, tanh); the MLP outputs act_dim × K logits.
        ``params = {"net"}``.
      levels: the K action levels shared by every dimension (strictly increasing), or an int K
        for ``linspace(−1, 1, K)``. K = the number of discrete actions per dimension.
      temperature: τ > 0 of the relaxation (fixed). Smaller: relaxed samples closer to the
        levels (less bias of the pathwise gradient w.r.t. the discrete policy, more variance);
        0.5 is the final value of Jang et al.'s annealing.
      hard: False: the env receives the relaxed mixture a = y · c; True: the level c_{k*}
        (straight-through gradient). See the module docstring for what ``log_prob`` /
        ``log_ratio`` / ``kl`` refer to in each case.
    """
    obs_dim = check_int(obs_dim, "obs_dim")
    act_dim = check_int(act_dim, "act_dim")
    c_np = _check_levels(levels)
    tau = _check_temperature(temperature)
    if not isinstance(hard, (bool, np.bool_)):
        raise ValueError(f"hard must be a bool, got {hard!r}")
    hard = bool(hard)
    K = int(c_np.shape[0])
    c_lo, c_hi = float(c_np[0]), float(c_np[-1])
    tilt_bound = (math.log(K) + 40.0) / float(np.min(np.diff(c_np)))
    net = mlp(obs_dim, act_dim * K, hidden)
    relax = gumbel_softmax()

    def init(key):
        return {"net": net.init(key)}

    def logits_of(params, obs):
        return net.apply(params["net"], obs).reshape((act_dim, K))

    def levels_like(x):
        return jnp.asarray(c_np, jnp.result_type(x))

    def check_eps(eps):
        eps = jnp.asarray(eps)
        if eps.shape != (act_dim, K):
            raise ValueError(f"eps must have shape (act_dim, K) = ({act_dim}, {K}) (one observation; batch with "
                             f"jax.vmap), got {eps.shape}")
        if not jnp.issubdtype(eps.dtype, jnp.floating):
            raise TypeError(f"eps must be floating point, got dtype {eps.dtype}")
        return eps

    def check_action(action):
        action = check_vector(action, act_dim, "action")
        if is_concrete(action):
            arr = np.asarray(action)
            if not np.all(np.isfinite(arr)) or np.any(arr < c_lo) or np.any(arr > c_hi):
                raise ValueError(f"action must be finite and lie in [levels[0], levels[-1]] = [{c_lo}, {c_hi}], "
                                 f"got {arr}")
        return action

    def gumbel(eps):
        return -log_neg_log_ndtr(eps)                        # g = −log(−log Φ(ε))

    def choice(logits, g):
        return jnp.argmax(logits + g, axis=-1)              # [act_dim]: Gumbel-max

    def pick(log_p, k):
        return jnp.take_along_axis(log_p, k[:, None], axis=-1)[:, 0]

    def relaxed(logits, g):
        y = relax.sample({"logits": logits, "temperature": jnp.asarray(tau, logits.dtype)}, g)
        return y @ levels_like(logits)

    def sample(params, obs, eps=None):
        obs = check_vector(obs, obs_dim, "obs")
        eps = None if eps is None else check_eps(eps)
        logits = logits_of(params, obs)
        c = levels_like(logits)
        if eps is None:
            return c[jnp.argmax(logits, axis=-1)]
        g = gumbel(eps)
        soft = relaxed(logits, g)
        if not hard:
            return soft
        return c[choice(logits, g)] + (soft - jax.lax.stop_gradient(soft))

    def nearest(action):
        return jnp.argmin(jnp.abs(action[:, None] - levels_like(action)[None, :]), axis=-1)

    def log_prob(params, obs, action):
        obs = check_vector(obs, obs_dim, "obs")
        action = check_action(action)
        return jnp.sum(pick(jax.nn.log_softmax(logits_of(params, obs), axis=-1), nearest(action)))

    def sample_and_log_prob(params, obs, eps):
        obs = check_vector(obs, obs_dim, "obs")
        eps = check_eps(eps)
        logits = logits_of(params, obs)
        g = gumbel(eps)
        lp = jnp.sum(pick(jax.nn.log_softmax(logits, axis=-1), choice(logits, g)))
        return sample(params, obs, eps), lp

    def log_ratio(params_old, params_new, obs, eps):
        obs = check_vector(obs, obs_dim, "obs")
        eps = check_eps(eps)
        l0, l1 = logits_of(params_old, obs), logits_of(params_new, obs)
        g = gumbel(eps)
        if hard:
            k = choice(l0, g)
            return jnp.sum(pick(jax.nn.log_softmax(l1, axis=-1), k) - pick(jax.nn.log_softmax(l0, axis=-1), k))
        d = l1 - l0
        lse = jax.scipy.special.logsumexp
        return jnp.sum(jnp.sum(d, axis=-1) - K * (lse(d - g, axis=-1) - lse(-g, axis=-1)))

    def kl(params_old, params_new, obs):
        obs = check_vector(obs, obs_dim, "obs")
        lp0 = jax.nn.log_softmax(logits_of(params_old, obs), axis=-1)
        lp1 = jax.nn.log_softmax(logits_of(params_new, obs), axis=-1)
        return jnp.sum(jnp.exp(lp0) * (lp0 - lp1))

    def tilt(action):
        """β [act_dim] with Σ_k softmax(β c)_k c_k = a (bisection; a clipped inside (c_1, c_K))."""
        c = levels_like(action)
        margin = tanh_clip_eps(action.dtype) * (c_hi - c_lo)
        a = jnp.clip(action, c_lo + margin, c_hi - margin)
        bound = jnp.full_like(a, tilt_bound)

        def step(_, lh):
            lo, hi = lh
            mid = 0.5 * (lo + hi)
            below = jax.nn.softmax(mid[:, None] * c[None, :], axis=-1) @ c < a
            return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

        lo, hi = jax.lax.fori_loop(0, _BISECTION_STEPS, step, (-bound, bound))
        return 0.5 * (lo + hi)

    def infer_noise(params, obs, action):
        obs = check_vector(obs, obs_dim, "obs")
        action = check_action(action)
        logits = logits_of(params, obs)
        if hard:
            target = jax.nn.one_hot(nearest(action), K, dtype=logits.dtype)     # l + g = onehot + const
        else:
            target = tau * tilt(action)[:, None] * levels_like(logits)[None, :]   # (l + g)/τ = β c + const
        g = target - logits
        g = g - jnp.min(g, axis=-1, keepdims=True) + _G_FLOOR
        return ndtri_exp_neg_exp(-g)                           # ε with −log(−log Φ(ε)) = g

    return Policy(init, sample, infer_noise, log_prob, (act_dim, K), obs_dim, act_dim,
                  "gumbel_softmax_st" if hard else "gumbel_softmax", sample_and_log_prob,
                  kl if hard else None, log_ratio)


__all__ = ["gumbel_softmax_policy"]
