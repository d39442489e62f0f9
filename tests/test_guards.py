"""Guards: masked means, per-environment gradient masking, skipped updates, skip-rate diagnosis."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mbpo_grad as mg
from mbpo_grad import guards

NAN, INF = float("nan"), float("inf")


def test_masked_mean_value_count_and_finite_gradient():
    v = jnp.array([1.0, NAN, 3.0, INF, -INF, 5.0])
    mean, n = guards.masked_mean(v)
    assert float(mean) == 3.0 and int(n) == 3
    g = jax.grad(lambda x: guards.masked_mean(x)[0])(v)
    np.testing.assert_allclose(g, [1 / 3, 0, 1 / 3, 0, 0, 1 / 3], rtol=1e-6, atol=0)
    all_bad, n_bad = guards.masked_mean(jnp.array([NAN, INF]))
    assert float(all_bad) == 0.0 and int(n_bad) == 2
    assert np.all(np.isfinite(jax.grad(lambda x: guards.masked_mean(x)[0])(jnp.array([NAN, INF]))))
    with pytest.raises(ValueError, match="values"):
        guards.masked_mean(jnp.ones((2, 2)))
    with pytest.raises(TypeError, match="values"):
        guards.masked_mean(jnp.arange(3))


def test_finite_mask_over_a_pytree():
    tree = {"a": jnp.array([[1.0, 2.0], [NAN, 0.0], [0.0, 0.0]]), "b": jnp.array([0.0, 0.0, INF])}
    np.testing.assert_array_equal(guards.finite_mask(tree), [True, False, False])
    with pytest.raises(ValueError, match="leading batch axis"):
        guards.finite_mask({"a": jnp.ones(3), "b": jnp.ones(2)})


# A tiny linear system driven through the real engine; faults injected through the dynamics noise.
H, B = 6, 8


def _policy(params, s, eps):
    return params["K"] @ s


def _step(s, a, xi):
    return 0.9 * s + a + xi


def _reward(s, a):
    return -(jnp.sum(s * s) + 0.1 * jnp.sum(a * a))


def _faulty_batch():
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    states = jax.random.normal(k1, (B, 2))
    xi = 0.1 * jax.random.normal(k2, (H, B, 2))
    xi = xi.at[3, 2].set(NAN)     # environment 2 returns NaN at step 3
    xi = xi.at[4, 5].set(1e30)    # environment 5 blows up at step 4 (float32: inf reward)
    return states, xi


def test_per_env_gradient_masking_through_a_rollout():
    params = {"K": jnp.array([[-0.3, 0.1], [0.0, -0.2]])}
    states, xi = _faulty_batch()

    def loss_one(p, s, x):
        return mg.pathwise_objective(_policy, p, _step, _reward, s[None], horizon=H, dynamics_noise=x[:, None])

    values, grads = jax.jit(jax.vmap(jax.value_and_grad(loss_one), in_axes=(None, 0, 1)))(params, states, xi)
    assert not np.all(np.isfinite(values))
    mean_g, n_masked = guards.masked_grad_mean(grads, values=values)
    assert int(n_masked) == 2
    assert np.all(np.isfinite(mean_g["K"]))

    keep = np.array([b not in (2, 5) for b in range(B)])
    ref = jax.grad(lambda p: mg.pathwise_objective(_policy, p, _step, _reward, states[keep], horizon=H,
                                                   dynamics_noise=xi[:, keep]))(params)
    np.testing.assert_allclose(mean_g["K"], ref["K"], rtol=1e-5, atol=1e-6)

    # Why per-environment gradients: masking the returns alone still leaks NaN into the parameter gradient.
    def naive(p):
        returns, _ = mg.pathwise_returns(_policy, p, _step, _reward, states, horizon=H, dynamics_noise=xi)
        return guards.masked_mean(returns)[0]

    assert not np.all(np.isfinite(jax.grad(naive)(params)["K"]))

    # An exploding-but-finite environment is dropped by max_norm.
    big = {"K": grads["K"].at[0].multiply(1e8)}
    norms = np.sqrt(np.sum(np.where(np.isfinite(big["K"]), big["K"], 0) ** 2, axis=(1, 2)))
    _, n2 = guards.masked_grad_mean(big, values=values, max_norm=float(np.median(norms[keep])) * 10)
    assert int(n2) == 3


def test_masked_grad_mean_all_masked_and_bad_input():
    g = {"w": jnp.full((3, 2), NAN)}
    mean, n = guards.masked_grad_mean(g)
    assert int(n) == 3 and np.array_equal(mean["w"], np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="values"):
        guards.masked_grad_mean({"w": jnp.ones((3, 2))}, values=jnp.ones(4))
    with pytest.raises(TypeError, match="per_env_grads"):
        guards.masked_grad_mean({"w": jnp.ones((3, 2), jnp.int32)})


def test_safe_global_norm_does_not_overflow():
    tree = {"a": jnp.array([1e20, 1e20], jnp.float32), "b": jnp.array([[0.0]], jnp.float32)}
    assert not np.isfinite(float(optax.tree.norm(tree)))
    np.testing.assert_allclose(float(guards.safe_global_norm(tree)), np.sqrt(2) * 1e20, rtol=1e-6)
    np.testing.assert_allclose(float(guards.safe_global_norm({"x": jnp.array([3.0, 4.0])})), 5.0, rtol=1e-7)
    assert float(guards.safe_global_norm({"x": jnp.zeros(3)})) == 0.0
    assert np.isnan(float(guards.safe_global_norm({"x": jnp.array([1.0, NAN])})))
    assert np.isinf(float(guards.safe_global_norm({"x": jnp.array([1.0, -INF])})))


def _inner():
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.1))


GRADS = jnp.array([[0.1, -0.2], [NAN, 0.0], [0.3, 0.1], [1e30, 1.0], [INF, 0.0], [30.0, 40.0]])


def test_skip_nonfinite_skips_and_matches_inner_on_good_steps():
    opt = guards.skip_nonfinite(_inner(), max_grad_norm_to_skip=1e6)
    params = {"w": jnp.array([1.0, 2.0])}

    @jax.jit
    def run(params):
        def body(carry, g):
            p, s = carry
            u, s = opt.update({"w": g}, s, p)
            return (optax.apply_updates(p, u), s), (s.skipped, s.grad_norm, u["w"])

        return jax.lax.scan(body, (params, opt.init(params)), GRADS)

    (p, state), (skipped, norms, updates) = run(params)
    np.testing.assert_array_equal(skipped, [0, 1, 0, 1, 1, 0])
    assert int(state.total_skipped) == 3 and int(state.count) == 6
    assert np.all(np.isfinite(p["w"]))
    np.testing.assert_array_equal(updates[np.array([1, 3, 4])], np.zeros((3, 2)))
    np.testing.assert_allclose(np.asarray(norms)[[0, 2, 5]], np.linalg.norm(np.asarray(GRADS)[[0, 2, 5]], axis=1), rtol=1e-6)
    np.testing.assert_allclose(norms[3], 1e30, rtol=1e-6)   # reported, before clipping
    assert np.isnan(norms[1]) and np.isinf(norms[4])
    assert int(state.inner_state[1][0].count) == 3          # Adam advanced on the good steps only

    ref_opt = _inner()
    ref_p, ref_s = params, ref_opt.init(params)
    for g in np.asarray(GRADS)[[0, 2, 5]]:
        u, ref_s = ref_opt.update({"w": jnp.asarray(g)}, ref_s, ref_p)
        ref_p = optax.apply_updates(ref_p, u)
    np.testing.assert_allclose(p["w"], ref_p["w"], rtol=1e-6, atol=1e-7)

    stats = guards.skip_stats(optax.chain(optax.identity(), opt).init(params))
    assert set(stats) == {"skipped_updates", "total_skipped", "grad_norm"}


def test_skip_on_nonfinite_loss_forced_skip_and_under_vmap():
    opt = guards.skip_nonfinite(optax.sgd(1.0))
    p = {"w": jnp.ones(2)}
    s = opt.init(p)
    g = {"w": jnp.ones(2)}
    u, s1 = opt.update(g, s, p, value=jnp.asarray(NAN))
    assert int(s1.skipped) == 1 and np.array_equal(u["w"], np.zeros(2))
    u, s2 = opt.update(g, s, p, value=jnp.asarray(1.0))
    assert int(s2.skipped) == 0 and np.array_equal(u["w"], -np.ones(2))
    u, s3 = opt.update(g, s, p, skip=jnp.asarray(True))
    assert int(s3.skipped) == 1 and np.array_equal(u["w"], np.zeros(2))

    # One optimizer per lane (as in a sweep): lanes skip independently.
    gs = {"w": jnp.array([[1.0, 1.0], [NAN, 1.0]])}
    ps = {"w": jnp.ones((2, 2))}
    us, ss = jax.vmap(opt.update)(gs, jax.vmap(opt.init)(ps), ps)
    np.testing.assert_array_equal(ss.skipped, [0, 1])
    assert np.all(np.isfinite(us["w"]))
    with pytest.raises(ValueError, match="max_grad_norm_to_skip"):
        guards.skip_nonfinite(optax.sgd(1.0), max_grad_norm_to_skip=0.0)


def test_optax_apply_if_finite_gives_up_which_is_why_we_wrap_our_own():
    opt = optax.apply_if_finite(optax.sgd(1.0), max_consecutive_errors=2)
    p = {"w": jnp.ones(1)}
    s = opt.init(p)
    for _ in range(3):
        u, s = opt.update({"w": jnp.array([NAN])}, s, p)
        p = optax.apply_updates(p, u)
    assert np.isnan(float(p["w"][0]))  # optax 0.2.8 accepts the NaN update after 2 consecutive errors


def test_skip_rate_message_and_monitor():
    assert guards.skip_rate_message([1] * 10, window=20) is None           # not enough evidence yet
    assert guards.skip_rate_message([0, 1] * 50, window=100, threshold=0.5) is None
    msg = guards.skip_rate_message([0] * 50 + [1] * 80, window=100, threshold=0.5, horizon=200,
                                   dtype=jnp.float32, grad_norms=[1e18, INF, NAN, 3.0])
    assert msg is not None
    for phrase in ("80% of the last 100 updates", "horizon (n=200)", "float32", "--x64", "critic", "n=50",
                   "2 of 4 non-finite", "1e+18"):
        assert phrase in msg, phrase
    msg64 = guards.skip_rate_message([1] * 10, window=10, dtype=np.float64)
    assert "--x64" not in msg64 and "float64" in msg64
    with pytest.raises(ValueError, match="threshold"):
        guards.skip_rate_message([], threshold=1.5)
    with pytest.raises(ValueError, match="window"):
        guards.skip_rate_message([], window=0)

    monitor = guards.SkipMonitor(window=10, threshold=0.5, horizon=64, dtype=jnp.float32)
    assert monitor.update(np.zeros(8, np.int32), np.ones(8)) is None
    assert monitor.update(np.ones(4, np.int32)) is None                     # 4 of the last 10
    out = monitor.update(np.ones(2, np.int32), np.array([INF, 2.0]))         # 6 of the last 10
    assert out is not None and "60%" in out and "n=64" in out
    with pytest.raises(guards.SkipRateExceeded):
        raise guards.SkipRateExceeded(out)
