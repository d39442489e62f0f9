"""Running observation statistics: exact against two-pass NumPy statistics (float64)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mbpo_grad import normalizer as N


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 9), min_size=1, max_size=5), seed=st.integers(0, 2**31 - 1))
def test_merged_batches_equal_two_pass_statistics(sizes, seed):
    rng = np.random.default_rng(seed)
    batches = [rng.normal(3.0, 2.0, size=(k, 3)) * rng.uniform(0.1, 10.0) for k in sizes]
    with jax.enable_x64(True):
        stats = N.init(3, dtype=jnp.float64)
        for b in batches:
            stats = N.update(stats, jnp.asarray(b))
        data = np.concatenate(batches, 0)
        np.testing.assert_allclose(float(stats.count), data.shape[0], rtol=0, atol=0)
        np.testing.assert_allclose(np.asarray(stats.mean), data.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.asarray(stats.var), data.var(0), rtol=1e-10, atol=1e-12)


def test_leading_axes_are_batch_axes_and_weights_select_samples():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 5, 2))          # [time, envs, features]
    w = (rng.uniform(size=(4, 5)) > 0.4).astype(np.float64)
    with jax.enable_x64(True):
        stats = N.update(N.init((2,), dtype=jnp.float64), jnp.asarray(x), jnp.asarray(w))
        kept = x.reshape(-1, 2)[w.reshape(-1) > 0]
        assert float(stats.count) == kept.shape[0]
        np.testing.assert_allclose(np.asarray(stats.mean), kept.mean(0), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(stats.var), kept.var(0), rtol=1e-12)
        # an all-zero weight batch changes nothing
        same = N.update(stats, jnp.asarray(x), jnp.zeros((4, 5)))
        for a, b in zip(same, stats):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_normalize_and_denormalize():
    x = np.array([[1.0, -2.0], [3.0, 2.0], [5.0, 0.0]])
    stats = N.update(N.init(2), jnp.asarray(x, jnp.float32))
    z = N.normalize(stats, jnp.asarray([3.0, 100.0]), eps=0.0, clip=5.0)
    sd = x.std(0)
    np.testing.assert_allclose(np.asarray(z), [0.0, min(100.0 / sd[1], 5.0)], rtol=1e-6)
    y = jnp.asarray([4.0, -1.0])
    np.testing.assert_allclose(np.asarray(N.denormalize(stats, N.normalize(stats, y))), y, rtol=1e-5)
    # before any data: the identity
    np.testing.assert_array_equal(np.asarray(N.normalize(N.init(2), y)), np.asarray(y))


def test_update_is_jittable_and_vmappable():
    x = jax.random.normal(jax.random.key(0), (3, 7, 2))
    per = jax.jit(jax.vmap(lambda b: N.update(N.init(2), b)))(x)
    for i in range(3):
        ref = N.update(N.init(2), x[i])
        np.testing.assert_allclose(np.asarray(per.mean[i]), np.asarray(ref.mean), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(per.m2[i]), np.asarray(ref.m2), rtol=1e-5)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="batch"):
        N.update(N.init(3), jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match="weights"):
        N.update(N.init(3), jnp.zeros((4, 3)), jnp.ones((5,)))
    with pytest.raises(TypeError, match="shape"):
        N.init(2.5)
    with pytest.raises(ValueError, match="shape"):
        N.init((-1,))
