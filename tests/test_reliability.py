"""Reliability of the SHAC / BPO training loop (issue 6), with real envs and real faults.

(a) Fault injection: NaN states in random envs at random steps. Every update masks exactly the
    envs whose window saw a fault (checked against the fault stream itself), resets them, and
    the parameters, optimiser states and normaliser stay finite; with ``guard="batch"`` the
    update is skipped instead whenever any env faulted.
(b) Float32 BPO on pendulum over a 400-step horizon from a high-gain policy: per-env gradient
    norms blow up (> 1e6, up to ~1e17); the run stops with ``SkipRateExceeded`` naming the
    horizon and the remedies (shorter horizon with a critic bootstrap, --x64), and the
    parameters it leaves are finite.
Plus the float64 switch end to end (parameters, normaliser, env states). (c) Determinism — two
runs with the same seed write identical ``metrics.csv`` files — is checked across processes in
``tests/test_train_cli.py``, where the runs share one compilation.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs.faults import inject_faults, is_finite_state
from mbpo_grad import guards
from mbpo_grad.agents import shac
from mbpo_grad.policies import deterministic

TINY = shac.SHACConfig(env="pendulum", num_envs=8, horizon=4, episode_length=10, iterations=6, eval_every=3,
                       actor_hidden=(8,), critic_hidden=(8,), critic_iterations=2, critic_minibatches=2,
                       eval_envs=3)
RATE = 0.08  # per env and step: P(a fault in a 4-step window) ≈ 0.28, so some envs, rarely all


def _all_finite(tree):
    return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree_util.tree_leaves(tree)
               if np.issubdtype(np.asarray(x).dtype, np.inexact))


def _faulted_in_window(env, cfg):
    """bool [B]: did the fault stream hit env b within its next k_b = min(n, L - t_b) transitions?

    Faults depend only on each env's fault key and step count, not on the actions, so stepping
    with zero actions reproduces them exactly."""
    n, L = cfg.horizon, cfg.episode_length

    def one(fs, t):
        def body(s, _):
            s = env.step(s, jnp.zeros((env.action_size,)), None)
            return s, s.faults

        _, faults = jax.lax.scan(body, fs, None, length=n)
        k = jnp.minimum(n, L - t)
        return faults[k - 1] > fs.faults

    return jax.jit(lambda ts: jax.vmap(one)(ts.env_state, ts.t))


@pytest.mark.parametrize("guard", ["per_env", "batch"])
def test_fault_injection_masks_exactly_the_faulted_envs_and_parameters_stay_finite(guard):
    env = inject_faults(envs.make("pendulum"), rate=RATE)
    cfg = TINY.replace(guard=guard)
    hp = cfg.hparams()
    agent = shac.make_agent(cfg, env=env)
    truth_fn = _faulted_in_window(env, cfg)
    update = jax.jit(agent.update)
    state = jax.jit(agent.init)(jax.random.key(0), hp)
    masked, skipped, partial = [], [], 0
    for i in range(cfg.iterations):
        truth = np.asarray(truth_fn(state.env_state))
        before = state.policy_params
        state, m = update(state, hp, jax.random.key(100 + i))
        masked.append(int(m["masked_envs"]))
        skipped.append(int(m["skipped_updates"]))
        assert masked[-1] == truth.sum(), (i, masked[-1], truth)
        assert int(m["reset_envs"]) >= masked[-1]
        # Every env that came back is finite again (faulted ones were reset).
        assert bool(jnp.all(jax.vmap(is_finite_state)(state.env_state)))
        if guard == "per_env":
            assert skipped[-1] == int(truth.all())
            partial += int(0 < truth.sum() < cfg.num_envs)
            for k in ("window_return", "actor_loss", "critic_loss", "grad_norm", "reward_per_step"):
                assert np.isfinite(float(m[k])), (i, k)
        else:  # one NaN env poisons the batch gradient: the whole update is skipped
            assert skipped[-1] == int(truth.any())
        if skipped[-1]:
            for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(state.policy_params)):
                np.testing.assert_array_equal(a, b)
        # (the skip wrapper's own ``grad_norm`` field records the rejected gradient's NaN norm)
        assert _all_finite((state.policy_params, state.critic_params, state.target_params,
                            state.actor_opt.inner_state, state.critic_opt.inner_state, state.obs_stats,
                            state.ep_return, state.last_return))
    assert sum(masked) > 0, masked
    if guard == "per_env":
        assert partial > 0 and sum(skipped) < cfg.iterations  # masking, not skipping, carried training
    assert int(state.actor_opt.total_skipped) == sum(skipped)


def _high_gain_policy():
    """A tanh MLP whose init has large gains (hidden ×3, output ×30): over long horizons the
    closed loop's Jacobian products blow up on pendulum (measured per-env norms 1e7–1e17)."""
    base = deterministic(3, 1, (16,))

    def init(key):
        del key
        p = base.init(jax.random.key(2))
        return {"Dense_0": jax.tree_util.tree_map(lambda x: 3.0 * x, p["Dense_0"]),
                "Dense_1": jax.tree_util.tree_map(lambda x: 30.0 * x, p["Dense_1"])}

    return base._replace(init=init, name="high-gain")


def test_float32_bpo_explosion_on_a_long_pendulum_horizon_stops_with_the_remedy():
    cfg = shac.bpo_config("pendulum", episode_length=400, num_envs=4, iterations=8, eval_every=2, obs_norm=False,
                          actor_hidden=(16,), actor_lr=1e-3, eval_envs=2, skip_window=4, skip_threshold=0.5)
    assert cfg.horizon == 400 and not cfg.use_critic and cfg.guard == "per_env"
    with pytest.raises(guards.SkipRateExceeded) as info:
        shac.train(cfg, jax.random.key(0), policy=_high_gain_policy(), progress=False)
    err = info.value
    msg = str(err)
    assert "\n" not in msg
    for part in ("n=400", "horizon", "float32", "--x64", "shorter horizon", "critic bootstrap"):
        assert part in msg, (part, msg)
    m = err.metrics
    assert err.iteration < cfg.iterations and m["skipped_updates"].shape == (err.iteration,)
    # The gradient did blow up, and the guards kept it away from the parameters.
    norms = m["max_env_grad_norm"]
    assert np.any(~np.isfinite(norms) | (norms > 1e6)), norms
    assert np.sum(m["skipped_updates"]) >= 1 and np.sum(m["masked_envs"]) >= cfg.num_envs
    assert np.all(m["grad_norm"][m["skipped_updates"] == 0] <= cfg.max_grad_norm_to_skip)
    assert _all_finite((err.state.policy_params, err.state.actor_opt.inner_state))


def test_x64_runs_in_float64_end_to_end():
    cfg = TINY.replace(iterations=2, eval_every=2, x64=True)
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match="x64.*jax_enable_x64"):
            shac.validate(cfg)
    with jax.enable_x64(True):
        state, m = shac.train(cfg, jax.random.key(0), progress=False)
        leaves = jax.tree_util.tree_leaves((state.policy_params, state.critic_params, state.obs_stats,
                                            state.env_state.env_state, state.ep_return))
        assert leaves and all(x.dtype == jnp.float64 for x in leaves)
        assert np.all(np.isfinite(m["actor_loss"])) and np.all(np.isfinite(m["eval_return"]))


@pytest.mark.physics
def test_x64_config_builds_float64_brax_envs():
    with jax.enable_x64(True):
        env, _ = shac.validate(shac.SHACConfig(env="brax:inverted_pendulum", horizon=4, x64=True))
        s = jax.jit(env.reset)(jax.random.key(0))
        floats = [x for x in jax.tree_util.tree_leaves(s) if jnp.issubdtype(x.dtype, jnp.floating)]
        assert floats and all(x.dtype == jnp.float64 for x in floats)
