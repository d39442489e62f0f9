"""Silent shapes (issue 12, item 4): per-sample arrays and user callables are checked at trace time.

A [B] against a [B, 1] broadcasts to [B, B] and gives a plausible, wrong number; a custom env
or policy whose functions disagree with its declared sizes fails deep inside a compiled step
(or not at all). Every check here is a ``ValueError`` that names the argument and the shapes,
raised before any computation (``jax.eval_shape``).
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpo_grad import envs

from mbpo_grad.envs.faults import inject_faults
from mbpo_grad import critics as C
from mbpo_grad import returns as R
from mbpo_grad import svg
from mbpo_grad import validation as V
from mbpo_grad.agents import ddpg, sac, shac
from mbpo_grad.agents import model_based as MB
from mbpo_grad.policies import deterministic, gaussian

B = 5


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=B), rng.normal(size=B), rng.uniform(0.1, 1.0, size=B)


# --------------------------------------------------------------------------- losses on per-sample arrays
def test_mse_matches_numpy_and_rejects_a_trailing_axis():
    pred, targ, w = _data()
    assert float(C.mse(jnp.asarray(pred), jnp.asarray(targ))) == pytest.approx(np.mean((pred - targ) ** 2), rel=1e-6)
    assert float(C.mse(jnp.asarray(pred), jnp.asarray(targ), jnp.asarray(w))) == pytest.approx(
        np.sum(w * (pred - targ) ** 2) / np.sum(w), rel=1e-6)
    # the old behaviour: [B] against [B, 1] averaged the [B, B] matrix of cross errors
    cross = np.mean((pred[None, :] - targ[:, None]) ** 2)
    assert abs(cross - np.mean((pred - targ) ** 2)) > 0.1
    with pytest.raises(ValueError, match=r"targets must have the shape of predictions \(5,\).*got \(5, 1\)"):
        C.mse(jnp.asarray(pred), jnp.asarray(targ)[:, None])
    with pytest.raises(ValueError, match=r"targets .*\(5,\).*got \(1, 5\)"):
        C.mse(jnp.asarray(pred), jnp.asarray(targ)[None, :])
    with pytest.raises(ValueError, match=r"weights must have the shape of predictions \(5,\).*got \(5, 1\)"):
        C.mse(jnp.asarray(pred), jnp.asarray(targ), jnp.asarray(w)[:, None])
    with pytest.raises(ValueError, match=r"weights .*got \(\)"):
        C.mse(jnp.asarray(pred), jnp.asarray(targ), jnp.asarray(1.0))
    # under jit the check still runs (at trace time)
    with pytest.raises(ValueError, match="targets"):
        jax.jit(C.mse)(jnp.asarray(pred), jnp.asarray(targ)[:, None])


def test_v_and_q_losses_name_the_argument_and_twin_heads_still_match_a_loop():
    obs = jax.random.normal(jax.random.key(1), (B, 3))
    acts = jax.random.uniform(jax.random.key(2), (B, 2), minval=-1, maxval=1)
    y = jax.random.normal(jax.random.key(3), (B,))
    w = jnp.linspace(0.2, 1.0, B)
    v, q, tq = C.v_critic(3, (8,)), C.q_critic(3, 2, (8,)), C.twin_q(3, 2, (8,))
    vp, qp, tp = v.init(jax.random.key(4)), q.init(jax.random.key(5)), tq.init(jax.random.key(6))
    with pytest.raises(ValueError, match=r"targets must have shape \[B\] = \(5,\).*got \(5, 1\)"):
        C.v_loss(v, vp, obs, y[:, None])
    with pytest.raises(ValueError, match=r"weights must have shape \[B\] = \(5,\).*got \(4,\)"):
        C.v_loss(v, vp, obs, y, w[:4])
    with pytest.raises(ValueError, match=r"targets must have shape \[B\] = \(5,\).*got \(5, 1\)"):
        C.q_loss(q, qp, obs, acts, y[:, None])
    with pytest.raises(ValueError, match=r"targets .*got \(5, 1\)"):
        C.q_loss(tq, tp, obs, acts, y[:, None])
    with pytest.raises(ValueError, match=r"actions must have the batch size of obs \(5\)"):
        C.q_loss(q, qp, obs, acts[:4], y)
    # a twin loss with weights against a hand-written loop over heads and samples
    vals = np.asarray(jax.vmap(tq.apply, in_axes=(None, 0, 0))(tp, obs, acts))            # [B, 2]
    ref = sum(np.sum(np.asarray(w) * (vals[:, h] - np.asarray(y)) ** 2) / np.sum(np.asarray(w)) for h in range(2))
    assert float(C.q_loss(tq, tp, obs, acts, y, w)) == pytest.approx(ref, rel=1e-5)


def test_importance_weights_match_numpy_and_reject_mismatched_shapes():
    lp, blp, _ = _data(1)
    got = np.asarray(svg.importance_weights(jnp.asarray(lp), jnp.asarray(blp), 1.5))
    np.testing.assert_allclose(got, np.minimum(np.exp(lp - blp), 1.5), rtol=1e-6)
    with pytest.raises(ValueError, match=r"behaviour_log_prob must have the shape of log_prob \(5,\).*got \(5, 1\)"):
        svg.importance_weights(jnp.asarray(lp), jnp.asarray(blp)[:, None], 5.0)
    with pytest.raises(ValueError, match=r"behaviour_log_prob .*got \(\)"):
        svg.importance_weights(jnp.asarray(lp), jnp.asarray(0.0), 5.0)
    with pytest.raises(ValueError, match=r"cap must be a scalar or broadcast to the shape of log_prob \(5,\).*\(5, 1\)"):
        svg.importance_weights(jnp.asarray(lp), jnp.asarray(blp), jnp.ones((B, 1)))


def test_return_targets_check_the_window_shapes():
    T = 4
    r, d, v = jnp.arange(T, dtype=jnp.float32), jnp.full((T,), 0.9), jnp.ones((T + 1,))
    with pytest.raises(ValueError, match=r"values must have shape \[T\+1, \.\.\.\] = \(5,\).*got \(5, 1\)"):
        R.gae(r, v[:, None], d, 0.5)           # used to broadcast to [T, T] advantages
    with pytest.raises(ValueError, match=r"values .*got \(5, 1\)"):
        R.td_lambda(r, v[:, None], d, 0.5)     # used to return [T, 1]
    with pytest.raises(ValueError, match=r"discounts must have the shape of rewards \(4,\), got \(4, 1\)"):
        R.reward_to_go(r, d[:, None])
    with pytest.raises(ValueError, match=r"alive must have shape \[T\+1\] = \(5,\).*got \(5, 1\)"):
        C.td_lambda_targets(r, v, jnp.ones((T + 1, 1)), jnp.zeros((T + 1,)), 0.9, 0.5)
    with pytest.raises(ValueError, match=r"rewards must have shape \[T\]"):
        C.td_lambda_targets(r[:, None], v, jnp.ones((T + 1,)), jnp.zeros((T + 1,)), 0.9, 0.5)


def test_normalize_rejects_a_vector_of_the_wrong_size():
    from mbpo_grad import normalizer as N

    stats = N.update(N.init(3), jnp.asarray([[1.0, 2.0, 3.0], [3.0, 0.5, 5.0]]))
    z = N.normalize(stats, jnp.ones((4, 3)))                       # leading axes are batch axes
    assert z.shape == (4, 3)
    np.testing.assert_allclose(N.denormalize(stats, N.normalize(stats, jnp.ones(3))), np.ones(3), rtol=1e-5)
    with pytest.raises(ValueError, match=r"x: trailing axes must equal the feature shape \(3,\); got shape \(1,\)"):
        N.normalize(stats, jnp.ones((1,)))                         # used to broadcast to (3,)
    with pytest.raises(ValueError, match=r"z: .*\(3, 1\)"):
        N.denormalize(stats, jnp.ones((3, 1)))


# --------------------------------------------------------------------------- envs.check_env
def _line_env(**overrides):
    """A 2-D point mass s' = s + 0.1 [a, −a] with a 1-D action, terminating at |x| > 3."""
    base = envs.Env(
        name="point", obs_size=2, action_size=1, episode_length=10,
        reset=lambda key: jax.random.normal(key, (2,)),
        step=lambda s, a, xi: s + 0.1 * jnp.concatenate([a, -a]),
        reward=lambda s, a: -(s @ s + 0.01 * a @ a),
        observe=lambda s: s,
        done=lambda s: jnp.abs(s[0]) > 3.0,
    )
    return dataclasses.replace(base, **overrides)


@pytest.mark.parametrize("x64", [False, True])
@pytest.mark.parametrize("name", list(envs.ANALYTIC))
def test_every_analytic_env_passes(name, x64):
    with jax.enable_x64(x64):
        env = envs.make(name)
        assert envs.check_env(env) is env
        envs.check_env(inject_faults(env, rate=0.1))
        envs.check_env(_line_env())
        if name == "lqr":   # a noisy system: xi of shape noise_shape = (3,)
            envs.check_env(envs.make("lqr", state_dim=3, action_dim=2, noise_scale=0.1))


@pytest.mark.physics
@pytest.mark.parametrize("name", ["brax:inverted_pendulum", "mjx:inverted_pendulum"])
def test_brax_and_mjx_adapters_pass(name):
    pytest.importorskip(name.split(":")[0] if name.startswith("brax") else "mujoco")
    envs.check_env(envs.make(name))
    with jax.enable_x64(True):
        envs.check_env(envs.make(name, x64=True))


def _bad_envs():
    return {
        "observe size": (_line_env(obs_size=3), r"env\.observe must return shape \(obs_size,\) = \(3,\), got \(2,\)"),
        "observe matrix": (_line_env(observe=lambda s: s[None]), r"env\.observe .*got \(1, 2\)"),
        # the step multiplies a [2, 1] matrix by an action of the declared size 2: a shape error
        # deep in a trace ("dot_general requires contracting dimensions ...") becomes one naming step
        "action size (error inside step)": (
            _line_env(action_size=2, step=lambda s, a, xi: s + jnp.ones((2, 1)) @ a),
            r"env\.step failed when traced on inputs of shapes \(\(2,\) float32, \(2,\) float32, None\)"),
        "action size (state grows)": (
            _line_env(obs_size=1, action_size=2, reset=lambda k: jnp.zeros((1,)), observe=lambda s: s,
                      step=lambda s, a, xi: s + a, reward=lambda s, a: -s[0] ** 2, done=None),
            r"env\.step changes the state state: \(1,\) float32 -> \(2,\) float32"),
        "step structure": (_line_env(step=lambda s, a, xi: (s, a)),
                           r"env\.step must return a state of the structure reset returns"),
        "reward (1,)": (_line_env(reward=lambda s, a: -(s[0] ** 2 + 0.01 * a ** 2)),
                        r"env\.reward must return a scalar \(shape \(\)\), got \(1,\) float32"),
        "transition reward (1,)": (
            _line_env(reward=__import__("mbpo_grad").transition_reward(lambda s, a, s2: s2[:1])),
            r"env\.reward must return a scalar .*\(1,\)"),
        "integer reward": (_line_env(reward=lambda s, a: jnp.sum(s > 0)),
                           r"env\.reward must return a floating-point scalar, got dtype int32"),
        "done (2,)": (_line_env(done=lambda s: jnp.abs(s) > 3.0),
                      r"env\.done must return a bool scalar \(shape \(\)\) on the state reset returns, got \(2,\) bool"),
        "integer state": (_line_env(reset=lambda k: jnp.zeros((2,), jnp.int32)),
                          r"env\.reset must return a state with a floating-point leaf"),
        "obs_size": (_line_env(obs_size=0), r"env\.obs_size must be >= 1, got 0"),
        "noise_shape": (_line_env(noise_shape=[2]), r"env\.noise_shape must be a tuple"),
    }


@pytest.mark.parametrize("kind", list(_bad_envs()))
def test_a_broken_env_raises_a_value_error_naming_the_function_and_shapes(kind):
    env, match = _bad_envs()[kind]
    with pytest.raises(ValueError, match=match):
        envs.check_env(env)


def test_a_step_that_drifts_to_float64_is_reported():
    drift = _line_env(step=lambda s, a, xi: s + np.array([0.1, -0.1]) * a[0])   # NumPy float64 constant
    with jax.enable_x64(True):
        env = dataclasses.replace(drift, reset=lambda k: jnp.zeros((2,), jnp.float32))
        with pytest.raises(ValueError, match=r"env\.step changes the state state: \(2,\) float32 -> \(2,\) float64"):
            envs.check_env(env)
    envs.check_env(drift)   # in float32 mode the same env is fine


def test_missing_or_non_callable_fields_are_type_errors():
    with pytest.raises(TypeError, match=r"env\.step must be callable"):
        envs.check_env(_line_env(step=None))
    with pytest.raises(TypeError, match=r"env\.done must be callable or None"):
        envs.check_env(_line_env(done=1))


# --------------------------------------------------------------------------- agents check what they receive
SHAC_TINY = shac.SHACConfig(env="pendulum", num_envs=2, horizon=2, episode_length=4, iterations=1, eval_every=1,
                            actor_hidden=(4,), critic_hidden=(4,), eval_envs=2)


def test_agents_check_a_users_env():
    bad = _line_env(reward=lambda s, a: -(s[0] ** 2 + 0.01 * a ** 2))
    with pytest.raises(ValueError, match=r"env\.reward must return a scalar .*\(1,\)"):
        shac.make_agent(SHAC_TINY, env=bad)
    with pytest.raises(ValueError, match=r"env\.reward must return a scalar .*\(1,\)"):
        ddpg.make_agent(ddpg.DDPGConfig(num_envs=2, batch_size=4), env=bad)
    shac.make_agent(SHAC_TINY, env=_line_env())          # a correct custom env is accepted


def _doubled(pol):
    """A policy bundle whose action has twice the declared size (e.g. a head of the wrong width)."""
    return pol._replace(sample=lambda p, o, e=None: jnp.concatenate([pol.sample(p, o, e)] * 2), name="doubled")


def test_a_policy_with_the_wrong_action_size_is_rejected_by_the_agents():
    with pytest.raises(ValueError, match=r"policy 'doubled': sample.* shape \(env\.action_size,\) = \(1,\).*got \(2,\)"):
        shac.make_agent(SHAC_TINY, policy=_doubled(deterministic(3, 1, (4,))))
    with pytest.raises(ValueError, match=r"policy 'doubled'.*\(1,\).*got \(2,\)"):
        ddpg.make_agent(ddpg.DDPGConfig(num_envs=2, batch_size=4), policy=_doubled(deterministic(3, 1, (4,))))
    # a density of the wrong shape where the agent needs one
    g = gaussian(3, 1, (4,))
    vector_lp = g._replace(name="vector-lp", sample_and_log_prob=lambda p, o, e: (
        g.sample(p, o, e), jnp.atleast_1d(g.sample_and_log_prob(p, o, e)[1])))
    with pytest.raises(ValueError, match=r"policy 'vector-lp': sample_and_log_prob must return a scalar log-density.*\(1,\)"):
        sac.make_agent(sac.SACConfig(num_envs=2, batch_size=4), policy=vector_lp)
    # the check itself, on the bundles the library ships
    for pol in (deterministic(3, 2), gaussian(3, 2)):
        V.check_policy(pol, 3, 2, density=pol.name != "deterministic")
    with pytest.raises(ValueError, match=r"policy 'gaussian'.*\(env\.action_size,\) = \(3,\).*got \(2,\)"):
        V.check_policy(gaussian(3, 2), 3, 3)


def test_model_based_checks_its_observation_functions():
    cfg = MB.ModelBasedConfig(env="pendulum", num_envs=2, batch_size=4, horizon=2)
    with pytest.raises(ValueError, match=r"reward_fn: reward_fn\(obs, action\) .* scalar \(shape \(\)\), got \(1,\)"):
        MB.make_agent(cfg, reward_fn=lambda o, a: -(o[2] ** 2 + a ** 2))
    with pytest.raises(ValueError, match=r"done_fn: done_fn\(obs\) .*got \(3,\)"):
        MB.make_agent(cfg, done_fn=lambda o: o > 7.0)
