"""Your own systems (issue 13, item 4): ``envs.from_brax``, ``envs.from_mjx``, registered variants.

References are exact: Brax's ``Fast`` env has a two-line closed form (velocity += 0.02 while the
action is positive, position += 0.02 · velocity); a user's subclass is checked against the Brax
env it subclasses; the MJX model built from an XML string is checked against MuJoCo's C
``mj_step`` and its one gradient against float64 central finite differences. Brax compiles are
forward only (one jitted step each); the one gradient compile goes through the user's MJX model.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpo_grad import envs

import mbpo_grad as mg

brax_envs = pytest.importorskip("brax.envs")
from brax.envs.fast import Fast  # noqa: E402
from brax.envs.inverted_pendulum import InvertedPendulum  # noqa: E402

mujoco = pytest.importorskip("mujoco")

# A hinge pendulum hanging from the world: one joint, one motor (gear 2, ctrl in [-1, 1]),
# gravity on, light damping; no contacts (MJX's one solver iteration is then exact).
PENDULUM_XML = """
<mujoco model="one_hinge">
  <option timestep="0.01"/>
  <worldbody>
    <body name="pole">
      <joint name="hinge" type="hinge" axis="0 1 0" damping="0.05"/>
      <geom type="capsule" fromto="0 0 0 0 0 -0.5" size="0.04" mass="0.3" contype="0" conaffinity="0"/>
    </body>
  </worldbody>
  <actuator>
    <motor joint="hinge" gear="2" ctrllimited="true" ctrlrange="-1 1"/>
  </actuator>
</mujoco>
"""


# --------------------------------------------------------------------------- from_brax
def test_from_brax_wraps_an_env_without_sys_and_matches_its_closed_form():
    fast = Fast()
    assert not hasattr(fast, "sys")  # the env the old adapter failed on: AttributeError 'sys'
    env = envs.from_brax(fast, episode_length=7)
    assert envs.check_env(env) is env
    assert (env.name, env.obs_size, env.action_size, env.episode_length) == ("brax:Fast", 2, 1, 7)
    assert env.info["has_sys"] is False and env.info["dt"] is None and env.info["backend"] is None

    def run(actions):
        def body(s, a):
            s1 = env.step(s, a, None)
            return s1, (env.observe(s1), env.reward(s, a, s1), env.done(s1))
        return jax.lax.scan(body, env.reset(jax.random.PRNGKey(0)), actions)[1]

    actions = jnp.array([[1.0], [1.0], [-1.0], [0.5]], jnp.float32)
    obs, rewards, done = jax.jit(run)(actions)
    vel = np.cumsum((np.asarray(actions)[:, 0] > 0) * 0.02)
    pos = np.cumsum(vel * 0.02)
    np.testing.assert_allclose(np.asarray(obs), np.stack([pos, vel], -1), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(rewards), pos, rtol=1e-6)  # Fast's reward: the position
    np.testing.assert_array_equal(np.asarray(done), 0.0)
    assert obs.dtype == jnp.float32

    # The name path is the same code: envs.make("brax:fast") works too, float64 states included.
    assert envs.make("brax:fast").info["has_sys"] is False
    with jax.enable_x64(True):
        env64 = envs.from_brax(Fast(), x64=True)
        envs.check_env(env64)
        assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(jax.eval_shape(env64.reset, jax.random.PRNGKey(0)))
                   if jnp.issubdtype(x.dtype, jnp.floating))


class TiltPenalty(InvertedPendulum):
    """A user's subclass: Brax's inverted pendulum paying −θ² per step instead of +1."""

    def step(self, state, action):
        nxt = super().step(state, action)
        return nxt.replace(reward=-nxt.obs[1] ** 2)


def test_from_brax_wraps_a_user_subclass_without_modifying_it():
    mine = TiltPenalty(backend="generalized")
    sys_before = mine.sys
    env = envs.from_brax(mine, episode_length=50)
    assert mine.sys is sys_before and env.info["brax_env"] is not mine  # the user's instance is untouched
    assert envs.check_env(env) is env
    assert (env.name, env.obs_size, env.action_size, env.info["backend"]) == ("brax:TiltPenalty", 4, 1, "generalized")
    assert env.info["has_sys"] and env.info["dt"] == pytest.approx(float(mine.dt))

    key = jax.random.PRNGKey(3)
    action = jnp.array([0.4], jnp.float32)
    s = env.reset(key)
    s1 = jax.jit(env.step)(s, action)
    # Reference: the Brax class it subclasses, stepped directly (same dynamics, Brax's +1 reward).
    base = InvertedPendulum(backend="generalized")
    ref = jax.jit(base.step)(base.reset(key), action)
    np.testing.assert_allclose(np.asarray(s1.obs), np.asarray(ref.obs), rtol=1e-6, atol=1e-7)
    assert float(ref.reward) == 1.0
    assert float(env.reward(s, action, s1)) == pytest.approx(-float(s1.obs[1]) ** 2, rel=1e-6)
    assert float(env.reward(s, action, s1)) < 0.0


def test_from_brax_rejects_wrapped_non_brax_and_non_vector_envs():
    from brax.envs.fast import ObservationMode
    from brax.envs.wrappers import training

    with pytest.raises(ValueError, match="env_instance.*AutoResetWrapper"):
        envs.from_brax(brax_envs.create("fast"))  # create() adds the training wrappers
    with pytest.raises(ValueError, match="env_instance.*EpisodeWrapper"):
        envs.from_brax(training.EpisodeWrapper(Fast(), 10, 1))
    with pytest.raises(TypeError, match="env_instance.*brax.envs.Env"):
        envs.from_brax(envs.make("pendulum"))
    with pytest.raises(ValueError, match="env_instance.*non-vector observation"):
        envs.from_brax(Fast(obs_mode=ObservationMode.DICT_STATE))
    with pytest.raises(ValueError, match="episode_length"):
        envs.from_brax(Fast(), episode_length=0)
    with pytest.raises(TypeError, match="reward"):
        envs.from_brax(Fast(), reward=1.0)
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match="x64.*jax_enable_x64"):
            envs.from_brax(Fast(), x64=True)


# --------------------------------------------------------------------------- x64 on, float32 env
def test_float32_brax_env_steps_under_jax_enable_x64_and_equals_the_x64_off_run():
    key, action = jax.random.PRNGKey(0), jnp.array([0.3], jnp.float32)
    env = envs.make("brax:inverted_pendulum")
    s_off = env.reset(key)
    s1_off = jax.jit(env.step)(s_off, action)
    with jax.enable_x64(True):
        # Before the fix: TypeError inside Brax's own n_frames scan (float32 carry -> float64),
        # raised by jnp.zeros(...) without a dtype in brax.actuator.to_tau.
        env_on = envs.make("brax:inverted_pendulum")
        envs.check_env(env_on)
        s_on = env_on.reset(key)
        s1_on = jax.jit(env_on.step)(s_on, action)
        s2_on = env_on.step(s1_on, action.astype(jnp.float64))  # an action in float64 is cast, not promoted
    for a, b in ((s_off, s_on), (s1_off, s1_on)):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            assert x.dtype == y.dtype
            if jnp.issubdtype(x.dtype, jnp.floating):
                assert x.dtype == jnp.float32
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # the same numbers, bit for bit
    assert s2_on.obs.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(s2_on.obs)))


# --------------------------------------------------------------------------- registered variants
def test_smooth_inverted_pendulum_is_registered_by_name():
    assert "brax:inverted_pendulum_smooth" in envs.registered()
    assert set(envs.ANALYTIC) <= set(envs.registered())
    env = envs.make("brax:inverted_pendulum_smooth", episode_length=200)
    assert envs.check_env(env) is env
    assert (env.name, env.episode_length, env.info["backend"]) == ("brax:inverted_pendulum_smooth", 200, "generalized")
    # The reward is a transition reward r = cos θ' − 0.01‖a‖² (θ' = s'.obs[1]); evaluated on
    # stand-in states (it reads only s'.obs), against the formula benchmarks.reverse_mode_ratio used.
    s = env.reset(jax.random.PRNGKey(1))
    s1 = s.replace(obs=jnp.array([0.1, -0.15, 0.3, 0.7], jnp.float32))
    a = jnp.array([0.6], jnp.float32)
    assert env.reward.uses_next_state
    assert float(env.reward(s, a, s1)) == pytest.approx(np.cos(-0.15) - 0.01 * 0.36, rel=1e-6)
    with pytest.raises(ValueError, match="reward"):
        envs.make("brax:inverted_pendulum_smooth", reward=lambda s, a: 0.0)


def test_register_a_variant_and_reject_a_taken_name():
    name = "test:cartpole_short"
    try:
        envs.register(name, lambda **kw: envs.make("cartpole", episode_length=20, **kw))
        assert envs.make(name).episode_length == 20
        with pytest.raises(ValueError, match="already registered"):
            envs.register(name, lambda **kw: None)
        envs.register(name, lambda **kw: envs.make("pendulum", **kw), overwrite=True)
        assert envs.make(name).obs_size == envs.make("pendulum").obs_size
    finally:
        envs._REGISTRY.pop(name, None)
    with pytest.raises(TypeError, match="factory"):
        envs.register("test:bad", 3)
    with pytest.raises(ValueError, match="name"):
        envs.register("", lambda **kw: None)
    with pytest.raises(ValueError, match="name: unknown environment 'nope'"):
        envs.make("nope")


# --------------------------------------------------------------------------- from_mjx
@pytest.fixture(scope="module")
def mjx_run():
    """Float64: 6 steps of the XML-string pendulum from a tilted start, with the value and the
    gradient of Σ r_t in a linear policy's gain (the one gradient compile of this file)."""
    with jax.enable_x64(True):
        model = mujoco.MjModel.from_xml_string(PENDULUM_XML)
        iterations_before = model.opt.iterations
        reward = mg.transition_reward(lambda d, a, d1: -d1.qpos[0] ** 2 - 0.1 * d1.qvel[0] ** 2)
        env = envs.from_mjx(model, reward=reward, episode_length=30, x64=True, frame_skip=2)
        s0 = env.reset(jax.random.PRNGKey(0)).replace(qpos=jnp.array([0.4]), qvel=jnp.array([-0.2]))

        def policy(params, state, eps):
            return jnp.tanh(jnp.vdot(params["k"], env.observe(state)))[None]

        def objective(params):
            returns, traj = mg.pathwise_returns(policy, params, env.step, env.reward,
                                                jax.tree.map(lambda x: x[None], s0), horizon=6)
            return jnp.mean(returns), traj

        vg = jax.jit(jax.value_and_grad(objective, has_aux=True))
        params = {"k": jnp.array([-1.5, -0.3])}
        (value, traj), grad = vg(params)
        h, direction = 1e-6, jnp.array([0.7, -1.3])
        plus = vg({"k": params["k"] + h * direction})[0][0]
        minus = vg({"k": params["k"] - h * direction})[0][0]
        return {"model": model, "iterations_before": iterations_before, "env": env, "traj": traj,
                "value": value, "directional": float(jnp.vdot(grad["k"], direction)),
                "fd": float((plus - minus) / (2 * h))}


@pytest.mark.physics
def test_from_mjx_on_a_model_built_from_an_xml_string_equals_mujoco_c(mjx_run):
    env, traj, model = mjx_run["env"], mjx_run["traj"], mjx_run["model"]
    assert (env.name, env.obs_size, env.action_size, env.episode_length) == ("mjx:model", 2, 1, 30)
    # the model's own solver settings are kept (mjx_grad differentiates the converged solve)
    assert env.info["mj_model"] is not model and env.info["mj_model"].opt.iterations == model.opt.iterations
    assert model.opt.iterations == mjx_run["iterations_before"]  # the user's model is untouched
    with jax.enable_x64(True):
        envs.check_env(env)
    qpos, qvel, actions = (np.asarray(x)[0] for x in (traj.states.qpos, traj.states.qvel, traj.actions))
    m, d = env.info["mj_model"], mujoco.MjData(env.info["mj_model"])
    d.qpos[:], d.qvel[:] = qpos[0], qvel[0]
    for t in range(6):
        d.ctrl[:] = actions[t]  # ctrlrange [-1, 1]: ctrl = a
        for _ in range(2):
            mujoco.mj_step(m, d)
        np.testing.assert_allclose(d.qpos, qpos[t + 1], rtol=0, atol=1e-10)
        np.testing.assert_allclose(d.qvel, qvel[t + 1], rtol=0, atol=1e-9)
    expected = -qpos[1:, 0] ** 2 - 0.1 * qvel[1:, 0] ** 2
    np.testing.assert_allclose(np.asarray(traj.rewards)[0], expected, rtol=1e-12)
    assert abs(qpos[-1, 0] - qpos[0, 0]) > 1e-2  # it moved: the check is not of a resting state


@pytest.mark.physics
def test_from_mjx_gradient_matches_central_finite_differences(mjx_run):
    ad, fd = mjx_run["directional"], mjx_run["fd"]
    assert np.isfinite(ad) and abs(fd) > 1e-3
    assert abs(ad - fd) <= 1e-6 * abs(fd)


def test_from_mjx_float32_passes_check_env_and_rejects_bad_input():
    model = mujoco.MjModel.from_xml_string(PENDULUM_XML)
    reward = lambda d, a: -d.qpos[0] ** 2  # noqa: E731
    env = envs.from_mjx(model, reward=reward, name="mjx:one_hinge")
    assert envs.check_env(env) is env and env.name == "mjx:one_hinge"
    with jax.enable_x64(True):
        envs.check_env(envs.from_mjx(model, reward=reward))  # float32 under jax_enable_x64
    with pytest.raises(TypeError, match="mj_model.*mujoco.MjModel"):
        envs.from_mjx(PENDULUM_XML, reward=reward)
    with pytest.raises(ValueError, match="reward"):
        envs.from_mjx(model, reward=None)
    with pytest.raises(TypeError):
        envs.from_mjx(model)  # reward is a required keyword
    unactuated = mujoco.MjModel.from_xml_string(PENDULUM_XML.split("<actuator>")[0] + "</mujoco>")
    with pytest.raises(ValueError, match="mj_model.*no actuators"):
        envs.from_mjx(unactuated, reward=reward)
    with pytest.raises(ValueError, match="frame_skip"):
        envs.from_mjx(model, reward=reward, frame_skip=0)
