"""Reliability of the SHAC / BPO training loop (issue 6), with real envs and real faults.

(a) Fault injection: NaN states in random envs at random steps. Every update masks exactly the
    envs whose window saw a fault (checked against the fault stream itself), resets them, and
    the parameters, optimiser states and normaliser stay finite; with ``guard="batch"`` the
    update is skipped instead whenever any env faulted.
(b) Float32 BPO over a 400-step horizon on an unstable linear system whose gradient overflows
    float32 by construction (gain 1.5: the exact gradient is ~1e70 > 3.4e38; the forward pass
    sits exactly at the origin, so every value stays finite): every per-env gradient is
    non-finite, the run stops with ``SkipRateExceeded`` naming the horizon and the remedies
    (shorter horizon with a critic bootstrap, --x64), and the parameters it leaves are finite.
    (An earlier version relied on float32 round-off blowing up on pendulum from a high-gain
    policy within 8 iterations, which depended on the code XLA generates for the processor.)
Plus the float64 switch end to end (parameters, normaliser, env states). (c) Determinism — two
runs with the same seed write identical ``metrics.csv`` files — is checked across processes in
``tests/test_train_cli.py``, where the runs share one compilation.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpo_grad import envs

from mbpo_grad.envs.faults import inject_faults, is_finite_state
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


GAIN, N_STEPS = 1.5, 400


def _unstable_line(gain=GAIN, episode_length=N_STEPS):
    """s' = g s + a, r = s, s_0 = 0, observation ≡ 0 (1-D, deterministic): an explosion by construction.

    The policy sees a constant observation (an open-loop controller), so the closed loop's Jacobian
    ∂s_{t+1}/∂s_t is exactly g whatever the parameters. A tanh MLP with zero biases (flax's
    default) outputs a = tanh(W2 tanh(W1 · 0)) = 0 exactly, so the forward pass stays at the origin:
    every state, action, reward and return is exactly 0. The gradient does not: with
    J = Σ_{k<n} γ^k s_k and s_k = Σ_{t<k} g^{k-1-t} a_t, the output bias b (∂a_t/∂b = tanh'(0) = 1) has

        ∂J/∂b = Σ_{t<n} Σ_{t<k<n} γ^k g^{k-1-t}  ≥  γ^{n-1} g^{n-2}  ≈ 0.99^399 · 1.5^398 ≈ 1e68,

    far beyond float32's 3.4e38, so no float32 evaluation order can represent it (in float64 it is
    finite, and far above the skip threshold 1e6)."""
    def step(s, a, xi):
        del xi
        return gain * s + a

    return envs.Env(name="unstable-line", obs_size=1, action_size=1, episode_length=episode_length,
                    reset=lambda key: jnp.zeros((1,), jnp.float32), step=step,
                    reward=lambda s, a: s[0], observe=lambda s: jnp.zeros_like(s))


def _exact_bias_grad(gamma, gain, n):
    """∂J/∂b above, summed in float64 by hand."""
    return sum(gamma ** k * gain ** (k - 1 - t) for t in range(n) for k in range(t + 1, n))


def test_unstable_line_gradient_overflows_float32_but_not_float64():
    """The premise of the next test, on its own: exact zeros forward, overflow backward."""
    import mbpo_grad as mg

    env = _unstable_line()
    pol = deterministic(1, 1, (16,))

    def objective(p):
        s0 = jnp.zeros((2, 1), jax.tree_util.tree_leaves(p)[0].dtype)
        return mg.pathwise_objective(lambda pp, s, e=None: pol.sample(pp, env.observe(s)), p, env.step,
                                     env.reward, s0, horizon=N_STEPS, gamma=0.99)

    params = pol.init(jax.random.key(0))
    j32, g32 = jax.value_and_grad(objective)(params)
    assert float(j32) == 0.0
    assert not np.all(np.isfinite(np.asarray(g32["Dense_1"]["bias"])))
    with jax.enable_x64(True):
        g64 = jax.grad(objective)(jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), params))
        b = float(np.asarray(g64["Dense_1"]["bias"])[0])
        exact = _exact_bias_grad(0.99, GAIN, N_STEPS)
        assert exact > 1e60 and abs(b / exact - 1) < 1e-9, (b, exact)


def test_float32_bpo_explosion_on_a_long_horizon_stops_with_the_remedy():
    env = _unstable_line()
    cfg = shac.bpo_config("pendulum", episode_length=N_STEPS, num_envs=4, iterations=8, eval_every=2,
                          obs_norm=False, actor_hidden=(16,), actor_lr=1e-3, eval_envs=2, skip_window=4,
                          skip_threshold=0.5)
    assert cfg.horizon == N_STEPS and not cfg.use_critic and cfg.guard == "per_env"
    with pytest.raises(guards.SkipRateExceeded) as info:
        shac.train(cfg, jax.random.key(0), env=env, progress=False)
    err = info.value
    msg = str(err)
    assert "\n" not in msg
    for part in ("n=400", "horizon", "float32", "--x64", "shorter horizon", "critic bootstrap"):
        assert part in msg, (part, msg)
    m = err.metrics
    assert err.iteration < cfg.iterations and m["skipped_updates"].shape == (err.iteration,)
    # Every env's gradient overflowed, every update was skipped, and the guards kept it away from
    # the parameters; the forward values stayed exactly 0.
    assert np.all(~np.isfinite(m["max_env_grad_norm"])), m["max_env_grad_norm"]
    assert np.all(m["skipped_updates"] == 1) and np.all(m["masked_envs"] == cfg.num_envs)
    assert np.all(m["window_return"] == 0.0), m["window_return"]
    assert _all_finite((err.state.policy_params, err.state.actor_opt.inner_state))


def test_x64_runs_in_float64_end_to_end():
    cfg = TINY.replace(iterations=2, eval_every=2, x64=True)
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match="x64.*jax_enable_x64"):
            shac.validate(cfg)
    with jax.enable_x64(True):
        state, m = shac.run(cfg, jax.random.key(0), progress=False)
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
