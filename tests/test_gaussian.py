"""Tanh-squashed Gaussian policy: exact noise inference, exact log-density, range handling."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mbpo_grad as mg
from tests.policy_checks import checks, normal, random_params

OBS_DIM = 4
HIDDEN = (8, 8)


@pytest.mark.parametrize("act_dim", [1, 2, 3])
def test_round_trips_and_log_prob_match_jacobian_float64(act_dim):
    pol = mg.policies.gaussian(OBS_DIM, act_dim, hidden=HIDDEN)
    with jax.enable_x64(True):
        params = random_params(pol.init, act_dim, 0.5, np.float64)
        obs = normal(10, (64, OBS_DIM), np.float64)
        eps = normal(11, (64, act_dim), np.float64)
        actions = jnp.asarray(np.random.default_rng(12).uniform(-0.999, 0.999, (64, act_dim)))
        x, e_back, lp, lp_ref, a_back = checks(pol)(params, obs, eps, actions)
    np.testing.assert_allclose(e_back, eps, atol=1e-9, rtol=0)       # infer_noise(sample(ε)) = ε
    np.testing.assert_allclose(a_back, actions, atol=1e-12, rtol=0)  # sample(infer_noise(a)) = a
    np.testing.assert_allclose(lp, lp_ref, atol=1e-9, rtol=0)        # log N(ε) − log|det ∂a/∂ε|


@pytest.mark.parametrize("act_dim", [1, 3])
def test_round_trips_and_log_prob_float32(act_dim):
    """float32 to 1e-5 (round trips) / 1e-4 (log_prob). ε → a → ε goes through atanh, whose
    conditioning is 1/(1 − a²): near saturation float32 cannot hold a precisely enough, so that
    direction is checked where every pre-squash |u| < 2.5 (at least half of the batch)."""
    pol = mg.policies.gaussian(OBS_DIM, act_dim, hidden=HIDDEN)
    params = random_params(pol.init, 20 + act_dim, 0.3)
    obs = normal(13, (512, OBS_DIM))
    eps = normal(14, (512, act_dim))
    actions = jnp.asarray(np.random.default_rng(15).uniform(-1.0, 1.0, (512, act_dim)), jnp.float32)
    x, e_back, lp, lp_ref, a_back = checks(pol)(params, obs, eps, actions)
    np.testing.assert_allclose(a_back, actions, atol=1e-5, rtol=0)
    ok = np.max(np.abs(np.arctanh(np.asarray(x, np.float64))), axis=1) < 2.5
    assert ok.mean() > 0.5
    np.testing.assert_allclose(np.asarray(e_back)[ok], np.asarray(eps)[ok], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(lp)[ok], np.asarray(lp_ref)[ok], atol=1e-4, rtol=0)


def test_density_integrates_to_one_and_matches_closed_form():
    """1-D: ∫ π(a) da = ∫ π(tanh u)(1 − tanh² u) du = 1, and π(a) = N(u; μ, σ²)/(1 − a²)."""
    pol = mg.policies.gaussian(OBS_DIM, 1, hidden=HIDDEN)
    with jax.enable_x64(True):
        params = random_params(pol.init, 3, 0.5, np.float64)
        obs = normal(4, (OBS_DIM,), np.float64)
        u = jnp.linspace(-14.0, 14.0, 40001)
        a = jnp.tanh(u)
        lp = jax.jit(jax.vmap(lambda a: pol.log_prob(params, obs, a[None])))(a)
        mu = float(jnp.arctanh(pol.sample(params, obs, None)[0]))
        sigma = float(jnp.arctanh(pol.sample(params, obs, jnp.ones(1))[0])) - mu  # sample = tanh(μ + σ)
    jac = 1.0 - np.tanh(np.asarray(u)) ** 2
    dens = np.exp(np.asarray(lp))
    assert abs(np.trapezoid(dens * jac, np.asarray(u)) - 1.0) < 1e-6
    uu = np.asarray(u)[::1000]
    closed = np.exp(-0.5 * ((uu - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi)) / (1 - np.tanh(uu) ** 2)
    m = np.abs(uu) < 5
    np.testing.assert_allclose(dens[::1000][m], closed[m], rtol=1e-8)


def test_mode_and_state_independent_std_bounds():
    pol = mg.policies.gaussian(OBS_DIM, 2, hidden=HIDDEN, state_dependent_std=False, log_std_min=-3.0,
                               log_std_max=0.5)
    params = random_params(pol.init, 5, 0.5)
    assert set(params) == {"net", "log_std"}
    obs = normal(6, (OBS_DIM,))
    mu = np.arctanh(np.asarray(pol.sample(params, obs, None), np.float64))  # eps=None: the mode tanh(μ)
    np.testing.assert_allclose(pol.sample(params, obs, None), pol.sample(params, obs, jnp.zeros(2)), atol=1e-7)
    for raw, bound in ((100.0, 0.5), (-100.0, -3.0)):  # the smooth clip saturates at the bounds
        params["log_std"] = jnp.full((2,), raw)
        a = jnp.tanh(jnp.asarray(mu + 1.0, jnp.float32))
        np.testing.assert_allclose(pol.infer_noise(params, obs, a), np.full(2, math.exp(-bound)), rtol=1e-4)
    params["log_std"] = jnp.zeros(2)  # inside: log σ = −3 + softplus(0 + 3) − softplus(0 − 0.5)
    log_sigma = -3.0 + math.log1p(math.exp(3.0)) - math.log1p(math.exp(-0.5))
    np.testing.assert_allclose(pol.infer_noise(params, obs, jnp.tanh(jnp.asarray(mu + 1.0, jnp.float32))),
                               np.full(2, math.exp(-log_sigma)), rtol=1e-4)


def test_out_of_range_actions():
    """Concrete actions outside [−1, 1] (or non-finite) raise; ±1 and traced values are clipped to
    ±(1 − 1e-6) in float32: always finite, never NaN."""
    pol = mg.policies.gaussian(OBS_DIM, 2, hidden=HIDDEN)
    params = random_params(pol.init, 7, 0.5)
    obs = normal(8, (OBS_DIM,))
    for bad in ([1.5, 0.0], [0.0, -1.01], [float("nan"), 0.0]):
        with pytest.raises(ValueError, match="action"):
            pol.log_prob(params, obs, jnp.array(bad))
        with pytest.raises(ValueError, match="action"):
            pol.infer_noise(params, obs, jnp.array(bad))
    edge = jnp.array([1.0, -1.0])
    lp_edge = pol.log_prob(params, obs, edge)
    eps_edge = pol.infer_noise(params, obs, edge)
    assert np.isfinite(float(lp_edge)) and np.all(np.isfinite(np.asarray(eps_edge)))
    np.testing.assert_allclose(pol.sample(params, obs, eps_edge), edge, atol=2e-6)
    lp_jit = jax.jit(pol.log_prob)(params, obs, jnp.array([1.5, -3.0]))  # traced: clipped, no error
    np.testing.assert_allclose(lp_jit, lp_edge, rtol=1e-6)
    clipped = jnp.array([1.0 - 1e-6, -1.0 + 1e-6])
    np.testing.assert_allclose(lp_edge, pol.log_prob(params, obs, clipped), rtol=1e-6)


def test_bad_inputs_and_deterministic_log_prob():
    pol = mg.policies.gaussian(OBS_DIM, 2, hidden=HIDDEN)
    params = random_params(pol.init, 9)
    with pytest.raises(ValueError, match="obs"):
        pol.sample(params, jnp.zeros(OBS_DIM + 1), jnp.zeros(2))
    with pytest.raises(ValueError, match="eps"):
        pol.sample(params, jnp.zeros(OBS_DIM), jnp.zeros((5, 2)))
    with pytest.raises(ValueError, match="log_std_min"):
        mg.policies.gaussian(OBS_DIM, 2, log_std_min=1.0, log_std_max=0.0)
    with pytest.raises(TypeError, match="act_dim"):
        mg.policies.gaussian(OBS_DIM, 2.0)
    assert pol.noise_shape == (2,) and pol.name == "gaussian"
    det = mg.policies.deterministic(OBS_DIM, 2, hidden=HIDDEN)
    with pytest.raises(ValueError, match="no density"):
        det.log_prob(random_params(det.init, 0), jnp.zeros(OBS_DIM), jnp.zeros(2))


def test_sample_and_log_prob_forward_matches_log_prob_and_survives_saturation():
    """Away from saturation the forward density equals log_prob(sample); where float32 tanh has
    rounded the action to ±1 it still equals the float64 density (log_prob does not)."""
    pol = mg.policies.gaussian(3, 2, hidden=(8,))
    params = pol.init(jax.random.PRNGKey(0))
    obs = jnp.array([0.3, -0.2, 0.5])
    eps = jnp.array([0.4, -1.1])
    a, lp = pol.sample_and_log_prob(params, obs, eps)
    np.testing.assert_allclose(a, pol.sample(params, obs, eps), rtol=1e-6)
    np.testing.assert_allclose(lp, pol.log_prob(params, obs, a), rtol=1e-4)
    fn_a, fn_lp = mg.policies.sample_and_log_prob(pol, params, obs, eps)
    np.testing.assert_allclose(fn_lp, lp, rtol=1e-6)
    # saturate: mean 12 in both dimensions
    net = dict(params["net"])
    last = sorted(net)[-1]
    net[last] = {"kernel": jnp.zeros_like(net[last]["kernel"]), "bias": jnp.array([12.0, -12.0, -1.0, -1.0])}
    sat = {"net": net}
    a_sat, lp_sat = pol.sample_and_log_prob(sat, obs, eps)
    assert np.all(np.abs(np.asarray(a_sat)) == 1.0)
    with jax.enable_x64(True):
        s64 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), sat)
        o64, e64 = jnp.asarray(obs, jnp.float64), jnp.asarray(eps, jnp.float64)
        ref = float(pol.log_prob(s64, o64, pol.sample(s64, o64, e64)))
    np.testing.assert_allclose(float(lp_sat), ref, rtol=1e-5)
    assert abs(float(pol.log_prob(sat, obs, a_sat)) - ref) > 1.0


def test_fallback_sample_and_log_prob_for_bundles_without_the_field():
    pol = mg.policies.gaussian(3, 2, hidden=(8,))
    bare = pol._replace(sample_and_log_prob=None)
    params = pol.init(jax.random.PRNGKey(1))
    obs, eps = jnp.array([0.1, 0.2, 0.3]), jnp.array([0.5, -0.5])
    a, lp = mg.policies.sample_and_log_prob(bare, params, obs, eps)
    np.testing.assert_allclose(lp, pol.log_prob(params, obs, pol.sample(params, obs, eps)), rtol=1e-6)
