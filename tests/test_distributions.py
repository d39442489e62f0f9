"""Reparameterised distributions: log_prob vs the change of variables of ``sample`` (derivative /
Jacobian w.r.t. the noise), normalisation by quadrature, exact noise inference, references."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy import stats

from mbpo_grad import distributions as D


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


TRUNC = D.truncated_normal()
KUMA = D.kumaraswamy()


@functools.partial(jax.jit, static_argnums=0)
def scalar_change_of_variables(dist, params, u):
    """For U(0, 1) noise: log p(x) = log p_u(u) − log|dx/du| = −log|dx/du| at x = sample(u)."""
    x = dist.sample(params, u)
    dxdu = jax.vmap(jax.grad(lambda v: dist.sample(params, v)))(u)
    return x, dist.log_prob(params, x), -jnp.log(jnp.abs(dxdu)), dist.infer_noise(params, x)


@functools.partial(jax.jit, static_argnums=0)
def log_prob(dist, params, x):
    return dist.log_prob(params, x)


TRUNC_CASES = [
    dict(loc=0.3, scale=1.2, low=-1.0, high=2.0),
    dict(loc=0.0, scale=1.0, low=-np.inf, high=0.5),      # one-sided
    dict(loc=0.0, scale=1.0, low=4.0, high=6.0),          # upper tail (mirrored internally)
    dict(loc=1.0, scale=0.5, low=-2.5, high=-1.5),        # lower tail, 5-7 sd below loc
]


@pytest.mark.parametrize("case", TRUNC_CASES)
def test_truncated_normal(case):
    dist = TRUNC
    params = {k: jnp.float64(v) for k, v in case.items()}
    u = jnp.linspace(0.005, 0.995, 199)
    x, lp, lp_cov, u_back = scalar_change_of_variables(dist, params, u)
    assert np.all(np.asarray(x) >= case["low"]) and np.all(np.asarray(x) <= case["high"])
    assert np.all(np.diff(np.asarray(x)) > 0)
    np.testing.assert_allclose(lp, lp_cov, atol=1e-8, rtol=1e-8)
    np.testing.assert_allclose(u_back, u, atol=1e-10)
    a, b = (case["low"] - case["loc"]) / case["scale"], (case["high"] - case["loc"]) / case["scale"]
    ref = stats.truncnorm.logpdf(x, a, b, loc=case["loc"], scale=case["scale"])
    np.testing.assert_allclose(lp, ref, rtol=1e-6)
    lo = max(case["low"], case["loc"] - 12 * case["scale"])
    grid = np.linspace(lo, case["high"], 20001)
    dens = np.exp(np.asarray(log_prob(dist, params, jnp.asarray(grid))))
    assert abs(np.trapezoid(dens, grid) - 1.0) < 1e-6
    outside = dist.log_prob(params, jnp.array([case["high"] + 0.1]))
    assert float(outside[0]) == -np.inf


def test_truncated_normal_float32_tail_is_finite():
    with jax.enable_x64(False):
        dist = D.truncated_normal()
        params = {"loc": jnp.float32(0.0), "scale": jnp.float32(1.0), "low": jnp.float32(5.0), "high": jnp.float32(6.0)}
        x = dist.sample(params, dist.noise(jax.random.PRNGKey(0), (1000,)))
        assert x.dtype == jnp.float32
        assert np.all(np.asarray(x) >= 5.0) and np.all(np.asarray(x) <= 6.0)
        assert np.all(np.isfinite(np.asarray(dist.log_prob(params, x))))


KUMA_CASES = [(0.5, 0.7), (2.0, 5.0), (1.0, 1.0), (3.0, 0.4)]


@pytest.mark.parametrize("a,b", KUMA_CASES)
def test_kumaraswamy(a, b):
    dist = KUMA
    params = {"a": jnp.float64(a), "b": jnp.float64(b)}
    u = jnp.linspace(0.005, 0.995, 199)
    x, lp, lp_cov, u_back = scalar_change_of_variables(dist, params, u)
    np.testing.assert_allclose(lp, lp_cov, atol=1e-8, rtol=1e-8)
    np.testing.assert_allclose(u_back, u, atol=1e-10)
    xs = np.asarray(x)
    closed = np.log(a * b) + (a - 1) * np.log(xs) + (b - 1) * np.log1p(-xs ** a)  # a b x^{a-1}(1-x^a)^{b-1}
    np.testing.assert_allclose(lp, closed, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(1 - (1 - xs ** a) ** b, u, atol=1e-10)  # the CDF F(x) = 1 − (1 − x^a)^b
    # ∫_0^1 p(x) dx = 1 via x = sigmoid(v), dx = x(1 − x) dv (handles the end-point singularities).
    v = np.linspace(-60.0, 60.0, 120001)
    xv = 1.0 / (1.0 + np.exp(-v))
    dens = np.exp(np.asarray(log_prob(dist, params, jnp.asarray(xv))))
    assert abs(np.trapezoid(dens * xv * (1 - xv), v) - 1.0) < 1e-5
    assert float(dist.log_prob(params, jnp.array(1.5))) == -np.inf


def test_kumaraswamy_printed_formula_is_not_the_inverse_cdf():
    """The chapter's x = 1 − (1 − u^a)^{1/b} does not have density a b x^{a−1}(1 − x^a)^{b−1}."""
    a, b = 2.0, 5.0
    dist = D.kumaraswamy()
    u = jnp.linspace(0.05, 0.95, 19)
    printed = lambda v: 1.0 - (1.0 - v ** a) ** (1.0 / b)  # noqa: E731
    x = printed(u)
    lp_printed = -jnp.log(jax.vmap(jax.grad(printed))(u))
    lp_stated = dist.log_prob({"a": a, "b": b}, x)
    assert np.max(np.abs(np.asarray(lp_printed - lp_stated))) > 0.5


def logistic_log_prob(d):
    return -d - 2.0 * jax.nn.softplus(-d)


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_gumbel_softmax_two_classes_matches_logistic_change_of_variables(tau):
    """K = 2: x_1 = sigmoid((l_1 − l_2 + d)/τ) with d = g_1 − g_2 ~ Logistic(0, 1), so
    log p(x) = log p_L(d) − log|dx_1/dd|."""
    dist = D.gumbel_softmax()
    params = {"logits": jnp.array([0.7, -0.4]), "temperature": jnp.float64(tau)}
    d = jnp.linspace(-8.0, 8.0, 101)

    @jax.jit
    def run(d):
        def one(d):
            g = jnp.stack([d, 0.0])
            x = dist.sample(params, g)
            dxdd = jax.grad(lambda v: dist.sample(params, jnp.stack([v, 0.0]))[0])(d)
            return x, dist.log_prob(params, x), logistic_log_prob(d) - jnp.log(jnp.abs(dxdd))

        return jax.vmap(one)(d)

    x, lp, ref = run(d)
    np.testing.assert_allclose(lp, ref, atol=1e-8, rtol=1e-8)
    np.testing.assert_allclose(jnp.sum(x, -1), 1.0, atol=1e-12)


def test_gumbel_softmax_three_classes():
    """K = 3 against the multivariate-logistic law of d_k = g_k − g_K (Jacobian by jacfwd), the
    density integrates to 1 over the simplex, and infer_noise replays samples exactly."""
    dist = D.gumbel_softmax()
    k = 3
    params = {"logits": jnp.array([0.5, -1.0, 0.2]), "temperature": jnp.float64(0.8)}

    def x_of_d(d):  # (K−1) free coordinates of the sample, from the (K−1) differences
        return dist.sample(params, jnp.concatenate([d, jnp.zeros(1)]))[: k - 1]

    def log_p_d(d):  # (K−1)! e^{−Σd} / (1 + Σ e^{−d})^K
        return math.lgamma(k) - jnp.sum(d) - k * jnp.log1p(jnp.sum(jnp.exp(-d)))

    @jax.jit
    def run(d):
        def one(d):
            x = dist.sample(params, jnp.concatenate([d, jnp.zeros(1)]))
            jac = jax.jacfwd(x_of_d)(d)
            return x, dist.log_prob(params, x), log_p_d(d) - jnp.linalg.slogdet(jac)[1]

        return jax.vmap(one)(d)

    d = jnp.asarray(np.random.default_rng(0).normal(scale=2.0, size=(200, k - 1)))
    x, lp, ref = run(d)
    np.testing.assert_allclose(lp, ref, atol=1e-8, rtol=1e-8)
    # Normalisation: x_{1:2} = softmax([y, 0])_{1:2} on a grid of y ∈ R², dx = |det ∂x/∂y| dy.
    y1 = jnp.linspace(-30.0, 30.0, 601)
    yy = jnp.stack(jnp.meshgrid(y1, y1, indexing="ij"), -1).reshape(-1, 2)

    @jax.jit
    def integrand(yy):
        def one(y):
            x = jax.nn.softmax(jnp.concatenate([y, jnp.zeros(1)]))
            jac = jax.jacfwd(lambda v: jax.nn.softmax(jnp.concatenate([v, jnp.zeros(1)]))[:2])(y)
            return jnp.exp(dist.log_prob(params, x)) * jnp.abs(jnp.linalg.det(jac))

        return jax.vmap(one)(yy)

    vals = np.asarray(integrand(yy)).reshape(601, 601)
    total = np.trapezoid(np.trapezoid(vals, np.asarray(y1), axis=1), np.asarray(y1))
    assert abs(total - 1.0) < 1e-4
    g = dist.noise(jax.random.PRNGKey(1), (5, k), jnp.float64)
    xs = dist.sample(params, g)
    np.testing.assert_allclose(dist.sample(params, dist.infer_noise(params, xs)), xs, atol=1e-12)


def test_gumbel_softmax_low_temperature_is_categorical():
    """τ → 0: argmax of the relaxed samples ~ Categorical(softmax(logits)) (Gumbel-max)."""
    dist = D.gumbel_softmax()
    logits = jnp.array([1.0, 0.0, -0.5, 0.3])
    params = {"logits": logits, "temperature": jnp.float64(0.05)}
    n = 40_000
    x = dist.sample(params, dist.noise(jax.random.PRNGKey(0), (n, 4), jnp.float64))
    assert float(jnp.mean(jnp.max(x, -1))) > 0.9  # nearly one-hot
    freq = np.bincount(np.asarray(jnp.argmax(x, -1)), minlength=4) / n
    p = np.asarray(jax.nn.softmax(logits))
    assert np.all(np.abs(freq - p) < 4 * np.sqrt(p * (1 - p) / n))


def test_diag_and_full_gaussian():
    diag = D.diag_gaussian()
    full = D.full_gaussian()
    rng = np.random.default_rng(0)
    loc = jnp.asarray(rng.normal(size=3))
    scale = jnp.asarray(np.exp(rng.normal(size=3)))
    eps = jnp.asarray(rng.normal(size=(50, 3)))
    pd = {"loc": loc, "scale": scale}
    x = diag.sample(pd, eps)
    np.testing.assert_allclose(diag.log_prob(pd, x), jnp.sum(stats.norm.logpdf(x, loc, scale), -1), rtol=1e-12)
    np.testing.assert_allclose(diag.infer_noise(pd, x), eps, atol=1e-12)
    m = rng.normal(size=(3, 3))
    cov = m @ m.T + 0.5 * np.eye(3)
    pf = D.full_gaussian_params(loc, cov)
    np.testing.assert_allclose(pf["scale_tril"] @ pf["scale_tril"].T, cov, atol=1e-12)

    @jax.jit
    def run(e):
        xf = full.sample(pf, e)
        jac = jax.jacfwd(lambda v: full.sample(pf, v))(e)
        cov_ref = -0.5 * jnp.sum(e ** 2) - 1.5 * math.log(2 * math.pi) - jnp.linalg.slogdet(jac)[1]
        return xf, full.log_prob(pf, xf), cov_ref, full.infer_noise(pf, xf)

    xf, lpf, lp_cov, e_back = jax.vmap(run)(eps)
    np.testing.assert_allclose(lpf, lp_cov, atol=1e-10)
    np.testing.assert_allclose(lpf, stats.multivariate_normal.logpdf(xf, loc, cov), rtol=1e-10)
    np.testing.assert_allclose(e_back, eps, atol=1e-10)
    emp = np.cov(np.asarray(full.sample(pf, full.noise(jax.random.PRNGKey(0), (20000, 3), jnp.float64))).T)
    np.testing.assert_allclose(emp, cov, atol=0.1 * np.max(np.abs(cov)))


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match=r"params\['scale'\]"):
        D.truncated_normal().sample({"loc": 0.0, "scale": -1.0, "low": 0.0, "high": 1.0}, 0.5)
    with pytest.raises(ValueError, match=r"params\['low'\]"):
        D.truncated_normal().log_prob({"loc": 0.0, "scale": 1.0, "low": 1.0, "high": 1.0}, 0.5)
    with pytest.raises(ValueError, match="missing keys"):
        D.truncated_normal().sample({"loc": 0.0, "scale": 1.0}, 0.5)
    with pytest.raises(ValueError, match=r"params\['a'\]"):
        D.kumaraswamy().sample({"a": 0.0, "b": 1.0}, 0.5)
    with pytest.raises(ValueError, match=r"params\['temperature'\]"):
        D.gumbel_softmax().sample({"logits": jnp.zeros(3), "temperature": 0.0}, jnp.zeros(3))
    with pytest.raises(ValueError, match=r"params\['logits'\]"):
        D.gumbel_softmax().sample({"logits": jnp.zeros(1), "temperature": 1.0}, jnp.zeros(1))
    with pytest.raises(ValueError, match=r"scale_tril"):
        D.full_gaussian().log_prob({"loc": jnp.zeros(2), "scale_tril": jnp.array([[1.0, 0.0], [0.3, -1.0]])},
                                   jnp.zeros(2))
    with pytest.raises(ValueError, match="covariance"):
        D.full_gaussian_params(jnp.zeros(2), jnp.array([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(TypeError, match="params"):
        D.diag_gaussian().sample([0.0, 1.0], 0.5)
