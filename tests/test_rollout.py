"""mbpo_grad.rollout: Trajectory layout, alive masks, noise indexing and the transition_reward marker."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mbpo_grad as mg

D, M, N = 3, 2, 5


def policy(w, s, eps):
    a = jnp.tanh(w @ s)
    return a if eps is None else a + eps


def step(s, a, xi):
    nxt = 0.8 * s + jnp.concatenate([a, a[:1]])
    return nxt if xi is None else nxt + xi


def reward(s, a):
    return -(s @ s) - 0.5 * (a @ a)


W = jnp.arange(M * D, dtype=jnp.float32).reshape(M, D) / 10.0
S0 = jnp.array([0.3, -0.2, 0.5])


def manual(s, horizon, eps=None, xi=None):
    """Python-loop reference for one trajectory."""
    states, actions, rewards = [s], [], []
    for t in range(horizon):
        a = policy(W, s, None if eps is None else eps[t])
        actions.append(a)
        rewards.append(reward(s, a))
        s = step(s, a, None if xi is None else xi[t])
        states.append(s)
    actions.append(policy(W, s, None if eps is None else eps[horizon]))
    return jnp.stack(states), jnp.stack(actions), jnp.array(rewards)


@pytest.mark.parametrize("horizon", [0, 1, N])
def test_shapes_and_values(horizon):
    traj = mg.unroll(policy, W, step, reward, S0, horizon=horizon)
    assert isinstance(traj, mg.Trajectory)
    assert traj.states.shape == (horizon + 1, D)
    assert traj.actions.shape == (horizon + 1, M)
    assert traj.rewards.shape == (horizon,)
    assert traj.alive.shape == (horizon + 1,)
    np.testing.assert_array_equal(traj.alive, 1.0)
    states, actions, rewards = manual(S0, horizon)
    np.testing.assert_allclose(traj.states, states, rtol=1e-6)
    np.testing.assert_allclose(traj.actions, actions, rtol=1e-6)
    if horizon:
        np.testing.assert_allclose(traj.rewards, rewards, rtol=1e-6)


def test_batched_unroll_adds_a_leading_axis_and_moves_noise_axis():
    B = 4
    rng = np.random.default_rng(0)
    states = rng.standard_normal((B, D)).astype(np.float32)
    eps = rng.standard_normal((N + 1, B, M)).astype(np.float32)
    xi = rng.standard_normal((N, B, D)).astype(np.float32)
    traj = mg.batched_unroll(policy, W, step, reward, states, horizon=N, policy_noise=eps, dynamics_noise=xi)
    assert traj.states.shape == (B, N + 1, D) and traj.actions.shape == (B, N + 1, M)
    assert traj.rewards.shape == (B, N) and traj.alive.shape == (B, N + 1)
    for b in range(B):  # noise is [time, batch, ...]: trajectory b reads eps[:, b], xi[:, b]
        s, a, r = manual(states[b], N, eps[:, b], xi[:, b])
        np.testing.assert_allclose(traj.states[b], s, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(traj.actions[b], a, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(traj.rewards[b], r, rtol=1e-5, atol=1e-6)


def test_noise_index_t_reaches_step_t():
    eps = jnp.arange((N + 1) * M, dtype=jnp.float32).reshape(N + 1, M)
    xi = 100.0 * jnp.arange(N * D, dtype=jnp.float32).reshape(N, D)
    traj = mg.unroll(lambda w, s, e: e, W, lambda s, a, x: x, reward, S0, horizon=N,
                     policy_noise=eps, dynamics_noise=xi)
    np.testing.assert_array_equal(traj.actions, eps)  # a_t = ε_t, including the final a_n = ε_n
    np.testing.assert_array_equal(traj.states[1:], xi)  # s_{t+1} = ξ_t


def test_pytree_state():
    s0 = {"pos": jnp.array([0.1, 0.2]), "vel": jnp.array(0.5), "steps": jnp.array(0, jnp.int32)}

    def step_tree(s, a, xi):
        return {"pos": s["pos"] + s["vel"] * a, "vel": s["vel"] - 0.1, "steps": s["steps"] + 1}

    def pol(w, s, eps):
        return jnp.tanh(w * s["pos"])

    traj = mg.unroll(pol, jnp.array([1.0, -1.0]), step_tree, lambda s, a: -jnp.sum(s["pos"] ** 2), s0, horizon=3)
    assert traj.states["pos"].shape == (4, 2) and traj.states["vel"].shape == (4,)
    np.testing.assert_array_equal(traj.states["steps"], [0, 1, 2, 3])
    np.testing.assert_allclose(traj.states["vel"], [0.5, 0.4, 0.3, 0.2], rtol=1e-6)
    assert traj.actions.shape == (4, 2) and traj.rewards.shape == (3,)


def counter_step(s, a, xi):
    return s + jnp.array([1.0, 0.0]) + jnp.concatenate([jnp.zeros(1), a])


def done_at_three(s):
    return s[0] >= 3.0


def test_alive_mask_and_zeroed_rewards():
    traj = mg.unroll(lambda w, s, e: w * jnp.ones(1), jnp.float32(0.5), counter_step, lambda s, a: 1.0 + s[0],
                     jnp.array([0.0, 0.0]), horizon=6, done=done_at_three)
    # s_0..s_6 have counters 0..6; s_3 is the first terminal state.
    np.testing.assert_array_equal(traj.states[:, 0], [0, 1, 2, 3, 3, 3, 3])  # frozen at the terminal state s_3
    np.testing.assert_array_equal(traj.alive, [1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(traj.rewards, [1.0, 2.0, 3.0, 0.0, 0.0, 0.0])


def test_alive_per_trajectory_in_a_batch_and_done_at_start():
    starts = jnp.array([[0.0, 0.0], [2.0, 0.0], [5.0, 0.0]])
    traj = mg.batched_unroll(lambda w, s, e: w * jnp.ones(1), jnp.float32(0.5), counter_step,
                             lambda s, a: jnp.ones(()), starts, horizon=4, done=done_at_three)
    np.testing.assert_array_equal(traj.alive, [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(traj.rewards, [[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    returns, _ = mg.pathwise_returns(lambda w, s, e: w * jnp.ones(1), jnp.float32(0.5), counter_step,
                                     lambda s, a: jnp.ones(()), starts, horizon=4, done=done_at_three,
                                     bootstrap=lambda s, a: 100.0 + jnp.zeros(()))
    np.testing.assert_allclose(returns, [3.0, 1.0, 0.0])  # all ended before the horizon: no bootstrap


def test_transition_reward_sees_the_next_state():
    calls = []

    def r_fn(s, a, s_next):
        calls.append(1)
        return jnp.sum(s_next) - jnp.sum(s) + 0.0 * jnp.sum(a)

    marked = mg.transition_reward(r_fn)
    assert getattr(marked, "uses_next_state", False) and callable(marked)
    traj = mg.unroll(policy, W, step, marked, S0, horizon=N)
    np.testing.assert_allclose(traj.rewards, jnp.sum(traj.states[1:], -1) - jnp.sum(traj.states[:-1], -1),
                               rtol=1e-5, atol=1e-6)
    assert calls  # the marker routed the call through the three-argument form

    # A plain two-argument reward is called without the next state.
    traj2 = mg.unroll(policy, W, step, lambda s, a: jnp.sum(s), S0, horizon=N)
    np.testing.assert_allclose(traj2.rewards, jnp.sum(traj2.states[:-1], -1), rtol=1e-6)


def test_transition_reward_works_in_the_objective():
    """The marker goes through pathwise_objective (validation accepts it as a callable) and its gradient."""
    marked = mg.transition_reward(lambda s, a, s_next: -jnp.sum(s_next**2))
    plain = lambda s, a: -jnp.sum(step(s, a, None) ** 2)  # noqa: E731  same reward, stepped twice
    states = jnp.stack([S0, -S0])
    J = lambda w, r: mg.pathwise_objective(policy, w, step, r, states, horizon=3, gamma=0.9)  # noqa: E731
    v1, g1 = jax.value_and_grad(J)(W, marked)
    v2, g2 = jax.value_and_grad(J)(W, plain)
    np.testing.assert_allclose(v1, v2, rtol=1e-6)
    np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-6)


def test_bad_remat_is_rejected():
    with pytest.raises(ValueError, match="remat"):
        mg.unroll(policy, W, step, reward, S0, horizon=2, remat="always")
