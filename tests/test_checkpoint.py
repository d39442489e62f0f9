"""Atomic checkpoints (Orbax): exact round trips, config guard, keep-last-k, a writer killed mid-save,
the former .npz format still read, and single-snapshot pytrees (saved policies)."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mbpo_grad import checkpoint as ckpt
from mbpo_grad.nn import mlp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = {"env": "pendulum", "lr": 1e-3, "horizon": 32, "net": {"hidden": [64, 64], "act": "tanh"}}


def _train_state():
    """A realistic state: MLP params, an advanced Adam state, PRNG keys, normaliser, step."""
    net = mlp(3, 1, hidden=(16, 16))
    opt = optax.adam(1e-3)

    @jax.jit  # one compile instead of many small eager dispatches
    def params_and_opt_state():
        params = net.init(jax.random.PRNGKey(0))
        opt_state = opt.init(params)
        grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 0.3), params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params, opt_state = params_and_opt_state()
    return {
        "params": params,
        "opt_state": opt_state,
        "key": jax.random.key(7),                    # typed key
        "raw_key": jax.random.PRNGKey(11),           # uint32[2]
        "normalizer": {"mean": np.linspace(-1, 1, 3), "count": np.int64(5)},  # host float64 / int64
        "replay": {"obs": jnp.arange(24.0).reshape(8, 3), "ptr": jnp.asarray(8, jnp.int32)},
        "low_precision": jnp.asarray([1.5, -2.25, 3.0], jnp.bfloat16),
        "step": 123,
        "lr_scale": 0.5,
        "done": True,
        "nothing": None,
    }


def _assert_identical(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        assert type(x) is type(y) or (isinstance(x, jax.Array) and isinstance(y, jax.Array)), (type(x), type(y))
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert y.dtype == x.dtype
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        if isinstance(x, (jax.Array, np.ndarray)):
            assert x.dtype == y.dtype and x.shape == y.shape
            assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
        else:
            assert x == y


def test_round_trip_is_bit_identical_with_target(tmp_path):
    state = _train_state()
    path = ckpt.save(tmp_path, 123, state, config=CONFIG)
    assert os.path.basename(path) == "step_0000000123"
    assert ckpt.latest_step(tmp_path) == 123
    step, restored = ckpt.restore(tmp_path, config=CONFIG, target=state)
    assert step == 123
    _assert_identical(state, restored)
    # The optax state comes back as its NamedTuples, usable by the optimizer.
    assert type(restored["opt_state"][0]) is optax.ScaleByAdamState
    assert int(restored["opt_state"][0].count) == 1
    # A typed key restores to the same key: the same random numbers follow.
    assert np.array_equal(jax.random.normal(restored["key"], (4,)), jax.random.normal(state["key"], (4,)))


def test_restore_into_abstract_target(tmp_path):
    state = {"params": jax.jit(mlp(2, 2, hidden=(4,)).init)(jax.random.PRNGKey(1)), "key": jax.random.key(3)}
    ckpt.save(tmp_path, 5, state, config={})
    abstract = jax.eval_shape(lambda: state)
    _, restored = ckpt.restore(tmp_path, config={}, target=abstract)
    _assert_identical(state, restored)


def test_restore_without_target_gives_dicts_and_lists(tmp_path):
    state = {"a": [jnp.ones(2), {"b": jnp.zeros((), jnp.int32)}], "c": 4}
    ckpt.save(tmp_path, 0, state, config={})
    _, restored = ckpt.restore(tmp_path, config={})
    _assert_identical(state, restored)


def test_config_mismatch_names_the_keys(tmp_path):
    ckpt.save(tmp_path, 1, {"w": jnp.ones(3)}, config=CONFIG)
    other = {**CONFIG, "lr": 3e-4, "net": {"hidden": [32], "act": "tanh"}, "seed": 2}
    with pytest.raises(ValueError) as err:
        ckpt.restore(tmp_path, config=other)
    msg = str(err.value)
    assert "config" in msg and "lr" in msg and "net.hidden" in msg and "seed" in msg
    assert "env" not in msg and "net.act" not in msg
    # Tuples vs lists are the same config once written as JSON.
    ckpt.restore(tmp_path, config={**CONFIG, "net": {"hidden": (64, 64), "act": "tanh"}})


def test_structure_and_dtype_mismatch_name_the_leaf(tmp_path):
    ckpt.save(tmp_path, 1, {"w": jnp.ones(3), "b": jnp.zeros(2)}, config={})
    with pytest.raises(ValueError, match=r"target.*\['c'\]"):
        ckpt.restore(tmp_path, config={}, target={"w": jnp.ones(3), "c": jnp.zeros(2)})
    with pytest.raises(ValueError, match=r"target: leaf \['w'\]"):
        ckpt.restore(tmp_path, config={}, target={"w": jnp.ones(4), "b": jnp.zeros(2)})
    with pytest.raises(ValueError, match=r"target: leaf \['b'\]"):
        ckpt.restore(tmp_path, config={}, target={"w": jnp.ones(3), "b": jnp.zeros(2, jnp.int32)})


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="step"):
        ckpt.save(tmp_path, -1, {"w": jnp.ones(1)}, config={})
    with pytest.raises(TypeError, match="step"):
        ckpt.save(tmp_path, 1.5, {"w": jnp.ones(1)}, config={})
    with pytest.raises(ValueError, match="keep"):
        ckpt.save(tmp_path, 1, {"w": jnp.ones(1)}, config={}, keep=0)
    with pytest.raises(TypeError, match="config"):
        ckpt.save(tmp_path, 1, {"w": jnp.ones(1)}, config={"f": object()})
    with pytest.raises(TypeError, match="leaf"):
        ckpt.save(tmp_path, 1, {"w": "text"}, config={})
    with pytest.raises(FileNotFoundError, match="directory"):
        ckpt.restore(tmp_path / "empty", config={})
    ckpt.save(tmp_path, 1, {"w": jnp.ones(1)}, config={})
    with pytest.raises(FileNotFoundError, match="step"):
        ckpt.restore(tmp_path, config={}, step=2)


def test_keep_last_k_and_overwrite(tmp_path):
    for s in range(6):
        ckpt.save(tmp_path, s * 10, {"w": jnp.full(3, float(s))}, config={}, keep=2)
    assert ckpt.all_steps(tmp_path) == [40, 50]
    assert sorted(os.listdir(tmp_path)) == ["step_0000000040", "step_0000000050"]
    _, st = ckpt.restore(tmp_path, config={}, step=40)
    assert np.array_equal(st["w"], np.full(3, 4.0, np.float32))
    ckpt.save(tmp_path, 50, {"w": jnp.full(3, 9.0)}, config={}, keep=None)  # same step: replaced
    assert ckpt.all_steps(tmp_path) == [40, 50]
    assert np.array_equal(ckpt.restore(tmp_path, config={})[1]["w"], np.full(3, 9.0, np.float32))


def test_corruption_is_detected(tmp_path):
    """Orbax keeps no checksum of array data; the per-leaf SHA-256 in meta catches an overwrite."""
    w = jnp.asarray(np.random.default_rng(0).normal(size=20000), jnp.float32)
    path = ckpt.save(tmp_path, 3, {"w": w, "b": jnp.ones(3)}, config={})
    data = [os.path.join(r, n) for r, _, names in os.walk(os.path.join(path, "state")) for n in names
            if os.path.basename(r) == "d"]  # OCDBT data files
    biggest = max(data, key=os.path.getsize)
    size = os.path.getsize(biggest)
    with open(biggest, "r+b") as f:
        f.seek(size // 2)
        f.write(b"\x00" * 8)
    with pytest.raises(ValueError, match=r"corrupted: leaf \['w'\]"):
        ckpt.restore(tmp_path, config={})


def test_float64_leaf_refuses_silent_downcast(tmp_path):
    with jax.enable_x64(True):
        ckpt.save(tmp_path, 0, {"w": jnp.arange(3.0, dtype=jnp.float64)}, config={})
        _, st = ckpt.restore(tmp_path, config={})
        assert st["w"].dtype == jnp.float64
    with pytest.raises(ValueError, match="x64"):
        ckpt.restore(tmp_path, config={})


_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from mbpo_grad import checkpoint as ckpt

    directory, start = sys.argv[1], int(sys.argv[2])
    n = 6_000_000  # 24 MB per array, 48 MB per checkpoint: a save takes a few hundred ms
    base = np.arange(n, dtype=np.float32)
    step = start
    while True:
        state = {"params": {"w": base + step, "b": base[::-1] - step}, "step": step}
        ckpt.save(directory, step, state, config={"run": "kill-test"}, keep=2)
        print(f"saved {step}", flush=True)
        step += 1
    """
)


def _check_intact(directory):
    step = ckpt.latest_step(directory)
    assert step is not None
    got_step, state = ckpt.restore(directory, config={"run": "kill-test"})
    assert got_step == step == state["step"]
    n = 6_000_000
    base = np.arange(n, dtype=np.float32)
    assert np.array_equal(state["params"]["w"], base + step)
    assert np.array_equal(state["params"]["b"], base[::-1] - step)
    return step


def _start_writer(script, directory, start):
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen(
        [sys.executable, str(script), str(directory), str(start)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )


def _wait_for_saves(proc, count):
    last = None
    for _ in range(count):
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"writer died: {proc.stderr.read()}")
        last = int(line.split()[1])
    return last


def _tmp_dirs(directory):
    return ckpt.temporary_dirs(directory)


def test_kill_during_write_leaves_last_complete_checkpoint(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    directory = tmp_path / "ckpt"
    rng = np.random.default_rng(0)

    # (a) Kill exactly while a temporary folder is being filled (observed by polling).
    landed_mid_write = False
    start = 0
    for _attempt in range(3):
        proc = _start_writer(script, directory, start)
        try:
            _wait_for_saves(proc, 2)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                tmps = _tmp_dirs(directory)
                if tmps and any(os.listdir(directory / t) for t in tmps):
                    break
                time.sleep(0.0005)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
        leftover = _tmp_dirs(directory)
        step = _check_intact(directory)
        if leftover:
            landed_mid_write = True
            # The killed save was the one after the newest complete checkpoint.
            assert any(t.startswith(f"step_{step + 1:010d}.") for t in leftover), (leftover, step)
            break
        start = step + 1
    assert landed_mid_write, "the kill never landed during a write"

    # (b) Kills after random delays, resuming each time from the newest complete checkpoint.
    for _rep in range(2):
        start = ckpt.latest_step(directory) + 1
        proc = _start_writer(script, directory, start)
        try:
            _wait_for_saves(proc, 1)
            time.sleep(float(rng.uniform(0.0, 0.6)))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
        assert _check_intact(directory) >= start
        assert len(ckpt.all_steps(directory)) <= 3  # keep=2, plus at most one not yet pruned

    # The next save cleans the dead writers' temporary folders.
    step = ckpt.latest_step(directory) + 1
    ckpt.save(directory, step, {"params": {"w": np.zeros(1), "b": np.zeros(1)}, "step": step},
              config={"run": "kill-test"}, keep=2)
    assert _tmp_dirs(directory) == []
    assert sorted(os.listdir(directory)) == [f"step_{s:010d}" for s in ckpt.all_steps(directory)]  # no .trash


def test_edge_leaves_zero_size_rbg_key_and_no_arrays(tmp_path):
    state = {"empty": jnp.zeros((0, 3)), "np_empty": np.zeros((2, 0), np.int16),
             "rbg": jax.random.key(5, impl="rbg"), "keys": jax.random.split(jax.random.key(1), 3),
             "nan": float("nan"), "big": 2 ** 70, "neg0": -0.0}
    ckpt.save(tmp_path / "a", 0, state, config={})
    _, restored = ckpt.restore(tmp_path / "a", config={}, target=state)
    assert restored["nan"] != restored["nan"] and restored["big"] == 2 ** 70
    assert np.copysign(1.0, restored["neg0"]) == -1.0
    assert jax.random.key_impl(restored["rbg"]) == jax.random.key_impl(state["rbg"])
    for k in ("empty", "np_empty", "rbg", "keys"):
        _assert_identical(state[k], restored[k])
    ckpt.save(tmp_path / "b", 2, {"step": 2, "done": False}, config={})  # no array at all
    assert ckpt.restore(tmp_path / "b", config={}) == (2, {"step": 2, "done": False})


def _write_format1(folder, state, config):
    """A checkpoint as mbpo_grad wrote it before Orbax (arrays.npz + meta.json, format 1)."""
    import hashlib
    import json
    os.makedirs(folder)
    with_path, treedef = jax.tree_util.tree_flatten_with_path(state)
    arrays, leaves = {}, []
    for i, (p, x) in enumerate(with_path):
        path = jax.tree_util.keystr(p)
        if isinstance(x, int):
            arrays[f"leaf_{i}"], m = np.asarray(x, np.int64), {"kind": "int"}
        elif jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = np.asarray(jax.random.key_data(x))
            arrays[f"leaf_{i}"] = data
            m = {"kind": "key", "impl": str(jax.random.key_impl(x)), "dtype": str(data.dtype), "shape": list(x.shape)}
        else:
            arrays[f"leaf_{i}"] = np.asarray(x)
            m = {"kind": "jax" if isinstance(x, jax.Array) else "numpy", "dtype": str(x.dtype), "shape": list(x.shape)}
        leaves.append({"path": path, **m})
    np.savez(os.path.join(folder, "arrays.npz"), **arrays)
    digest = hashlib.sha256(open(os.path.join(folder, "arrays.npz"), "rb").read()).hexdigest()
    meta = {"format_version": 1, "step": int(os.path.basename(folder)[5:]), "config": config,
            "treedef": str(treedef), "leaves": leaves, "sha256": {"arrays.npz": digest}}
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump(meta, f)


def test_former_npz_checkpoints_are_still_read(tmp_path):
    state = {"w": jnp.arange(4.0), "opt": optax.ScaleByAdamState(jnp.asarray(3, jnp.int32), jnp.ones(2), jnp.zeros(2)),
             "key": jax.random.key(9), "host": np.arange(3, dtype=np.int64), "step": 7}
    _write_format1(str(tmp_path / "step_0000000007"), state, CONFIG)
    assert ckpt.all_steps(tmp_path) == [7]
    step, restored = ckpt.restore(tmp_path, config=CONFIG, target=state)
    assert step == 7
    _assert_identical(state, restored)
    with pytest.raises(ValueError, match="config.*lr"):
        ckpt.restore(tmp_path, config={**CONFIG, "lr": 1.0})
    # A run resumed from it goes on with Orbax checkpoints; keep prunes the old folder too.
    ckpt.save(tmp_path, 8, state, config=CONFIG, keep=1)
    assert ckpt.all_steps(tmp_path) == [8] and os.path.isdir(tmp_path / "step_0000000008" / "state")


def test_pytree_snapshot_round_trip_dtypes_and_metadata(tmp_path):
    """save_pytree/load_pytree: a policy's parameters + observation normaliser, one atomic folder."""
    with jax.enable_x64(True):
        tree = {"params": jax.jit(mlp(3, 2, hidden=(8,)).init)(jax.random.PRNGKey(0)),
                "obs_norm": {"mean": jnp.linspace(-1.0, 1.0, 3, dtype=jnp.float64),
                             "var": np.full(3, 2.0, np.float64), "count": jnp.asarray(11, jnp.int32)}}
    meta = {"agent": "shac", "obs_size": 3, "act_size": 2, "hidden": (8,), "return": 12.5}
    path = ckpt.save_pytree(tmp_path / "policy", tree, metadata=meta)
    assert os.path.isdir(path) and not ckpt.temporary_dirs(tmp_path)
    loaded, got_meta = ckpt.load_pytree(path)  # no target: plain NumPy arrays, saved dtypes (x64 off here)
    assert got_meta == {**meta, "hidden": [8]}
    flat, _ = jax.tree_util.tree_flatten(tree)
    flat_loaded, _ = jax.tree_util.tree_flatten(loaded)
    assert all(type(x) is np.ndarray for x in flat_loaded)
    assert loaded["obs_norm"]["mean"].dtype == np.float64 and loaded["params"]["Dense_0"]["kernel"].dtype == np.float32
    for x, y in zip(flat, flat_loaded):
        assert np.asarray(x).dtype == y.dtype and np.asarray(x).tobytes() == y.tobytes()
    with jax.enable_x64(True):  # with a target: its structure and leaf types
        back, _ = ckpt.load_pytree(path, target=jax.eval_shape(lambda: tree))
        assert isinstance(back["obs_norm"]["mean"], jax.Array) and back["obs_norm"]["mean"].dtype == jnp.float64
        _assert_identical(jax.tree_util.tree_map(jnp.asarray, tree), back)
    with pytest.raises(FileExistsError, match="path"):
        ckpt.save_pytree(path, tree, metadata={}, overwrite=False)
    ckpt.save_pytree(path, {"w": np.zeros(2, np.float32)}, metadata={"v": 2})  # replaced (renames)
    assert ckpt.load_pytree(path)[1] == {"v": 2} and sorted(os.listdir(tmp_path)) == ["policy"]
    with pytest.raises(TypeError, match="metadata"):
        ckpt.save_pytree(tmp_path / "p2", tree, metadata={"f": object()})
    with pytest.raises(FileNotFoundError, match="path"):
        ckpt.load_pytree(tmp_path / "nothing")


_SHARDED = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from mbpo_grad import checkpoint as ckpt

    assert len(jax.devices()) == 4
    mesh = Mesh(np.array(jax.devices()), ("d",))
    rows = NamedSharding(mesh, P("d"))
    state = {"w": jax.device_put(jnp.arange(32.0).reshape(8, 4), rows),
             "keys": jax.device_put(jax.random.split(jax.random.key(0), 8), rows)}
    ckpt.save(sys.argv[1], 1, state, config={})
    # Restore into another layout: columns over a 2x2 mesh, keys replicated.
    mesh2 = Mesh(np.array(jax.devices()).reshape(2, 2), ("a", "b"))
    target = {"w": jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=NamedSharding(mesh2, P(None, ("a", "b")))),
              "keys": jax.ShapeDtypeStruct((8,), state["keys"].dtype, sharding=NamedSharding(mesh2, P()))}
    _, got = ckpt.restore(sys.argv[1], config={}, target=target)
    for k in ("w", "keys"):
        assert got[k].sharding.is_equivalent_to(target[k].sharding, got[k].ndim), (k, got[k].sharding)
    assert np.array_equal(got["w"], state["w"])
    assert np.array_equal(jax.random.key_data(got["keys"]), jax.random.key_data(state["keys"]))
    print("ok")
    """
)


def test_sharded_state_restores_into_the_target_sharding(tmp_path):
    """Four CPU devices: an array and PRNG keys sharded by rows come back laid out as the target asks."""
    script = tmp_path / "sharded.py"
    script.write_text(_SHARDED)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, str(script), str(tmp_path / "ckpt")], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]
