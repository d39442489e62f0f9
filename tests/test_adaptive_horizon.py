"""SHAC's adaptive window (``adaptive_horizon``): J_h on an n-step trajectory is the h-step
window's objective exactly (value and gradient, with time-limit cuts and a bootstrap), and the
controller halves h on an exploding gradient and grows it back."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpo_grad import envs
from mbpo_grad.agents import common, shac
from mbpo_grad.agents.common import TimedState
from mbpo_grad.agents.shac import losses
from mbpo_grad.policies.gaussian import gaussian


def test_cut_window_equals_the_short_window():
    """h = 1, 5 of an 8-step window; started 2 steps before a time limit of 6 the cut at
    s_2 is bootstrapped in both."""
    with jax.enable_x64(True):
        env = envs.make("pendulum")
        step, reward, done, terminal = common.timed_env(env, 6)
        pol = gaussian(env.obs_size, env.action_size, (8,))
        pp = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), pol.init(jax.random.PRNGKey(0)))
        value = lambda ts: jnp.tanh(env.observe(ts.env_state)).sum() - 0.1 * ts.t
        s0 = TimedState(env.reset(jax.random.PRNGKey(1)), jnp.asarray(4, jnp.int32))
        eps = jax.random.normal(jax.random.PRNGKey(2), (9, env.action_size), jnp.float64)
        pi = lambda params, ts, e: pol.sample(params, env.observe(ts.env_state), e)
        kw = dict(gamma=0.9, value=value, terminal=terminal)

        @jax.jit
        def long(params, t0, h):
            return jax.value_and_grad(lambda p: losses.window_return(
                pi, p, step, reward, done, s0._replace(t=t0), horizon=8, policy_noise=eps, cut=h, **kw)[0])(params)

        def short(params, t0, h):
            return jax.jit(jax.value_and_grad(lambda p: losses.window_return(
                pi, p, step, reward, done, s0._replace(t=t0), horizon=h, policy_noise=eps[: h + 1], **kw)[0]))(params)

        for h in (1, 5):
            for t0 in (0, 4):   # no cut inside the window / a time-limit cut after 2 steps
                t0 = jnp.asarray(t0, jnp.int32)
                (jl, gl), (js, gs) = long(pp, t0, jnp.asarray(h)), short(pp, t0, h)
                np.testing.assert_allclose(jl, js, rtol=1e-12)
                for a, b in zip(jax.tree_util.tree_leaves(gl), jax.tree_util.tree_leaves(gs)):
                    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


def test_controller_halves_on_explosion_and_grows_back():
    base = dict(env="cartpole", num_envs=4, horizon=8, iterations=6, eval_every=6, eval_envs=2,
                actor_hidden=(8,), critic_hidden=(8,), critic_iterations=1, critic_minibatches=1,
                adaptive_horizon=True, horizon_min=2)
    cfg = shac.SHACConfig(**base)
    agent = shac.make_agent(cfg)
    update = jax.jit(agent.update)
    state = agent.init(jax.random.PRNGKey(0), cfg.hparams())
    seen = []
    for i, limit in enumerate([1e-9, 1e-9, 1e-9, 1e9, 1e9]):   # every gradient "explodes", then none
        state, m = update(state, cfg.hparams(horizon_norm_limit=limit), jax.random.PRNGKey(i))
        seen.append(int(m["horizon"]))
    seen.append(int(state.horizon))
    assert seen == [8, 4, 2, 2, 3, 4], seen
    assert np.isfinite(float(m["grad_norm"]))


@pytest.mark.parametrize("kw, match", [
    (dict(adaptive_horizon=True, estimator="score"), "adaptive_horizon shortens"),
    (dict(horizon_min=64), "horizon_min"),
    (dict(adaptive_horizon=True, horizon_norm_limit=0.0), "horizon_norm_limit"),
])
def test_bad_adaptive_settings_raise_naming_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        shac.make_agent(shac.SHACConfig(**kw))
