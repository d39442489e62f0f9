"""Nothing past the end of an episode reaches the gradient, even where the system is undefined there.

A 1-D system s' = s + 0.3 + 0.1·a·sqrt(1 − s) ends at s ≥ 0.95; past that point sqrt(1 − s)
is NaN, and so is its derivative. At dead steps the engine still runs the policy, ``step`` and
``reward`` on the frozen terminal state; a ``where`` after them gives them a zero cotangent,
and 0 · NaN = NaN unless their inputs are stop-gradient there (the "double where"). Reference:
central finite differences in float64 of the same objective (the values are exact: the
terminal state is reached within the episode, so longer episodes must give the same J and the
same gradient).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mbpo_grad as mg

END = 0.95


def policy(w, s, eps):
    return jnp.array([w[0] + w[1] * s[0] + w[2] * jnp.sin(3.0 * s[0])])


def step_sqrt(s, a, xi):          # NaN (value and Jacobian) once s > 1
    return s + 0.3 + 0.1 * a[0] * jnp.sqrt(1.0 - s)


def reward_smooth(s, a):
    return -((s[0] - 0.4) ** 2) - 0.01 * a[0] ** 2


def step_smooth(s, a, xi):
    return s + 0.3 + 0.1 * a[0]


def reward_sqrt(s, a):            # only the reward is NaN past the end
    return -jnp.sqrt(1.0 - s[0]) - 0.01 * a[0] ** 2


def done(s):
    return s[0] >= END


W = np.array([0.2, -0.1, 0.05])
S0 = np.array([[0.0], [0.1], [-0.05]])


def central_fd(f, w, h=1e-6):
    g = np.zeros_like(w)
    for i in range(w.size):
        e = np.zeros_like(w)
        e[i] = h
        g[i] = (f(w + e) - f(w - e)) / (2 * h)
    return g


@pytest.mark.parametrize("system", ["step", "reward", "transition"])
@pytest.mark.parametrize("remat", [False, True, 2])
def test_bpo_gradient_past_the_end_is_finite_and_exact(system, remat):
    with jax.enable_x64(True):
        if system == "step":
            step, reward = step_sqrt, reward_smooth
        elif system == "reward":
            step, reward = step_smooth, reward_sqrt
        else:  # a transition reward that reads the (NaN) next state
            step = step_sqrt
            reward = mg.transition_reward(lambda s, a, s1: -((s1[0] - 0.4) ** 2) - 0.01 * a[0] ** 2)

        def J(w, length):
            return mg.bpo(policy, w, step, reward, jnp.asarray(S0), episode_length=length, done=done, remat=remat)

        w = jnp.asarray(W)
        values, grads = [], []
        for length in (4, 6, 9):
            v, g = jax.jit(jax.value_and_grad(J), static_argnums=1)(w, length)
            values.append(float(v))
            grads.append(np.asarray(g))
            assert np.all(np.isfinite(g)), (system, length, g)
        # Every start ends within 4 steps: longer episodes add nothing.
        np.testing.assert_allclose(values, values[0], rtol=0, atol=1e-12)
        for g in grads[1:]:
            np.testing.assert_allclose(g, grads[0], rtol=1e-10, atol=1e-12)
        fd = central_fd(lambda x: float(J(jnp.asarray(x), 9)), W)
        np.testing.assert_allclose(grads[-1], fd, rtol=1e-6, atol=1e-8)


def test_bootstrap_of_an_ended_episode_gets_no_nan_gradient():
    # A critic undefined at the terminal state: dropped from the value, and from the gradient too.
    with jax.enable_x64(True):
        def q(s, a):  # NaN at every state where the episode has ended (s >= 0.95)
            return -jnp.sqrt(END - s[0]) * (1.0 + 0.1 * a[0])

        def J(w, n):
            return mg.nstep(policy, w, step_smooth, reward_smooth, jnp.asarray(S0), horizon=n,
                            bootstrap=q, done=done)

        w = jnp.asarray(W)
        for n in (3, 4, 6):  # episodes end inside the window and exactly at its end
            g = jax.grad(J)(w, n)
            assert np.all(np.isfinite(g)), (n, g)
            fd = central_fd(lambda x: float(J(jnp.asarray(x), n)), W)
            np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)
        # A live bootstrap (short window) still carries its gradient.
        g2 = jax.grad(J)(w, 1)
        fd2 = central_fd(lambda x: float(J(jnp.asarray(x), 1)), W)
        np.testing.assert_allclose(g2, fd2, rtol=1e-6, atol=1e-8)


def test_time_limit_state_keeps_its_gradient_in_the_trajectory():
    # traj.states[T] (the state the episode ended on) is what a time-limit bootstrap reads:
    # the gating of dead-step inputs must not cut its gradient.
    with jax.enable_x64(True):
        def last_live_state_value(w):
            _, traj = mg.pathwise_returns(policy, w, step_smooth, reward_smooth, jnp.asarray(S0[:1]),
                                          horizon=8, done=done)
            ended = jnp.argmin(traj.alive[0])          # first t with alive_t = 0
            return traj.states[0, ended, 0]

        g = jax.grad(last_live_state_value)(jnp.asarray(W))
        fd = central_fd(lambda x: float(last_live_state_value(jnp.asarray(x))), W)
        assert np.abs(fd).max() > 1e-3
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


def test_svg_entropy_rollout_past_the_end_is_finite():
    # The soft rollout's pair action (a, log π) goes through the same gate.
    with jax.enable_x64(True):
        pol = mg.policies.gaussian(obs_dim=1, act_dim=1, hidden=(8,))
        params = pol.init(jax.random.PRNGKey(0))
        eps = jax.random.normal(jax.random.PRNGKey(1), (7, S0.shape[0], 1))
        pi, st, rw, _ = mg.svg.soft_rollout(pol, step_sqrt, reward_smooth, None, 0.1)

        def J(p):
            return mg.pathwise_objective(pi, p, st, rw, jnp.asarray(S0), horizon=6, policy_noise=eps, done=done)

        g = jax.grad(J)(params)
        assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(g))


def test_reward_and_bootstrap_of_shape_one_are_rejected():
    # -(s[0]**2 + 0.01*a**2) with a 1-D action has shape (1,): it used to broadcast into a
    # plausible, wrong J.
    def bad_reward(s, a):
        return -(s[0] ** 2 + 0.01 * a ** 2)

    with pytest.raises(ValueError, match=r"reward: .*shape \(1,\)"):
        mg.bpo(policy, jnp.asarray(W, jnp.float32), step_smooth, bad_reward, jnp.asarray(S0, jnp.float32),
               episode_length=3)
    with pytest.raises(ValueError, match=r"bootstrap: .*shape \(1,\)"):
        mg.nstep(policy, jnp.asarray(W, jnp.float32), step_smooth, reward_smooth, jnp.asarray(S0, jnp.float32),
                 horizon=2, bootstrap=lambda s, a: s)


def test_critic_losses_and_targets_ignore_nan_at_masked_entries():
    from mbpo_grad import critics as C
    with jax.enable_x64(True):
        pred_w = jnp.array([0.5, -1.0, 2.0])
        x = jnp.array([1.0, 2.0, 3.0])
        targets = jnp.array([0.2, jnp.nan, 1.0])          # a dead step's target
        w = jnp.array([1.0, 0.0, 2.0])

        def loss(p):
            return C.mse(p * x, targets, w)

        v, g = jax.value_and_grad(loss)(pred_w)
        # Exact: Σ w (p x − y)² / Σ w over the live entries only.
        live = np.array([0, 2])
        px, y, ww = np.asarray(pred_w * x)[live], np.asarray(targets)[live], np.asarray(w)[live]
        np.testing.assert_allclose(v, np.sum(ww * (px - y) ** 2) / ww.sum(), rtol=1e-14)
        expect = np.zeros(3)
        expect[live] = 2 * ww * (px - y) * np.asarray(x)[live] / ww.sum()
        np.testing.assert_allclose(g, expect, rtol=1e-14)

        # r + γ d v' with a NaN v' at the terminal transition (d = 0): finite, exact.
        y = C.one_step_targets(jnp.array([1.0, 2.0]), jnp.array([1.0, 0.0]), 0.9, jnp.array([3.0, jnp.nan]))
        np.testing.assert_allclose(y, [1.0 + 0.9 * 3.0, 2.0], rtol=1e-14)
        with pytest.raises(ValueError, match="next_value"):
            C.one_step_targets(jnp.ones(2), jnp.ones(2), 0.9, jnp.ones((2, 1)))
