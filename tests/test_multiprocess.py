"""One run over several processes on JAX's distributed runtime: 2 local processes x 2 CPU devices.

Each test starts two Python processes that join with ``mg.initialize_distributed`` (a coordinator
on a free local port; CPU collectives through gloo, JAX's default) so that ``jax.devices()``
spans 4 devices, 2 per process, as on two hosts. Every process writes what it got to a file in
``tmp_path``; the test compares those with the single-process results:

* ``mg.sweep``: the seeds x hyper-parameter runs laid out over the 4 global devices and
  gathered to both processes equal the sweep in this (one-device) process;
* ``mbpo_grad.checkpoint``: a state of global arrays (sharded and replicated over both
  processes, typed keys, host leaves) saved by one pair of processes is restored equal by a
  fresh pair and by a single process; a corrupted shard makes both processes raise;
* SHAC data-parallel over the 4 devices of both processes (``driver.run(devices=4)``), killed
  after its first checkpoint and resumed by a fresh pair, gives the uninterrupted
  single-process run's metrics and parameters (slow).
"""
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mbpo_grad as mg
from mbpo_grad import checkpoint as ckpt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_PROC, DEV_PER_PROC = 2, 2

PREAMBLE = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import jax, jax.numpy as jnp
    import mbpo_grad as mg

    PID, PORT, OUT = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    mg.initialize_distributed(coordinator_address=f"localhost:{PORT}", num_processes=2, process_id=PID,
                              initialization_timeout=60)
    assert jax.process_count() == 2 and jax.process_index() == PID
    assert jax.device_count() == 4 and jax.local_device_count() == 2, jax.devices()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(tmp_path, name, body, *, timeout=240, fast_compile=False):
    """Run ``PREAMBLE + body`` as processes 0 and 1; returns their (returncode, stdout, stderr)."""
    script = tmp_path / f"{name}.py"
    script.write_text(PREAMBLE + textwrap.dedent(body))
    inherited = os.environ.get("XLA_FLAGS", "")   # conftest's low-effort compile, unless switched off
    flags = f"{inherited} --xla_force_host_platform_device_count={DEV_PER_PROC}".strip()
    if fast_compile and "xla_backend_optimization_level" not in flags:  # experiments.rundir.FAST_COMPILE_FLAGS
        flags += " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags,
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    port = _free_port()
    logs = [(open(tmp_path / f"{name}.{i}.out", "w+"), open(tmp_path / f"{name}.{i}.err", "w+")) for i in range(N_PROC)]
    procs = [subprocess.Popen([sys.executable, str(script), str(i), str(port), str(tmp_path)], env=env, cwd=REPO,
                              stdout=out, stderr=err, text=True) for i, (out, err) in enumerate(logs)]
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = []
    for p, (out, err) in zip(procs, logs):
        out.seek(0)
        err.seek(0)
        results.append((p.returncode, out.read(), err.read()))
        out.close()
        err.close()
    return results


def _assert_ok(results):
    for i, (rc, out, err) in enumerate(results):
        assert rc == 0, f"process {i} exited with {rc}:\n{out[-2000:]}\n{err[-4000:]}"


# --------------------------------------------------------------------------- sweep

TRAIN_SRC = textwrap.dedent(
    """
    def train(key, hp):
        # Gradient descent on a random quadratic: 30 updates of x <- x - lr * (A x - b) (lax.scan).
        k_a, k_b, k_x = jax.random.split(key, 3)
        m = jax.random.normal(k_a, (3, 3))
        a = m @ m.T / 3.0 + hp["damping"] * jnp.eye(3)
        b = jax.random.normal(k_b, (3,))
        def step(x, _):
            x = x - hp["lr"] * (a @ x - b)
            return x, 0.5 * x @ a @ x - b @ x
        x, losses = jax.lax.scan(step, jax.random.normal(k_x, (3,)), None, length=30)
        return {"x": x, "loss": losses[::10]}
    """
)
HPARAMS = {"lr": [0.05, 0.1, 0.2], "damping": [0.5, 1.0]}  # 6 grid points x 3 seeds = 18 runs, 20 padded

SWEEP_BODY = TRAIN_SRC + textwrap.dedent(
    """
    from mbpo_grad import sweeps
    out = mg.sweep(train, 3, {"lr": [0.05, 0.1, 0.2], "damping": [0.5, 1.0]})
    np.savez(os.path.join(OUT, f"sweep.{PID}.npz"), **out)
    # The runs were spread over all 4 devices, both processes: 5 of the 20 lanes each.
    (fn,) = [f for k, f in sweeps._CACHE[train].items() if k[1]]
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), (sweeps.AXIS,))
    sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(sweeps.AXIS))
    lanes = fn(sweeps._place(np.arange(20, dtype=np.int32), sh),
               {k: sweeps._place(np.full(20, 0.1, np.float32), sh) for k in ("lr", "damping")})
    assert len(lanes["x"].sharding.device_set) == 4 and not lanes["x"].is_fully_addressable
    assert [s.data.shape[0] for s in lanes["x"].addressable_shards] == [5, 5]
    # A process passing other values is refused on every process, naming the argument.
    try:
        mg.sweep(train, 3 + PID, {"lr": [0.05, 0.1, 0.2], "damping": [0.5, 1.0]})
    except ValueError as err:
        assert "seeds" in str(err), err
    else:
        raise AssertionError("differing seeds were not refused")
    try:
        mg.sweep(train, 3, {"lr": [0.05, 0.1, 0.2 + PID], "damping": [0.5, 1.0]})
    except ValueError as err:
        assert "hparams" in str(err), err
    else:
        raise AssertionError("differing hparams were not refused")
    print("OK")
    """
)


def test_sweep_over_two_processes_equals_the_single_process_sweep(tmp_path):
    results = _launch(tmp_path, "sweep", SWEEP_BODY)
    _assert_ok(results)
    namespace = {"jax": jax, "jnp": jnp}
    exec(TRAIN_SRC, namespace)
    single = mg.sweep(namespace["train"], 3, HPARAMS)  # this process: one device
    assert single["x"].shape == (6, 3, 3) and single["loss"].shape == (6, 3, 3)
    got = [np.load(tmp_path / f"sweep.{i}.npz") for i in range(N_PROC)]
    for k in single:
        assert np.array_equal(got[0][k], got[1][k]), k  # every process has the same, whole result
        np.testing.assert_allclose(got[0][k], single[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # The lanes differ (a run is not a copy of another): seeds and grid points matter.
    assert len(np.unique(np.round(single["x"].reshape(18, 3), 5), axis=0)) == 18


# --------------------------------------------------------------------------- checkpoints

STATE_SRC = textwrap.dedent(
    """
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    def expected():
        # Host copies of the state's values (deterministic: the same in every process).
        return {"w": np.arange(40, dtype=np.float32).reshape(8, 5) / 7.0,
                "big": np.sin(np.arange(40000, dtype=np.float32)),
                "rep": np.linspace(-1.0, 1.0, 6, dtype=np.float32),
                "keys": np.asarray(jax.random.key_data(jax.random.split(jax.random.key(3), 8))),
                "host": np.arange(4, dtype=np.int64), "local": np.full(3, 2.5, np.float32), "step": 17}

    def global_state():
        e = expected()
        mesh = Mesh(np.asarray(jax.devices()), ("d",))
        rows, rep = NamedSharding(mesh, P("d")), NamedSharding(mesh, P())
        put = lambda x, sh: jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx])
        keys = put(e["keys"], NamedSharding(mesh, P("d", None)))
        return {"w": put(e["w"], rows), "big": put(e["big"], rows), "rep": put(e["rep"], rep),
                "keys": jax.random.wrap_key_data(keys),   # typed keys, sharded over both processes
                "host": e["host"],                        # NumPy: the same in every process
                "local": jnp.asarray(e["local"]),         # on this process's first device only
                "step": e["step"]}

    def gathered(x):
        from jax.experimental import multihost_utils
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)
    """
)

SAVE_BODY = STATE_SRC + textwrap.dedent(
    """
    state = global_state()
    assert not state["w"].is_fully_addressable and not state["keys"].is_fully_addressable
    ckpt.save(os.path.join(OUT, "ckpt"), 17, state, config={"run": "mp"})
    meta = ckpt.read_meta(os.path.join(OUT, "ckpt"))
    by_path = {m["path"]: m for m in meta["leaves"]}
    # Global leaves are hashed per shard: 4 row blocks for w, big and keys, one block for rep.
    assert sorted(by_path["['w']"]["shard_sha256"]) == ["0:2,0:5", "2:4,0:5", "4:6,0:5", "6:8,0:5"]
    assert len(by_path["['keys']"]["shard_sha256"]) == 4 and list(by_path["['rep']"]["shard_sha256"]) == ["0:6"]
    assert by_path["['local']"]["sha256"] and by_path["['host']"]["sha256"]
    # A host leaf that differs between processes is refused on both, naming it.
    try:
        ckpt.save(os.path.join(OUT, "bad"), 0, {**state, "host": np.arange(4) + PID}, config={})
    except ValueError as err:
        assert "['host']" in str(err) and "differs between processes" in str(err), err
    else:
        raise AssertionError("a host leaf differing between processes was saved")
    print("OK")
    """
)

RESTORE_BODY = STATE_SRC + textwrap.dedent(
    """
    target = global_state()
    step, got = ckpt.restore(os.path.join(OUT, "ckpt"), config={"run": "mp"}, target=target)
    assert step == 17 and got["step"] == 17
    for k in ("w", "big", "rep", "keys"):  # global leaves come back global, in the target's layout
        assert got[k].sharding == target[k].sharding, (k, got[k].sharding)
    assert type(got["host"]) is np.ndarray and isinstance(got["local"], jax.Array)
    np.savez(os.path.join(OUT, f"restored.{PID}.npz"), **{k: gathered(v) for k, v in got.items() if k != "step"})
    print("OK")
    """
)

def _corrupt_biggest_data_file(folder):
    data = [os.path.join(r, n) for r, _, names in os.walk(os.path.join(folder, "state")) for n in names
            if os.path.basename(r) == "d"]  # OCDBT data files (one set per process)
    biggest = max(data, key=os.path.getsize)
    size = os.path.getsize(biggest)
    with open(biggest, "r+b") as f:
        f.seek(size // 2)
        f.write(b"\x00" * 8)


def test_sharded_state_saved_by_two_processes_restores_equal(tmp_path):
    body = "from mbpo_grad import checkpoint as ckpt\n"
    _assert_ok(_launch(tmp_path, "save", body + SAVE_BODY))
    assert ckpt.all_steps(tmp_path / "ckpt") == [17] and not ckpt.temporary_dirs(tmp_path / "ckpt")
    _assert_ok(_launch(tmp_path, "restore", body + RESTORE_BODY))  # a fresh pair of processes

    namespace = {"jax": jax, "jnp": jnp, "np": np}
    exec(STATE_SRC, namespace)
    want = namespace["expected"]()
    for i in range(N_PROC):
        got = np.load(tmp_path / f"restored.{i}.npz")
        for k in ("w", "big", "rep", "keys", "host", "local"):
            assert got[k].dtype == want[k].dtype and got[k].tobytes() == want[k].tobytes(), (i, k)
    # One process reads the two processes' checkpoint too (each leaf whole, every shard's digest checked).
    step, single = ckpt.restore(tmp_path / "ckpt", config={"run": "mp"})
    assert step == 17 and single["step"] == 17
    assert np.array_equal(jax.random.key_data(single["keys"]), want["keys"])
    for k in ("w", "big", "rep", "host", "local"):
        assert np.asarray(single[k]).tobytes() == want[k].tobytes(), k

    # A corrupted shard is found by the single process and by both processes of a pair (which raise together).
    _corrupt_biggest_data_file(str(tmp_path / "ckpt" / "step_0000000017"))
    with pytest.raises(ValueError, match=r"corrupted: leaf \['big'\]"):
        ckpt.restore(tmp_path / "ckpt", config={"run": "mp"})
    results = _launch(tmp_path, "corrupt", body + STATE_SRC + textwrap.dedent(
        """
        try:
            ckpt.restore(os.path.join(OUT, "ckpt"), config={"run": "mp"}, target=global_state())
        except ValueError as err:
            print("RAISED", err)
        """))
    _assert_ok(results)
    for _, out, _ in results:
        assert "RAISED checkpoint is corrupted: leaf ['big']" in out, out


# --------------------------------------------------------------------------- data-parallel SHAC, kill and resume

SHAC_CONFIG = dict(env="pendulum", num_envs=8, horizon=8, iterations=6, eval_every=2, eval_envs=4,
                   critic_iterations=2, critic_minibatches=2)

SHAC_BODY = textwrap.dedent(
    """
    import signal
    from mbpo_grad.agents import shac
    MODE = os.environ["MP_MODE"]
    cfg = shac.SHACConfig(**CONFIG)
    seen = []

    def progress(step, m):
        seen.append(int(m["iteration"]))
        if MODE == "kill" and m["iteration"] == 4:  # after the checkpoint at 2, before the one at 4
            os.kill(os.getpid(), signal.SIGKILL)

    state, metrics = shac.run(cfg, jax.random.key(0), progress=False, devices=4, progress_fn=progress,
                              checkpoint_dir=os.path.join(OUT, "shac_ckpt"), checkpoint_every=2,
                              resume=MODE == "resume")
    env_leaf = jax.tree_util.tree_leaves(state.env_state)[0]
    assert len(env_leaf.sharding.device_set) == 4 and not env_leaf.is_fully_addressable  # envs over both
    params = [np.asarray(p) for p in jax.tree_util.tree_leaves(state.policy_params)]  # replicated
    np.savez(os.path.join(OUT, f"shac.{PID}.npz"), seen=np.asarray(seen),
             **{f"param{i}": p for i, p in enumerate(params)},
             **{f"m_{k}": np.asarray(v) for k, v in metrics.items() if k != "wall_s"})
    print("OK")
    """
)


@pytest.mark.slow
def test_data_parallel_shac_over_two_processes_killed_and_resumed_equals_one_process(tmp_path, monkeypatch):
    body = f"CONFIG = {SHAC_CONFIG!r}\n" + SHAC_BODY
    monkeypatch.setenv("MP_MODE", "kill")
    killed = _launch(tmp_path, "shac_kill", body, timeout=300, fast_compile=True)
    assert [rc for rc, _, _ in killed] == [-signal.SIGKILL] * N_PROC, [(rc, err[-2000:]) for rc, _, err in killed]
    assert ckpt.all_steps(tmp_path / "shac_ckpt") == [2]  # the last checkpoint before the kill
    monkeypatch.setenv("MP_MODE", "resume")
    _assert_ok(_launch(tmp_path, "shac_resume", body, timeout=300, fast_compile=True))
    assert ckpt.all_steps(tmp_path / "shac_ckpt") == [4, 6]

    from mbpo_grad.agents import shac
    state, metrics = shac.run(shac.SHACConfig(**SHAC_CONFIG), jax.random.key(0), progress=False)  # one process
    params = [np.asarray(p) for p in jax.tree_util.tree_leaves(state.policy_params)]
    for i in range(N_PROC):
        got = np.load(tmp_path / f"shac.{i}.npz")
        assert list(got["seen"]) == [4, 6]  # it continued from the checkpoint at 2, not from the start
        for k, v in metrics.items():
            if k != "wall_s":
                np.testing.assert_allclose(got[f"m_{k}"], v, rtol=1e-4, atol=1e-5, err_msg=k)
        for j, p in enumerate(params):
            np.testing.assert_allclose(got[f"param{j}"], p, rtol=0, atol=1e-5)
