"""Tabular MDPs: the policy-gradient theorem is exact; REINFORCE / GAE estimates converge to it (theory §6)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mbpo_grad import score_function as sf
from mbpo_grad import tabular as tb
from mbpo_grad.returns import reward_to_go
from tests.mc_checks import error_shrinks

GAMMA, HORIZON = 0.7, 40  # truncation bias of order γ^T ≈ 6e-7, far below the Monte-Carlo error
N_SMALL, N_LARGE = 2_000, 32_000


@pytest.fixture(scope="module")
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def problem(x64):
    mdp = _random_mdp(jax.random.PRNGKey(1), 4, 3, GAMMA)
    theta = jax.random.normal(jax.random.PRNGKey(2), (4, 3))
    return mdp, theta


_random_mdp = jax.jit(tb.random_mdp, static_argnums=(1, 2))
_sample = jax.jit(tb.sample_episodes, static_argnames=("horizon", "num_episodes", "termination"))


@jax.jit
def _theorem_vs_autodiff(mdp, theta):
    return tb.policy_gradient(mdp, theta), jax.grad(lambda th: tb.expected_return(mdp, th))(theta)


def _z(samples, target):
    """Max |z|-score of the sample mean of per-episode gradients against a target, and the error norm."""
    samples = np.asarray(samples)
    mean = samples.mean(0)
    se = samples.std(0, ddof=1) / np.sqrt(samples.shape[0])
    return float(np.max(np.abs(mean - target) / se)), float(np.linalg.norm(mean - target)), float(se.mean())


def _per_episode_grads(theta, eps, value_tables, lams):
    # jitted once; value_tables / lams are arrays, so other tables reuse the compiled program
    """[N, S, A] gradients for REINFORCE (no baseline, baseline u(s_t)) and GAE(λ) with values u."""

    def reinforce(th, ep, base):
        lp = sf.trajectory_log_probs(tb.log_prob, th, ep.states[:-1], ep.actions)
        b = None if base is None else base[ep.states[:-1]]
        return sf.reinforce_surrogate(lp, ep.rewards, ep.discounts, b)

    def gae(th, ep, u, lam):
        lp = sf.trajectory_log_probs(tb.log_prob, th, ep.states[:-1], ep.actions)
        return sf.gae_surrogate(lp, ep.rewards, u[ep.states], ep.discounts, lam)

    out = {"reinforce": jax.vmap(jax.grad(reinforce), in_axes=(None, 0, None))(theta, eps, None)}
    out["reinforce_baseline"] = jax.vmap(jax.grad(reinforce), in_axes=(None, 0, None))(theta, eps, value_tables[0])
    for i, (u, lam) in enumerate(zip(value_tables, lams)):
        out[f"gae{i}"] = jax.vmap(jax.grad(gae), in_axes=(None, 0, None, None))(theta, eps, u, lam)
    return out


def test_policy_gradient_theorem_equals_autodiff(x64):
    for seed, (S, A, gamma) in enumerate([(5, 4, 0.5), (5, 4, 0.9), (5, 4, 0.99)]):
        mdp = _random_mdp(jax.random.PRNGKey(seed), S, A, gamma)
        theta = 2.0 * jax.random.normal(jax.random.PRNGKey(100 + seed), (S, A))
        pg, auto = _theorem_vs_autodiff(mdp, theta)
        assert pg.dtype == jnp.float64
        np.testing.assert_allclose(pg, auto, rtol=1e-10, atol=1e-10)
        assert float(jnp.max(jnp.abs(pg))) > 1e-3  # not a vacuous comparison


def test_bellman_quantities(problem):
    mdp, theta = problem
    pi, v, q, x = tb.policy_probs(theta), tb.values(mdp, theta), tb.q_values(mdp, theta), tb.visitation(mdp, theta)
    np.testing.assert_allclose(jnp.sum(pi * q, -1), v, atol=1e-12)          # v = Σ_a π q
    np.testing.assert_allclose(jnp.sum(x), 1.0 / (1.0 - GAMMA), rtol=1e-12)  # discounted visitation mass
    np.testing.assert_allclose(x @ jnp.sum(pi * mdp.r, -1), tb.expected_return(mdp, theta), rtol=1e-12)


def test_gae_expected_gradient_identities(problem):
    mdp, theta = problem
    exact = tb.policy_gradient(mdp, theta)
    v = tb.values(mdp, theta)
    wrong = jnp.zeros_like(v)
    for lam in (0.0, 0.3, 0.9, 1.0):  # the true values: unbiased for every λ
        np.testing.assert_allclose(tb.gae_expected_gradient(mdp, theta, v, lam), exact, atol=1e-12)
    for u in (wrong, v + 1.7, jnp.arange(4.0)):  # λ = 1: unbiased for any value table
        np.testing.assert_allclose(tb.gae_expected_gradient(mdp, theta, u, 1.0), exact, atol=1e-12)
    for lam in (0.0, 0.5):  # λ < 1 with wrong values: biased
        bias = tb.gae_expected_gradient(mdp, theta, wrong, lam) - exact
        assert float(jnp.linalg.norm(bias)) > 0.05


_per_episode_grads_jit = jax.jit(_per_episode_grads)


@pytest.fixture(scope="module")
def mc(problem):
    """Per-episode gradients of several estimators on N_LARGE fresh episodes (the first N_SMALL nest)."""
    mdp, theta = problem
    eps = _sample(jax.random.PRNGKey(7), mdp, theta, horizon=HORIZON, num_episodes=N_LARGE)
    v = tb.values(mdp, theta)
    tables, lams = (v, v, jnp.zeros_like(v)), (0.5, 0.0, 0.5)
    grads = _per_episode_grads_jit(theta, eps, tables, lams)
    targets = {"reinforce": tb.policy_gradient(mdp, theta), "reinforce_baseline": tb.policy_gradient(mdp, theta)}
    for i, (u, lam) in enumerate(zip(tables, lams)):
        targets[f"gae{i}"] = tb.gae_expected_gradient(mdp, theta, u, lam)
    return mdp, theta, eps, {k: np.asarray(g) for k, g in grads.items()}, targets


def test_sampled_returns_are_unbiased(mc):
    mdp, theta, eps, _, _ = mc
    w = jax.vmap(sf.discount_weights)(eps.discounts)
    returns = np.asarray(jnp.sum(w * eps.rewards, -1))
    J = float(tb.expected_return(mdp, theta))
    assert abs(returns.mean() - J) < 4.0 * returns.std() / np.sqrt(len(returns))


@pytest.mark.parametrize("name", ["reinforce", "reinforce_baseline", "gae0", "gae1", "gae2"])
def test_score_function_estimators_converge(mc, name):
    """Each estimator's mean is within a few standard errors of its exact expectation, at 2k and 32k episodes,
    and the error shrinks. gae0/gae1: λ = 0.5 / 0 with the true values (expectation = the exact gradient);
    gae2: λ = 0.5 with zero values (expectation = the exact, BIASED mean from gae_expected_gradient)."""
    mdp, theta, _, grads, targets = mc
    g, target = grads[name], np.asarray(targets[name])
    z_small, err_small, se_small = _z(g[:N_SMALL], target)
    z_large, err_large, se_large = _z(g, target)
    assert z_small < 4.5 and z_large < 4.5, (z_small, z_large)
    assert se_large < 0.3 * se_small
    ok, info = error_shrinks(g, target, N_SMALL)
    assert ok, info
    if name == "gae2":  # the biased one is detectably away from the true gradient
        z_true, _, _ = _z(g, np.asarray(tb.policy_gradient(mdp, theta)))
        assert z_true > 10.0


def test_baseline_and_gae_reduce_variance(mc):
    _, _, _, grads, _ = mc
    var = {k: float(np.sum(np.var(g, 0))) for k, g in grads.items()}
    assert var["reinforce_baseline"] < 0.7 * var["reinforce"]
    assert var["gae0"] < var["reinforce_baseline"]


def test_geometric_termination(mc):
    """Episodes that end with probability 1 − γ per step (undiscounted) give the same expectations."""
    mdp, theta, _, _, targets = mc
    eps = _sample(jax.random.PRNGKey(11), mdp, theta, horizon=HORIZON, num_episodes=N_LARGE, termination="geometric")
    assert set(np.unique(np.asarray(eps.discounts)).tolist()) == {0.0, 1.0}
    v = tb.values(mdp, theta)
    grads = _per_episode_grads_jit(theta, eps, (v, v, jnp.zeros_like(v)), (0.5, 0.0, 0.5))
    for name in ("reinforce", "gae0", "gae2"):
        z, _, _ = _z(np.asarray(grads[name]), np.asarray(targets[name]))
        assert z < 4.5, (name, z)


def test_learned_baseline_fits_the_values(mc):
    """Regress reward-to-go on the state (weights γ^t) → ≈ v; REINFORCE with it stays unbiased with lower variance."""
    mdp, theta, _, grads, targets = mc
    fit_eps = _sample(jax.random.PRNGKey(21), mdp, theta, horizon=HORIZON, num_episodes=N_LARGE)
    G = jax.vmap(reward_to_go)(fit_eps.rewards[:N_SMALL], fit_eps.discounts[:N_SMALL])
    w = jax.vmap(sf.discount_weights)(fit_eps.discounts[:N_SMALL])
    states = fit_eps.states[:N_SMALL, :-1].reshape(-1)
    fit = jax.jit(lambda s, g, w: sf.fit_baseline(lambda p, x: p[x], jnp.zeros(4), s, g, optax.adam(0.05),
                                                  num_steps=300, weights=w))
    table, losses = fit(states, G.reshape(-1), w.reshape(-1))
    assert float(losses[-1]) < 0.5 * float(losses[0])
    v = tb.values(mdp, theta)
    np.testing.assert_allclose(table, v, atol=0.1 * float(jnp.max(jnp.abs(v))))

    # fresh episodes, the same compiled estimator program with the learned table as baseline
    eps = _sample(jax.random.PRNGKey(31), mdp, theta, horizon=HORIZON, num_episodes=N_LARGE)
    g = np.asarray(_per_episode_grads_jit(theta, eps, (table, v, v), (0.5, 0.0, 0.5))["reinforce_baseline"])
    z, _, _ = _z(g, np.asarray(targets["reinforce"]))
    assert z < 4.5
    assert np.sum(np.var(g, 0)) < 0.7 * np.sum(np.var(grads["reinforce"], 0))


def test_bad_inputs(problem):
    mdp, theta = problem
    with pytest.raises(ValueError, match="theta"):
        tb.policy_gradient(mdp, theta[:, :2])
    with pytest.raises(ValueError, match="termination"):
        tb.sample_episodes(jax.random.PRNGKey(0), mdp, theta, horizon=3, num_episodes=2, termination="poisson")
    with pytest.raises(ValueError, match="value_table"):
        tb.gae_expected_gradient(mdp, theta, jnp.zeros(3), 0.5)
    with pytest.raises(ValueError, match="lam"):
        tb.gae_expected_gradient(mdp, theta, jnp.zeros(4), 1.5)
    with pytest.raises(ValueError, match="mdp.r"):
        tb.values(mdp._replace(r=mdp.r[:, :2]), theta)
    with pytest.raises(ValueError, match="mdp.gamma"):
        tb.values(mdp._replace(gamma=jnp.asarray(1.0)), theta)
    with pytest.raises(TypeError, match="horizon"):
        tb.sample_episodes(jax.random.PRNGKey(0), mdp, theta, horizon=3.0, num_episodes=2)
