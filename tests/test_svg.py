"""SVG(0)/SVG(n) against a closed form, the temperature loss, and SVG on replayed data (SVG(1)-ER)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
import pytest

import mbpo_grad as mg
from mbpo_grad import svg
from mbpo_grad.models import ModelParams, Standardizer, gaussian_ensemble
from mbpo_grad.policies.base import Policy


def linear_gaussian_policy(obs_dim, act_dim):
    """a = K obs + b + exp(log_std) ⊙ ε (no squash): the simplest exact bundle."""

    def init(key):
        return {"K": 0.3 * jax.random.normal(key, (act_dim, obs_dim)), "b": jnp.zeros((act_dim,)),
                "log_std": jnp.full((act_dim,), -0.5)}

    def sample(p, obs, eps=None):
        mu = p["K"] @ obs + p["b"]
        return mu if eps is None else mu + jnp.exp(p["log_std"]) * eps

    def infer_noise(p, obs, a):
        return (a - p["K"] @ obs - p["b"]) * jnp.exp(-p["log_std"])

    def log_prob(p, obs, a):
        eps = infer_noise(p, obs, a)
        return jnp.sum(-0.5 * eps ** 2 - 0.5 * math.log(2 * math.pi) - p["log_std"])

    return Policy(init, sample, infer_noise, log_prob, (act_dim,), obs_dim, act_dim, "linear_gaussian")


# ---------------------------------------------------------------- SVG(n) vs the closed form
A_, B_, SIG_F, GAMMA, ALPHA, QW = 0.9, 0.5, 0.2, 0.95, 0.3, 2.0
M0, V0 = 0.8, 0.25


def _exact_objective(p, horizon):
    """E[J_n^α] for s' = A s + B a + σ_f ξ, a = k s + b + σ ε, r = −(s² + a²), Q = −QW (s² + a²),
    s_0 ~ N(M0, V0): mean/variance recursions; −α E log π = α · ½ log(2πe σ²)."""
    k, b, log_std = p["K"][0, 0], p["b"][0], p["log_std"][0]
    var_a = jnp.exp(2 * log_std)
    ent = 0.5 * jnp.log(2 * jnp.pi * jnp.e * var_a)
    mu, v, J = M0, V0, 0.0
    for t in range(horizon):
        ea2 = (k * mu + b) ** 2 + k ** 2 * v + var_a
        J = J + GAMMA ** t * (-(mu ** 2 + v) - ea2 + ALPHA * ent)
        mu, v = (A_ + B_ * k) * mu + B_ * b, (A_ + B_ * k) ** 2 * v + B_ ** 2 * var_a + SIG_F ** 2
    ea2 = (k * mu + b) ** 2 + k ** 2 * v + var_a
    return J + GAMMA ** horizon * (-QW * (mu ** 2 + v + ea2) + ALPHA * ent)


def _step(s, a, xi):
    return A_ * s + B_ * a + SIG_F * xi


def _reward(s, a):
    return -(jnp.sum(s ** 2) + jnp.sum(a ** 2))


def _critic(obs, a):
    return -QW * (jnp.sum(obs ** 2) + jnp.sum(a ** 2))


@pytest.mark.parametrize("horizon", [0, 3])
def test_svg_matches_exact_gradient_within_monte_carlo_error(horizon):
    pol = linear_gaussian_policy(1, 1)
    with jax.enable_x64(True):
        p = {"K": jnp.array([[-0.4]]), "b": jnp.array([0.2]), "log_std": jnp.array([-0.7])}
        exact = jax.grad(_exact_objective)(p, horizon)

        def one(p, s0, eps, xi):  # one start state, its own noise: the per-sample estimator
            if horizon == 0:
                return svg.svg0(pol, p, _critic, s0[None], alpha=ALPHA, policy_noise=eps[:, None])
            return svg.svg_objective(pol, p, _step, _reward, s0[None], horizon=horizon, gamma=GAMMA,
                                     critic=_critic, alpha=ALPHA, policy_noise=eps[:, None],
                                     dynamics_noise=xi[:, None])

        per_sample = jax.jit(jax.vmap(jax.grad(one), in_axes=(None, 0, 1, 1)))
        n = 25600
        k0, k1, k2 = jax.random.split(jax.random.PRNGKey(horizon), 3)
        s0 = M0 + math.sqrt(V0) * jax.random.normal(k0, (n, 1))
        eps = jax.random.normal(k1, (horizon + 1, n, 1))
        xi = jax.random.normal(k2, (max(horizon, 1), n, 1))[:horizon]
        g = per_sample(p, s0, eps, xi)
        errors = []
        for size in (400, n):  # the first 400 samples, then all of them
            err = []
            for name in ("K", "b", "log_std"):
                gs = np.asarray(g[name][:size]).reshape(size, -1)
                mean, se = gs.mean(0), gs.std(0) / math.sqrt(size)
                z = np.abs(mean - np.asarray(exact[name]).ravel()) / se
                assert np.all(z < 4.5), (name, size, mean, np.asarray(exact[name]), se)
                err.append(np.abs(mean - np.asarray(exact[name]).ravel()))
            errors.append(np.concatenate(err))
        # Monte-Carlo error shrinks with the sample size (64x samples -> ~8x smaller error)
        assert np.linalg.norm(errors[1]) < 0.5 * np.linalg.norm(errors[0]), errors


def test_svg_objective_samples_noise_from_key_and_entropy_is_optional():
    pol = linear_gaussian_policy(1, 1)
    p = pol.init(jax.random.PRNGKey(0))
    s0 = jnp.ones((8, 1))
    noise = lambda key, shape: jax.random.normal(key, shape + (1,))

    @jax.jit
    def both(p):
        J = svg.svg_objective(pol, p, _step, _reward, s0, horizon=2, critic=_critic, key=jax.random.PRNGKey(1),
                              sample_dynamics_noise=noise)
        # the same key gives the same noise: reproduce with the explicit noise
        k_eps, k_xi = jax.random.split(jax.random.PRNGKey(1))
        eps = svg.sample_policy_noise(pol, k_eps, 2, 8)
        J2 = mg.pathwise_objective(lambda w, s, e: pol.sample(w, s, e), p, _step, _reward, s0, horizon=2,
                                   bootstrap=_critic, policy_noise=eps, dynamics_noise=noise(k_xi, (2, 8)))
        return J, J2

    J, J2 = both(p)
    np.testing.assert_allclose(J, J2, rtol=1e-6)
    # a deterministic policy has no log_prob: alpha=None / 0.0 never calls it
    det = mg.policies.deterministic(1, 1, hidden=(4,))
    dp = det.init(jax.random.PRNGKey(2))
    for alpha in (None, 0.0):
        val = svg.svg0(det, dp, _critic, s0, alpha=alpha)
        assert np.isfinite(float(val))
    with pytest.raises(ValueError, match="log_prob"):
        svg.svg0(det, dp, _critic, s0, alpha=0.1)
    with pytest.raises(ValueError, match="key"):
        svg.svg_objective(pol, p, _step, _reward, s0, horizon=2, critic=_critic)


def test_temperature_loss_gradient():
    """The one temperature loss, in log α: L = −log α · mean(sg(log π) + H̄), ∂L/∂log α = −mean(log π + H̄)."""
    from mbpo_grad.agents import sac
    assert sac.temperature_loss is svg.temperature_loss  # one function, not two with different gradients
    log_alpha = jnp.array(0.3)
    log_probs = jnp.array([-1.0, 0.5, 2.0])
    target = -1.0
    loss, (g_alpha, g_lp) = jax.value_and_grad(svg.temperature_loss, argnums=(0, 1))(log_alpha, log_probs, target)
    np.testing.assert_allclose(loss, -0.3 * (np.mean([-1.0, 0.5, 2.0]) + target), rtol=1e-6)
    np.testing.assert_allclose(g_alpha, -(np.mean([-1.0, 0.5, 2.0]) + target), rtol=1e-6)
    np.testing.assert_array_equal(g_lp, 0.0)  # log-probs are constants for the temperature
    # the step in log α does not shrink with α (the α-linear form's gradient α·(Ĥ − H̄) would)
    for la in (-20.0, 0.0, 5.0):
        np.testing.assert_allclose(jax.grad(svg.temperature_loss)(jnp.array(la), log_probs, target),
                                   g_alpha, rtol=1e-6)
    # entropy (−mean log π = −0.5) below target (1.0) -> descent raises α
    assert float(jax.grad(svg.temperature_loss)(log_alpha, log_probs, 1.0)) < 0
    with pytest.raises(ValueError, match="log_alpha"):
        svg.temperature_loss(jnp.zeros(2), log_probs, target)
    with pytest.raises(ValueError, match="target_entropy"):
        svg.temperature_loss(log_alpha, log_probs, jnp.zeros(2))


# ---------------------------------------------------------------- SVG(1)-ER on a learned model
OBS, ACT, B = 2, 1, 6


def _model_and_params(key):
    m = gaussian_ensemble(OBS, ACT, ensemble_size=3, elites=2, hidden=(16,))
    k1, k2, k3 = jax.random.split(key, 3)
    p = m.init(k1)
    p = ModelParams(p.net, jnp.full((3, OBS + 1), 0.0), jnp.full((3, OBS + 1), -4.0),
                    Standardizer(0.1 * jax.random.normal(k2, (OBS + ACT,)), jnp.full((OBS + ACT,), 1.2)),
                    Standardizer(0.1 * jax.random.normal(k3, (OBS + 1,)), jnp.array([0.3, 0.4, 0.8])),
                    jnp.array([2, 0], jnp.int32))
    return m, p


def _policy(kind):
    if kind == "linear":
        pol = linear_gaussian_policy(OBS, ACT)
        return pol, pol.init(jax.random.PRNGKey(11))
    pol = mg.policies.gaussian(OBS, ACT, hidden=(8,))
    return pol, pol.init(jax.random.PRNGKey(11))


def _critic2(obs, a):
    return -jnp.sum((obs - 0.3) ** 2) + 0.5 * jnp.sum(a * obs[:ACT]) - 0.2 * jnp.sum(a ** 2)


def _on_policy_data(pol, w, m, mp, key):
    k = jax.random.split(key, 3)
    s = jax.random.normal(k[0], (B, OBS))
    eps = jax.random.normal(k[1], (2, B, ACT))
    xi = m.sample_noise(k[2], (1, B))
    a = jax.vmap(pol.sample, in_axes=(None, 0, 0))(w, s, eps[0])
    s_next, r = jax.vmap(m.sample, in_axes=(None, 0, 0, 0))(mp, s, a, jax.tree_util.tree_map(lambda x: x[0], xi))
    lp = jax.vmap(pol.log_prob, in_axes=(None, 0, 0))(w, s, a)
    return s, eps, xi, {"obs": s, "action": a, "reward": r, "next_obs": s_next}, lp


@pytest.mark.parametrize("kind", ["linear", "gaussian"])
def test_replay_gradient_at_behaviour_policy_equals_on_policy_gradient(kind):
    pol, w = _policy(kind)
    m, mp = _model_and_params(jax.random.PRNGKey(3))
    s, eps, xi, batch, lp = _on_policy_data(pol, w, m, mp, jax.random.PRNGKey(4))
    gamma, alpha = 0.9, 0.2

    def on_policy(w):
        return svg.svg_objective(pol, w, m.as_step(mp), m.as_reward(), m.initial_state(s), horizon=1, gamma=gamma,
                                 critic=_critic2, alpha=alpha, observe=m.observe, policy_noise=eps, dynamics_noise=xi)

    def replayed(w):
        return svg.svg_replay_objective(pol, w, m, mp, batch, critic=_critic2, gamma=gamma, alpha=alpha,
                                        behaviour_log_prob=lp, cap=5.0, member=xi["member"][0],
                                        next_policy_noise=eps[1])

    @jax.jit
    def everything(w):
        _, weights = svg.svg_replay_returns(pol, w, m, mp, batch, critic=_critic2, gamma=gamma,
                                            behaviour_log_prob=lp, member=xi["member"][0], next_policy_noise=eps[1])
        noise = svg.replay_noise(pol, w, m, mp, batch, member=xi["member"][0])
        return jax.value_and_grad(on_policy)(w), jax.value_and_grad(replayed)(w), weights, noise

    (J_on, g_on), (J_re, g_re), weights, (e_hat, xi_hat) = everything(w)
    np.testing.assert_allclose(weights, 1.0, rtol=1e-5)
    np.testing.assert_allclose(J_re, J_on, rtol=1e-5, atol=1e-5)
    flat_on, _ = ravel_pytree(g_on)
    flat_re, _ = ravel_pytree(g_re)
    assert float(jnp.linalg.norm(flat_on)) > 1e-3
    np.testing.assert_allclose(flat_re, flat_on, atol=2e-4 * float(jnp.max(jnp.abs(flat_on))))
    # the inferred noise is the noise that generated the data
    np.testing.assert_allclose(e_hat, eps[0], atol=1e-3)
    np.testing.assert_allclose(xi_hat["eps"], xi["eps"][0], atol=1e-3)


def test_replay_importance_weights_are_truncated_constants():
    pol, w = _policy("linear")
    m, mp = _model_and_params(jax.random.PRNGKey(5))
    _, eps, xi, batch, lp = _on_policy_data(pol, w, m, mp, jax.random.PRNGKey(6))
    ratios = jnp.array([0.25, 0.8, 1.0, 3.0, 40.0, 7.0])
    cap = 5.0
    behaviour = lp - jnp.log(ratios)  # π/μ = ratios
    expected_w = np.minimum(np.asarray(ratios), cap)
    kw = dict(critic=_critic2, gamma=0.9, member=xi["member"][0], next_policy_noise=eps[1])

    def single(w, one, member, eps1):  # one transition alone, unweighted
        one = jax.tree_util.tree_map(lambda x: x[None], one)
        return svg.svg_replay_objective(pol, w, m, mp, one, critic=_critic2, gamma=0.9, member=member[None],
                                        next_policy_noise=eps1[None])

    @jax.jit
    def everything(w, cap2):
        g = jax.grad(lambda w: svg.svg_replay_objective(pol, w, m, mp, batch, behaviour_log_prob=behaviour,
                                                         cap=cap, **kw))(w)
        per = jax.vmap(jax.grad(single), in_axes=(None, 0, 0, 0))(w, batch, xi["member"][0], eps[1])
        _, w1 = svg.svg_replay_returns(pol, w, m, mp, batch, **kw)
        weights = svg.importance_weights(lp, behaviour, cap)
        g_weights = jax.grad(lambda l: jnp.sum(svg.importance_weights(l, behaviour, cap)))(lp)
        return g, per, w1, weights, g_weights, svg.importance_weights(lp, behaviour, cap2)

    g, per, w1, weights, g_weights, weights2 = everything(w, jnp.array(2.0))
    np.testing.assert_allclose(weights, expected_w, rtol=1e-5)
    np.testing.assert_array_equal(g_weights, 0.0)  # constants for the gradient
    np.testing.assert_allclose(weights2, np.minimum(np.asarray(ratios), 2.0), rtol=1e-5)  # traced cap
    for name in w:
        manual = jnp.tensordot(jnp.asarray(expected_w), per[name], axes=1) / B
        np.testing.assert_allclose(g[name], manual, rtol=1e-4, atol=1e-6)
    # without behaviour log-probs: weights 1 (pure replay)
    np.testing.assert_array_equal(w1, 1.0)
    with pytest.raises(ValueError, match="key"):
        svg.svg_replay_objective(pol, w, m, mp, batch, critic=_critic2)
    with pytest.raises(ValueError, match="next_obs"):
        svg.svg_replay_objective(pol, w, m, mp, {k: v for k, v in batch.items() if k != "next_obs"},
                                 key=jax.random.PRNGKey(0))


def _saturated_gaussian(bias):
    """A 1-D tanh-Gaussian on OBS inputs with a constant pre-squash mean ``bias`` and raw log σ −1."""
    pol = mg.policies.gaussian(OBS, ACT, hidden=(8,))
    p = pol.init(jax.random.PRNGKey(11))
    net = dict(p["net"])
    last = sorted(net)[-1]
    net[last] = {"kernel": jnp.zeros_like(net[last]["kernel"]), "bias": jnp.array([bias, -1.0], jnp.float32)}
    return pol, {"net": net}


def test_replay_weights_exact_where_float32_tanh_saturates():
    """Behaviour μ: pre-squash mean 12 (every float32 action rounds to exactly ±1); current π: mean
    12.1. Reference (float64, by hand): the importance ratio at μ's sample u = μ_μ + σ ε,
    N(u; μ_π, σ)/N(u; μ_μ, σ) = exp(ε Δ/σ − Δ²/(2σ²)). With the behaviour's parameters and noise
    the weights match it; from the stored action alone (the old route: log_prob of the stored
    action against a behaviour density recorded forward) they are wrong by orders of magnitude —
    even on-policy, where the exact weight is 1 and the old route gives ~1e-40."""
    from mbpo_grad.bijectors import soft_clip

    pol, w_mu = _saturated_gaussian(12.0)
    _, w_pi = _saturated_gaussian(12.1)
    m, mp = _model_and_params(jax.random.PRNGKey(5))
    s = jax.random.normal(jax.random.PRNGKey(6), (B, OBS))
    eps_mu = jnp.linspace(-3.0, 3.0, B)[:, None]
    a, lp_mu_fwd = jax.vmap(lambda o, e: mg.policies.sample_and_log_prob(pol, w_mu, o, e))(s, eps_mu)
    assert np.all(np.asarray(a) == 1.0)  # 1 − tanh(u) ≤ 1e-8 < 2^-25: float32 has rounded every action
    s_next, r = jax.vmap(m.sample, in_axes=(None, 0, 0, 0))(
        mp, s, a, jax.tree_util.tree_map(lambda x: x[0], m.sample_noise(jax.random.PRNGKey(7), (1, B))))
    batch = {"obs": s, "action": a, "reward": r, "next_obs": s_next}
    kw = dict(critic=_critic2, gamma=0.9, member=jnp.zeros(B), next_policy_noise=jnp.zeros((B, ACT)), cap=1e6)

    with jax.enable_x64(True):
        sigma = math.exp(float(soft_clip(jnp.asarray(-1.0, jnp.float64), -5.0, 2.0)))
    e = np.linspace(-3.0, 3.0, B)
    delta = 12.1 - 12.0
    exact = np.exp(e * delta / sigma - delta ** 2 / (2 * sigma ** 2))
    assert exact.max() / exact.min() > 2.0  # the weights differ across the batch

    def weights(w, **extra):
        return svg.svg_replay_returns(pol, w, m, mp, batch, **kw, **extra)[1]

    new = weights(w_pi, behaviour_params=w_mu, behaviour_noise=eps_mu)
    np.testing.assert_allclose(new, exact, rtol=1e-4)
    on = weights(w_mu, behaviour_params=w_mu, behaviour_noise=eps_mu)
    np.testing.assert_allclose(on, 1.0, rtol=1e-5)

    # The old route: inverse log_prob of the stored (±1) action against the forward-recorded log μ.
    lp_inv = jax.vmap(pol.log_prob, in_axes=(None, 0, 0))(w_pi, s, a)
    old = np.minimum(np.exp(np.asarray(lp_inv - lp_mu_fwd, np.float64)), 1e6)
    assert np.all(np.abs(np.log(old / exact)) > 3.0), (old, exact)
    old_on = np.exp(np.asarray(jax.vmap(pol.log_prob, in_axes=(None, 0, 0))(w_mu, s, a) - lp_mu_fwd, np.float64))
    assert np.all(old_on < 1e-30), old_on  # on-policy data weighted ~1e-40 instead of 1
    # behaviour_log_prob from the stored action (same path as the numerator): on-policy weights are 1;
    # off-policy it is the ratio at the clipped action, which is what the stored action still holds.
    lp_stored = jax.vmap(pol.log_prob, in_axes=(None, 0, 0))(w_mu, s, a)
    np.testing.assert_allclose(weights(w_mu, behaviour_log_prob=lp_stored), 1.0, rtol=1e-5)

    with pytest.raises(ValueError, match="not both"):
        weights(w_pi, behaviour_log_prob=lp_stored, behaviour_params=w_mu, behaviour_noise=eps_mu)
    with pytest.raises(ValueError, match="behaviour_noise"):
        weights(w_pi, behaviour_params=w_mu)
    with pytest.raises(ValueError, match=r"behaviour_noise must have shape \[B, \*noise_shape\] = \(6, 1\)"):
        weights(w_pi, behaviour_params=w_mu, behaviour_noise=eps_mu[:, 0])
    with pytest.raises(ValueError, match="behaviour_log_prob"):
        weights(w_pi, behaviour_log_prob=lp_stored[:, None])


def test_entropy_terms_are_exact_where_float32_tanh_saturates():
    """A tanh-Gaussian whose pre-squash values are ~12: float32 rounds every action to ±1. The
    float32 SVG(2) objective with α > 0 (log π computed forward from ε) equals a float64
    reference written out step by step with the inverse-route log_prob, which float64 still
    resolves; log_prob of the float32 actions would be off by several nats per step."""
    pol = mg.policies.gaussian(1, 1, hidden=(8,))
    params = pol.init(jax.random.PRNGKey(0))
    net = dict(params["net"])
    last = sorted(net)[-1]
    net[last] = {"kernel": jnp.zeros_like(net[last]["kernel"]), "bias": jnp.array([12.0, -1.5])}
    params = {"net": net}
    states = jnp.array([[0.5], [-0.3]])
    noise = jnp.asarray(np.random.default_rng(0).standard_normal((3, 2, 1)), jnp.float32)
    alpha, horizon = 0.5, 2

    def step(s, a, xi):
        return s + 0.1 * a

    def reward(s, a):
        return -jnp.sum(s ** 2)

    got = svg.svg_objective(pol, params, step, reward, states, horizon=horizon, critic=_critic,
                            alpha=alpha, policy_noise=noise)
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), params)
        total = 0.0
        for b in range(2):
            s = jnp.asarray(states[b], jnp.float64)
            for t in range(horizon + 1):
                a = pol.sample(p64, s, jnp.asarray(noise[t, b], jnp.float64))
                assert abs(float(a[0])) < 1.0
                bonus = -alpha * float(pol.log_prob(p64, s, a))
                if t < horizon:
                    total += float(reward(s, a)) + bonus
                    s = step(s, a, None)
                else:
                    total += float(_critic(s, a)) + bonus
        ref = total / 2
    # float32 rounds the action to 1 (XLA's default CPU code; within 2 ulps under the suite's
    # low-effort compile, tests/conftest.py), where the inverse route would read atanh ≤ 8.3, not ≈ 12
    assert float(pol.sample(params, states[0], noise[0, 0])[0]) >= 1.0 - 2.5e-7
    np.testing.assert_allclose(float(got), ref, rtol=1e-5)
