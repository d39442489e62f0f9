"""Normalizing-flow policy: exact noise inference through every layer, exact log-likelihood,
samples distributed as the density says, Gaussian limit, engine compatibility."""
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
    """Every layer perturbed (base, K = 3 couplings or 1-D sinh-arcsinh/affine pairs, tanh)."""
    pol = mg.policies.flow(OBS_DIM, act_dim, layers=3, hidden=HIDDEN)
    with jax.enable_x64(True):
        params = random_params(pol.init, act_dim, 0.25, np.float64)
        obs = normal(10, (64, OBS_DIM), np.float64)
        eps = normal(11, (64, act_dim), np.float64)
        actions = jnp.asarray(np.random.default_rng(12).uniform(-0.999, 0.999, (64, act_dim)))
        x, e_back, lp, lp_ref, a_back = checks(pol)(params, obs, eps, actions)
        identity_layers = jax.tree_util.tree_map(jnp.zeros_like, params[1:])  # all-zero layers = identity
        base_only = jax.jit(jax.vmap(lambda o, e: pol.sample(params[:1] + identity_layers, o, e)))(obs, eps)
    assert np.max(np.abs(np.asarray(x) - np.asarray(base_only))) > 0.05  # the K layers do something
    assert np.max(np.abs(np.arctanh(np.asarray(x)))) < 12  # away from float64 tanh saturation
    np.testing.assert_allclose(e_back, eps, atol=1e-9, rtol=0)
    np.testing.assert_allclose(a_back, actions, atol=1e-12, rtol=0)
    np.testing.assert_allclose(lp, lp_ref, atol=1e-9, rtol=0)


@pytest.mark.parametrize("act_dim", [1, 3])
def test_round_trips_and_log_prob_float32(act_dim):
    """float32: a → ε → a to 1e-5 on all actions; ε → a → ε to 1e-5 and log_prob vs jacfwd to 1e-4
    where the pre-squash |u| < 2.5 (atanh's conditioning 1/(1 − a²) limits float32 beyond)."""
    pol = mg.policies.flow(OBS_DIM, act_dim, layers=3, hidden=HIDDEN)
    params = random_params(pol.init, 30 + act_dim, 0.25)
    obs = normal(13, (512, OBS_DIM))
    eps = normal(14, (512, act_dim))
    actions = jnp.asarray(np.random.default_rng(15).uniform(-1.0, 1.0, (512, act_dim)), jnp.float32)
    x, e_back, lp, lp_ref, a_back = checks(pol)(params, obs, eps, actions)
    np.testing.assert_allclose(a_back, actions, atol=1e-5, rtol=0)
    ok = np.max(np.abs(np.arctanh(np.clip(np.asarray(x, np.float64), -1 + 1e-12, 1 - 1e-12))), axis=1) < 2.5
    assert ok.mean() > 0.5
    np.testing.assert_allclose(np.asarray(e_back)[ok], np.asarray(eps)[ok], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(lp)[ok], np.asarray(lp_ref)[ok], atol=1e-4, rtol=0)


def test_gaussian_limit():
    """layers=0 with the Gaussian's parameters IS the Gaussian policy; a fresh K-layer flow equals
    the Gaussian given by its base layer (zero-initialised layers are the identity)."""
    gauss = mg.policies.gaussian(OBS_DIM, 2, hidden=HIDDEN)
    g_params = random_params(gauss.init, 1)
    obs = normal(2, (OBS_DIM,))
    eps = normal(3, (2,))
    a = gauss.sample(g_params, obs, eps)
    flow0 = mg.policies.flow(OBS_DIM, 2, layers=0, hidden=HIDDEN)
    f0_params = (g_params["net"], ())
    np.testing.assert_allclose(flow0.sample(f0_params, obs, eps), a, atol=1e-6)
    np.testing.assert_allclose(flow0.log_prob(f0_params, obs, a), gauss.log_prob(g_params, obs, a), atol=1e-4)
    np.testing.assert_allclose(flow0.sample(f0_params, obs, None), gauss.sample(g_params, obs, None), atol=1e-6)
    flow = mg.policies.flow(OBS_DIM, 2, layers=2, hidden=HIDDEN)
    params = jax.jit(flow.init)(jax.random.PRNGKey(0))
    gp = {"net": params[0]}
    x = flow.sample(params, obs, eps)
    np.testing.assert_allclose(x, gauss.sample(gp, obs, eps), atol=1e-6)
    np.testing.assert_allclose(flow.log_prob(params, obs, x), gauss.log_prob(gp, obs, x), atol=1e-4)


def test_samples_of_a_1d_flow_follow_its_log_prob():
    """Histogram of 200k samples vs bin probabilities integrated from exp(log_prob): a chi-square
    statistic within 6 standard deviations of its mean (df); the Gaussian with the same base layer
    fails the same test (so the test can tell densities apart). Also ∫ π(a) da = 1."""
    pol = mg.policies.flow(OBS_DIM, 1, layers=2, hidden=HIDDEN)
    gauss = mg.policies.gaussian(OBS_DIM, 1, hidden=HIDDEN)
    n = 200_000
    with jax.enable_x64(True):
        params = random_params(pol.init, 1, 0.25, np.float64)
        obs = normal(8, (OBS_DIM,), np.float64)
        eps = jax.random.normal(jax.random.PRNGKey(0), (n, 1), jnp.float64)
        u_grid = jnp.linspace(-12.0, 12.0, 48001)

        @jax.jit
        def run(params, eps, u_grid):
            samples = jax.vmap(lambda e: pol.sample(params, obs, e))(eps)[:, 0]
            lp = jax.vmap(lambda a: pol.log_prob(params, obs, a[None]))(jnp.tanh(u_grid))
            lp_gauss = jax.vmap(lambda a: gauss.log_prob({"net": params[0]}, obs, a[None]))(jnp.tanh(u_grid))
            return samples, lp, lp_gauss

        samples, lp, lp_gauss = run(params, eps, u_grid)
    u_s = np.arctanh(np.asarray(samples))
    u = np.asarray(u_grid)
    dens_u = np.exp(np.asarray(lp)) * (1.0 - np.tanh(u) ** 2)  # density of u = atanh(a)
    assert abs(np.trapezoid(dens_u, u) - 1.0) < 1e-5
    assert np.all(np.abs(u_s) < 12)
    edges = np.quantile(u_s, np.linspace(0, 1, 41))  # ~5000 samples per bin
    edges[0], edges[-1] = -12.0, 12.0
    counts, _ = np.histogram(u_s, edges)
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (dens_u[1:] + dens_u[:-1]) * np.diff(u))])

    def chi2(cum):
        probs = np.diff(np.interp(edges, u, cum))
        expected = n * probs / probs.sum()
        return float(np.sum((counts - expected) ** 2 / expected))

    df = len(counts) - 1
    stat = chi2(cum)
    assert stat < df + 6 * np.sqrt(2 * df), stat
    dens_g = np.exp(np.asarray(lp_gauss)) * (1.0 - np.tanh(u) ** 2)
    cum_g = np.concatenate([[0.0], np.cumsum(0.5 * (dens_g[1:] + dens_g[:-1]) * np.diff(u))])
    assert chi2(cum_g) > 10 * (df + 6 * np.sqrt(2 * df))  # a non-Gaussian flow


def test_out_of_range_actions_and_mode():
    pol = mg.policies.flow(OBS_DIM, 2, layers=2, hidden=HIDDEN)
    params = random_params(pol.init, 5, 0.3)
    obs = normal(6, (OBS_DIM,))
    with pytest.raises(ValueError, match="action"):
        pol.log_prob(params, obs, jnp.array([1.2, 0.0]))
    with pytest.raises(ValueError, match="action"):
        pol.infer_noise(params, obs, jnp.array([0.0, float("inf")]))
    edge = jnp.array([1.0, -1.0])
    assert np.isfinite(float(pol.log_prob(params, obs, edge)))
    np.testing.assert_allclose(pol.sample(params, obs, pol.infer_noise(params, obs, edge)), edge, atol=1e-5)
    assert np.isfinite(float(jax.jit(pol.log_prob)(params, obs, jnp.array([3.0, -2.0]))))
    np.testing.assert_allclose(pol.sample(params, obs, None), pol.sample(params, obs, jnp.zeros(2)))
    with pytest.raises(ValueError, match="eps"):
        pol.sample(params, obs, jnp.zeros(3))
    with pytest.raises(ValueError, match="layers"):
        mg.policies.flow(OBS_DIM, 2, layers=-1)
    assert pol.noise_shape == (2,) and pol.name == "flow"


def test_flow_policy_in_the_pathwise_engine():
    """SVG(n) with a flow policy and the exact entropy term: jax.grad of mg.pathwise_objective
    equals a central finite difference (float64), on a 2-D point mass s' = s + 0.1 a."""
    pol = mg.policies.flow(2, 2, layers=2, hidden=HIDDEN)
    alpha = 0.1
    horizon, batch = 3, 4

    def step(s, a, xi):
        return s + 0.1 * a

    with jax.enable_x64(True):
        params = random_params(pol.init, 11, 0.3, np.float64)
        states = normal(12, (batch, 2), np.float64)
        noise = normal(13, (horizon + 1, batch, 2), np.float64)
        direction = random_params(pol.init, 14, 1.0, np.float64)

        def objective(p):
            def reward(s, a):
                return -jnp.sum(s ** 2) - alpha * pol.log_prob(p, s, a)

            return mg.pathwise_objective(mg.policies.as_engine_policy(pol), p, step, reward, states,
                                         horizon=horizon, policy_noise=noise)

        grad = jax.jit(jax.grad(objective))(params)
        h = 1e-5
        shifted = jax.jit(lambda t: objective(jax.tree_util.tree_map(lambda p, d: p + t * d, params, direction)))
        fd = (shifted(h) - shifted(-h)) / (2 * h)
        directional = sum(float(jnp.vdot(g, d)) for g, d in
                          zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(direction)))
    assert abs(directional) > 1e-3
    np.testing.assert_allclose(directional, float(fd), rtol=1e-6)


def _saturating(params, shift):
    """Every conditioner's last layer set to a constant output: shift / skew = ``shift`` and the
    scale / tail parameter far past its bound (the state SHAC drives a saturating policy to)."""
    def fix(p):
        if not p:
            return p
        p = dict(p)
        last = sorted(p)[-1]
        p[last] = {"kernel": jnp.zeros_like(p[last]["kernel"]),
                   "bias": jnp.array([shift, 30.0], p[last]["bias"].dtype)}
        return p

    return tuple(fix(p) for p in params)


@pytest.mark.parametrize("layers", [2, 3, 4, 6])
def test_deep_1d_flow_stays_finite_at_its_bounds(layers):
    """Float32, every 1-D layer at the edge of its range, |ε| ≤ 5: actions, forward log π and
    the gradient of an SVG-style objective are finite (shared budgets). The old per-layer bounds
    (tail budget K·2) overflow to NaN on the same parameters, so the check can fail."""
    obs = jnp.ones(OBS_DIM)
    eps = jnp.linspace(-5.0, 5.0, 41)[:, None]

    def run(log_tail_bound):
        pol = mg.policies.flow(OBS_DIM, 1, layers=layers, hidden=HIDDEN, log_tail_bound=log_tail_bound)
        params = _saturating(pol.init(jax.random.PRNGKey(layers)), 3.0)

        def objective(p):
            a, lp = jax.vmap(lambda e: mg.policies.sample_and_log_prob(pol, p, obs, e))(eps)
            return jnp.sum(a[:, 0]) - 0.1 * jnp.sum(lp)

        value, grad = jax.jit(jax.value_and_grad(objective))(params)
        leaves = [value] + jax.tree_util.tree_leaves(grad)
        return all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)

    assert run(2.0)
    assert not run(2.0 * layers)


def test_sample_and_log_prob_exact_where_float32_tanh_saturates():
    """Pre-squash values 10.9–12.6: float32 tanh rounds the action to ±1, so log_prob(sample) sees
    a clipped action, while sample_and_log_prob (forward from ε) matches the float64 density.
    Certain by construction: there 1 − tanh(u) ≤ 6.8e-10, over 40 times below half a float32 ulp
    under 1 (2^-25 ≈ 3e-8), so any tanh that is accurate to an ulp rounds to ±1 (at the former
    8.9–10.6 the smallest was 3.9e-8, above it: the check passed only through the CPU tanh's
    clamping)."""
    pol = mg.policies.flow(OBS_DIM, 1, layers=2, hidden=HIDDEN)
    params32 = random_params(pol.init, 21, 0.1)
    base = dict(params32[0])
    last = sorted(base)[-1]
    base[last] = {"kernel": jnp.zeros_like(base[last]["kernel"]), "bias": jnp.array([14.0, -1.0])}
    params32 = (base,) + params32[1:]
    obs = normal(22, (OBS_DIM,))
    eps = jnp.linspace(-3.0, 3.0, 13)[:, None]
    a32, lp32 = jax.vmap(lambda e: pol.sample_and_log_prob(params32, obs, e))(eps)
    assert np.all(np.abs(np.asarray(a32)) == 1.0)  # every action rounded to exactly 1
    naive = jax.vmap(lambda a: pol.log_prob(params32, obs, a))(a32)
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), params32)
        o64, e64 = jnp.asarray(obs, jnp.float64), jnp.asarray(eps, jnp.float64)
        a64 = jax.vmap(lambda e: pol.sample(p64, o64, e))(e64)
        assert np.all(np.abs(np.asarray(a64)) < 1.0)  # float64 still resolves them
        assert np.all(1.0 - np.abs(np.asarray(a64)) < 1e-9), 1.0 - np.abs(np.asarray(a64))
        ref = np.asarray(jax.vmap(lambda a: pol.log_prob(p64, o64, a))(a64))
    np.testing.assert_allclose(lp32, ref, rtol=1e-5)
    assert np.max(np.abs(np.asarray(naive) - ref)) > 1.0  # the inverse route is wrong here
