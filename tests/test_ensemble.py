"""Gaussian ensemble dynamics model: noise inference, densities, fitting, elites, engine use."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mbpo_grad as mg
from mbpo_grad.models import ModelParams, ModelState, Standardizer, gaussian_ensemble

# One shape for every model in this file (and tests/test_svg.py): eager initialisers compile once.
OBS, ACT, E, K, HIDDEN = 2, 1, 3, 2, (16,)
D = OBS + 1


def _to64(tree):
    return jax.tree_util.tree_map(lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _perturbed_params(model, key):
    """Random nets plus random standardisers, log-variance bounds and a permuted elite list."""
    k = jax.random.split(key, 6)
    p = model.init(k[0])
    in_dim = model.obs_dim + model.act_dim
    p = ModelParams(
        net=p.net,
        max_logvar=jax.random.uniform(k[1], (E, D), minval=-1.0, maxval=1.0),
        min_logvar=jax.random.uniform(k[2], (E, D), minval=-6.0, maxval=-3.0),
        inputs=Standardizer(jax.random.normal(k[3], (in_dim,)), jnp.exp(0.3 * jax.random.normal(k[4], (in_dim,)))),
        targets=Standardizer(0.5 * jax.random.normal(k[5], (D,)), jnp.array([0.3, 1.5, 2.0])),
        elites=jnp.array([2, 0], jnp.int32),
    )
    return p


@pytest.fixture(scope="module")
def model():
    return gaussian_ensemble(OBS, ACT, ensemble_size=E, elites=K, hidden=HIDDEN)


def test_noise_inference_round_trip_float32(model):
    B = 256
    keys = jax.random.split(jax.random.PRNGKey(1), 4)
    params = _perturbed_params(model, keys[0])
    s = 2.0 * jax.random.normal(keys[1], (B, OBS))
    a = jax.random.uniform(keys[2], (B, ACT), minval=-1, maxval=1)
    xi = model.sample_noise(keys[3], (B,))
    assert xi["eps"].dtype == jnp.float32 and xi["member"].dtype == jnp.float32
    assert set(np.unique(np.asarray(xi["member"]))) == {0.0, 1.0}

    sample = jax.jit(jax.vmap(model.sample, in_axes=(None, 0, 0, 0)))
    infer = jax.jit(jax.vmap(model.infer_noise, in_axes=(None, 0, 0, 0, 0, 0)))
    s_next, r = sample(params, s, a, xi)
    assert s_next.shape == (B, OBS) and r.shape == (B,)
    xi_hat = infer(params, s, a, s_next, r, xi["member"])
    s_rep, r_rep = sample(params, s, a, xi_hat)
    np.testing.assert_allclose(s_rep, s_next, atol=1e-5, rtol=0)
    np.testing.assert_allclose(r_rep, r, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(xi_hat["member"], xi["member"])
    np.testing.assert_allclose(xi_hat["eps"], xi["eps"], atol=2e-3)  # σ can be small: looser on ε itself
    # inference under ANOTHER member also replays exactly (with different noise)
    other = 1.0 - xi["member"]
    xi_o = infer(params, s, a, s_next, r, other)
    s_o, r_o = sample(params, s, a, xi_o)
    np.testing.assert_allclose(s_o, s_next, atol=1e-5, rtol=0)
    np.testing.assert_allclose(r_o, r, atol=1e-5, rtol=0)
    assert float(jnp.max(jnp.abs(xi_o["eps"] - xi["eps"]))) > 0.1


def test_sample_uses_the_elite_member_and_its_predicted_gaussian(model):
    params = _perturbed_params(model, jax.random.PRNGKey(2))
    s, a = jnp.array([0.3, -1.0]), jnp.array([0.5])
    mean, logvar = model.predict(params, s, a)
    assert mean.shape == (E, D) and logvar.shape == (E, D)
    # log-variances respect the (soft) bounds, in normalised units
    lv_n = logvar - 2 * jnp.log(params.targets.std)
    assert bool(jnp.all(lv_n < params.max_logvar)) and bool(jnp.all(lv_n > params.min_logvar))
    eps = jnp.array([0.4, -1.3, 2.0])
    for slot in range(K):
        e = int(params.elites[slot])
        s_next, r = model.sample(params, s, a, {"member": jnp.float32(slot), "eps": eps})
        y = mean[e] + jnp.exp(0.5 * logvar[e]) * eps
        np.testing.assert_allclose(s_next, s + y[:OBS], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(r, y[OBS], rtol=1e-5, atol=1e-5)
    # xi=None: the mean over elites of the member means
    s_det, r_det = model.sample(params, s, a, None)
    m = jnp.mean(mean[params.elites], axis=0)
    np.testing.assert_allclose(s_det, s + m[:OBS], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r_det, m[OBS], rtol=1e-5, atol=1e-5)


def test_log_prob_change_of_variables_float64(model):
    params32 = _perturbed_params(model, jax.random.PRNGKey(3))  # initialised in float32 (shared compiles)
    with jax.enable_x64(True):
        params = _to64(params32)
        s = jnp.array([0.1, -0.7]); a = jnp.array([0.3])
        eps = jnp.array([0.2, -1.1, 1.7])
        def flat(slot, e):
            s_next, r = model.sample(params, s, a, {"member": slot, "eps": e})
            return jnp.concatenate([s_next, r[None]])

        @jax.jit
        def check(slot):
            y = flat(slot, eps)
            _, logdet = jnp.linalg.slogdet(jax.jacfwd(flat, argnums=1)(slot, eps))
            expected = jnp.sum(-0.5 * eps ** 2 - 0.5 * jnp.log(2 * jnp.pi)) - logdet
            got = model.log_prob(params, s, a, y[:OBS], y[OBS], member=slot)
            mixture = model.log_prob(params, s, a, y[:OBS], y[OBS])
            return got, expected, mixture, model.member_log_probs(params, s, a, y[:OBS], y[OBS])

        for slot in range(K):
            got, expected, mixture, lps = check(jnp.float64(slot))
            np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
            # the mixture is the log-mean of the member densities
            np.testing.assert_allclose(mixture, np.log(np.mean(np.exp(np.asarray(lps)))), rtol=1e-10)


def test_mixture_density_integrates_to_one():
    """obs_dim=1: the density over (s', r) is 2-D; integrate the elite mixture on a grid."""
    m = gaussian_ensemble(1, 1, ensemble_size=3, elites=2, hidden=(8,))
    p = m.init(jax.random.PRNGKey(4))
    p = p._replace(targets=Standardizer(jnp.array([0.5, -1.0]), jnp.array([0.7, 1.3])),
                   max_logvar=jnp.full((3, 2), 0.3), elites=jnp.array([2, 0], jnp.int32))
    s, a = jnp.array([0.4]), jnp.array([-0.5])

    @jax.jit
    def mass():
        mean, logvar = m.predict(p, s, a)
        lo = jnp.min(mean - 8 * jnp.exp(0.5 * logvar), axis=0)
        hi = jnp.max(mean + 8 * jnp.exp(0.5 * logvar), axis=0)
        g0, g1 = jnp.linspace(lo[0], hi[0], 501), jnp.linspace(lo[1], hi[1], 501)
        S, R = jnp.meshgrid(s[0] + g0, g1, indexing="ij")
        lp = jax.vmap(lambda sn, r: m.log_prob(p, s, a, sn[None], r))(S.ravel(), R.ravel())
        return jnp.sum(jnp.exp(lp)) * (g0[1] - g0[0]) * (g1[1] - g1[0])

    np.testing.assert_allclose(mass(), 1.0, atol=1e-3)


def _linear_system(key, n, noise=0.05):
    A = jnp.array([[0.9, 0.1], [-0.2, 0.95]]); Bm = jnp.array([[0.0], [0.5]])
    c = jnp.array([1.0, -0.5]); d = 0.3
    k1, k2, k3 = jax.random.split(key, 3)
    s = jax.random.normal(k1, (n, 2))
    a = jax.random.uniform(k2, (n, 1), minval=-1, maxval=1)
    e = noise * jax.random.normal(k3, (n, 3))
    mean_next = s @ A.T + a @ Bm.T
    mean_r = s @ c + d * a[:, 0]
    return {"obs": s, "action": a, "next_obs": mean_next + e[:, :2], "reward": mean_r + e[:, 2]}, mean_next, mean_r


@pytest.mark.slow
def test_fit_learns_linear_gaussian_system_and_selects_elites():
    noise = 0.05
    m = gaussian_ensemble(OBS, ACT, ensemble_size=E, elites=K, hidden=HIDDEN, batch_size=64, epochs=200)
    data, _, _ = _linear_system(jax.random.PRNGKey(0), 1000, noise)
    params, metrics = m.fit(m.init(jax.random.PRNGKey(1)), data, jax.random.PRNGKey(2))
    nll = np.asarray(metrics["train_nll"])
    assert nll.shape == (200,)
    assert nll[-1] < nll[0] - 1.5, nll[[0, -1]]
    assert nll[-1] < 0.0  # per-dim NLL of N(0, 1) is 1.42; learned σ ≪ data std
    hmse = np.asarray(metrics["holdout_mse"])
    hist = np.asarray(metrics["holdout_mse_history"])
    assert hmse.shape == (E,) and hist.shape == (200, E)
    # snapshots: each member returns its best epoch
    np.testing.assert_allclose(hmse, hist.min(0), rtol=1e-6)
    assert np.all(hmse < 1.6 * noise ** 2), hmse  # the noise floor is noise² = 0.0025
    # elites are the best k by holdout MSE, best first
    np.testing.assert_array_equal(np.asarray(params.elites), np.argsort(hmse)[:K])
    # the reported holdout MSE is that of the returned parameters on the holdout rows
    idx = np.asarray(metrics["holdout_idx"])
    assert len(idx) == 200
    mean, _ = jax.vmap(m.predict, in_axes=(None, 0, 0))(params, data["obs"][idx], data["action"][idx])
    y = jnp.concatenate([data["next_obs"][idx] - data["obs"][idx], data["reward"][idx][:, None]], -1)
    np.testing.assert_allclose(jnp.mean((mean - y[:, None, :]) ** 2, axis=(0, 2)), hmse, rtol=1e-4)
    # fresh test data: the elite mean tracks the noiseless system and σ the noise level
    test, mean_next, mean_r = _linear_system(jax.random.PRNGKey(9), 500, noise)
    s_det, r_det = jax.vmap(m.sample, in_axes=(None, 0, 0, None))(params, test["obs"], test["action"], None)
    assert float(jnp.mean((s_det - mean_next) ** 2)) < 5e-4
    assert float(jnp.mean((r_det - mean_r) ** 2)) < 1e-3
    _, lv = jax.vmap(m.predict, in_axes=(None, 0, 0))(params, test["obs"], test["action"])
    sigma = np.exp(0.5 * np.asarray(lv)[:, np.asarray(params.elites)])
    assert 0.8 * noise < np.median(sigma) < 1.25 * noise, np.median(sigma)


def test_model_drives_pathwise_objective_float64_gradient():
    """A model as the engine's step (ModelState + transition reward): finite gradient == finite differences."""
    m = gaussian_ensemble(OBS, ACT, ensemble_size=E, elites=K, hidden=HIDDEN)
    horizon, B = 3, 4
    mp32 = m.init(jax.random.PRNGKey(5))  # random draws in float32 (shared compiles), then cast
    s32 = jax.random.normal(jax.random.PRNGKey(6), (B, 2))
    xi32 = m.sample_noise(jax.random.PRNGKey(7), (horizon, B))
    with jax.enable_x64(True):
        mp = _to64(mp32)._replace(targets=Standardizer(jnp.array([0.0, 0.1, -0.2]), jnp.array([0.2, 0.3, 0.5])))
        states = m.initial_state(_to64(s32))
        assert isinstance(states, ModelState) and states.reward.shape == (B,)
        xi = _to64(xi32)

        def policy(w, state, eps):
            return jnp.tanh(w["W"] @ m.observe(state) + w["b"])

        def critic(state, action):
            return -jnp.sum(state.obs ** 2) - 0.1 * jnp.sum(action ** 2)

        w = {"W": jnp.array([[0.4, -0.3]]), "b": jnp.array([0.1])}

        def J(w):
            return mg.pathwise_objective(policy, w, m.as_step(mp), m.as_reward(), states, horizon=horizon,
                                         gamma=0.9, bootstrap=critic, dynamics_noise=xi)

        direction = {"W": jnp.array([[0.3, -0.8]]), "b": jnp.array([0.5])}
        h = 1e-6

        @jax.jit
        def run(w):
            g = jax.grad(J)(w)
            fd = (J(jax.tree_util.tree_map(lambda x, d: x + h * d, w, direction))
                  - J(jax.tree_util.tree_map(lambda x, d: x - h * d, w, direction))) / (2 * h)
            _, traj = mg.pathwise_returns(policy, w, m.as_step(mp), m.as_reward(), states, horizon=horizon,
                                          dynamics_noise=xi)
            s1, r0 = m.sample(mp, states.obs[0], traj.actions[0, 0], jax.tree_util.tree_map(lambda x: x[0, 0], xi))
            return g, fd, traj, s1, r0

        g, fd, traj, s1, r0 = run(w)
        flat = np.concatenate([np.ravel(g["W"]), np.ravel(g["b"])])
        assert np.all(np.isfinite(flat)) and np.linalg.norm(flat) > 1e-6
        analytic = np.sum(np.asarray(g["W"]) * np.asarray(direction["W"])) + np.sum(np.asarray(g["b"]) * np.asarray(direction["b"]))
        np.testing.assert_allclose(analytic, fd, rtol=1e-6)
        # the engine's rewards are the model's: r_t is stored in s_{t+1}
        np.testing.assert_allclose(traj.rewards, traj.states.reward[:, 1:], rtol=1e-12)
        np.testing.assert_allclose(traj.states.obs[0, 1], s1, rtol=1e-12)
        np.testing.assert_allclose(traj.rewards[0, 0], r0, rtol=1e-12)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="elites"):
        gaussian_ensemble(2, 1, ensemble_size=2, elites=3)
    with pytest.raises(TypeError, match="obs_dim"):
        gaussian_ensemble(2.0, 1)
    with pytest.raises(ValueError, match="holdout_fraction"):
        gaussian_ensemble(2, 1, holdout_fraction=1.0)
    m = gaussian_ensemble(2, 1, ensemble_size=2, elites=1, hidden=(4,))
    p = None  # the data is checked before the parameters are touched
    data = {"obs": jnp.zeros((10, 2)), "action": jnp.zeros((10, 2)), "reward": jnp.zeros((10,)),
            "next_obs": jnp.zeros((10, 2))}
    with pytest.raises(ValueError, match=r"data\['action'\]"):
        m.fit(p, data, jax.random.PRNGKey(0))
    del data["reward"]
    with pytest.raises(ValueError, match="'reward'"):
        m.fit(p, data, jax.random.PRNGKey(0))
    old = {"s": data["obs"], "a": data["action"][:, :1], "r": jnp.zeros((10,)), "s_next": data["next_obs"]}
    with pytest.raises(ValueError, match="rename s -> obs, a -> action, r -> reward, s_next -> next_obs"):
        m.fit(p, old, jax.random.PRNGKey(0))
