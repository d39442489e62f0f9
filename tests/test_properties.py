"""Property-based tests (hypothesis) of ``mg.pathwise_objective``'s argument handling.

Well-formed random inputs (batch size, horizon 0..6, state/action sizes, γ ∈ [0, 1], with or
without policy / dynamics noise and a bootstrap critic) give a finite value equal to a plain
NumPy loop over the same system; malformed ones (noise with wrong leading axes or integer
dtype, integer / boolean / scalar states, γ outside [0, 1] or not a scalar, negative or
non-int horizons, non-callables) raise ValueError / TypeError whose message names the
argument. The system is a small fixed linear-tanh loop so each example compiles quickly.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

import mbpo_grad as mg

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# Every example of the value test compiles (shapes vary): no shrinking there, so a failure
# reports its first example at once instead of recompiling for minutes.
NO_SHRINK = settings(SETTINGS, phases=(Phase.explicit, Phase.reuse, Phase.generate))
A_DYN = 0.9
NOISE_SCALE = 0.1


def policy(params, s, eps):
    a = jnp.tanh(params["K"] @ s + params["b"])
    return a if eps is None else a + NOISE_SCALE * eps


def step(s, a, xi):
    s_next = A_DYN * s + jnp.sum(a) * 0.1
    return s_next if xi is None else s_next + NOISE_SCALE * xi


def reward(s, a):
    return -(jnp.sum(s * s) + 0.1 * jnp.sum(a * a))


def critic(s, a):
    return -(jnp.sum(s * s) + jnp.sum(a * a))


def reference(params, states, horizon, gamma, eps, xi, bootstrap):
    """Σ_t γ^t r_t (+ γ^n Q(s_n, a_n)) averaged over the batch, in float64 NumPy loops."""
    K, bias = np.asarray(params["K"], np.float64), np.asarray(params["b"], np.float64)
    out = []
    for b in range(states.shape[0]):
        s = np.asarray(states[b], np.float64)
        total = 0.0
        for t in range(horizon + 1):
            a = np.tanh(K @ s + bias)
            if eps is not None:
                a = a + NOISE_SCALE * eps[t, b]
            if t == horizon:
                if bootstrap:
                    total += gamma**horizon * -(s @ s + a @ a)
                break
            total += gamma**t * -(s @ s + 0.1 * a @ a)
            s = A_DYN * s + a.sum() * 0.1
            if xi is not None:
                s = s + NOISE_SCALE * xi[t, b]
        out.append(total)
    return float(np.mean(out))


@st.composite
def problems(draw):
    d = draw(st.integers(1, 3))
    m = draw(st.integers(1, 2))
    batch = draw(st.integers(1, 4))
    horizon = draw(st.integers(0, 6))
    bootstrap = draw(st.booleans()) or horizon == 0
    gamma = draw(st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0, allow_nan=False, width=32))
    seed = draw(st.integers(0, 2**16))
    with_eps, with_xi = draw(st.booleans()), draw(st.booleans())
    rng = np.random.default_rng(seed)
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    params = {"K": f32(m, d), "b": f32(m)}
    states = f32(batch, d)
    eps = f32(horizon + 1, batch, m) if with_eps else None
    xi = f32(horizon, batch, d) if with_xi else None
    return dict(d=d, m=m, batch=batch, horizon=horizon, bootstrap=bootstrap, gamma=gamma,
                params=params, states=states, eps=eps, xi=xi)


def call(p, **over):
    kw = dict(horizon=p["horizon"], gamma=p["gamma"], bootstrap=critic if p["bootstrap"] else None,
              policy_noise=p["eps"], dynamics_noise=p["xi"])
    kw.update(over)
    args = dict(policy=policy, params=p["params"], step=step, reward=reward, states=p["states"])
    for k in list(over):
        if k in args:
            args[k] = kw.pop(k)
    return mg.pathwise_objective(args["policy"], args["params"], args["step"], args["reward"], args["states"], **kw)


@NO_SHRINK
@given(problems())
def test_well_formed_inputs_give_the_finite_reference_value(p):
    # One jit per example: one compile instead of one per eager op.
    fn = jax.jit(lambda params, states, gamma, eps, xi: call(
        dict(p, params=params, states=states, gamma=gamma, eps=eps, xi=xi)))
    value = fn(p["params"], p["states"], p["gamma"], p["eps"], p["xi"])
    assert value.shape == () and jnp.issubdtype(value.dtype, jnp.floating)
    assert np.isfinite(float(value))
    ref = reference(p["params"], p["states"], p["horizon"], p["gamma"], p["eps"], p["xi"], p["bootstrap"])
    np.testing.assert_allclose(float(value), ref, rtol=2e-5, atol=2e-5)


def _wrong_leading(draw, shape):
    """A shape whose first two axes differ from ``shape``'s (one of them, or a missing axis)."""
    kind = draw(st.sampled_from(["time", "batch", "drop", "swap"]))
    t, b, rest = shape[0], shape[1], shape[2:]
    if kind == "time":
        return (t + draw(st.sampled_from([-1, 1, 2])),) + shape[1:] if t > 0 else (t + 1,) + shape[1:]
    if kind == "batch":
        return (t, b + draw(st.integers(1, 3))) + rest
    if kind == "drop":
        return (b,) + rest if draw(st.booleans()) else (t,)
    return (b, t) + rest if b != t else (t, b + 1) + rest


@SETTINGS
@given(problems(), st.data())
def test_noise_with_wrong_leading_axes_or_dtype_names_the_argument(p, data):
    which = data.draw(st.sampled_from(["policy_noise", "dynamics_noise"]))
    if which == "dynamics_noise" and p["horizon"] == 0:
        good = (0, p["batch"], p["d"])
    else:
        good = (p["horizon"] + 1, p["batch"], p["m"]) if which == "policy_noise" else (p["horizon"], p["batch"], p["d"])
    bad_dtype = data.draw(st.booleans())
    if bad_dtype:
        noise = np.zeros(good, dtype=data.draw(st.sampled_from([np.int32, np.bool_])))
        with pytest.raises(TypeError, match=which):
            call(p, **{which: noise})
    else:
        noise = np.zeros(_wrong_leading(data.draw, good), np.float32)
        with pytest.raises(ValueError, match=which):
            call(p, **{which: noise})


@SETTINGS
@given(problems(), st.data())
def test_malformed_states_name_the_argument(p, data):
    kind = data.draw(st.sampled_from(["int", "bool", "complex", "scalar", "ragged_tree", "empty_tree"]))
    s = p["states"]
    if kind in ("int", "bool", "complex"):
        bad = s.astype({"int": np.int32, "bool": np.bool_, "complex": np.complex64}[kind])
        err = TypeError
    elif kind == "scalar":
        bad, err = np.float32(1.0), ValueError
    elif kind == "ragged_tree":
        bad, err = {"x": s, "y": np.zeros((p["batch"] + 1, 1), np.float32)}, ValueError
    else:
        bad, err = {}, ValueError
    # Noise off so the check under test is the one on ``states``.
    with pytest.raises(err, match="states"):
        call(p, states=bad, policy_noise=None, dynamics_noise=None)


@SETTINGS
@given(problems(), st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).filter(lambda g: not 0.0 <= g <= 1.0),
    st.sampled_from([-1e-7, 1.0 + 1e-6, float("nan"), float("inf"), -float("inf"), 2]),
))
def test_gamma_outside_the_unit_interval_names_gamma(p, gamma):
    with pytest.raises(ValueError, match="gamma"):
        call(p, gamma=gamma)


@SETTINGS
@given(problems(), st.sampled_from(["vector", "matrix", "string", "bool", "complex"]))
def test_gamma_of_the_wrong_kind_names_gamma(p, kind):
    gamma = {"vector": np.full((2,), 0.5, np.float32), "matrix": np.full((1, 1), 0.9, np.float32),
             "string": "0.9", "bool": True, "complex": np.complex64(0.5)}[kind]
    with pytest.raises((ValueError, TypeError), match="gamma"):
        call(p, gamma=gamma)


@SETTINGS
@given(problems(), st.one_of(st.integers(-10**6, -1), st.floats(allow_nan=True), st.booleans(),
                             st.just(None), st.just("3")))
def test_bad_horizon_names_horizon(p, horizon):
    err = ValueError if isinstance(horizon, int) and not isinstance(horizon, bool) else TypeError
    with pytest.raises(err, match="horizon"):
        call(p, horizon=horizon, policy_noise=None, dynamics_noise=None)


@SETTINGS
@given(problems(), st.sampled_from(["policy", "step", "reward", "bootstrap"]),
       st.sampled_from([None, 3, "f", np.zeros(2)]))
def test_non_callables_name_the_argument(p, name, value):
    if value is None and name == "bootstrap":
        value = 3  # None is a valid bootstrap
    with pytest.raises(TypeError, match=name):
        call(p, **{name: value})


def test_horizon_zero_without_a_critic_is_refused():
    p = dict(horizon=0, gamma=1.0, bootstrap=False, eps=None, xi=None,
             params={"K": np.ones((1, 2), np.float32), "b": np.zeros(1, np.float32)}, states=np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match="horizon"):
        call(p)
