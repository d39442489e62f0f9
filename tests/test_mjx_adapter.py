"""The MJX adapter: float64 pathwise gradients through 32 steps of the builtin cart-pole.

The adapter steps with ``envs.mjx_grad.step`` (MJX's values with the XML's solver iterations,
implicit-function derivative of the constraint solve; tests/test_mjx_grad.py checks it
against forward-mode derivatives of the unmodified solver with the rail limit active).

One float64 gradient compile (the objective returns its trajectory as aux)
serves the finiteness, finite-difference, reward and MuJoCo-C reference checks.
The policy balances the pole for the 32 steps, so the cart stays far from the
rail limits (the limit rows are present in the solver but inactive) and the
trajectory must equal MuJoCo's C ``mj_step`` to round-off.
"""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpo_grad import envs

import mbpo_grad as mg
from mbpo_grad.envs import mjx_adapter

HORIZON = 32
PARAMS = {"W": [[0.5, 5.0, 0.5, 1.0]], "b": [0.05]}  # balances the pole for 32 steps


def _policy(env):
    def policy(params, state, eps):
        return jnp.tanh(params["W"] @ env.observe(state) + params["b"])
    return policy


@pytest.fixture(scope="module")
def run64():
    with jax.enable_x64(True):
        env = mjx_adapter.make("inverted_pendulum", x64=True)
        s0 = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(0), 2))
        policy = _policy(env)

        def objective(params):
            returns, traj = mg.pathwise_returns(policy, params, env.step, env.reward, s0, horizon=HORIZON)
            return jnp.mean(returns), traj

        vg = jax.jit(jax.value_and_grad(objective, has_aux=True))
        params = {k: jnp.asarray(v, jnp.float64) for k, v in PARAMS.items()}
        (value, traj), grad = vg(params)
        direction = {"W": jnp.array([[0.3, -1.1, 0.7, 0.2]]), "b": jnp.array([-0.4])}
        h = 1e-6
        plus = vg(jax.tree.map(lambda p, d: p + h * d, params, direction))[0][0]
        minus = vg(jax.tree.map(lambda p, d: p - h * d, params, direction))[0][0]
        directional = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(direction)))
        return {"env": env, "value": value, "traj": traj, "grad": grad,
                "directional": directional, "fd": (plus - minus) / (2 * h)}


@pytest.mark.physics
def test_float64_gradient_is_finite_and_nonzero_through_32_steps(run64):
    traj, grad = run64["traj"], run64["grad"]
    assert traj.states.qpos.dtype == jnp.float64 and grad["W"].dtype == jnp.float64
    assert np.asarray(traj.rewards).shape == (2, HORIZON)
    flat = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grad)])
    assert np.all(np.isfinite(flat))
    assert np.linalg.norm(flat) > 1e-2
    # The pole stayed up: the objective is near its maximum of 32.
    assert 31.5 < float(run64["value"]) <= 32.0


@pytest.mark.physics
def test_float64_gradient_matches_central_finite_differences(run64):
    ad, fd = float(run64["directional"]), float(run64["fd"])
    assert abs(fd) > 1e-2
    assert abs(ad - fd) <= 1e-6 * abs(fd)


@pytest.mark.physics
def test_trajectory_equals_mujoco_c_and_reward_is_upright_minus_control_cost(run64):
    import mujoco

    env, traj = run64["env"], run64["traj"]
    qpos, qvel = np.asarray(traj.states.qpos), np.asarray(traj.states.qvel)
    actions = np.asarray(traj.actions)
    m = env.info["mj_model"]
    assert m.opt.iterations == 100  # the XML's (MuJoCo's default); the gradient is mjx_grad's implicit one
    low, high = env.info["ctrl_low"], env.info["ctrl_high"]
    for b in range(qpos.shape[0]):
        d = mujoco.MjData(m)
        d.qpos[:], d.qvel[:] = qpos[b, 0], qvel[b, 0]
        for t in range(HORIZON):
            d.ctrl[:] = low + 0.5 * (actions[b, t] + 1.0) * (high - low)
            for _ in range(2):  # frame_skip
                mujoco.mj_step(m, d)
            np.testing.assert_allclose(d.qpos, qpos[b, t + 1], rtol=0, atol=1e-9)
            np.testing.assert_allclose(d.qvel, qvel[b, t + 1], rtol=0, atol=1e-8)
    expected = np.cos(qpos[:, 1:, 1]) - 0.01 * np.sum(actions[:, :-1] ** 2, axis=-1)
    np.testing.assert_allclose(np.asarray(traj.rewards), expected, rtol=1e-12)


def test_x64_switch_sets_model_and_state_dtypes():
    with jax.enable_x64(True):
        for x64, dtype in ((True, jnp.float64), (False, jnp.float32)):
            env = mjx_adapter.make("inverted_pendulum", x64=x64)
            floats = [x for x in jax.tree.leaves(env.info["mjx_model"]) if jnp.issubdtype(x.dtype, jnp.floating)]
            assert floats and all(x.dtype == dtype for x in floats)
            state = jax.eval_shape(env.reset, jax.random.PRNGKey(0))
            assert state.qpos.dtype == dtype and state.qvel.dtype == dtype
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match="x64.*jax_enable_x64"):
            mjx_adapter.make("inverted_pendulum", x64=True)


def test_solver_settings_default_to_the_models_own_and_overrides_apply_to_a_copy():
    import mujoco

    env = mjx_adapter.make("inverted_pendulum")
    xml = mujoco.MjModel.from_xml_path(mjx_adapter.BUILTINS["inverted_pendulum"])
    assert env.info["mj_model"].opt.iterations == xml.opt.iterations == 100
    assert env.info["mj_model"].opt.ls_iterations == xml.opt.ls_iterations
    env = envs.from_mjx(xml, reward=lambda d, a: 0.0, solver_iterations=7, ls_iterations=3)
    assert (env.info["mj_model"].opt.iterations, env.info["mj_model"].opt.ls_iterations) == (7, 3)
    assert int(env.info["mjx_model"].opt.iterations) == 7
    assert xml.opt.iterations == 100  # the user's model is not modified
    for bad in (0, -2, 1.5, True, "3"):
        with pytest.raises(ValueError, match="solver_iterations"):
            envs.from_mjx(xml, reward=lambda d, a: 0.0, solver_iterations=bad)


def test_custom_xml_path_needs_a_reward(tmp_path):
    path = os.path.join(tmp_path, "my_cartpole.xml")
    shutil.copy(mjx_adapter.BUILTINS["inverted_pendulum"], path)
    with pytest.raises(ValueError, match="reward"):
        mjx_adapter.make(path)
    reward = mg.transition_reward(lambda d, a, d_next: -d_next.qpos[0] ** 2)
    env = envs.make("mjx:" + path, reward=reward, frame_skip=3, solver_iterations=2)
    assert (env.name, env.obs_size, env.action_size) == ("mjx:my_cartpole", 4, 1)
    assert env.info["mj_model"].opt.iterations == 2
    assert env.info["dt"] == pytest.approx(0.03)


def test_bad_model_and_settings_raise_naming_the_argument(tmp_path):
    with pytest.raises(ValueError, match=r"model.*'no_such_model'.*inverted_pendulum"):
        mjx_adapter.make("no_such_model")
    with pytest.raises(ValueError, match="model"):
        envs.make("mjx:/nonexistent/model.xml")
    bad = os.path.join(tmp_path, "bad.xml")
    with open(bad, "w") as f:
        f.write("<mujoco><worldbody><body><geom type='sphere'/></body></worldbody")
    with pytest.raises(ValueError, match="model: could not load"):
        mjx_adapter.make(bad, reward=lambda d, a: 0.0)
    with pytest.raises(TypeError, match="model"):
        mjx_adapter.make(42)
    for kwargs, name in (
        ({"solver_iterations": 0}, "solver_iterations"),
        ({"frame_skip": 0}, "frame_skip"),
        ({"episode_length": -1}, "episode_length"),
        ({"ls_iterations": 1.5}, "ls_iterations"),
        ({"reset_noise_scale": -0.1}, "reset_noise_scale"),
    ):
        with pytest.raises(ValueError, match=name):
            mjx_adapter.make("inverted_pendulum", **kwargs)
    with pytest.raises(TypeError, match="observe"):
        mjx_adapter.make("inverted_pendulum", observe="qpos")
