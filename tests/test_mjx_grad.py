"""mbpo_grad.envs.mjx_grad: MJX's step with the implicit-function derivative of its constraint solve.

References (float64): ``jax.jacfwd`` of the *unmodified* ``mjx.step`` with the XML's solver
iterations (forward mode passes the solver's ``while_loop``, so this is the exact derivative
of the converged solve) and central finite differences. The default tests take one step of
the builtin cart-pole from a state whose rail limit becomes active within the step (the
row the old, broken gradient missed: the Euler integrator with joint damping advances with
qfrc_constraint, not qacc); the heavy ones check 128-step windows, Brax's ``mjx`` backend,
the hopper's contacts, RK4, and the float32 NaN of issue 15.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mbpo_grad as mg
from mbpo_grad import envs
from mbpo_grad.envs import brax_adapter, mjx_adapter, mjx_grad


def _limit_state(env):
    """Cart 2 mm past the x = 1 rail limit moving outward at 1 m/s, pole tilted, ctrl pushing
    (the limit row is active, as at step 32 of the benchmark's start 19)."""
    d = env.reset(jax.random.PRNGKey(0))
    return d.replace(qpos=jnp.array([1.002, 0.3]), qvel=jnp.array([1.0, -1.0]), ctrl=jnp.array([0.7]))


def _one_step(fn, m, d0):
    def f(x):
        d1 = fn(m, d0.replace(qpos=x[:2], qvel=x[2:4], ctrl=x[4:]))
        return jnp.concatenate([d1.qpos, d1.qvel, d1.qacc, d1.qfrc_constraint, d1._impl.efc_force])
    return f, jnp.concatenate([d0.qpos, d0.qvel, d0.ctrl])


@pytest.fixture(scope="module")
def one_step64():
    """Values, Jacobians and finite differences of one step, in one compiled function."""
    from mujoco import mjx

    with jax.enable_x64(True):
        env = mjx_adapter.make("inverted_pendulum", x64=True)
        m = env.info["mjx_model"]
        d0 = _limit_state(env)
        plain, x = _one_step(mjx.step, m, d0)
        implicit, _ = _one_step(mjx_grad.step, m, d0)
        h = 1e-7

        def everything(x):
            fd = jax.vmap(lambda e: (plain(x + h * e) - plain(x - h * e)) / (2 * h))(jnp.eye(x.size)).T
            return {"y_plain": plain(x), "y_implicit": implicit(x), "jac_fwd_plain": jax.jacfwd(plain)(x),
                    "jac_rev_implicit": jax.jacrev(implicit)(x), "jac_fwd_implicit": jax.jacfwd(implicit)(x),
                    "jac_fd": fd}

        out = jax.tree.map(np.asarray, jax.jit(everything)(x))
        out["iterations"] = int(env.info["mj_model"].opt.iterations)
        return out


@pytest.mark.physics
def test_values_equal_unmodified_mjx_step_with_the_limit_active(one_step64):
    r = one_step64
    assert r["iterations"] == 100  # the XML's (MuJoCo's default) solver iterations, not forced to 1
    efc_force = r["y_plain"][-1]
    assert efc_force > 1.0  # the rail-limit row is active in this step
    np.testing.assert_allclose(r["y_implicit"], r["y_plain"], rtol=0, atol=1e-12)


@pytest.mark.physics
def test_reverse_and_forward_mode_equal_jacfwd_of_the_converged_solve_and_finite_differences(one_step64):
    r = one_step64
    ref = r["jac_fwd_plain"]
    scale = np.abs(ref).max()
    # qpos, qvel, qacc and qfrc_constraint rows, including the constraint's contribution
    assert np.abs(ref[[0, 2, 6], :]).max() > 1.0  # the slider rows do depend on the limit
    np.testing.assert_allclose(r["jac_rev_implicit"], ref, rtol=0, atol=1e-9 * scale)
    np.testing.assert_allclose(r["jac_fwd_implicit"], ref, rtol=0, atol=1e-9 * scale)
    np.testing.assert_allclose(r["jac_fd"], ref, rtol=0, atol=1e-5 * scale)


def test_mjx_grad_pipeline_is_brax_step_with_mjx_grad():
    from brax.mjx import pipeline as m_pipeline

    p = brax_adapter.mjx_grad_pipeline()
    assert p.init is m_pipeline.init
    assert p.step.__code__ is m_pipeline.step.__code__  # Brax's code, unmodified
    assert p.step.__globals__["mjx"].step is mjx_grad.step
    step, _ = mjx_grad._rebound()
    from mujoco.mjx._src import forward as fw
    assert step.__wrapped__.__code__ is fw.step.__wrapped__.__code__
    assert step.__wrapped__.__globals__["solver"].solve is mjx_grad.solve


# ----------------------------------------------------------------------------- heavy

def _policy(env):
    return lambda p, s, e: jnp.tanh(p["W"] @ env.observe(s) + p["b"])


def _window(env, s0, params, horizon, mode):
    """(J, dJ/dparams as a flat vector) over one start, reverse or forward mode."""
    def J(p):
        r, _ = mg.pathwise_returns(_policy(env), p, env.step, env.reward, jax.tree.map(lambda x: x[None], s0),
                                   horizon=horizon)
        return r[0]
    g = jax.jit(jax.grad(J) if mode == "rev" else jax.jacfwd(J))(params)
    return np.concatenate([np.ravel(g["W"]), np.ravel(g["b"])]).astype(np.float64)


def _plain_cartpole(env):
    """The adapter's cart-pole step with the unmodified ``mjx.step`` (XML iterations)."""
    from mujoco import mjx

    m, dt = env.info["mjx_model"], env.info["dtype"]
    low, high = env.info["ctrl_low"], env.info["ctrl_high"]

    def step(d, a, xi=None):
        d = d.replace(ctrl=jnp.asarray(low, dt) + 0.5 * (jnp.reshape(a, (1,)) + 1.0) * jnp.asarray(high - low, dt))
        return jax.lax.scan(lambda x, _: (brax_adapter.cast_floats(mjx.step(m, x), dt), None), d, None, length=2)[0]
    return dataclasses.replace(env, step=step)


@pytest.mark.physics
@pytest.mark.heavy  # ~3 min on 2 cores
def test_128_step_window_gradient_equals_jacfwd_of_converged_solve_and_trajectory_is_unmodified():
    """Start 19 of the benchmark's seed-0 draw hits the rail limit from step 32 on."""
    rng = np.random.default_rng(0)
    qp, qv = rng.uniform(-0.01, 0.01, (2, 64, 2))
    W, b = rng.normal(size=(64, 1, 4)), rng.normal(size=(64, 1))
    with jax.enable_x64(True):
        env = mjx_adapter.make("inverted_pendulum", x64=True)
        plain = _plain_cartpole(env)
        s0 = env.reset(jax.random.PRNGKey(0)).replace(qpos=jnp.asarray(qp[19]), qvel=jnp.asarray(qv[19]))
        params = {"W": jnp.asarray(W[19]), "b": jnp.asarray(b[19])}
        g = _window(env, s0, params, 128, "rev")
        g_ref = _window(plain, s0, params, 128, "fwd")
        rollout = lambda e: mg.pathwise_returns(_policy(e), params, e.step, e.reward,  # noqa: E731
                                                jax.tree.map(lambda x: x[None], s0), horizon=128)[1].states
        ta, tb = jax.jit(lambda: rollout(env))(), jax.jit(lambda: rollout(plain))()
    assert np.max(np.abs(np.asarray(tb._impl.efc_force))) > 1.0  # the limit is active in the window
    np.testing.assert_allclose(np.asarray(ta.qpos), np.asarray(tb.qpos), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(ta.qvel), np.asarray(tb.qvel), rtol=0, atol=1e-10)
    assert np.linalg.norm(g - g_ref) <= 1e-9 * np.linalg.norm(g_ref)


@pytest.mark.physics
@pytest.mark.heavy  # ~2 min on 2 cores
def test_float32_gradient_is_finite_where_autodiff_of_the_line_search_was_nan():
    """Env 21 of the issue-15 reproduction (seed 0, 32 starts): with plain ``mjx.step`` and
    iterations = 1 its float32 gradient is NaN from t = 16 backward (nan_probe: ``integer_pow``
    y⁻², y = f''(0) = 2.7e-20 at solver.py ``_linesearch``); 20 steps cover it."""
    rng = np.random.default_rng(0)
    qp, qv = rng.uniform(-0.01, 0.01, (2, 32, 2))
    W, b = rng.normal(size=(32, 1, 4)), rng.normal(size=(32, 1))

    def grad(x64, old):
        env = mjx_adapter.make("inverted_pendulum", x64=x64, solver_iterations=1 if old else None)
        env = _plain_cartpole(env) if old else env
        dt = env.info["dtype"]
        s0 = env.reset(jax.random.PRNGKey(0)).replace(qpos=jnp.asarray(qp[21], dt), qvel=jnp.asarray(qv[21], dt))
        return _window(env, s0, {"W": jnp.asarray(W[21], dt), "b": jnp.asarray(b[21], dt)}, 20, "rev")

    jax.config.update("jax_enable_x64", False)
    g_old, g32 = grad(False, True), grad(False, False)
    with jax.enable_x64(True):
        g64 = grad(True, False)
    assert not np.all(np.isfinite(g_old))  # autodiff of the line search: NaN (the bug)
    assert np.all(np.isfinite(g32))
    assert g32 @ g64 / (np.linalg.norm(g32) * np.linalg.norm(g64)) > 0.999


@pytest.mark.physics
@pytest.mark.heavy  # ~3 min on 2 cores
def test_brax_mjx_backend_values_unchanged_and_gradient_equals_jacfwd_of_unmodified_brax():
    """Brax's inverted pendulum (mjx backend) and hopper (floor contacts): the adapter's step
    equals Brax's own, and its gradient equals jacfwd through Brax's unmodified pipeline."""
    with jax.enable_x64(True):
        # the pendulum's own reward (+1 while alive) has a zero pathwise gradient: use the smooth one
        for name, horizon, reward in (("inverted_pendulum", 48, brax_adapter.upright_reward()), ("hopper", 24, None)):
            env = envs.make(f"brax:{name}", backend="mjx", x64=True, reward=reward)
            brax_env = env.info["brax_env"]
            from brax.mjx import pipeline as m_pipeline
            stock = brax_adapter._replace_sys(brax_env, brax_env.sys, m_pipeline)
            plain = dataclasses.replace(env, step=lambda s, a, xi=None: stock.step(s, a))
            s0 = jax.jit(env.reset)(jax.random.PRNGKey(1))
            rng = np.random.default_rng(1)
            params = {"W": jnp.asarray(rng.normal(size=(env.action_size, env.obs_size)) / np.sqrt(env.obs_size)),
                      "b": jnp.asarray(rng.normal(size=(env.action_size,)))}
            a = jnp.ones(env.action_size) * 0.3
            s1, s1_ref = jax.jit(env.step)(s0, a), jax.jit(plain.step)(s0, a)
            np.testing.assert_allclose(np.asarray(s1.pipeline_state.qvel), np.asarray(s1_ref.pipeline_state.qvel),
                                       rtol=0, atol=1e-10)
            g = _window(env, s0, params, horizon, "rev")
            g_ref = _window(plain, s0, params, horizon, "fwd")
            assert np.all(np.isfinite(g)) and np.linalg.norm(g_ref) > 0
            assert np.linalg.norm(g - g_ref) <= 1e-7 * np.linalg.norm(g_ref), name
