"""Ornstein–Uhlenbeck exploration noise: the Euler–Maruyama step, its scan, and its stationary law."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpo_grad import exploration as X


def test_ou_step_is_the_euler_maruyama_update():
    n = jnp.array([0.3, -1.2, 2.0])
    eps = jnp.array([0.5, -0.1, 1.7])
    theta, mu, sigma, dt = 0.15, 0.2, 0.3, 0.05
    got = X.ou_step(n, eps, theta=theta, mu=mu, sigma=sigma, dt=dt)
    want = np.asarray(n) + theta * (mu - np.asarray(n)) * dt + sigma * np.sqrt(dt) * np.asarray(eps)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-7)


def test_ou_sequence_matches_repeated_steps():
    eps = jax.random.normal(jax.random.PRNGKey(1), (20, 4, 2))
    n0 = X.ou_init((4, 2), 0.1)
    params = dict(theta=0.5, mu=0.1, sigma=0.4, dt=0.1)
    last, path = X.ou_sequence(n0, eps, **params)
    n = n0
    for t in range(20):
        n = X.ou_step(n, eps[t], **params)
        np.testing.assert_allclose(np.asarray(path[t]), np.asarray(n), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(last), np.asarray(n), rtol=1e-6, atol=1e-6)


def test_ou_stationary_variance_statistical():
    """M independent chains from N_0 = μ, run T steps (T θΔt = 7: the transient e^{-14} is gone).

    Reference: the Euler–Maruyama chain is AR(1) with coefficient 1 − θΔt, stationary variance
    σ²/(θ(2 − θΔt)), which → σ²/(2θ) as Δt → 0. The sample variance of M Gaussian values has
    relative standard error √(2/(M−1)); tolerance 4 standard errors. Against σ²/(2θ) the
    discretisation bias θΔt/(2 − θΔt) (0.5% here) is added to the tolerance.
    """
    M, theta, mu, sigma, dt = 200_000, 1.0, 0.3, 0.5, 0.01
    T = int(round(7.0 / (theta * dt)))

    @jax.jit
    def run(key):
        def body(n, k):
            return X.ou_sample(n, k, theta=theta, mu=mu, sigma=sigma, dt=dt), None

        n, _ = jax.lax.scan(body, X.ou_init((M,), mu), jax.random.split(key, T))
        return n

    n = np.asarray(run(jax.random.PRNGKey(0)), np.float64)
    v_hat = n.var(ddof=1)
    se = np.sqrt(2.0 / (M - 1))
    v_disc = float(X.ou_discrete_stationary_variance(theta, sigma, dt))
    v_cont = float(X.ou_stationary_variance(theta, sigma))
    assert v_cont == pytest.approx(sigma**2 / (2 * theta))
    assert abs(v_hat / v_disc - 1.0) < 4 * se, (v_hat, v_disc)
    bias = theta * dt / (2 - theta * dt)
    assert abs(v_hat / v_cont - 1.0) < 4 * se + bias, (v_hat, v_cont)
    # the stationary mean is μ (standard error √(v/M))
    assert abs(n.mean() - mu) < 4 * np.sqrt(v_disc / M)
    # the discrete variance converges to σ²/(2θ) at rate O(θΔt)
    for small_dt in (1e-3, 1e-5):
        assert float(X.ou_discrete_stationary_variance(theta, sigma, small_dt)) == pytest.approx(v_cont, rel=small_dt)


def test_ou_lag_one_autocorrelation():
    """Corr(N_t, N_{t+1}) = 1 − θΔt in the stationary regime (standard error ≈ (1 − ρ²)/√M)."""
    M, theta, sigma, dt = 50_000, 2.0, 1.0, 0.05
    v = float(X.ou_discrete_stationary_variance(theta, sigma, dt))
    n0 = jnp.sqrt(v) * jax.random.normal(jax.random.PRNGKey(3), (M,))  # start in the stationary law
    _, path = X.ou_sequence(n0, jax.random.normal(jax.random.PRNGKey(4), (1, M)), theta=theta, sigma=sigma, dt=dt)
    rho_hat = np.corrcoef(np.asarray(n0), np.asarray(path[0]))[0, 1]
    rho = 1 - theta * dt
    assert abs(rho_hat - rho) < 5 * (1 - rho**2) / np.sqrt(M)


def test_gaussian_noise_clip():
    x = X.gaussian_noise(jax.random.PRNGKey(0), (10_000,), sigma=1.0, clip=0.5)
    assert float(jnp.max(jnp.abs(x))) == pytest.approx(0.5)
    assert float(jnp.mean(jnp.abs(x) == 0.5)) > 0.5  # most of N(0,1) lies beyond ±0.5
    y = X.gaussian_noise(jax.random.PRNGKey(0), (10_000,), sigma=1.0)
    np.testing.assert_allclose(np.asarray(x), np.clip(np.asarray(y), -0.5, 0.5))


def test_ou_bad_arguments_name_the_argument():
    n = jnp.zeros((3,))
    with pytest.raises(ValueError, match="theta\\*dt"):
        X.ou_step(n, n, theta=1.0, dt=2.5)
    with pytest.raises(ValueError, match="sigma"):
        X.ou_step(n, n, sigma=-0.1)
    with pytest.raises(ValueError, match="theta"):
        X.ou_step(n, n, theta=0.0)
    with pytest.raises(ValueError, match="eps"):
        X.ou_step(n, jnp.zeros((2,)))
    with pytest.raises(ValueError, match="eps"):
        X.ou_sequence(n, jnp.zeros((5, 2)))
