"""mbpo_grad.envs.lqr: the environment and its closed forms, checked against references that share no code.

The closed forms are checked here WITHOUT the engine (explicit simulation, float64 central
finite differences of the closed-form return, SciPy's Riccati solver); test_objectives.py then
checks the engine against them.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from mbpo_grad import envs

from mbpo_grad.envs import lqr


@pytest.fixture(autouse=True)
def x64():
    # jax 0.9.2 has no jax.experimental.enable_x64; jax.enable_x64 is the (thread-local) context manager.
    with jax.enable_x64(True):
        yield


def _problem(seed, d, m, k_scale=0.3, n_states=5):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    sys = lqr.random_system(k1, d, m)
    K = k_scale * jax.random.normal(k2, (m, d))
    S0 = jax.random.normal(k3, (n_states, d))
    return sys, K, S0


def _simulated_return(sys, K, S0, horizon, gamma, P_terminal=None):
    """NumPy: simulate s_{t+1} = (A − BK) s_t from each row of S0, sum the discounted rewards."""
    A, B, Q, R, K, S0 = (np.asarray(x) for x in (sys.A, sys.B, sys.Q, sys.R, K, S0))
    total = 0.0
    for s in S0:
        ret = 0.0
        for t in range(horizon):
            a = -K @ s
            ret += gamma**t * -(s @ Q @ s + a @ R @ a)
            s = A @ s + B @ a
        if P_terminal is not None:
            ret += gamma**horizon * -(s @ np.asarray(P_terminal) @ s)
        total += ret
    return total / len(S0)


def test_random_system_is_stable_with_spd_costs():
    sys = lqr.random_system(jax.random.PRNGKey(3), 4, 2)
    assert sys.A.shape == (4, 4) and sys.B.shape == (4, 2) and sys.Q.shape == (4, 4) and sys.R.shape == (2, 2)
    assert sys.A.dtype == jnp.float64
    assert np.max(np.abs(np.linalg.eigvals(np.asarray(sys.A)))) < 1.0
    np.testing.assert_allclose(np.linalg.norm(np.asarray(sys.A), 2), 0.9, rtol=1e-12)
    for M in (sys.Q, sys.R):
        np.testing.assert_allclose(M, M.T, atol=0)
        assert np.min(np.linalg.eigvalsh(np.asarray(M))) >= 1.0 - 1e-12


def test_env_step_reward_observe_and_unsquashed_actions():
    sys = lqr.random_system(jax.random.PRNGKey(0), 3, 2)
    env = lqr.make(sys.A, sys.B, sys.Q, sys.R, episode_length=7)
    assert (env.name, env.obs_size, env.action_size, env.episode_length) == ("lqr", 3, 2, 7)
    assert env.noise_shape == () and env.done is None
    s = jnp.array([0.5, -1.0, 2.0])
    a = jnp.array([3.0, -4.0])  # far outside [-1, 1]: LQR does not squash
    np.testing.assert_allclose(env.step(s, a, None), sys.A @ s + sys.B @ a, rtol=1e-15)
    np.testing.assert_allclose(env.reward(s, a), -(s @ sys.Q @ s + a @ sys.R @ a), rtol=1e-15)
    np.testing.assert_array_equal(env.observe(s), s)
    s0 = env.reset(jax.random.PRNGKey(1))
    assert s0.shape == (3,) and s0.dtype == jnp.float64


def test_env_additive_noise_and_defaults():
    A, B = jnp.eye(2) * 0.5, jnp.array([[1.0], [0.0]])
    env = lqr.make(A, B, noise_scale=0.25)
    assert env.noise_shape == (2,)
    np.testing.assert_array_equal(env.info.Q, jnp.eye(2))
    np.testing.assert_array_equal(env.info.R, jnp.eye(1))
    s, a, xi = jnp.array([1.0, 2.0]), jnp.array([0.5]), jnp.array([-1.0, 4.0])
    np.testing.assert_allclose(env.step(s, a, xi), A @ s + B @ a + 0.25 * xi, rtol=1e-15)
    np.testing.assert_allclose(env.step(s, a, None), A @ s + B @ a, rtol=1e-15)


def test_make_random_by_name_and_seed():
    e1 = envs.make("lqr", state_dim=4, action_dim=2, seed=5)
    e2 = lqr.make(key=jax.random.PRNGKey(5), state_dim=4, action_dim=2)
    assert (e1.obs_size, e1.action_size) == (4, 2)
    np.testing.assert_array_equal(e1.info.A, e2.info.A)
    np.testing.assert_array_equal(e1.info.Q, e2.info.Q)
    e3 = lqr.make(seed=6, state_dim=4, action_dim=2)
    assert not np.allclose(e1.info.A, e3.info.A)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(A=jnp.eye(2)), "A and B"),
        (dict(A=jnp.ones((2, 3)), B=jnp.ones((2, 1))), "A must"),
        (dict(A=jnp.eye(2), B=jnp.ones((3, 1))), "B must"),
        (dict(A=jnp.eye(2), B=jnp.ones((2, 1)), Q=jnp.eye(3)), "Q must"),
        (dict(A=jnp.eye(2), B=jnp.ones((2, 1)), R=jnp.eye(2)), "R must"),
    ],
)
def test_make_rejects_bad_shapes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lqr.make(**kwargs)


def test_cost_matrices_recursion_endpoints():
    sys, K, _ = _problem(0, 3, 2)
    PT = 2.0 * jnp.eye(3)
    Ps = lqr.finite_horizon_cost_matrices(*sys[:4], K, 4, 0.9, PT)
    assert Ps.shape == (5, 3, 3)
    np.testing.assert_array_equal(Ps[-1], PT)
    L, M = sys.A - sys.B @ K, sys.Q + K.T @ sys.R @ K
    np.testing.assert_allclose(Ps[3], M + 0.9 * L.T @ PT @ L, rtol=1e-14)
    np.testing.assert_array_equal(lqr.finite_horizon_cost_matrices(*sys[:4], K, 0, 0.9)[0], jnp.zeros((3, 3)))


@pytest.mark.parametrize("horizon", [0, 1, 6])
@pytest.mark.parametrize("gamma", [0.8, 1.0])
@pytest.mark.parametrize("terminal", [False, True])
def test_closed_form_return_matches_simulation(horizon, gamma, terminal):
    sys, K, S0 = _problem(horizon + 10, 3, 2)
    PT = jnp.diag(jnp.array([1.0, 2.0, 0.5])) if terminal else None
    got = lqr.closed_form_return(*sys[:4], K, S0, horizon, gamma, PT)
    want = _simulated_return(sys, K, S0, horizon, gamma, PT)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("horizon", [1, 7])
@pytest.mark.parametrize("terminal", [False, True])
def test_closed_form_gradient_matches_finite_differences(horizon, terminal):
    sys, K, S0 = _problem(horizon, 3, 2)
    PT = 1.5 * jnp.eye(3) if terminal else None
    gamma = 0.95
    grad = lqr.closed_form_gradient(*sys[:4], K, S0, horizon, gamma, PT)
    f = jax.jit(lambda K: lqr.closed_form_return(*sys[:4], K, S0, horizon, gamma, PT))
    h = 1e-6
    eye = jnp.eye(K.size).reshape((K.size,) + K.shape)
    fd = jnp.stack([(f(K + h * e) - f(K - h * e)) / (2 * h) for e in eye]).reshape(K.shape)
    assert grad.shape == K.shape
    np.testing.assert_allclose(grad, fd, rtol=1e-7, atol=1e-7 * float(jnp.max(jnp.abs(fd))))


def test_discounted_closed_forms_and_optimal_gain():
    sys, K, S0 = _problem(1, 4, 2)
    A, B, Q, R = sys[:4]
    gamma = 0.9
    K_star = lqr.optimal_gain(A, B, Q, R, gamma)
    # SciPy's DARE on the √γ-scaled system gives the same discounted optimum.
    sg = np.sqrt(gamma)
    P = scipy.linalg.solve_discrete_are(sg * np.asarray(A), sg * np.asarray(B), np.asarray(Q), np.asarray(R))
    Bs, As = sg * np.asarray(B), sg * np.asarray(A)
    K_scipy = np.linalg.solve(np.asarray(R) + Bs.T @ P @ Bs, Bs.T @ P @ As)
    np.testing.assert_allclose(K_star, K_scipy, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(lqr.discounted_cost_matrix(A, B, Q, R, K_star, gamma), P, rtol=1e-9)
    # Stationarity: the infinite-horizon gradient vanishes at K*, and K* beats a perturbed gain.
    assert float(jnp.max(jnp.abs(lqr.discounted_gradient(A, B, Q, R, K_star, S0, gamma)))) < 1e-10
    K_pert = K_star + 0.05 * K
    assert lqr.discounted_return(A, B, Q, R, K_star, S0, gamma) > lqr.discounted_return(A, B, Q, R, K_pert, S0, gamma)
    # A long finite horizon converges to the discounted fixed point (γ^400 ≈ 5e-19).
    np.testing.assert_allclose(
        lqr.closed_form_return(A, B, Q, R, K_pert, S0, 400, gamma),
        lqr.discounted_return(A, B, Q, R, K_pert, S0, gamma), rtol=1e-12,
    )
    np.testing.assert_allclose(
        lqr.closed_form_gradient(A, B, Q, R, K_pert, S0, 400, gamma),
        lqr.discounted_gradient(A, B, Q, R, K_pert, S0, gamma), rtol=1e-10, atol=1e-12,
    )


def test_closed_forms_reject_bad_horizon():
    sys, K, S0 = _problem(0, 2, 1)
    with pytest.raises(ValueError, match="horizon"):
        lqr.closed_form_return(*sys[:4], K, S0, -1, 1.0)
    with pytest.raises(TypeError, match="horizon"):
        lqr.closed_form_gradient(*sys[:4], K, S0, 2.5, 1.0)
