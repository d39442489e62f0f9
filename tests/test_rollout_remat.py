"""Segmented ("nested") rematerialisation in ``mg.unroll``: same numbers, sub-linear memory.

``remat=k`` (int) / ``remat="nested"`` (k = ceil(√n)) run the horizon as checkpointed
segments of k steps. The step function runs in the same order on the same inputs, so
the trajectory and the objective must equal ``remat=False`` bit for bit, for horizons
divisible by k or not, with termination masks and noise. The parameter gradient is a
sum over steps that the segmented backward pass adds up segment by segment, so it
matches up to float rounding of that summation order (float32: ~1 ulp; float64: 1e-13). The memory claim
(O(√n) carries instead of O(n)) is checked on the compiled executable's own analysis.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mbpo_grad as mg

D, M = 3, 2


def policy(w, s, eps):
    a = jnp.tanh(w @ s)
    return a if eps is None else a + 0.1 * eps


def step(s, a, xi):
    nxt = jnp.array([[0.9, 0.2, 0.0], [-0.2, 0.9, 0.1], [0.0, 0.1, 0.95]]) @ s + 0.3 * jnp.concatenate([a, a[:1]])
    nxt = nxt + 0.05 * jnp.sin(s)
    return nxt if xi is None else nxt + 0.05 * xi


def reward(s, a):
    return -(s @ s) - 0.5 * (a @ a) + jnp.cos(s[0])


def done(s):
    return s[0] > 0.45


W = jnp.array([[0.4, -0.3, 0.2], [0.1, 0.5, -0.6]], dtype=jnp.float32)
S0 = jnp.array([[0.3, -0.2, 0.5], [0.44, 0.4, 0.0], [-0.1, 0.2, -0.3], [0.5, 0.0, 0.0]], dtype=jnp.float32)


def _traj_scalar(traj):
    """A scalar touching every field of the trajectory, so every output's cotangent is exercised."""
    return (jnp.sum(traj.rewards * jnp.linspace(1.0, 2.0, traj.rewards.shape[-1]))
            + 0.3 * jnp.sum(jnp.sin(traj.states)) + 0.2 * jnp.sum(traj.actions ** 2) + jnp.sum(traj.alive))


def _unroll_all(w, horizon, remat, with_done, noise):
    eps = xi = None
    if noise:
        k1, k2 = jax.random.split(jax.random.PRNGKey(horizon))
        eps = jax.random.normal(k1, (S0.shape[0], horizon + 1, M))
        xi = jax.random.normal(k2, (S0.shape[0], horizon, D))
    return jax.vmap(lambda s0, e, x: mg.unroll(
        policy, w, step, reward, s0, horizon=horizon, policy_noise=e, dynamics_noise=x,
        done=done if with_done else None, remat=remat))(S0, eps, xi)


@pytest.mark.parametrize("horizon,remat,with_done,noise", [
    (7, 3, True, True),            # 2 segments + a remainder of 1
    (12, "nested", True, True),    # k = 4 divides 12
    (13, "nested", False, False),  # k = 4, remainder 1, no mask, no noise
    (7, 20, True, True),           # segment longer than the horizon: a plain checkpointed scan
    (1, "nested", True, True),
])
def test_segmented_unroll_equals_plain_scan(horizon, remat, with_done, noise):
    def vg(r):
        f = lambda w: (lambda tr: (_traj_scalar(tr), tr))(_unroll_all(w, horizon, r, with_done, noise))  # noqa: E731
        return jax.jit(jax.value_and_grad(f, has_aux=True))(W)

    (v0, traj0), g0 = vg(False)
    (v1, traj1), g1 = vg(remat)
    for a, b in zip(jax.tree_util.tree_leaves(traj0), jax.tree_util.tree_leaves(traj1)):
        # the same trajectory: bit-exact under XLA's default CPU code, within a few float32
        # roundings over the window under the suite's low-effort compile (tests/conftest.py:
        # the two programs fuse differently)
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(v1, v0, rtol=1e-5)  # same numbers, reduced by two different programs
    np.testing.assert_allclose(g1, g0, rtol=1e-6, atol=1e-6)
    assert np.all(np.isfinite(g0)) and np.any(np.abs(g0) > 1e-3)
    if with_done and horizon >= 7:  # the mask really ends some episodes inside the window
        alive = np.asarray(traj0.alive)
        assert alive[:, -1].min() == 0.0 and alive[:, -1].max() == 1.0


@pytest.mark.parametrize("remat", ["nested", 4])
def test_objective_with_bootstrap_gamma_and_done_equals_plain(remat):
    horizon = 11  # 11 = 2·4 + 3 and ceil(√11) = 4: a remainder segment in both cases
    critic = lambda s, a: -jnp.sum(s ** 2) + jnp.sum(a)  # noqa: E731

    def vg(r):
        w, s0 = jnp.asarray(W, jnp.float64), jnp.asarray(S0, jnp.float64)
        return jax.jit(jax.value_and_grad(lambda w: mg.pathwise_objective(
            policy, w, step, reward, s0, horizon=horizon, gamma=0.97, bootstrap=critic, done=done, remat=r)))(w)

    with jax.enable_x64(True):
        v0, g0 = vg(False)
        v1, g1 = vg(remat)
        assert g0.dtype == jnp.float64
    np.testing.assert_array_equal(v0, v1)
    np.testing.assert_allclose(g1, g0, rtol=1e-13, atol=1e-13)
    assert np.any(np.abs(g0) > 1e-3)


def test_segmented_remat_gradient_matches_float64_finite_differences():
    """Independent of the plain scan: central differences in float64 on a non-divisible horizon."""
    with jax.enable_x64(True):
        w = jnp.asarray(W, jnp.float64)
        s0 = jnp.asarray(S0[:3], jnp.float64)
        J = lambda w: mg.pathwise_objective(policy, w, step, reward, s0, horizon=10, gamma=0.9, remat=3)  # noqa: E731
        g = jax.jit(jax.grad(J))(w)
        J = jax.jit(J)
        h = 1e-6
        fd = np.zeros(w.shape)
        for i in range(w.shape[0]):
            for j in range(w.shape[1]):
                e = jnp.zeros_like(w).at[i, j].set(h)
                fd[i, j] = (J(w + e) - J(w - e)) / (2 * h)
        np.testing.assert_allclose(g, fd, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "always", "sqrt", True + 0.5])
def test_bad_segment_lengths_are_rejected(bad):
    with pytest.raises(ValueError, match="remat"):
        mg.unroll(policy, W, step, reward, S0[0], horizon=4, remat=bad)


def _temp_bytes(horizon, remat):
    """Scratch bytes of the compiled gradient on a system whose 64-float state dominates the carry."""
    dim = 64
    mix = 0.9 * jnp.eye(dim) + 0.01 / dim

    def wide_step(s, a, xi):
        return jnp.tanh(mix @ s + a[0])

    def wide_policy(w, s, eps):
        return jnp.tanh(w @ s)

    def wide_reward(s, a):
        return -(s @ s)

    w, s0 = jnp.full((1, dim), 0.01), jnp.full((4, dim), 0.1)
    f = lambda w: mg.pathwise_objective(wide_policy, w, wide_step, wide_reward, s0, horizon=horizon, remat=remat)  # noqa: E731
    stats = jax.jit(jax.grad(f)).lower(w).compile().memory_analysis()
    if stats is None:
        pytest.skip("this backend gives no memory analysis")
    return stats.temp_size_in_bytes


def test_nested_remat_memory_grows_like_sqrt_horizon():
    """11× the horizon (36 -> 400): per-step checkpointing keeps one carry per step (> 8× the
    scratch memory); segments of ceil(√n) steps keep n/k + k carries, 12 -> 40 (< 4×)."""
    short, long = 36, 400
    per_step = _temp_bytes(long, True) / _temp_bytes(short, True)
    nested = _temp_bytes(long, "nested") / _temp_bytes(short, "nested")
    assert per_step > 8.0, per_step
    assert nested < 4.0, nested
