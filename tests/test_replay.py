"""The functional replay buffer: ring semantics against a one-item-at-a-time reference, sampling, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpo_grad import replay


def _example():
    return {"s": jnp.zeros((3,)), "a": jnp.zeros((2,)), "r": jnp.zeros(()), "t": jnp.zeros((), jnp.int32)}


def _batch(start, m):
    ids = np.arange(start, start + m)
    return {
        "s": np.stack([ids, ids + 0.5, -ids], -1).astype(np.float32),
        "a": np.stack([ids * 2.0, ids * 3.0], -1).astype(np.float32),
        "r": (ids * 0.1).astype(np.float32),
        "t": ids.astype(np.int32),
    }


def test_add_matches_one_at_a_time_ring_reference():
    cap = 7
    buf = replay.init(cap, _example())
    assert buf.capacity == cap and int(buf.size) == 0 and int(buf.insert) == 0
    add = jax.jit(replay.add)
    ref = [None] * cap  # python reference: ring of item ids
    ref_insert, ref_size, start = 0, 0, 0
    for m in (3, 1, 5, 0, 10, 2, 7):  # includes an empty batch and batches larger than the capacity
        buf = add(buf, _batch(start, m))
        for i in range(start, start + m):
            ref[ref_insert] = i
            ref_insert = (ref_insert + 1) % cap
            ref_size = min(ref_size + 1, cap)
        start += m
        assert int(buf.size) == ref_size
        assert int(buf.insert) == ref_insert
        filled = [i for i in ref if i is not None]
        got = np.asarray(buf.data["t"])[: len(filled)] if ref_size < cap else np.asarray(buf.data["t"])
        np.testing.assert_array_equal(got, np.array([i for i in ref if i is not None]))
        # every field of a slot belongs to the same item
        t = np.asarray(buf.data["t"])
        np.testing.assert_allclose(np.asarray(buf.data["s"])[:ref_size, 0], t[:ref_size])
        np.testing.assert_allclose(np.asarray(buf.data["a"])[:ref_size, 1], 3.0 * t[:ref_size])
        np.testing.assert_allclose(np.asarray(buf.data["r"])[:ref_size], 0.1 * t[:ref_size], rtol=1e-6)
        assert np.asarray(replay.valid_mask(buf)).sum() == ref_size


def test_sample_draws_only_stored_items_uniformly():
    buf = replay.init(50, _example())
    buf = replay.add(buf, _batch(100, 20))  # 20 of 50 slots used
    items = jax.jit(replay.sample, static_argnums=2)(buf, jax.random.PRNGKey(0), 4000)
    t = np.asarray(items["t"])
    assert t.shape == (4000,) and items["s"].shape == (4000, 3)
    assert set(np.unique(t)) == set(range(100, 120))  # only stored items, all of them
    np.testing.assert_allclose(np.asarray(items["s"])[:, 0], t)  # fields stay together
    counts = np.bincount(t - 100, minlength=20)
    # uniform: each count ~ Binomial(4000, 1/20), sd ≈ 13.8; allow 5 sd
    assert np.all(np.abs(counts - 200) < 70), counts


def test_vmapped_buffers_and_scan():
    """One buffer per seed (vmap) filled inside lax.scan."""
    n_seeds, cap = 3, 6
    bufs = jax.vmap(lambda _: replay.init(cap, {"x": jnp.zeros((2,))}))(jnp.arange(n_seeds))

    def body(b, i):
        item = {"x": jnp.stack([jnp.full((n_seeds,), i), jnp.arange(n_seeds) * 1.0], -1)[:, None, :]}
        return jax.vmap(replay.add)(b, item), None

    bufs, _ = jax.lax.scan(body, bufs, jnp.arange(8.0))
    np.testing.assert_array_equal(np.asarray(bufs.size), [cap] * n_seeds)
    np.testing.assert_array_equal(np.asarray(bufs.insert), [8 % cap] * n_seeds)
    # ring after 8 single inserts into 6 slots: slots 0,1 hold steps 6,7; slots 2..5 steps 2..5
    np.testing.assert_array_equal(np.asarray(bufs.data["x"][0, :, 0]), [6, 7, 2, 3, 4, 5])
    np.testing.assert_array_equal(np.asarray(bufs.data["x"][:, 0, 1]), [0, 1, 2])


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="capacity"):
        replay.init(0, _example())
    with pytest.raises(TypeError, match="capacity"):
        replay.init(3.0, _example())
    buf = replay.init(4, _example())
    with pytest.raises(ValueError, match="empty"):
        replay.sample(buf, jax.random.PRNGKey(0), 2)
    bad = _batch(0, 2)
    bad["s"] = bad["s"][:, :2]
    with pytest.raises(ValueError, match="batch"):
        replay.add(buf, bad)
    missing = _batch(0, 2)
    del missing["a"]
    with pytest.raises(ValueError, match="batch"):
        replay.add(buf, missing)
    with pytest.raises(ValueError, match="n must"):
        replay.sample(replay.add(buf, _batch(0, 2)), jax.random.PRNGKey(0), -1)
