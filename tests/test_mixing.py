"""Mixing pathwise and score-function gradients (``mixing``, SHAC ``estimator="score"/"auto"``).

Exact references: the closed-form gradient of a linear-Gaussian system (``linear_gaussian``), on
which both parts are unbiased; the special cases α = 1 and α = 0; a deliberately biased pathwise
part, which the rule must turn away from.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mbpo_grad as mg
from mbpo_grad import guards, mixing
from mbpo_grad import linear_gaussian as lg
from mbpo_grad.agents import shac
from mbpo_grad.agents.shac import losses

N_BATCH, BATCHES = 256, 48


@pytest.fixture(scope="module")
def lqr():
    """Per-trajectory pathwise, biased-pathwise and score-function gradients on a linear-Gaussian system."""
    with jax.enable_x64(True):
        system = lg.LinearGaussianSystem(
            A=jnp.array([[0.95, 0.2], [-0.1, 0.9]]), B=jnp.array([[0.1], [0.3]]),
            W=jnp.array([[0.05, 0.0], [0.0, 0.05]]), Q=jnp.diag(jnp.array([1.0, 0.3])), R=0.2 * jnp.eye(1))
        K, sigma, n, gamma = jnp.array([[0.3, -0.4]]), 0.4, 4, 0.9
        m0, S0 = jnp.array([0.8, -0.6]), 0.05 * jnp.eye(2)
        pol, step, rew = lg.policy(sigma), lg.step(system), lg.reward(system)
        Ps, cs = lg.value_functions(K, system, sigma=sigma, horizon=n, gamma=gamma)
        exact = np.asarray(lg.exact_gradient(K, system, sigma=sigma, m0=m0, S0=S0, horizon=n, gamma=gamma))
        total = N_BATCH * BATCHES
        k0, k1, k2 = jax.random.split(jax.random.PRNGKey(7), 3)
        s0 = m0 + jax.random.normal(k0, (total, 2)) @ jnp.linalg.cholesky(S0).T
        eps = jax.random.normal(k1, (total, n + 1, 1))
        xi = jax.random.normal(k2, (total, n, 2))

        def rollout(K_, s, e, x, cut_state=False):
            st = (lambda s_, a, x_: step(jax.lax.stop_gradient(s_), a, x_)) if cut_state else step
            rets, tr = mg.pathwise_returns(pol, K_, st, rew, s[None], horizon=n, gamma=gamma,
                                           policy_noise=e[:, None], dynamics_noise=x[:, None])
            return rets[0], tr

        def score(K_, s, e, x):
            ret, tr = rollout(jax.lax.stop_gradient(K_), s, e, x)
            states, actions = tr.states[0, :-1], tr.actions[0, :-1]
            lp = jax.vmap(lambda o, a: lg.log_prob(K_, o, a, sigma))(states, actions)
            base = jax.vmap(lg.state_value)(Ps[:-1], cs[:-1], states)   # a state-only baseline
            return losses.score_window_loss(lp, tr.rewards[0], tr.alive[0], ret, base, gamma, n)

        per = lambda f: jax.jit(jax.vmap(f, in_axes=(None, 0, 0, 0)))(K, s0, eps, xi)
        g1 = per(jax.grad(lambda *a: -rollout(*a)[0] / n))
        g1_biased = per(jax.grad(lambda *a: -rollout(*a, cut_state=True)[0] / n))
        g0 = per(jax.grad(score))
        as_batches = lambda g: np.asarray(g).reshape(BATCHES, N_BATCH, -1)
        yield dict(g1=as_batches(g1), g1_biased=as_batches(g1_biased), g0=as_batches(g0),
                   exact=-exact.reshape(-1) / n)


def _mixed(g1, g0, z=2.0):
    """Per batch: (α, the mixed estimate) with every sample kept."""
    mask = jnp.ones((g1.shape[0],), bool)
    alpha, _ = mixing.alpha_order(jnp.asarray(g1), jnp.asarray(g0), mask, z)
    return float(alpha), np.asarray(mixing.mix(jnp.asarray(g1), jnp.asarray(g0), mask, alpha))


def _z(estimates, target):
    m, se = estimates.mean(0), estimates.std(0, ddof=1) / np.sqrt(estimates.shape[0])
    return float(np.max(np.abs(m - target) / se))


def test_both_parts_and_the_mixture_are_unbiased_on_a_linear_gaussian_system(lqr):
    """Each fixed estimator and the auto mixture, averaged over 48 batches of 256, match the closed form."""
    with jax.enable_x64(True):
        out = [_mixed(a, b) for a, b in zip(lqr["g1"], lqr["g0"])]
    alphas = np.array([a for a, _ in out])
    mixed = np.stack([m for _, m in out])
    exact = lqr["exact"]
    assert _z(lqr["g1"].mean(1), exact) < 4.5
    assert _z(lqr["g0"].mean(1), exact) < 4.5
    assert _z(mixed, exact) < 4.5, (_z(mixed, exact), alphas)
    # pathwise is far less noisy here: the rule leans on it (the bias bound trims α in the batches
    # whose ‖d̄‖ exceeds 2 standard errors by chance, at a small cost in variance), far from the
    # score-function estimate's variance
    assert np.median(alphas) > 0.9 and alphas.mean() > 0.85, alphas
    var = lambda g: np.sum(np.var(g, 0))
    assert var(mixed) <= 1.2 * var(lqr["g1"].mean(1)) and var(mixed) < 0.3 * var(lqr["g0"].mean(1))


def test_a_biased_pathwise_part_is_turned_away_from(lqr):
    """Pathwise with the state path cut (a biased first-order gradient): α falls, the error shrinks.

    In batches of 2048 the bias is several standard errors of d̄ (in batches of 256 it is about
    3, and α only drops to ≈ 0.85: the rule can only act on a bias the batch resolves)."""
    big = lambda g: g.reshape(6, 2048, -1)
    with jax.enable_x64(True):
        out = [_mixed(a, b) for a, b in zip(big(lqr["g1_biased"]), big(lqr["g0"]))]
    alphas = np.array([a for a, _ in out])
    mixed = np.stack([m for _, m in out])
    exact = lqr["exact"]
    bias = np.linalg.norm(lqr["g1_biased"].mean((0, 1)) - exact)
    assert _z(lqr["g1_biased"].mean(1), exact) > 20            # the cut really biases it
    assert alphas.mean() < 0.5, alphas
    # the bias left is at most z standard errors of d̄ per batch (by the rule's bound)
    assert np.linalg.norm(mixed.mean(0) - exact) < 0.5 * bias, alphas


def test_alpha_one_and_zero_are_the_fixed_estimators(lqr):
    g1, g0 = jnp.asarray(lqr["g1"][0]), jnp.asarray(lqr["g0"][0])
    mask = jnp.arange(N_BATCH) % 5 != 0
    mean1, _ = guards.masked_grad_mean(jnp.where(mask[:, None], g1, jnp.nan))
    mean0, _ = guards.masked_grad_mean(jnp.where(mask[:, None], g0, jnp.nan))
    np.testing.assert_allclose(mixing.mix(g1, g0, mask, 1.0), mean1, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(mixing.mix(g1, g0, mask, 0.0), mean0, rtol=1e-6, atol=1e-9)
    # z = 0: any difference between the means sends α to 0
    alpha, stats = mixing.alpha_order(g1, g0, mask, 0.0)
    assert float(alpha) == 0.0 and float(stats["bias_norm"]) > 0


def test_fallback_replaces_zero_non_finite_and_exploding_pathwise_samples():
    g1 = {"w": jnp.array([[1.0, 2.0], [0.0, 0.0], [jnp.nan, 1.0], [1e9, 0.0], [0.5, -0.5]])}
    g0 = {"w": jnp.arange(10.0).reshape(5, 2)}
    out, bad = mixing.fallback(g1, g0, 1e6)
    np.testing.assert_array_equal(bad, [False, True, True, True, False])
    np.testing.assert_array_equal(out["w"][bad], g0["w"][bad])
    np.testing.assert_array_equal(out["w"][~bad], g1["w"][~bad])
    # an all-zero pathwise batch: the mixture is the score-function mean whatever α
    zero = {"w": jnp.zeros((5, 2))}
    z1, _ = mixing.fallback(zero, g0, 1e6)
    alpha, _ = mixing.alpha_order(z1, g0, jnp.ones((5,), bool))
    np.testing.assert_allclose(mixing.mix(z1, g0, jnp.ones((5,), bool), alpha)["w"], g0["w"].mean(0))


def test_shac_auto_and_score_updates():
    """Wiring: with 4096 envs on a smooth system (LQR) the two per-env estimates agree within
    their standard error (‖d̄‖ / se = 0.74 measured; with the policy noise misaligned by one step
    it was 5.1), α ∈ [0, 1] is logged, and the score-only update runs without any pathwise
    derivative."""
    cfg = shac.SHACConfig(env="lqr", num_envs=4096, horizon=4, iterations=2, eval_every=2, eval_envs=2,
                          estimator="auto", use_critic=False, obs_norm=False)
    agent = shac.make_agent(cfg)
    hp = cfg.hparams()
    _, m = jax.jit(agent.update)(agent.init(jax.random.PRNGKey(0), hp), hp, jax.random.PRNGKey(1))
    assert 0.0 <= float(m["alpha"]) <= 1.0
    assert float(m["bias_norm"]) < 2.0 * float(m["bias_se"]), m
    assert float(m["var_pathwise"]) < float(m["var_score"])
    assert int(m["fallback_envs"]) == 0 and int(m["masked_envs"]) == 0

    cfg = shac.SHACConfig(env="cartpole", num_envs=8, horizon=4, iterations=2, eval_every=2, eval_envs=2,
                          estimator="score")
    agent = shac.make_agent(cfg)
    hp = cfg.hparams()
    state, m = jax.jit(agent.update)(agent.init(jax.random.PRNGKey(0), hp), hp, jax.random.PRNGKey(1))
    assert np.isfinite(float(m["grad_norm"])) and float(m["grad_norm"]) > 0 and "alpha" not in m


@pytest.mark.parametrize("kw, match", [
    (dict(estimator="mixed"), "estimator must be one of"),
    (dict(estimator="auto", guard="batch"), "needs guard='per_env'"),
    (dict(estimator="auto", auto_z=-1.0), "auto_z"),
])
def test_bad_estimator_settings_raise_naming_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        shac.make_agent(shac.SHACConfig(**kw))


def test_score_estimators_need_a_policy_with_a_density():
    from mbpo_grad.policies.deterministic import deterministic
    env = mg.envs.make("cartpole")
    with pytest.raises(ValueError, match="needs a stochastic policy"):
        shac.make_agent(shac.SHACConfig(estimator="auto"), policy=deterministic(env.obs_size, env.action_size))
