"""Mixing pathwise and score-function gradients, sample by sample (docs/theory.md §9).

From the same N rollouts two per-sample estimates of one policy gradient ∇_θ E[J]:

    g1_b   pathwise (first-order, reparameterised: differentiates J_b through the system)
    g0_b   score-function (zeroth-order: Σ_t ∇ log π(a_t|s_t) (C_t − b_t), ``score_function``)

g0 is unbiased whatever the system; g1 is unbiased only where J is differentiable along the
sampled path, and it is zero on piecewise-constant dynamics, blind to discontinuities
(terminations, contact switches) and explodes through stiff or chaotic steps. The mixed
estimate, for a weight α ∈ [0, 1],

    ĝ(α) = α ḡ1 + (1 − α) ḡ0 = ḡ0 + α d̄,      d_b = g1_b − g0_b,  ḡ = mean over kept samples,

is the pathwise estimate at α = 1 and the score-function one at α = 0.

Rule (``alpha_order``; after Suh et al. 2022, "Do differentiable simulators give better policy
gradients?", §4, the α-order gradient; here with the paired covariance and a bias bound in
standard errors). With v1, v0 the variances of the means ḡ1, ḡ0 and c their covariance
(traces over the parameters, estimated from the paired samples; v_d = v1 + v0 − 2c is the
variance of d̄):

    Var ĝ(α) = v0 + 2α (c − v0) + α² v_d     is smallest at   α* = (v0 − c) / v_d        (clipped to [0, 1])
    bias test  α ‖d̄‖ ≤ z √v_d               (ĝ may leave the unbiased ḡ0 by z standard errors of d̄)
    α = min(α*, z √v_d / ‖d̄‖)

Where the pathwise estimate is unbiased, E‖d̄‖² = v_d and the bound is about z (≥ 1 for the
default z = 2): α is the variance-optimal α*, near 1 on smooth systems (pathwise variance is
small). Where it is biased, ‖d̄‖² = ‖bias‖² + v_d grows with the bias while √v_d shrinks as
1/√N, so α → 0 and the estimate becomes the score-function one. Data-dependent α makes ĝ
unbiased only up to O(1/N) (the weight and the means share samples), as in Suh et al.

Fallback (``fallback``): a pathwise sample that is non-finite, exactly zero, or larger than a
norm threshold is replaced by that sample's score-function estimate before the rule (instead
of being dropped): an all-zero pathwise batch (piecewise-constant dynamics) gives d = 0 and
ĝ = ḡ0; a NaN from one env's backward pass costs only that env's pathwise part.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp

from mbpo_grad import guards

PyTree = Any


def _rows(tree: PyTree) -> jax.Array:
    """[N, P]: every leaf's per-sample slice flattened and concatenated (leading axis N)."""
    leaves = jax.tree_util.tree_leaves(tree)
    n = leaves[0].shape[0]
    return jnp.concatenate([jnp.reshape(x, (n, -1)) for x in leaves], axis=1)


def _masked_rows(x: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.where(mask[:, None], x, jnp.zeros_like(x))


def sample_norms(tree: PyTree) -> jax.Array:
    """[N] norm of each sample's gradient (``guards.safe_global_norm`` per sample: no overflow
    for exploding gradients; non-finite where the sample is)."""
    return jax.vmap(guards.safe_global_norm)(tree)


def fallback(pathwise: PyTree, score: PyTree, max_norm: Any,
             norms: Any = None) -> Tuple[PyTree, jax.Array]:
    """(pathwise with bad samples replaced by their score-function estimate, bad [N] bool).

    A pathwise sample is bad when it is non-finite, exactly zero (no pathwise signal: the
    dynamics or reward are flat in the action along that path) or its norm exceeds ``max_norm``.
    ``norms``: the pathwise samples' ``sample_norms`` when the caller has them already.
    """
    norms = sample_norms(pathwise) if norms is None else norms
    bad = ~(jnp.isfinite(norms) & (norms > 0) & (norms <= max_norm))

    def pick(g1, g0):
        b = jnp.reshape(bad, (bad.shape[0],) + (1,) * (g1.ndim - 1))
        return jnp.where(b, g0, g1)

    return jax.tree_util.tree_map(pick, pathwise, score), bad


def alpha_order(pathwise: PyTree, score: PyTree, mask: jax.Array, z: Any = 2.0) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """(α, statistics): the weight of the pathwise estimate by the rule in the module docstring.

    Args:
      pathwise, score: per-sample gradients g1_b, g0_b (pytrees of the parameters' shape with a
        leading axis N; finite where ``mask``; pass ``fallback``'s output as ``pathwise``).
      mask: [N] bool, the samples to use (at least two for a variance; with fewer α = 1).
      z: the bias bound in standard errors of d̄ (a float or traced scalar ≥ 0; z = 0 gives the
        score-function estimate whenever the two means differ at all).

    Statistics (scalars): ``alpha``, ``alpha_star`` (the variance-optimal weight), ``var_pathwise``
    v1, ``var_score`` v0, ``cov`` c, ``bias_norm`` ‖d̄‖, ``bias_se`` √v_d.
    """
    g1, g0 = _rows(pathwise), _rows(score)
    k = jnp.sum(mask).astype(g1.dtype)
    denom = jnp.maximum(k, 1.0)
    g1, g0 = _masked_rows(g1, mask), _masked_rows(g0, mask)
    m1, m0 = jnp.sum(g1, 0) / denom, jnp.sum(g0, 0) / denom
    c1, c0 = _masked_rows(g1 - m1, mask), _masked_rows(g0 - m0, mask)
    norm = jnp.maximum(k * (k - 1.0), 1.0)               # unbiased sample variance of a mean
    v1, v0, c = jnp.sum(c1 * c1) / norm, jnp.sum(c0 * c0) / norm, jnp.sum(c1 * c0) / norm
    vd = jnp.maximum(v1 + v0 - 2.0 * c, 0.0)
    tiny = jnp.finfo(g1.dtype).tiny
    alpha_star = jnp.where(vd > tiny, jnp.clip((v0 - c) / jnp.where(vd > tiny, vd, 1.0), 0.0, 1.0), 1.0)
    dnorm = jnp.sqrt(jnp.sum(jnp.square(m1 - m0)))
    se = jnp.sqrt(vd)
    bound = jnp.where(dnorm > tiny, z * se / jnp.where(dnorm > tiny, dnorm, 1.0), 1.0)
    alpha = jnp.where(k >= 2, jnp.minimum(alpha_star, bound), 1.0)
    stats = {"alpha": alpha, "alpha_star": alpha_star, "var_pathwise": v1, "var_score": v0, "cov": c,
             "bias_norm": dnorm, "bias_se": se}
    return alpha, stats


def masked_mean(tree: PyTree, mask: jax.Array) -> PyTree:
    """The mean over the samples where ``mask`` [N] holds (zeros where none is kept); masked-out
    samples are selected away, so a NaN there reaches neither the value nor a gradient."""
    k = jnp.maximum(jnp.sum(mask), 1)

    def mean(g):
        m = jnp.reshape(mask, (mask.shape[0],) + (1,) * (g.ndim - 1))
        return jnp.sum(jnp.where(m, g, jnp.zeros_like(g)), axis=0) / k.astype(g.dtype)

    return jax.tree_util.tree_map(mean, tree)


def mix(pathwise: PyTree, score: PyTree, mask: jax.Array, alpha: Any) -> PyTree:
    """ĝ(α) = α ḡ1 + (1 − α) ḡ0, the means over ``mask`` (zeros where no sample is kept)."""
    a = jnp.asarray(alpha)
    return jax.tree_util.tree_map(lambda g1, g0: a.astype(g1.dtype) * g1 + (1 - a).astype(g1.dtype) * g0,
                                  masked_mean(pathwise, mask), masked_mean(score, mask))


__all__ = ["sample_norms", "fallback", "alpha_order", "masked_mean", "mix"]
