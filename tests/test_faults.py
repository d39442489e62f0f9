"""Fault injection wrapper: pure, deterministic, per-env faults that reach the gradient like real ones."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpo_grad import envs

import mbpo_grad as mg
from mbpo_grad.envs.faults import FaultState, inject_faults, is_finite_state
from mbpo_grad import guards

B, T = 16, 24


def _policy(params, s, eps):
    # A linear feedback on the pendulum observation [cos θ, sin θ, θ̇], squashed to [-1, 1].
    return jnp.tanh(params["K"] @ jnp.stack([jnp.cos(s[0]), jnp.sin(s[0]), s[1]]) + params["b"])


PARAMS = {"K": jnp.array([[0.3, -1.2, -0.4]]), "b": jnp.array([0.05])}


def _inner(env, fs):
    return fs.env_state if isinstance(fs, FaultState) else fs


def _rollout(env, key):
    """States [T+1, B, ...] of the closed loop from B resets (vmap over envs, scan over steps)."""
    s0 = jax.vmap(env.reset)(jax.random.split(key, B))

    def body(s, _):
        a = jax.vmap(lambda si: _policy(PARAMS, _inner(env, si), None))(s)
        s_next = jax.vmap(lambda si, ai: env.step(si, ai, None))(s, a)
        return s_next, s_next

    _, traj = jax.lax.scan(body, s0, None, length=T)
    return jax.tree_util.tree_map(lambda x0, xs: jnp.concatenate([x0[None], xs], 0), s0, traj)


def _clean_start(key):
    """The inner (clean) start states the wrapper's reset produces for the same keys."""
    return jax.vmap(lambda k: jax.random.split(k)[0])(jax.random.split(key, B))


@pytest.fixture(scope="module")
def pendulum():
    return envs.make("pendulum")


@pytest.fixture(scope="module")
def run_nan(pendulum):
    env = inject_faults(pendulum, rate=0.05, value=jnp.nan)
    return env, jax.jit(lambda k: _rollout(env, k))(jax.random.PRNGKey(3))


def test_rate_zero_is_the_inner_env_exactly(pendulum):
    env = inject_faults(pendulum, rate=0.0)
    key = jax.random.PRNGKey(1)
    wrapped = jax.jit(lambda k: _rollout(env, k))(key)
    clean_s0 = jax.vmap(pendulum.reset)(_clean_start(key))

    def body(s, _):
        a = jax.vmap(lambda si: _policy(PARAMS, si, None))(s)
        s = jax.vmap(lambda si, ai: pendulum.step(si, ai, None))(s, a)
        return s, s

    _, clean = jax.jit(lambda s: jax.lax.scan(body, s, None, length=T))(clean_s0)
    np.testing.assert_array_equal(wrapped.env_state[1:], clean)
    np.testing.assert_array_equal(wrapped.faults[-1], np.zeros(B))
    np.testing.assert_array_equal(wrapped.steps[-1], np.full(B, T))
    assert env.name == "pendulum+faults" and env.obs_size == 3 and env.episode_length == 200


def test_faults_are_deterministic_per_env_and_exact_before_the_first_fault(pendulum, run_nan):
    env, traj = run_nan
    again = jax.jit(lambda k: _rollout(env, k))(jax.random.PRNGKey(3))
    for a, b in zip(jax.tree_util.tree_leaves(traj), jax.tree_util.tree_leaves(again)):
        np.testing.assert_array_equal(a, b)  # NaN positions included
    other = jax.jit(lambda k: _rollout(env, k))(jax.random.PRNGKey(4))
    assert not np.array_equal(np.asarray(traj.faults), np.asarray(other.faults))

    faults = np.asarray(traj.faults)                    # [T+1, B], cumulative
    states = np.asarray(traj.env_state)                 # [T+1, B, 2]
    assert np.all(np.diff(faults, axis=0) >= 0) and np.all(np.diff(faults, axis=0) <= 1)
    faulted = faults[-1] > 0
    assert 0 < faulted.sum() < B, faults[-1]            # some envs faulted, some not (seed chosen so)
    for b in range(B):
        hit = np.flatnonzero(np.diff(faults[:, b]) == 1)
        if hit.size == 0:
            assert np.all(np.isfinite(states[:, b]))
            continue
        t_star = hit[0] + 1                             # the state index the first fault wrote
        assert np.all(np.isfinite(states[:t_star, b]))
        assert np.all(np.isnan(states[t_star, b]))
    # Every injected fault's state is NaN; the vmapped predicate agrees with NumPy.
    np.testing.assert_array_equal(np.asarray(jax.vmap(jax.vmap(is_finite_state))(traj)),
                                  np.all(np.isfinite(states), axis=-1))


def test_fault_frequency_matches_rate(pendulum):
    rate, n_envs, steps = 0.1, 256, 40
    env = inject_faults(pendulum, rate=rate)
    s = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(0), n_envs))
    a = jnp.zeros((n_envs, 1))

    def body(s, _):
        return jax.vmap(lambda si, ai: env.step(si, ai, None))(s, a), None

    s, _ = jax.jit(lambda s: jax.lax.scan(body, s, None, length=steps))(s)
    total = int(jnp.sum(s.faults))
    n = n_envs * steps
    sd = np.sqrt(n * rate * (1 - rate))
    assert abs(total - n * rate) < 5 * sd, (total, n * rate)
    np.testing.assert_array_equal(s.steps, np.full(n_envs, steps))


def test_rate_one_and_start_step(pendulum):
    env = inject_faults(pendulum, rate=1.0, value=1e30, start_step=3)
    traj = jax.jit(lambda k: _rollout(env, k))(jax.random.PRNGKey(0))
    st = np.asarray(traj.env_state)
    assert np.all(np.isfinite(st[:4]))                 # steps 0, 1, 2 are clean: states 1..3 finite
    assert np.all(st[4:] == np.float32(1e30))          # from the 4th transition on: poisoned each step
    np.testing.assert_array_equal(traj.faults[-1], np.full(B, T - 3))
    # 1e30 is finite, but the float32 reward overflows: the "exploding" failure.
    r = jax.vmap(lambda s: env.reward(s, jnp.zeros(1)))(jax.tree_util.tree_map(lambda x: x[5], traj))
    assert np.all(np.isneginf(np.asarray(r)))


def test_nan_reaches_the_parameter_gradient_and_per_env_masking_recovers_the_clean_gradient(pendulum, run_nan):
    env, traj = run_nan
    key = jax.random.PRNGKey(3)
    s0 = jax.jit(jax.vmap(env.reset))(jax.random.split(key, B))
    horizon = 12
    faulted = np.asarray(traj.faults[horizon]) > 0      # faults inside the first `horizon` transitions

    def pi(params, fs, eps):
        return _policy(params, fs.env_state, eps)

    def one_env_return(params, s):
        rets, _ = mg.pathwise_returns(pi, params, env.step, env.reward, jax.tree_util.tree_map(lambda x: x[None], s),
                                      horizon=horizon, gamma=0.99)
        return rets[0]

    # The batch-mean gradient is poisoned by the faulted envs.
    g_batch = jax.jit(jax.grad(lambda p: mg.pathwise_objective(pi, p, env.step, env.reward, s0, horizon=horizon,
                                                                gamma=0.99)))(PARAMS)
    assert not all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(g_batch))

    @jax.jit
    def masked(params, s0):
        rets, grads = jax.vmap(jax.value_and_grad(one_env_return), in_axes=(None, 0))(params, s0)
        return rets, guards.masked_grad_mean(grads, values=rets)

    rets, (g, n_masked) = masked(PARAMS, s0)
    np.testing.assert_array_equal(~np.isfinite(np.asarray(rets)), faulted)
    assert int(n_masked) == int(faulted.sum()) > 0

    # Reference: the gradient of the clean envs' mean return through the unwrapped pendulum.
    keep = np.flatnonzero(~faulted)
    clean_s0 = s0.env_state[keep]
    ref = jax.jit(jax.grad(lambda p: mg.pathwise_objective(_policy, p, pendulum.step, pendulum.reward, clean_s0,
                                                            horizon=horizon, gamma=0.99)))(PARAMS)
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


def test_done_and_observe_delegate():
    inner = envs.make("switching_cart")
    env = inject_faults(inner, rate=0.0)
    s = env.reset(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(env.observe(s), inner.observe(s.env_state))
    assert env.done is None and env.noise_shape == inner.noise_shape


def test_bad_arguments_name_the_argument(pendulum):
    with pytest.raises(ValueError, match="rate"):
        inject_faults(pendulum, rate=1.5)
    with pytest.raises(ValueError, match="rate"):
        inject_faults(pendulum, rate=-0.1)
    with pytest.raises(TypeError, match="rate"):
        inject_faults(pendulum, rate="often")
    with pytest.raises(TypeError, match="value"):
        inject_faults(pendulum, rate=0.1, value="nan")
    with pytest.raises(ValueError, match="start_step"):
        inject_faults(pendulum, rate=0.1, start_step=-1)
    with pytest.raises(TypeError, match="env"):
        inject_faults(lambda s: s, rate=0.1)
