"""Bijectors: exact inverses, log-determinants against jax.jacfwd, identity at init, checks."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpo_grad import bijectors as bj

HIDDEN = (8, 8)


def random_params(init, seed, scale=0.5, dtype=np.float32):
    """Random values for EVERY leaf of ``init``'s parameter tree (zero-initialised last layers
    included), drawn with NumPy: the shapes come from ``jax.eval_shape``, so nothing compiles."""
    shapes = jax.eval_shape(init, jax.random.PRNGKey(0))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), dtype), shapes)


def normal(seed, shape, dtype=np.float32):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def all_bijectors(dim, context_dim):
    """Every kind of bijector for events of size ``dim`` (those that exist at that size)."""
    out = {
        "conditional_affine": bj.conditional_affine(dim, context_dim, hidden=HIDDEN),
        "conditional_affine_clip": bj.conditional_affine(dim, context_dim, hidden=HIDDEN, zero_init=False,
                                                         log_scale_min=-5.0, log_scale_max=2.0),
        "elementwise_affine": bj.elementwise_affine(dim),
        "sinh_arcsinh": bj.sinh_arcsinh(dim, context_dim, hidden=HIDDEN),
        "reverse": bj.reverse(dim),
        "tanh": bj.tanh(dim),
    }
    if dim >= 2:
        out["coupling0"] = bj.affine_coupling(dim, context_dim, parity=0, hidden=HIDDEN)
        out["coupling1"] = bj.affine_coupling(dim, context_dim, parity=1, hidden=HIDDEN)
        out["permute"] = bj.permute(np.roll(np.arange(dim), 1))
        out["chain"] = bj.chain([out["conditional_affine"], out["coupling0"], bj.reverse(dim), out["coupling1"],
                                 out["sinh_arcsinh"], out["tanh"]])
    else:
        out["chain"] = bj.chain([out["conditional_affine"], out["sinh_arcsinh"],
                                 bj.conditional_affine(dim, context_dim, hidden=HIDDEN), out["tanh"]])
    return out


@pytest.mark.parametrize("dim,context_dim", [(1, 3), (3, 0), (3, 4)])
def test_each_bijector_round_trip_and_log_det_match_jacobian_float64(dim, context_dim):
    """For every bijector (perturbed params, random inputs and contexts): f⁻¹(f(x)) = x,
    log|det| = slogdet(jax.jacfwd(f)), inverse log-det = −forward log-det. One compile."""
    bijs = {n: b for n, b in all_bijectors(dim, context_dim).items() if n != "chain"}
    with jax.enable_x64(True):
        params = {n: random_params(b.init, i, 0.5, np.float64) for i, (n, b) in enumerate(bijs.items())}
        x = normal(100, (16, dim), np.float64)
        ctx = normal(101, (16, max(context_dim, 1)), np.float64)

        @jax.jit
        def check(params, x, ctx):
            out = {}
            for n, b in bijs.items():
                c = ctx if context_dim else None

                def one(x, c, b=b, p=params[n]):
                    y, ld = b.forward_and_log_det(p, x, c)
                    x2, ld_inv = b.inverse_and_log_det(p, y, c)
                    jac = jax.jacfwd(lambda v: b.forward_and_log_det(p, v, c)[0])(x)
                    return y, x2, ld, ld_inv, jnp.linalg.slogdet(jac)[1]

                out[n] = jax.vmap(one, (0, None if c is None else 0))(x, c)
            return out

        results = check(params, x, ctx)
    for n, (y, x2, ld, ld_inv, ld_ref) in results.items():
        assert np.all(np.isfinite(np.asarray(y))), n
        np.testing.assert_allclose(x2, x, atol=1e-9, rtol=0, err_msg=n)
        np.testing.assert_allclose(ld, ld_ref, atol=1e-9, rtol=0, err_msg=n)
        np.testing.assert_allclose(ld_inv, -ld, atol=1e-9, rtol=0, err_msg=n)
        if n not in ("reverse", "permute", "tanh"):
            assert np.max(np.abs(np.asarray(y) - np.asarray(x))) > 1e-2, f"{n}: perturbed layer is trivial"


def test_chain_round_trips_float32():
    """f(f⁻¹(y)) == y and f⁻¹(f(x)) == x to 1e-5 in float32 through a chain of every (pre-squash) kind."""
    dim, context_dim = 3, 2
    parts = [b for n, b in all_bijectors(dim, context_dim).items() if n not in ("chain", "tanh")]
    b = bj.chain(parts)
    params = random_params(b.init, 4, 0.3)
    x = normal(6, (256, dim))
    ctx = normal(7, (256, context_dim))

    @jax.jit
    def go(x, ctx):
        fwd = jax.vmap(lambda x, c: b.forward_and_log_det(params, x, c)[0])
        inv = jax.vmap(lambda y, c: b.inverse_and_log_det(params, y, c)[0])
        y = fwd(x, ctx)
        x_back = inv(y, ctx)
        return y, x_back, fwd(x_back, ctx)

    y, x_back, y_back = go(x, ctx)
    assert np.max(np.abs(np.asarray(y - x))) > 0.1
    np.testing.assert_allclose(x_back, x, atol=1e-5, rtol=0)
    np.testing.assert_allclose(y_back, y, atol=1e-5, rtol=1e-5)


def test_fresh_layers_are_the_identity():
    """Zero-initialised last layers: a fresh coupling / sinh-arcsinh / affine layer is the identity."""
    kinds = all_bijectors(3, 2)
    b = bj.chain([kinds[n] for n in ("conditional_affine", "elementwise_affine", "sinh_arcsinh", "coupling0",
                                     "coupling1")])
    params = jax.jit(b.init)(jax.random.PRNGKey(0))
    x = jnp.array([-2.0, 0.3, 1.7])
    y, ld = jax.jit(b.forward_and_log_det)(params, x, jnp.ones(2))
    np.testing.assert_allclose(y, x, atol=1e-6)
    assert abs(float(ld)) < 1e-6


def test_chain_applies_in_list_order():
    shift = bj.elementwise_affine(1)
    p_shift = {"bias": jnp.array([3.0, 0.0])}  # y = x + 3 (log-scale 0)
    b = bj.chain([shift, bj.tanh(1)])
    y, _ = b.forward_and_log_det(((p_shift), ()), jnp.array([-3.0]))
    np.testing.assert_allclose(y, [0.0], atol=1e-7)  # tanh(x + 3), not tanh(x) + 3


def test_tanh_log_det_is_stable_for_large_inputs():
    b = bj.tanh(4)
    x = jnp.array([0.5, 5.0, -30.0, 80.0])
    y, ld = b.forward_and_log_det((), x)
    assert np.isfinite(float(ld))
    expected = np.log(1 - np.tanh(np.float64(0.5)) ** 2) + np.log(1 - np.tanh(np.float64(5.0)) ** 2) \
        + (math.log(4) - 60.0) + (math.log(4) - 160.0)  # log(1 - tanh²x) → log 4 − 2|x|
    np.testing.assert_allclose(float(ld), expected, rtol=1e-6)
    # Inverse at the boundary: clipped, finite, and reproduces ±1 within the clip margin.
    x2, ld2 = b.inverse_and_log_det((), jnp.array([1.0, -1.0, 0.0, 0.5]))
    assert np.all(np.isfinite(np.asarray(x2))) and np.isfinite(float(ld2))
    np.testing.assert_allclose(jnp.tanh(x2), [1.0, -1.0, 0.0, 0.5], atol=2e-6)
    assert bj.tanh_clip_eps(jnp.float32) == 1e-6 and bj.tanh_clip_eps(jnp.float64) == 1e-12


def test_soft_clip_and_clamp_bounds():
    x = jnp.array([-1e4, -20.0, -1.0, 0.0, 0.5, 20.0, 1e4])
    c = bj.soft_clip(x, -5.0, 2.0)
    assert np.all(np.asarray(c) >= -5.0) and np.all(np.asarray(c) <= 2.0)
    np.testing.assert_allclose(c[2:5], x[2:5], atol=0.2)  # ≈ identity inside
    assert np.all(np.diff(np.asarray(c)) >= 0)
    s = bj.soft_clamp(x, 3.0)
    assert np.all(np.abs(np.asarray(s)) <= 3.0) and float(bj.soft_clamp(jnp.array(0.0), 3.0)) == 0.0


def test_flow_noise_model_with_state_action_context():
    """A transition-noise model s' = f(ξ; s, a) built from the same pieces (context = (s, a))."""
    s_dim, a_dim = 3, 2
    b = bj.chain([bj.conditional_affine(s_dim, s_dim + a_dim, hidden=HIDDEN),
                  bj.affine_coupling(s_dim, s_dim + a_dim, parity=0, hidden=HIDDEN),
                  bj.affine_coupling(s_dim, s_dim + a_dim, parity=1, hidden=HIDDEN)])
    model = bj.transformed_normal(b)
    with jax.enable_x64(True):
        params = random_params(model.init, 0, 0.4, np.float64)
        ctx = normal(2, (s_dim + a_dim,), np.float64)
        xi = normal(3, (s_dim,), np.float64)

        @jax.jit
        def go(params, xi, ctx):
            s_next = model.sample(params, xi, ctx)
            jac = jax.jacfwd(lambda e: model.sample(params, e, ctx))(xi)
            ref = bj.standard_normal_log_prob(xi) - jnp.linalg.slogdet(jac)[1]
            return s_next, model.infer_noise(params, s_next, ctx), model.log_prob(params, s_next, ctx), ref

        s_next, xi_back, lp, ref = go(params, xi, ctx)
    assert np.max(np.abs(np.asarray(s_next - xi))) > 0.1
    np.testing.assert_allclose(xi_back, xi, atol=1e-10)
    np.testing.assert_allclose(lp, ref, atol=1e-10)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="dim must be >= 2"):
        bj.affine_coupling(1, 2)
    with pytest.raises(ValueError, match="parity"):
        bj.affine_coupling(2, 0, parity=2)
    with pytest.raises(ValueError, match="transformed"):
        bj.affine_coupling(3, 0, transformed=[True, True, True])
    with pytest.raises(TypeError, match="dim"):
        bj.conditional_affine(2.0)
    with pytest.raises(ValueError, match="permutation"):
        bj.permute([0, 0, 1])
    with pytest.raises(ValueError, match="share one event size"):
        bj.chain([bj.tanh(2), bj.tanh(3)])
    with pytest.raises(ValueError, match="bijectors"):
        bj.chain([])
    with pytest.raises(ValueError, match="log_scale_min"):
        bj.conditional_affine(2, 0, log_scale_min=1.0, log_scale_max=0.0)
    b = bj.affine_coupling(2, 3, hidden=HIDDEN)
    p = random_params(b.init, 0)
    with pytest.raises(ValueError, match="context is required"):
        b.forward_and_log_det(p, jnp.zeros(2), None)
    with pytest.raises(ValueError, match="context must have shape"):
        b.forward_and_log_det(p, jnp.zeros(2), jnp.zeros(2))
    with pytest.raises(ValueError, match="x must be ONE event"):
        b.forward_and_log_det(p, jnp.zeros((4, 2)), jnp.zeros(3))
