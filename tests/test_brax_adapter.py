"""The Brax adapter: pathwise gradients through 32 steps of Brax's inverted pendulum.

One float64 gradient compile serves the finiteness, finite-difference and
termination checks (the objective returns its trajectory as aux); one float32
compile checks the default precision against it. Start states and the policy
are chosen so that the pole stays within Brax's |angle| <= 0.2 termination band
for all 32 steps (the gradient really runs through 32 steps).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpo_grad import envs

import mbpo_grad as mg
from mbpo_grad.envs import brax_adapter

HORIZON = 32
STABLE = {"W": [[0.1, 0.5, 0.1, 0.2]], "b": [0.05]}   # |pole angle| stays < 0.17 for 32 steps
FALLING = {"W": [[0.0, 0.0, 0.0, 0.0]], "b": [0.8]}   # pushes the cart: the pole falls within a few steps


def _params(p, dtype):
    return {k: jnp.asarray(v, dtype) for k, v in p.items()}


def _policy(env):
    def policy(params, state, eps):
        return jnp.tanh(params["W"] @ env.observe(state) + params["b"])
    return policy


# Smooth reward of the state (Brax's own reward is +1 per step, zero gradient).
UPRIGHT = mg.transition_reward(lambda s, a, s_next: -s_next.obs[1] ** 2)


def _value_and_grad(env, s0):
    policy = _policy(env)

    def objective(params):
        returns, traj = mg.pathwise_returns(
            policy, params, env.step, UPRIGHT, s0, horizon=HORIZON, done=env.done
        )
        return jnp.mean(returns), traj

    return jax.jit(jax.value_and_grad(objective, has_aux=True))


@pytest.fixture(scope="module")
def run64():
    with jax.enable_x64(True):
        env = brax_adapter.make("inverted_pendulum", backend="generalized", x64=True)
        s0 = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(0), 2))
        vg = _value_and_grad(env, s0)
        params = _params(STABLE, jnp.float64)
        (value, traj), grad = vg(params)
        direction = {"W": jnp.array([[0.3, -1.1, 0.7, 0.2]]), "b": jnp.array([-0.4])}
        h = 1e-6
        plus = vg(jax.tree.map(lambda p, d: p + h * d, params, direction))[0][0]
        minus = vg(jax.tree.map(lambda p, d: p - h * d, params, direction))[0][0]
        (_, traj_fall), _ = vg(_params(FALLING, jnp.float64))
        default_rewards = jax.vmap(jax.vmap(env.reward))(
            jax.tree.map(lambda x: x[:, :-1], traj.states), traj.actions[:, :-1],
            jax.tree.map(lambda x: x[:, 1:], traj.states),
        )
        return {
            "env": env, "s0": s0, "value": value, "traj": traj, "grad": grad,
            "directional": sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(direction))),
            "fd": (plus - minus) / (2 * h), "traj_fall": traj_fall, "default_rewards": default_rewards,
        }


@pytest.mark.physics
def test_float64_gradient_is_finite_and_nonzero_through_32_steps(run64):
    traj, grad = run64["traj"], run64["grad"]
    assert traj.states.obs.dtype == jnp.float64
    assert run64["grad"]["W"].dtype == jnp.float64
    # Every trajectory is alive for all 32 steps, so no stop_gradient cut the path.
    np.testing.assert_array_equal(np.asarray(traj.alive), 1.0)
    assert np.asarray(traj.alive).shape == (2, HORIZON + 1)
    flat = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grad)])
    assert np.all(np.isfinite(flat))
    assert np.linalg.norm(flat) > 1e-2
    assert np.isfinite(float(run64["value"]))


@pytest.mark.physics
def test_float64_gradient_matches_central_finite_differences(run64):
    ad, fd = float(run64["directional"]), float(run64["fd"])
    assert abs(fd) > 1e-3
    assert abs(ad - fd) <= 1e-6 * abs(fd)


@pytest.mark.physics
def test_default_reward_is_read_off_the_transition(run64):
    # Brax's inverted pendulum pays +1 every step; the adapter's default reward is s'.reward.
    np.testing.assert_array_equal(np.asarray(run64["default_rewards"]), 1.0)
    np.testing.assert_array_equal(np.asarray(run64["traj"].states.reward[:, 1:]), 1.0)


@pytest.mark.physics
def test_done_turns_on_when_the_pole_passes_0_2_rad(run64):
    traj = run64["traj_fall"]
    angle = np.asarray(traj.states.obs[..., 1])
    done = np.asarray(traj.states.done)
    alive = np.asarray(traj.alive)
    rewards = np.asarray(traj.rewards)
    # Brax's rule: done = |pole angle| > 0.2 on every stepped state (reset states have done = 0).
    np.testing.assert_array_equal(done[:, 1:], (np.abs(angle[:, 1:]) > 0.2).astype(done.dtype))
    assert np.all(done[:, 0] == 0)
    # The engine: alive_t = Π_{k<=t} (1 − done_k); rewards stop after the end.
    np.testing.assert_array_equal(alive, np.cumprod(1.0 - done, axis=1))
    assert np.all(alive[:, -1] == 0) and np.all(alive[:, 1] == 1)
    np.testing.assert_array_equal(rewards[alive[:, :-1] == 0], 0.0)


@pytest.mark.physics
def test_float32_gradient_is_finite_and_agrees_with_float64(run64):
    env = brax_adapter.make("inverted_pendulum", backend="generalized")
    s0 = brax_adapter.cast_floats(run64["s0"], jnp.float32)  # same start states, rounded
    (value, traj), grad = _value_and_grad(env, s0)(_params(STABLE, jnp.float32))
    assert traj.states.obs.dtype == jnp.float32 and grad["W"].dtype == jnp.float32
    for name in ("W", "b"):
        g32, g64 = np.asarray(grad[name], np.float64), np.asarray(run64["grad"][name])
        assert np.all(np.isfinite(g32))
        np.testing.assert_allclose(g32, g64, rtol=2e-3, atol=2e-3 * np.abs(g64).max())


def test_unknown_env_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"env_name.*'not_an_env'.*inverted_pendulum"):
        brax_adapter.make("not_an_env")
    with pytest.raises(ValueError, match="env_name"):
        envs.make("brax:not_an_env")
    with pytest.raises(TypeError, match="env_name"):
        brax_adapter.make(3)


def test_bad_backend_and_settings_raise_naming_the_argument():
    with pytest.raises(ValueError, match=r"backend.*'warp'.*generalized.*positional.*spring.*mjx"):
        brax_adapter.make("inverted_pendulum", backend="warp")
    with pytest.raises(ValueError, match="episode_length"):
        brax_adapter.make("inverted_pendulum", episode_length=0)
    with pytest.raises(ValueError, match="solver_iterations"):
        brax_adapter.make("inverted_pendulum", backend="mjx", solver_iterations=0)
    with pytest.raises(TypeError, match="reward"):
        brax_adapter.make("inverted_pendulum", reward=1.0)
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match="x64.*jax_enable_x64"):
            brax_adapter.make("inverted_pendulum", x64=True)


def test_mjx_backend_keeps_the_model_solver_settings_and_steps_with_mjx_grad():
    env = envs.make("brax:inverted_pendulum", backend="mjx")
    stepped = env.info["brax_env"]
    sys = stepped.sys
    assert sys.opt.iterations == sys.mj_model.opt.iterations  # the XML's value, not forced to 1
    assert stepped._pipeline is brax_adapter.mjx_grad_pipeline()  # mjx.step -> envs.mjx_grad.step
    assert (env.obs_size, env.action_size, env.name) == (4, 1, "brax:inverted_pendulum")
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(sys) if jnp.issubdtype(leaf.dtype, jnp.floating))
    override = brax_adapter.make("inverted_pendulum", backend="mjx", solver_iterations=3)
    assert override.info["brax_env"].sys.opt.iterations == 3
