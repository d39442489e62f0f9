"""nan_probe: the step and the primitive of a planted non-finite value, forward and backward.

Two analytic systems on a state (x, c, τ), τ the step counter (τ_{t+1} = τ_t + 1):

* forward plant:  x' = x + h a √(k − ½ − τ): real for τ < k, √(−½) = NaN at τ = k, so s_{k+1}
  is the first non-finite value and the origin is ``sqrt``;
* backward plant: x' = x + h (a y)/y, c' = c + a/100, with y = c · σ(τ), σ(k) = 1e-20, else 1
  (c carries the action, so ∂J/∂c reaches the parameters). The forward
  value (a y)/y = a is finite at every step, but reverse mode of u / y multiplies by
  y⁻² = 1e40, which is +inf in float32 (largest float32 ≈ 3.4e38) and finite in
  float64. So in float32 the cotangent of c first turns non-finite at step k, at the
  ``integer_pow`` that forms y⁻²; float64 is finite throughout.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import mbpo_grad as mg
from mbpo_grad import nan_probe

K, N = 5, 9
H = 0.1


def _policy(params, s, eps):
    return jnp.tanh(params["w"] * s[0] + params["b"])


def _reward(s, a):
    return -(s[0] ** 2) - 0.1 * a ** 2


def _forward_plant(s, a, xi):
    x, c, tau = s
    return jnp.stack([x + H * a * jnp.sqrt(K - 0.5 - tau), c, tau + 1.0])


def _backward_plant(s, a, xi):
    x, c, tau = s
    y = c * jnp.where(tau == K, 1e-20, 1.0).astype(s.dtype)
    return jnp.stack([x + H * (a * y) / y, c + 0.01 * a, tau + 1.0])


def _params(dtype):
    return {"w": jnp.asarray(-0.7, dtype), "b": jnp.asarray(0.3, dtype)}


def _s0(dtype):
    return jnp.asarray([0.5, 1.0, 0.0], dtype)


def test_forward_plant_reports_step_k_and_sqrt():
    rep = nan_probe.locate_nan(_policy, _params(jnp.float32), _forward_plant, _reward, _s0(jnp.float32),
                               horizon=N)
    assert rep.forward_step == K and "next_state" in rep.forward_what
    assert rep.forward_origin.primitive == "sqrt"
    assert "test_nan_probe.py" in rep.forward_origin.source and "_forward_plant" in rep.forward_origin.source
    assert rep.forward_origin.inputs[0].endswith("= -0.5")
    assert rep.backward_step is None and not rep.finite
    assert "t=5" in str(rep)


def test_backward_plant_reports_step_k_and_the_inverse_square_in_float32_only():
    rep = nan_probe.locate_nan(_policy, _params(jnp.float32), _backward_plant, _reward, _s0(jnp.float32),
                               horizon=N)
    assert rep.forward_step is None
    assert rep.backward_step == K and "state cotangent" in rep.backward_what
    o = rep.backward_origin
    assert o.primitive == "integer_pow" and "y=-2" in o.equation
    assert "_backward_plant" in o.source
    assert 0.9e-20 < float(o.inputs[0].split("= ")[1]) < 1.1e-20  # y = c · 1e-20, c ≈ 1
    # The same J in float64 is finite forward and backward; jax.grad of the engine agrees.
    with jax.enable_x64(True):
        rep64 = nan_probe.locate_nan(_policy, _params(jnp.float64), _backward_plant, _reward,
                                     _s0(jnp.float64), horizon=N)
        assert rep64.finite and str(rep64).startswith("all finite")
    g32 = jax.grad(lambda p: mg.pathwise_objective(_policy, p, _backward_plant, _reward, _s0(jnp.float32)[None],
                                                   horizon=N))(_params(jnp.float32))
    assert not np.isfinite(float(g32["w"]))  # the engine's float32 gradient is the one the probe explains


def test_host_loop_factorisation_equals_jax_grad_in_float64():
    """Σ_t g_t from the per-step VJPs is dJ/dw (the probe's backward pass is reverse mode itself)."""
    with jax.enable_x64(True):
        def step(s, a, xi):
            return jnp.stack([s[0] + H * (jnp.sin(s[1]) + a), s[1] + H * s[0] * a, s[2]])

        params, s0 = _params(jnp.float64), jnp.asarray([0.4, -0.3, 0.0])
        noise = jnp.linspace(-0.2, 0.2, N + 1)
        pol = lambda p, s, e: jnp.tanh(p["w"] * s[0] + p["b"] + e)  # noqa: E731
        j, g = nan_probe.pathwise_gradient(pol, params, step, _reward, s0, horizon=N, gamma=0.9, policy_noise=noise)
        ref = jax.value_and_grad(lambda p: mg.pathwise_objective(pol, p, step, _reward, s0[None], horizon=N,
                                                                 gamma=0.9, policy_noise=noise[:, None]))
        j_ref, g_ref = ref(params)
        np.testing.assert_allclose(float(j), float(j_ref), rtol=1e-13)
        for k in ("w", "b"):
            np.testing.assert_allclose(float(g[k]), float(g_ref[k]), rtol=1e-12)


def test_origin_enters_scan_cond_and_jit_to_the_iteration():
    @jax.jit
    def inner(z):
        return jnp.log(z)

    def f(x):
        def body(c, i):
            c = c - 1.0
            return c, lax.cond(i >= 0, lambda: inner(c), lambda: c)
        return lax.scan(body, x, jnp.arange(6))[1]

    o = nan_probe.origin(f, jnp.float32(3.0))  # carry 2, 1, 0, -1: log(0) = -inf at iteration 2
    assert o.primitive == "log"
    assert o.path == ("scan iteration 2/6", "cond branch 1", "jit inner")
    assert o.inputs[0].endswith("= 0")
    assert nan_probe.origin(lambda x: jnp.log(x + 1.0), jnp.float32(1.0)) is None


def test_bad_arguments_raise_naming_them():
    args = (_policy, _params(jnp.float32), _forward_plant, _reward, _s0(jnp.float32))
    with pytest.raises(ValueError, match="horizon"):
        nan_probe.locate_nan(*args, horizon=0)
    with pytest.raises(ValueError, match=r"policy_noise.*length >= 9.*\(4,\)"):
        nan_probe.locate_nan(*args, horizon=N, policy_noise=jnp.zeros(4))
    with pytest.raises(ValueError, match="state"):
        nan_probe.locate_nan(_policy, _params(jnp.float32), _forward_plant, _reward, jnp.arange(3), horizon=N)
