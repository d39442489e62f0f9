"""Linear-Gaussian system: closed-form expected return; SVG(n) pathwise and score-function gradients vs exact."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mbpo_grad as mg
from mbpo_grad import linear_gaussian as lg
from mbpo_grad import score_function as sf
from tests.mc_checks import error_shrinks

N_SMALL, N_LARGE = 1_000, 16_000


@pytest.fixture(scope="module")
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def cfg(x64):
    system = lg.LinearGaussianSystem(
        A=jnp.array([[1.0, 0.1], [0.0, 1.0]]), B=jnp.array([[0.0], [0.1]]),
        W=jnp.array([[0.05, 0.0], [0.02, 0.05]]), Q=jnp.diag(jnp.array([1.0, 0.5])), R=0.1 * jnp.eye(1),
    )
    return dict(system=system, K=jnp.array([[0.5, 0.8]]), sigma=0.3, m0=jnp.array([1.0, -0.5]),
                S0=jnp.array([[0.1, 0.02], [0.02, 0.05]]), horizon=5, gamma=0.95)


def _kw(c):
    return dict(sigma=c["sigma"], m0=c["m0"], S0=c["S0"], horizon=c["horizon"], gamma=c["gamma"])


def test_noise_free_return_equals_engine(x64):
    """σ = 0, W = 0, a point start: the closed form equals the deterministic rollout (and its gradient)."""
    rng = np.random.default_rng(0)
    for d, m, n in ((2, 1, 4), (3, 2, 7)):
        A = jnp.asarray(np.eye(d) + 0.1 * rng.normal(size=(d, d)))
        B = jnp.asarray(rng.normal(size=(d, m)))
        Qh, Rh = rng.normal(size=(d, d)), rng.normal(size=(m, m))
        system = lg.LinearGaussianSystem(A, B, jnp.zeros((d, d)), jnp.asarray(Qh @ Qh.T), jnp.asarray(Rh @ Rh.T))
        K = jnp.asarray(0.3 * rng.normal(size=(m, d)))
        s0 = jnp.asarray(rng.normal(size=d))
        pol, step, rew = lg.policy(0.0), lg.step(system), lg.reward(system)
        J_eng = lambda K: mg.pathwise_objective(pol, K, step, rew, s0[None], horizon=n, gamma=0.9)  # noqa: E731
        J_cf = lambda K: lg.expected_return(K, system, sigma=0.0, m0=s0, S0=jnp.zeros((d, d)),  # noqa: E731
                                            horizon=n, gamma=0.9)
        (v_cf, g_cf), (v_eng, g_eng) = jax.jit(lambda K: (jax.value_and_grad(J_cf)(K), jax.value_and_grad(J_eng)(K)))(K)
        np.testing.assert_allclose(v_cf, v_eng, rtol=1e-12)
        np.testing.assert_allclose(g_cf, g_eng, rtol=1e-10)


def test_value_functions_consistent(cfg):
    c = cfg
    Ps, cs = lg.value_functions(c["K"], c["system"], sigma=c["sigma"], horizon=c["horizon"], gamma=c["gamma"])
    M0 = c["S0"] + jnp.outer(c["m0"], c["m0"])
    J = lg.expected_return(c["K"], c["system"], **_kw(c))
    np.testing.assert_allclose(-(jnp.trace(Ps[0] @ M0) + cs[0]), J, rtol=1e-12)
    # V_1 from the window that starts one step later is the same function
    Ps4, cs4 = lg.value_functions(c["K"], c["system"], sigma=c["sigma"], horizon=c["horizon"] - 1, gamma=c["gamma"])
    np.testing.assert_allclose(Ps[1], Ps4[0], rtol=1e-12)
    np.testing.assert_allclose(cs[1], cs4[0], rtol=1e-12)


def _sample(key, c, batch):
    d, m = c["system"].B.shape
    k0, k1, k2 = jax.random.split(key, 3)
    s0 = c["m0"] + jax.random.normal(k0, (batch, d)) @ jnp.linalg.cholesky(c["S0"]).T
    return s0, jax.random.normal(k1, (c["horizon"] + 1, batch, m)), jax.random.normal(k2, (c["horizon"], batch, d))


def _per_trajectory(c, s0, eps, xi):
    system, sigma, n, gamma = c["system"], c["sigma"], c["horizon"], c["gamma"]
    pol, step, rew = lg.policy(sigma), lg.step(system), lg.reward(system)
    Ps, cs = lg.value_functions(c["K"], system, sigma=sigma, horizon=n, gamma=gamma)

    def svg(K, s, e, x):  # SVG(n): jax.grad of the engine objective with the sampled noise
        return mg.pathwise_objective(pol, K, step, rew, s[None], horizon=n, gamma=gamma,
                                     policy_noise=e[:, None], dynamics_noise=x[:, None])

    def score(K, s, e, x, baseline):
        ret, tr = mg.pathwise_returns(pol, K, step, rew, s[None], horizon=n, gamma=gamma,
                                      policy_noise=e[:, None], dynamics_noise=x[:, None])
        states, actions = tr.states[0, :-1], tr.actions[0, :-1]
        lp = sf.trajectory_log_probs(lambda k, o, a: lg.log_prob(k, o, a, sigma), K, states, actions)
        b = jax.vmap(lg.state_value)(Ps[:-1], cs[:-1], states) if baseline else None
        return sf.reinforce_surrogate(lp, tr.rewards[0], jnp.full((n,), gamma), b), ret[0]

    def per(grad_fn):
        return jax.vmap(grad_fn, in_axes=(None, 0, 1, 1))(c["K"], s0, eps, xi)

    g_sf, returns = per(jax.grad(lambda *a: score(*a, False), has_aux=True))
    g_sfb, _ = per(jax.grad(lambda *a: score(*a, True), has_aux=True))
    return {"svg": per(jax.grad(svg)), "sf": g_sf, "sf_baseline": g_sfb, "returns": returns}


@pytest.fixture(scope="module")
def mc(cfg):
    c = cfg
    out = jax.jit(lambda a, b, e: _per_trajectory(c, a, b, e))(*_sample(jax.random.PRNGKey(0), c, N_LARGE))
    exact = np.asarray(lg.exact_gradient(c["K"], c["system"], **_kw(c)))
    return {k: np.asarray(v).reshape(N_LARGE, -1) for k, v in out.items()}, exact.reshape(-1), c


def _stats(g, target):
    mean, se = g.mean(0), g.std(0, ddof=1) / np.sqrt(g.shape[0])
    return float(np.max(np.abs(mean - target) / se)), float(np.linalg.norm(mean - target)), se


def test_sampled_returns_match_closed_form(mc):
    out, _, c = mc
    r = out["returns"][:, 0]
    J = float(lg.expected_return(c["K"], c["system"], **_kw(c)))
    assert abs(r.mean() - J) < 4.0 * r.std() / np.sqrt(len(r))


@pytest.mark.parametrize("name", ["svg", "sf", "sf_baseline"])
def test_estimators_agree_with_exact_gradient(mc, name):
    """Within a few standard errors at 1k and 16k trajectories; the standard error shrinks ~4x."""
    out, exact, _ = mc
    g = out[name]
    z_small, err_small, se_small = _stats(g[:N_SMALL], exact)
    z_large, err_large, se_large = _stats(g, exact)
    assert z_small < 4.5 and z_large < 4.5, (z_small, z_large)
    assert np.all(se_large < 0.35 * se_small)
    ok, info = error_shrinks(g, exact, N_SMALL)
    assert ok, info


def test_variance_ordering(mc):
    out, exact, _ = mc
    var = {k: float(np.sum(np.var(out[k], 0))) for k in ("svg", "sf", "sf_baseline")}
    assert var["svg"] < 0.1 * var["sf_baseline"]
    assert var["sf_baseline"] < 0.1 * var["sf"]
    # with 16k samples the pathwise mean is accurate to ~1% of the gradient
    assert np.linalg.norm(out["svg"].mean(0) - exact) < 0.03 * np.linalg.norm(exact)


def test_bad_inputs(cfg):
    c = cfg
    with pytest.raises(ValueError, match="K"):
        lg.expected_return(c["K"].T, c["system"], **_kw(c))
    with pytest.raises(ValueError, match="system.B"):
        lg.expected_return(c["K"], c["system"]._replace(B=jnp.zeros((3, 1))), **_kw(c))
    with pytest.raises(ValueError, match="gamma"):
        lg.expected_return(c["K"], c["system"], **{**_kw(c), "gamma": 1.5})
    with pytest.raises(TypeError, match="system"):
        lg.expected_return(c["K"], tuple(c["system"]), **_kw(c))
