"""``envs.quantized`` (``quantized_thruster``): dynamics piecewise constant in the action.

Every pathwise gradient through the simulator is exactly zero, the expected return of a Gaussian policy still has a
nonzero gradient (exact enumeration over the 3^T thrust sequences, float64 finite differences,
and a score-function Monte-Carlo estimate), and the closed-form optimum is checked by brute
force over all 3^T action sequences.
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpo_grad import envs, policies
from mbpo_grad.envs import quantized as Q
from mbpo_grad.objectives import pathwise_returns
from mbpo_grad.rollout import unroll


def _best_returns(env, x0, horizon):
    """max over all 3^T action sequences in {−1, 0, 1}^T of the t-step return, t = 1..T, from each x0 [K]
    (the t-step maximum is over the length-t prefixes, all of which the enumeration covers)."""
    seqs = jnp.asarray(list(itertools.product((-1.0, 0.0, 1.0), repeat=horizon)), x0.dtype)[..., None]

    def one(s0, actions):
        def body(s, a):
            return env.step(s, a, None), env.reward(s, a)
        return jnp.cumsum(jax.lax.scan(body, s0, actions)[1])

    per_seq = jax.vmap(lambda s0: jax.vmap(lambda acts: one(s0, acts))(seqs))(x0[:, None])   # [K, 3^T, T]
    return jnp.max(per_seq, axis=1)


# --------------------------------------------------------------------------- interface
def test_registered_and_passes_check_env():   # (tests/test_shapes.py runs check_env on every ANALYTIC env, x64 too)
    assert "quantized_thruster" in envs.ANALYTIC and "quantized_thruster" in envs.registered()
    env = envs.make("quantized_thruster")
    assert envs.check_env(env) is env
    assert (env.name, env.obs_size, env.action_size, env.episode_length, env.noise_shape, env.done) == \
        ("quantized_thruster", 1, 1, 50, (), None)
    s = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(0), 2000))
    assert s.shape == (2000, 1) and s.dtype == jnp.float32
    assert np.all((np.abs(s) >= 1.0) & (np.abs(s) <= 2.0))
    assert 0.45 < np.mean(np.asarray(s) > 0) < 0.55           # both sides of the target
    with jax.enable_x64(True):
        s64 = jax.eval_shape(env.reset, jax.random.PRNGKey(0))
        assert s64.dtype == jnp.float64
        assert jax.eval_shape(env.step, s64, jax.ShapeDtypeStruct((1,), jnp.float64), None).dtype == jnp.float64
    assert envs.make("quantized_thruster", episode_length=7, step_size=0.2).episode_length == 7


def test_quantizer_levels_and_zero_derivative():
    a = jnp.array([-1.0, -0.34, -1 / 3, -0.2, 0.0, 0.2, 1 / 3, 0.34, 1.0])
    q = jax.vmap(Q.quantize)(a)
    np.testing.assert_array_equal(np.asarray(q), [-1, -1, 0, 0, 0, 0, 0, 1, 1])
    grid = jnp.linspace(-1.0, 1.0, 1001)
    reverse = jax.jit(jax.vmap(jax.grad(Q.quantize)))(grid)
    forward = jax.jit(jax.vmap(lambda x: jax.jvp(Q.quantize, (x,), (1.0,))[1]))(grid)
    assert np.all(np.asarray(reverse) == 0.0) and np.all(np.asarray(forward) == 0.0)


# --------------------------------------------------------------------------- gradients
def test_pathwise_gradient_is_exactly_zero_while_the_return_depends_on_the_parameters():
    """A tanh-Gaussian MLP policy over the whole episode (BPO / SVG(∞)), 16 starts with policy noise and
    16 with ε = 0 (the mode action tanh μ): ∇J is exactly 0, although J changes with the parameters."""
    env = envs.make("quantized_thruster")
    pol = policies.gaussian(1, 1, hidden=(8,))
    policy = policies.as_engine_policy(pol, env.observe)

    @jax.jit
    def values_and_grads(key):
        k_init, k_s, k_e = jax.random.split(key, 3)
        params = pol.init(k_init)
        states = jax.vmap(env.reset)(jax.random.split(k_s, 32))
        eps = jax.random.normal(k_e, (env.episode_length + 1, 32, 1)).at[:, 16:].set(0.0)

        def objective(p):
            return jnp.mean(pathwise_returns(policy, p, env.step, env.reward, states,
                                             horizon=env.episode_length, policy_noise=eps)[0])

        # the parameters, and the same with the mean output's bias pushed by +3 and by −3
        stack = jax.tree.map(lambda x: jnp.stack([x, x, x]), params)
        stack["net"]["Dense_1"]["bias"] = stack["net"]["Dense_1"]["bias"].at[1, 0].add(3.0).at[2, 0].add(-3.0)
        return jax.vmap(jax.value_and_grad(objective))(stack)

    values, grads = values_and_grads(jax.random.PRNGKey(1))
    assert all(np.all(np.asarray(g) == 0.0) for g in jax.tree.leaves(grads))
    assert np.ptp(np.asarray(values)) > 1.0, values


def test_expected_return_has_a_nonzero_gradient_that_score_function_estimates():
    """Linear-Gaussian pre-squash policy u = θ0 + θ1 x + e^θ2 ε, a = tanh(u), from x0 = 0.35, T = 5.

    Exact J(θ) by enumeration (float64); its gradient matches central differences and is far from 0;
    the pathwise gradient with fixed noise is exactly 0; REINFORCE agrees with the exact gradient.
    """
    with jax.enable_x64(True):
        env = Q.make(episode_length=5)
        horizon, x0 = 5, jnp.array([0.35])
        theta = jnp.array([0.1, -0.5, -0.3])

        def probs(th):
            return lambda s: Q.gaussian_level_probabilities(th[0] + th[1] * s[0], jnp.exp(th[2]))

        def exact(th):
            return Q.exact_expected_return(probs(th), x0, horizon)

        @jax.jit
        def reference(th, h=1e-5):   # ∇J by forward mode, J at θ and at θ ± h e_i
            values = jax.vmap(exact)(jnp.concatenate([th[None], th + h * jnp.eye(3), th - h * jnp.eye(3)]))
            return jax.jacfwd(exact)(th), values[0], (values[1:4] - values[4:]) / (2 * h)

        grad, j_exact, fd = reference(theta)
        np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)
        assert float(grad[0]) < -0.3         # pushing toward the target (θ0 < 0) raises J

        n = 20000
        policy = lambda th, s, e: jnp.tanh(th[0] + th[1] * s[0] + jnp.exp(th[2]) * e)
        states = jnp.broadcast_to(x0, (n, 1))

        def log_prob(th, x, e):   # Σ_t log N(u_t; θ0 + θ1 x_t, e^{2θ2}) of one trajectory's fixed u_t
            u = jax.lax.stop_gradient(th[0] + th[1] * x + jnp.exp(th[2]) * e)
            return jnp.sum(-0.5 * ((u - th[0] - th[1] * x) * jnp.exp(-th[2])) ** 2 - th[2])

        @jax.jit
        def monte_carlo(th, key):
            eps = jax.random.normal(key, (horizon + 1, n, 1))

            def mc(t):
                returns, traj = pathwise_returns(policy, t, env.step, env.reward, states, horizon=horizon,
                                                 policy_noise=eps)
                return jnp.mean(returns), (returns, traj)

            (mean, (returns, traj)), pathwise_grad = jax.value_and_grad(mc, has_aux=True)(th)
            scores = jax.vmap(jax.grad(log_prob), in_axes=(None, 0, 0))(
                th, traj.states[:, :horizon, 0], eps[:horizon, :, 0].T)
            per_sample = (returns - mean)[:, None] * scores          # REINFORCE with a mean baseline
            return (mean, jnp.std(returns) / np.sqrt(n), pathwise_grad,
                    jnp.mean(per_sample, 0), jnp.std(per_sample, 0) / np.sqrt(n))

        mean, se, pathwise_grad, sf, sf_se = (np.asarray(v) for v in monte_carlo(theta, jax.random.PRNGKey(4)))
        assert np.all(pathwise_grad == 0.0)
        assert abs(mean - float(j_exact)) < 4 * se                  # the enumeration is right
        assert np.all(np.abs(sf - np.asarray(grad)) < 4 * sf_se)     # score function: unbiased
        assert abs(sf[0]) > 4 * sf_se[0]                             # and clearly nonzero


# --------------------------------------------------------------------------- optimum
@pytest.mark.parametrize("x64", [False, True])
def test_optimal_policy_attains_optimal_return(x64):
    with jax.enable_x64(x64):
        env = envs.make("quantized_thruster")
        x = jnp.linspace(1.0, 2.0, 37)       # off the δ-lattice for most points
        x0 = jnp.concatenate([x, -x])[:, None]

        @jax.jit
        def run(x0):
            traj = jax.vmap(lambda s: unroll(lambda p, s, e: Q.optimal_action(s), None, env.step, env.reward, s,
                                             horizon=env.episode_length))(x0)
            return (jnp.sum(traj.rewards, axis=-1), traj.states[:, -1, 0], Q.optimal_return(x0[:, 0]),
                    env.info["optimal_return"](x0[:, 0]))

        got, last, ref, ref_info = run(x0)
        np.testing.assert_allclose(got, ref, rtol=1e-12 if x64 else 1e-5)
        np.testing.assert_array_equal(ref, ref_info)
        assert np.all(np.abs(np.asarray(last)) <= 0.05 + 1e-6)   # ends held at the lattice point nearest 0


@pytest.mark.parametrize("step_size,width", [(0.1, 0.5), (0.3, 0.25)])
def test_optimal_return_is_the_maximum_over_all_action_sequences(step_size, width):
    with jax.enable_x64(True):
        env = Q.make(step_size=step_size, reward_width=width)
        x0 = jnp.array([0.37, -0.23, 0.14, -0.06, 0.0, 0.52, -1.2])
        best, ref = jax.jit(lambda x: (_best_returns(env, x, 6),           # 3^6 = 729 sequences
                                       jnp.stack([Q.optimal_return(x, t, step_size=step_size, width=width)
                                                  for t in range(1, 7)], axis=1)))(x0)
        np.testing.assert_allclose(best, ref, rtol=1e-12, atol=1e-15)


def test_mean_optimum_and_never_move_fraction():
    """E[J*] = 39.8098 over the start distribution (closed form = midpoint rule); never moving: 0.26 %."""
    with jax.enable_x64(True):
        env = envs.make("quantized_thruster")
        mean_opt = Q.mean_optimal_return()
        assert env.info["mean_optimal_return"] == mean_opt

        @jax.jit
        def numbers(key):
            mid = jnp.linspace(1.0, 2.0, 100001)
            mid = 0.5 * (mid[1:] + mid[:-1])
            never = jnp.mean(50 * Q.position_reward(mid))          # x stays at x0: r = f(x0) every step
            # a never-moving policy on the env's own start distribution, through the engine's unroll
            s0 = jax.vmap(env.reset)(jax.random.split(key, 4000))
            traj = jax.vmap(lambda s: unroll(lambda p, s, e: jnp.zeros((1,)), None, env.step, env.reward, s,
                                             horizon=env.episode_length))(s0)
            sampled = jnp.mean(jnp.sum(traj.rewards, -1)) / jnp.mean(Q.optimal_return(s0[:, 0]))
            return jnp.mean(Q.optimal_return(mid)), jnp.mean(Q.optimal_return(-mid)), never, sampled

        grid_pos, grid_neg, never, sampled = (float(v) for v in numbers(jax.random.PRNGKey(5)))
        assert mean_opt == pytest.approx(grid_pos, rel=1e-9) and mean_opt == pytest.approx(grid_neg, rel=1e-9)
        assert mean_opt == pytest.approx(39.8098009866, rel=1e-10)
        assert never / mean_opt == pytest.approx(0.0026, abs=5e-5)
        assert never / mean_opt < 0.05 and sampled < 0.01


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="episode_length"):
        Q.make(episode_length=0)
    with pytest.raises(ValueError, match="step_size"):
        Q.make(step_size=-0.1)
    with pytest.raises(ValueError, match="reward_width"):
        Q.make(reward_width=0.0)
    with pytest.raises(ValueError, match="x0"):
        Q.optimal_return(jnp.array([1, 2]))
    with pytest.raises(ValueError, match="horizon"):
        Q.exact_expected_return(lambda s: jnp.ones(3) / 3, jnp.zeros(1), 13)
    with pytest.raises(ValueError, match="start_range"):
        Q.mean_optimal_return(start_range=(2.0, 1.0))
