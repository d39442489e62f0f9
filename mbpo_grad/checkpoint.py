"""Atomic checkpoints of any pytree train state on Orbax, guarded by the run's config.

    mg.checkpoint.save(run_dir / "ckpt", step, state, config=config, keep=3)
    step, state = mg.checkpoint.restore(run_dir / "ckpt", config=config, target=state)

    mg.checkpoint.save_pytree(run_dir / "policy", {"params": p, "obs_norm": n}, metadata={...})
    tree, metadata = mg.checkpoint.load_pytree(run_dir / "policy")

``state`` is whatever the caller needs to continue: parameters, optimizer state
(optax NamedTuples), normalisers, replay buffer, PRNG key (raw ``uint32[2]`` or
typed ``jax.random.key``), Python ints such as the step. ``config`` is a
JSON-serialisable dict stored beside the arrays; restoring under a different
config raises ``ValueError`` naming the differing keys.

Why Orbax. ``orbax-checkpoint`` is what Brax (and most of the JAX ecosystem)
checkpoints with, so a run folder here reads like theirs, and it writes a
``jax.Array`` sharded over devices or hosts as it lies, each process its own
shards (TensorStore/OCDBT), instead of gathering the whole state on one host as
the former ``.npz`` writer had to. ``save`` goes through
``orbax.checkpoint.CheckpointManager`` with synchronous saving (no background
commit thread: when ``save`` returns, the checkpoint is on disk or ``save``
raised). In a multi-host run every process calls ``save``/``restore`` with the
same arguments (Orbax's barriers; process 0 finalises); a sharded leaf is
restored with the sharding of the matching ``target`` leaf.

Layout, one folder per step (Orbax's, step names zero-padded to 10 digits)::

    DIR/step_0000001000/state/...          every array leaf, as a flat dict leaf_00000, leaf_00001 ...
                                           (tree-flatten order; Orbax PyTree/OCDBT format)
    DIR/step_0000001000/meta/metadata      JSON: step, config, treedef text and per leaf its key
                                           path, kind, dtype, shape and SHA-256 (see below);
                                           Python int/float/bool leaves are stored here by value
    DIR/step_0000001000/_CHECKPOINT_METADATA, commit_success.txt   Orbax's own bookkeeping

Typed PRNG keys are stored as their key data plus the implementation name and
rebuilt with ``jax.random.wrap_key_data`` (Orbax 0.12 also accepts typed keys,
but the explicit form works for any version and any key implementation);
zero-size arrays (which Orbax refuses) are rebuilt from their recorded shape.

The crash contract. Orbax writes a step into ``DIR/step_….orbax-checkpoint-tmp``,
writes ``commit_success.txt`` into it and then renames it to ``DIR/step_…``
(``AtomicRenameTemporaryPath.finalize`` in ``orbax/checkpoint/_src/path/atomicity.py``;
a rename within one POSIX filesystem is atomic). A folder under a step name is
therefore complete, and ``latest_step``/``all_steps``/``restore`` (which list
through Orbax's step name format, where a name with the temporary suffix is not
a step) never see a partial one: a process killed at any point of ``save``
leaves every earlier checkpoint untouched and its only debris is the temporary
folder, which the next ``save`` deletes (Orbax's ``cleanup_tmp_directories``;
hence one writing process per checkpoint folder). Checkpoints beyond ``keep``
are first renamed into ``DIR/.trash/`` (Orbax's ``todelete_subdir``) and then
deleted by ``save``, so a crash while deleting never leaves a half-deleted
folder under a step name. Re-saving an existing step first moves the old copy
to ``DIR/.trash/``. Unlike the former writer, Orbax follows the rename by no
``fsync`` of ``DIR``: the contract is stated for a killed process, not for a
power cut (after which the newest step may be missing, never partial). Tests: ``tests/test_checkpoint.py``
SIGKILLs a writer of 48 MB checkpoints mid-write and after random delays and
checks the newest complete step restores exactly; ``tests/test_train_cli.py``
kills ``python -m experiments.train`` inside a save, held there by the
``MBPO_GRAD_CHECKPOINT_PAUSE`` hook below, then resumes and compares with an
uninterrupted run byte for byte.

Integrity. Orbax records no checksum of the array data (measured: bytes
overwritten in the middle of an OCDBT data file restore silently as different
numbers). ``save`` therefore records the SHA-256 of every fully addressable
leaf's bytes in ``meta``, which Orbax commits together with the arrays, and
``restore`` verifies them, naming a corrupted leaf.

Several processes (``jax.distributed``; every process calls ``save`` and
``restore`` with the same arguments, the folder on a filesystem they all see).
A leaf that is a global ``jax.Array`` (sharded or replicated over devices of
several processes) is never all on one host, so it is hashed per shard: meta
records ``shard_sha256``, the SHA-256 of each distinct shard's bytes keyed by its
place (``"0:4,0:3"``), each shard hashed by the process holding its replica 0
and the digests all-gathered (one collective per save). ``restore`` checks on
every process the shards it reads; restored in the layout it was saved in (the
resume case) every shard is checked, restored to the host (no target, or a
host-local target) the whole leaf is checked slice by slice, restored into a
different global layout only the shards whose place matches are checked. A
leaf that is not a global array (NumPy, a Python scalar, a ``jax.Array`` on one
process's devices: Orbax refuses the latter in a multi-process run, so it is
written from the host as NumPy) is written from process 0's copy and keeps its
whole-array SHA-256; ``save`` refuses (ValueError naming it) such a leaf whose
bytes differ between processes, and processes whose trees differ. A corruption
found by any process makes every process raise.

Older checkpoints. A step folder holding ``arrays.npz`` + ``meta.json`` (format
1, written by mbpo_grad before Orbax) is still read by ``restore`` with the
same checks, so nothing saved before is lost; new saves always use Orbax.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import time
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from mbpo_grad.validation import check_int

PyTree = Any

__all__ = ["save", "restore", "latest_step", "all_steps", "read_meta", "temporary_dirs",
           "save_pytree", "load_pytree", "config_diff", "FORMAT_VERSION"]

FORMAT_VERSION = 2  # 1: the former arrays.npz + meta.json folders (still readable)
_STEP_PREFIX = "step"
_STEP_DIGITS = 10
_STEP_RE = re.compile(rf"^{_STEP_PREFIX}_(\d{{{_STEP_DIGITS},}})$")
_TRASH = ".trash"
_STATE, _META = "state", "meta"
_LEGACY_ARRAYS, _LEGACY_META = "arrays.npz", "meta.json"
# Crash-test hook for programs that save (e.g. ``experiments.train``): with
# MBPO_GRAD_CHECKPOINT_PAUSE="<step>:<seconds>" the save of that step sleeps once its arrays
# are written into the temporary folder, before Orbax commits and renames it, so a test can
# SIGKILL the process at a known point mid-save. Unset (always, outside such tests) it does nothing.
_PAUSE_ENV = "MBPO_GRAD_CHECKPOINT_PAUSE"


def _test_pause(step: int) -> None:
    spec = os.environ.get(_PAUSE_ENV)
    if not spec:
        return
    want, _, seconds = spec.partition(":")
    if int(want) == step:
        time.sleep(float(seconds or 60.0))


def _ocp():
    """orbax.checkpoint, imported on first use (it costs ~1 s; most imports never save)."""
    import orbax.checkpoint as ocp
    return ocp


# --------------------------------------------------------------------------- argument checks


def _step_dirname(step: int) -> str:
    return f"{_STEP_PREFIX}_{step:0{_STEP_DIGITS}d}"


def _check_directory(directory: Any, name: str = "directory") -> str:
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(directory).__name__}")
    return os.path.abspath(os.fspath(directory))


def _check_step(step: Any, name: str = "step") -> int:
    if isinstance(step, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int >= 0, got bool {step!r}")
    if isinstance(step, (jax.Array, np.ndarray)) and np.ndim(step) == 0 and np.issubdtype(np.asarray(step).dtype, np.integer):
        step = int(step)
    if not isinstance(step, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= 0, got {type(step).__name__} {step!r}")
    if step < 0:
        raise ValueError(f"{name} must be >= 0, got {step}")
    return int(step)


def _normalize_config(config: Any, name: str = "config") -> Dict[str, Any]:
    """The config as it reads back from JSON (tuples become lists, keys strings)."""
    if not isinstance(config, dict):
        raise TypeError(f"{name} must be a dict (JSON-serialisable), got {type(config).__name__}")
    try:
        text = json.dumps(config, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be JSON-serialisable: {err}") from None
    return json.loads(text)


def _flatten_config(cfg: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(cfg, dict) and cfg:
        out: Dict[str, Any] = {}
        for k, v in cfg.items():
            out.update(_flatten_config(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: cfg}


def config_diff(saved: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
    """Human-readable differences between two configs (dotted keys), empty if equal."""
    a = _flatten_config(_normalize_config(saved))
    b = _flatten_config(_normalize_config(current))
    lines = []
    for key in sorted(set(a) | set(b)):
        if key not in b:
            lines.append(f"{key}: {a[key]!r} in the checkpoint, missing now")
        elif key not in a:
            lines.append(f"{key}: missing in the checkpoint, {b[key]!r} now")
        elif a[key] != b[key] and not (a[key] != a[key] and b[key] != b[key]):  # NaN == NaN here
            lines.append(f"{key}: {a[key]!r} in the checkpoint, {b[key]!r} now")
    return lines


# --------------------------------------------------------------------------- leaves


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _leaf_paths(tree: PyTree) -> Tuple[List[str], List[Any], Any]:
    with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
    paths = [jax.tree_util.keystr(p) for p, _ in with_path]
    leaves = [leaf for _, leaf in with_path]
    return paths, leaves, treedef


def _sha256(data: Any) -> str:
    data = np.ascontiguousarray(np.asarray(data))
    return hashlib.sha256(data.view(np.uint8).reshape(-1).data if data.size else b"").hexdigest()


def _digest(arr: Any) -> Optional[str]:
    """SHA-256 of an array's bytes (C order), None when it is not all on this host."""
    if isinstance(arr, jax.Array) and not arr.is_fully_addressable:
        return None
    return _sha256(jax.device_get(arr))


def _multi() -> bool:
    return jax.process_count() > 1


def _is_global(x: Any) -> bool:
    """A jax.Array spanning devices of several processes (no process holds all of it)."""
    return isinstance(x, jax.Array) and not x.is_fully_addressable


def _index_key(index: Tuple[slice, ...], shape: Tuple[int, ...]) -> str:
    """A shard's place in the global array as text, ``"0:4,0:3"`` (start:stop per axis)."""
    return ",".join(f"{a}:{b}" for a, b, _ in (sl.indices(n) for sl, n in zip(index, shape)))


def _index_slices(key: str) -> Tuple[slice, ...]:
    return tuple(slice(int(a), int(b)) for a, b in (part.split(":") for part in key.split(","))) if key else ()


def _shard_keys(arr: jax.Array) -> List[str]:
    """The distinct shard places of a global array (the same list on every process)."""
    return sorted({_index_key(idx, arr.shape) for idx in arr.sharding.devices_indices_map(arr.shape).values()})


def _allgather(rows: np.ndarray) -> np.ndarray:
    """``[n_processes, *rows.shape]``: every process's ``rows`` (same shape on all), on every process."""
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(rows))


def _exchange_digests(paths: List[str], arrays: List[Any], leaf_meta: List[Dict[str, Any]]) -> None:
    """Multi-process ``save``: make every leaf's digest record the same on every process.

    A global leaf (sharded over the devices of several processes) gets ``shard_sha256``,
    ``{index: SHA-256 of that shard's bytes}`` for each distinct shard: each shard is hashed by
    the process holding its replica 0 and the 32-byte digests are all-gathered (one collective
    for the whole state). A host-local leaf (NumPy, or a jax.Array on this process's devices)
    keeps its whole-array ``sha256`` and must hold the same bytes on every process: Orbax writes
    process 0's copy, so a leaf that differs is refused (ValueError naming it) rather than
    silently saved as one process's value. A first collective compares the state's structure
    (paths, kinds, dtypes, shapes), so processes that pass different trees get a ValueError
    instead of mismatched collectives.
    """
    shape_text = json.dumps([[p, m.get("kind"), m.get("dtype"), m.get("shape")] for p, m in zip(paths, leaf_meta)])
    structure = np.frombuffer(bytes.fromhex(_sha256(np.frombuffer(shape_text.encode(), np.uint8))), np.uint8)
    if not (_allgather(structure[None]) == structure).all():
        raise ValueError("state: the processes passed different trees (paths, dtypes or shapes) to save; "
                         "every process must save the same state")
    rows: List[bytes] = []
    owners: List[Tuple[int, Optional[str]]] = []  # (leaf index, shard key or None for a host-local leaf)
    for i, (arr, meta) in enumerate(zip(arrays, leaf_meta)):
        if arr is None:
            continue
        if _is_global(arr):
            mine = {_index_key(sh.index, arr.shape): _sha256(sh.data)
                    for sh in arr.addressable_shards if sh.replica_id == 0}
            for key in _shard_keys(arr):
                rows.append(bytes.fromhex(mine[key]) if key in mine else bytes(32))
                owners.append((i, key))
        else:
            rows.append(bytes.fromhex(meta["sha256"]))
            owners.append((i, None))
    if not rows:
        return
    everyone = _allgather(np.frombuffer(b"".join(rows), np.uint8).reshape(len(rows), 32))  # [P, R, 32]
    combined = np.bitwise_or.reduce(everyone, axis=0)  # a shard's row is non-zero on its owner only
    for r, (i, key) in enumerate(owners):
        if key is None:
            if not (everyone[:, r] == everyone[0, r]).all():
                raise ValueError(
                    f"state leaf at {paths[i]} differs between processes; a leaf that is not a global "
                    "jax.Array (NumPy, or an array on one process's devices) must hold the same value on "
                    "every process, since process 0's copy is the one written")
        else:
            leaf_meta[i].setdefault("shard_sha256", {})[key] = combined[r].tobytes().hex()


def _verify(value: Any, meta: Dict[str, Any]) -> bool:
    """Whether a restored leaf matches its recorded digests (True when nothing is recorded).

    A whole-array ``sha256`` is checked on the host copy. ``shard_sha256``: a host copy is
    sliced at every recorded shard; a global array has each of this process's shards checked
    whose place was recorded (all of them when restored in the layout it was saved in; shards
    of a different layout are not checked).
    """
    if meta.get("shard_sha256"):
        table = meta["shard_sha256"]
        if _is_global(value):
            for sh in value.addressable_shards:
                want = table.get(_index_key(sh.index, value.shape))
                if want is not None and _sha256(sh.data) != want:
                    return False
            return True
        host = np.asarray(jax.device_get(value))
        return all(_sha256(host[_index_slices(key)]) == want for key, want in table.items())
    if meta.get("sha256") is not None:
        return _digest(value) == meta["sha256"]
    return True


def _encode_leaf(path: str, leaf: Any) -> Tuple[Optional[Any], Dict[str, Any]]:
    """(what Orbax stores, or None; the leaf's record in meta)."""
    if isinstance(leaf, (bool, np.bool_)) and not isinstance(leaf, np.ndarray):
        return None, {"kind": "bool", "value": bool(leaf)}
    if isinstance(leaf, int) and not isinstance(leaf, np.integer):
        return None, {"kind": "int", "value": int(leaf)}
    if isinstance(leaf, float):
        return None, {"kind": "float", "value": float(leaf)}
    if _is_key(leaf):
        data = jax.random.key_data(leaf)
        meta = {"kind": "key", "impl": str(jax.random.key_impl(leaf)), "dtype": str(data.dtype),
                "shape": list(leaf.shape), "data_shape": list(data.shape)}
        arr = data
    elif isinstance(leaf, jax.Array):
        arr, meta = leaf, {"kind": "jax", "dtype": str(leaf.dtype), "shape": list(leaf.shape)}
    elif isinstance(leaf, (np.ndarray, np.generic)):
        arr = np.asarray(leaf)
        meta = {"kind": "numpy", "dtype": str(arr.dtype), "shape": list(arr.shape)}
        if isinstance(leaf, np.generic):
            meta["scalar"] = True  # a NumPy scalar such as np.int64(5), not a 0-d array
    else:
        raise TypeError(
            f"state leaf at {path} has type {type(leaf).__name__}; checkpoints hold arrays, PRNG keys "
            "and Python int/float/bool (register custom classes as pytrees)"
        )
    if np.dtype(arr.dtype) == object:
        raise TypeError(f"state leaf at {path} is an object array; only numeric arrays can be saved")
    if arr.size == 0:  # Orbax refuses zero-size arrays; the shape is all there is to keep
        return None, {**meta, "empty": True}
    if isinstance(arr, jax.Array) and arr.is_fully_addressable and _multi():
        # Orbax refuses an array on one process's devices in a multi-process run ("host local"):
        # it is written from the host like a NumPy leaf (process 0's copy; see _exchange_digests).
        arr = np.asarray(jax.device_get(arr))
    return arr, {**meta, "sha256": _digest(arr)}


def _check_x64(path: str, dtype: np.dtype) -> None:
    if jax.dtypes.canonicalize_dtype(dtype) != dtype:
        raise ValueError(
            f"checkpoint leaf {path} is {dtype} but 64-bit JAX is off; enable it before restoring "
            "(jax.config.update('jax_enable_x64', True) / --x64) so the array is not silently downcast"
        )


def _default_sharding() -> jax.sharding.Sharding:
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def _key_data_sharding(sharding: jax.sharding.Sharding) -> Optional[jax.sharding.Sharding]:
    """The sharding of a key array's key data (the key's trailing axis added, unsharded)."""
    if isinstance(sharding, jax.sharding.NamedSharding):
        return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*sharding.spec, None))
    if isinstance(sharding, jax.sharding.SingleDeviceSharding):
        return sharding
    return None


def _restore_spec(meta: Dict[str, Any], tleaf: Any) -> Any:
    """The abstract leaf Orbax restores into: NumPy for NumPy leaves, else a sharded array.

    In a multi-process run a leaf is read as a global array only when the target leaf is one
    (each process then reads its own shards) and it was saved as one; otherwise every process
    reads the whole leaf to the host (Orbax refuses arrays on one process's devices there) and
    ``_assemble`` places it.
    """
    shape = tuple(meta.get("data_shape", meta["shape"]))
    dtype = np.dtype(jnp.dtype(meta["dtype"]))
    if meta["kind"] == "numpy":
        return np.empty(shape, dtype)
    sharding = getattr(tleaf, "sharding", None)
    if _multi():
        if not (isinstance(sharding, jax.sharding.Sharding) and not sharding.is_fully_addressable
                and "shard_sha256" in meta):
            return np.empty(shape, dtype)
    if not isinstance(sharding, jax.sharding.Sharding):
        sharding = _default_sharding()
    elif meta["kind"] == "key":
        # key data has the key's trailing axis: extend the key's partition spec by None.
        sharding = _key_data_sharding(sharding) or _default_sharding()
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def _decode_leaf(path: str, value: Any, meta: Dict[str, Any], verify: bool = True) -> Any:
    kind = meta["kind"]
    if kind in ("bool", "int", "float"):
        return {"bool": bool, "int": int, "float": float}[kind](meta["value"])
    dtype = np.dtype(jnp.dtype(meta["dtype"]))
    if kind != "numpy":
        _check_x64(path, dtype)
    if meta.get("empty"):
        value = np.zeros(meta.get("data_shape", meta["shape"]), dtype)
    elif verify and not _verify(value, meta):
        raise ValueError(f"checkpoint is corrupted: leaf {path} does not match its recorded SHA-256")
    if kind == "numpy":
        value = np.asarray(value)
        return value[()] if meta.get("scalar") else value
    if not isinstance(value, jax.Array):
        value = jnp.asarray(value)
    if kind == "key":
        return jax.random.wrap_key_data(value, impl=meta["impl"])
    return value


def _check_target(leaf_meta: List[Dict[str, Any]], target: PyTree) -> Tuple[List[Any], Any]:
    saved_paths = [m["path"] for m in leaf_meta]
    paths, leaves, treedef = _leaf_paths(target)
    if paths != saved_paths:
        missing = [p for p in saved_paths if p not in set(paths)]
        extra = [p for p in paths if p not in set(saved_paths)]
        detail = []
        if missing:
            detail.append(f"in the checkpoint but not in target: {missing[:8]}")
        if extra:
            detail.append(f"in target but not in the checkpoint: {extra[:8]}")
        if not detail:
            detail.append("same leaves in a different order")
        raise ValueError("target: pytree structure differs from the checkpoint; " + "; ".join(detail))
    for path, leaf, meta in zip(paths, leaves, leaf_meta):
        if meta["kind"] in ("int", "float", "bool"):
            continue
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            continue  # e.g. None-like placeholders: structure already matched
        if meta["kind"] == "key":
            want_shape, want_dtype = tuple(meta["shape"]), None
            if not jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                raise ValueError(f"target: leaf {path} is {leaf.dtype}, the checkpoint holds a typed PRNG key")
        else:
            want_shape, want_dtype = tuple(meta["shape"]), jnp.dtype(meta["dtype"])
        if tuple(leaf.shape) != want_shape or (want_dtype is not None and jnp.dtype(leaf.dtype) != want_dtype):
            raise ValueError(
                f"target: leaf {path} is {leaf.dtype}{list(leaf.shape)}, "
                f"the checkpoint holds {meta.get('dtype', 'key')}{list(want_shape)}"
            )
    return leaves, treedef


def _unflatten_by_paths(values: List[Any], keypaths: List[Any]) -> PyTree:
    """Nested dicts/lists from key paths (used when no target is given)."""
    root: Dict[Any, Any] = {}
    for kp, value in zip(keypaths, values):
        node = root
        for i, k in enumerate(kp):
            if i == len(kp) - 1:
                node[k] = value
            else:
                node = node.setdefault(k, {})

    def listify(node):
        if not isinstance(node, dict):
            return node
        items = {k: listify(v) for k, v in node.items()}
        if items and all(isinstance(k, int) for k in items) and sorted(items) == list(range(len(items))):
            return [items[i] for i in range(len(items))]
        return items

    if not keypaths or (len(keypaths) == 1 and len(keypaths[0]) == 0):
        return values[0] if values else None
    return listify(root)


def _parse_keypath(path: str) -> List[Any]:
    """Parse ``keystr`` output such as ``['a'][0].mu`` into ['a', 0, 'mu']."""
    out: List[Any] = []
    for m in re.finditer(r"\[('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|-?\d+|[^\]]*)\]|\.([A-Za-z_][A-Za-z0-9_]*)", path):
        if m.group(2) is not None:
            out.append(m.group(2))
            continue
        tok = m.group(1)
        if tok[:1] in "'\"":
            out.append(tok[1:-1])
        elif re.fullmatch(r"-?\d+", tok):
            out.append(int(tok))
        else:
            out.append(tok)
    return out


def _leaf_name(i: int) -> str:
    return f"leaf_{i:05d}"


# --------------------------------------------------------------------------- Orbax plumbing


def _manager(directory: str, keep: Optional[int] = None, *, read_only: bool = False):
    """A synchronous CheckpointManager on ``directory`` (items ``state`` and ``meta``).

    ``read_only`` here means: list and restore only (no folder creation, no clean-up). Orbax's
    own ``read_only`` option is not used for that because it logs three warnings per call.
    """
    ocp = _ocp()

    class _MetaHandler(ocp.JsonCheckpointHandler):
        """The ``meta`` item; its ``finalize`` (run once every item is written, before the
        commit rename) is where the crash-test pause sits."""

        def finalize(self, directory):  # noqa: D401 - Orbax hook
            m = _STEP_RE.match(directory.parent.name.split(".")[0])
            if m:
                _test_pause(int(m.group(1)))
            return super().finalize(directory)

    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    state_handler = ocp.StandardCheckpointHandler()
    meta_handler = _MetaHandler()
    registry.add(_STATE, ocp.args.StandardSave, state_handler)
    registry.add(_STATE, ocp.args.StandardRestore, state_handler)
    registry.add(_META, ocp.args.JsonSave, meta_handler)
    registry.add(_META, ocp.args.JsonRestore, meta_handler)
    options = ocp.CheckpointManagerOptions(
        step_name_format=ocp.step.standard_name_format(step_prefix=_STEP_PREFIX,
                                                       step_format_fixed_length=_STEP_DIGITS),
        preservation_policy=ocp.checkpoint_managers.LatestN(keep),
        todelete_subdir=_TRASH,
        enable_async_checkpointing=False,
        cleanup_tmp_directories=not read_only,  # a killed save's debris (one writer per folder)
        create=not read_only,
    )
    return ocp.CheckpointManager(directory, options=options, handler_registry=registry)


def _empty_trash(directory: str) -> None:
    shutil.rmtree(os.path.join(directory, _TRASH), ignore_errors=True)


def _discard(directory: str, name: str) -> None:
    """Move a finished checkpoint out of the step namespace (atomic rename), then delete it."""
    trash = os.path.join(directory, _TRASH)
    os.makedirs(trash, exist_ok=True)
    dest = os.path.join(trash, f"{name}-{secrets.token_hex(4)}")
    os.replace(os.path.join(directory, name), dest)
    shutil.rmtree(dest, ignore_errors=True)


def _is_legacy(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, _LEGACY_META)) and not os.path.isdir(os.path.join(folder, _META))


# --------------------------------------------------------------------------- public API


def all_steps(directory: Any) -> List[int]:
    """Steps of the complete checkpoints in ``directory``, ascending (temporary folders ignored)."""
    directory = _check_directory(directory)
    if not os.path.isdir(directory):
        return []
    return sorted(int(s) for s in _manager(directory, read_only=True).all_steps())


def latest_step(directory: Any) -> Optional[int]:
    """The newest complete checkpoint's step, or None when there is none."""
    steps = all_steps(directory)
    return steps[-1] if steps else None


def temporary_dirs(directory: Any) -> List[str]:
    """Names of unfinished (temporary) checkpoint folders in ``directory``: a killed save's debris."""
    directory = _check_directory(directory)
    suffix = _ocp().path.atomicity_types.TMP_DIR_SUFFIX  # ".orbax-checkpoint-tmp"
    try:
        return sorted(n for n in os.listdir(directory) if suffix in n)
    except FileNotFoundError:
        return []


def save(directory: Any, step: int, state: PyTree, *, config: Dict[str, Any], keep: Optional[int] = 3) -> str:
    """Write ``state`` at ``step`` atomically; keep the newest ``keep`` checkpoints.

    Args:
      directory: the checkpoint folder (created if missing).
      step: int >= 0, the training step this state belongs to (names the folder).
      state: any pytree of arrays (``jax.Array``, sharded ones included; NumPy),
        PRNG keys and Python int/float/bool.
      config: JSON-serialisable dict; ``restore`` refuses a different one.
      keep: how many checkpoints to keep (>= 1), or None to keep all.

    Saving a step that already exists replaces it (the old copy is moved to
    ``DIR/.trash`` first). Returns the path of the written checkpoint folder.
    """
    directory = _check_directory(directory)
    step = _check_step(step)
    if keep is not None:
        keep = check_int(keep, "keep")
    cfg = _normalize_config(config)

    paths, leaves, treedef = _leaf_paths(state)
    arrays: Dict[str, Any] = {}
    leaf_meta, encoded = [], []
    for i, (path, leaf) in enumerate(zip(paths, leaves)):
        arr, meta = _encode_leaf(path, leaf)
        if arr is not None:
            arrays[_leaf_name(i)] = arr
            meta["name"] = _leaf_name(i)
        leaf_meta.append({"path": path, **meta})
        encoded.append(arr)
    if _multi():
        _exchange_digests(paths, encoded, leaf_meta)
    meta = {"format_version": FORMAT_VERSION, "step": step, "config": cfg, "treedef": str(treedef),
            "leaves": leaf_meta}

    ocp = _ocp()
    name = _step_dirname(step)
    primary = jax.process_index() == 0  # Orbax's primary host; the others only write their shards
    if primary:
        os.makedirs(directory, exist_ok=True)
        _empty_trash(directory)
        if os.path.isdir(os.path.join(directory, name)):
            _discard(directory, name)
    if jax.process_count() > 1:
        ocp.multihost.sync_global_processes("mbpo_grad.checkpoint.save:prepared")
    items = {_META: ocp.args.JsonSave(meta)}
    if arrays:
        items[_STATE] = ocp.args.StandardSave(arrays)
    mgr = _manager(directory, keep)
    try:
        mgr.save(step, args=ocp.args.Composite(**items), force=True)
        mgr.wait_until_finished()
    finally:
        mgr.close()
    if primary:
        _empty_trash(directory)
    return os.path.join(directory, name)


def read_meta(directory: Any, step: Optional[int] = None) -> Dict[str, Any]:
    """The JSON record of a checkpoint (step, config, per-leaf path/kind/dtype/shape), no arrays."""
    directory = _check_directory(directory)
    step, folder = _find(directory, step)
    if _is_legacy(folder):
        with open(os.path.join(folder, _LEGACY_META), "rb") as f:
            return json.loads(f.read().decode())
    mgr = _manager(directory, read_only=True)
    try:
        return mgr.restore(step, args=_ocp().args.Composite(**{_META: _ocp().args.JsonRestore()}))[_META]
    finally:
        mgr.close()


def _find(directory: str, step: Optional[int]) -> Tuple[int, str]:
    if step is None:
        step = latest_step(directory)
        if step is None:
            raise FileNotFoundError(f"directory: no complete checkpoint in {directory!r}")
    else:
        step = _check_step(step)
        if step not in all_steps(directory):
            raise FileNotFoundError(
                f"step: no checkpoint for step {step} in {directory!r} (have {all_steps(directory)})")
    return step, os.path.join(directory, _step_dirname(step))


def _check_config(folder: str, saved: Dict[str, Any], cfg: Dict[str, Any]) -> None:
    diff = config_diff(saved, cfg)
    if diff:
        raise ValueError(
            f"config: the checkpoint in {folder!r} was written under a different config; differing keys: "
            + "; ".join(diff)
        )


def _assemble(step: int, values: List[Any], leaf_meta: List[Dict[str, Any]], target: Optional[PyTree],
              target_leaves: Optional[List[Any]], treedef: Any) -> Tuple[int, PyTree]:
    if target is None:
        return step, _unflatten_by_paths(values, [_parse_keypath(m["path"]) for m in leaf_meta])
    placed = []
    for value, tleaf in zip(values, target_leaves):
        sharding = getattr(tleaf, "sharding", None)
        if isinstance(value, jax.Array) and isinstance(sharding, jax.sharding.Sharding) and \
                value.sharding != sharding:
            if _is_key(value) and not sharding.is_fully_addressable:
                # device_put refuses a key array for a sharding over several processes: place its data.
                data = jax.device_put(jax.random.key_data(value), _key_data_sharding(sharding))
                value = jax.random.wrap_key_data(data, impl=jax.random.key_impl(value))
            else:
                value = jax.device_put(value, sharding)
        placed.append(value)
    return step, jax.tree_util.tree_unflatten(treedef, placed)


def restore(
    directory: Any,
    *,
    config: Dict[str, Any],
    step: Optional[int] = None,
    target: Optional[PyTree] = None,
) -> Tuple[int, PyTree]:
    """Load a checkpoint: ``(step, state)``, bit-identical to what was saved.

    Args:
      directory: the checkpoint folder given to ``save``.
      config: the current run's config; a difference from the stored one raises
        ``ValueError`` listing the differing keys (dotted for nested dicts).
      step: which checkpoint; None (default) takes the newest complete one.
      target: a pytree with the saved structure (e.g. the freshly initialised
        train state, or ``jax.eval_shape`` of it). With it the state comes back
        with exactly that structure (optax NamedTuples, dataclasses) and every
        leaf is checked for shape and dtype; arrays are restored with the target
        leaf's sharding when it has one (multi-host: each process reads its
        shards). Without it, containers come back as nested dicts and lists
        keyed like the saved tree. NumPy leaves come back as NumPy, JAX arrays
        as JAX arrays, Python scalars as Python scalars.

    Raises:
      FileNotFoundError when there is no (such) checkpoint; ValueError for a
      config or structure mismatch or a corrupted leaf.
    """
    directory = _check_directory(directory)
    cfg = _normalize_config(config)
    step, folder = _find(directory, step)
    if _is_legacy(folder):
        return _restore_legacy(folder, cfg, target)
    ocp = _ocp()
    mgr = _manager(directory, read_only=True)
    try:
        meta = mgr.restore(step, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()}))[_META]
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"checkpoint {folder!r} has format version {meta.get('format_version')}, "
                             f"expected {FORMAT_VERSION}")
        _check_config(folder, meta["config"], cfg)
        leaf_meta = meta["leaves"]
        target_leaves, treedef = _check_target(leaf_meta, target) if target is not None else (None, None)
        for m in leaf_meta:  # refuse before reading anything
            if m["kind"] not in ("numpy", "bool", "int", "float"):
                _check_x64(m["path"], np.dtype(jnp.dtype(m["dtype"])))
        specs = {m["name"]: _restore_spec(m, None if target_leaves is None else target_leaves[i])
                 for i, m in enumerate(leaf_meta) if "name" in m}
        arrays = {}
        if specs:
            arrays = mgr.restore(step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(specs)}))[_STATE]
    finally:
        mgr.close()
    if _multi():  # every process checks its part; all of them raise together
        ok = np.asarray([m.get("empty") or "name" not in m or _verify(arrays.get(m["name"]), m)
                         for m in leaf_meta], np.uint8)
        bad = np.flatnonzero(_allgather(ok).min(axis=0) == 0) if ok.size else []
        if len(bad):
            raise ValueError(f"checkpoint is corrupted: leaf {leaf_meta[bad[0]]['path']} does not match "
                             "its recorded SHA-256")
    values = [_decode_leaf(m["path"], arrays.get(m.get("name")), m, verify=not _multi()) for m in leaf_meta]
    return _assemble(int(meta["step"]), values, leaf_meta, target, target_leaves, treedef)


# --------------------------------------------------------------------------- format 1 (read only)


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _restore_legacy(folder: str, cfg: Dict[str, Any], target: Optional[PyTree]) -> Tuple[int, PyTree]:
    """Read a format-1 folder (``arrays.npz`` + ``meta.json``, written by mbpo_grad before Orbax)."""
    with open(os.path.join(folder, _LEGACY_META), "rb") as f:
        meta = json.loads(f.read().decode())
    if meta.get("format_version") != 1:
        raise ValueError(f"checkpoint {folder!r} holds {_LEGACY_META} of format version "
                         f"{meta.get('format_version')}; this mbpo_grad reads format 1 and {FORMAT_VERSION}")
    _check_config(folder, meta["config"], cfg)
    arrays_path = os.path.join(folder, _LEGACY_ARRAYS)
    if _sha256_file(arrays_path) != meta["sha256"][_LEGACY_ARRAYS]:
        raise ValueError(f"checkpoint {folder!r} is corrupted: {_LEGACY_ARRAYS} does not match its recorded SHA-256")
    leaf_meta = meta["leaves"]
    target_leaves, treedef = _check_target(leaf_meta, target) if target is not None else (None, None)
    with np.load(arrays_path, allow_pickle=False) as npz:
        raw = [npz[f"leaf_{i}"] for i in range(len(leaf_meta))]
    values = []
    for arr, m in zip(raw, leaf_meta):
        kind = m["kind"]
        if kind in ("bool", "int", "float"):
            values.append({"bool": bool, "int": int, "float": float}[kind](arr))
            continue
        dtype = np.dtype(jnp.dtype(m["dtype"]))
        if kind == "key":
            values.append(jax.random.wrap_key_data(jnp.asarray(arr), impl=m["impl"]))
            continue
        arr = (arr.view(dtype) if arr.dtype != dtype else arr).reshape(m["shape"])
        if kind == "numpy":
            values.append(arr[()] if m.get("scalar") else arr)
        else:
            _check_x64(m["path"], dtype)
            values.append(jnp.asarray(arr))
    return _assemble(int(meta["step"]), values, leaf_meta, target, target_leaves, treedef)


# --------------------------------------------------------------------------- single snapshots (policies)


def save_pytree(path: Any, tree: PyTree, *, metadata: Dict[str, Any], overwrite: bool = True) -> str:
    """Save one pytree of arrays (e.g. a run's final policy parameters and observation
    normaliser) as an Orbax checkpoint at ``path``, atomically, with a JSON ``metadata`` dict.

    Orbax's StandardCheckpointHandler writes into ``path.orbax-checkpoint-tmp`` and renames it to
    ``path`` when complete, so ``path`` either holds the whole tree or does not exist; the
    metadata travels in the same commit (Orbax's step metadata, ``custom_metadata``). An
    existing ``path`` is replaced (``overwrite=False`` raises ``FileExistsError`` instead): the
    new tree is committed beside it first, then the folders are swapped by two renames (a crash
    between them leaves ``.NAME.old`` and ``.NAME.new``, never a partial ``path``). In a
    multi-host run every process calls it with the same arguments.
    Leaves: arrays (JAX, sharded ones included; NumPy), typed PRNG keys, Python scalars.
    Returns ``path``.
    """
    path = _check_directory(path, "path")
    meta = _normalize_config(metadata, "metadata")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"path: {path!r} exists (pass overwrite=True to replace it)")
    ocp = _ocp()
    parent, name = os.path.split(path)
    primary, multi = jax.process_index() == 0, jax.process_count() > 1
    dest = path if not os.path.exists(path) else os.path.join(parent, f".{name}.new")  # same on every host
    if primary:
        os.makedirs(parent, exist_ok=True)
        if dest != path:
            shutil.rmtree(dest, ignore_errors=True)  # a crashed replacement's leftover
    if multi:
        ocp.multihost.sync_global_processes("mbpo_grad.checkpoint.save_pytree:prepared")
    if multi:  # Orbax refuses arrays on one process's devices there: write them from the host (process 0's)
        tree = jax.tree_util.tree_map(
            lambda x: np.asarray(x) if isinstance(x, jax.Array) and x.is_fully_addressable and not _is_key(x) else x,
            tree)
    ckptr = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    try:
        ckptr.save(dest, args=ocp.args.StandardSave(tree), custom_metadata={"mbpo_grad": meta})
    finally:
        ckptr.close()
    if dest != path and primary:
        old = os.path.join(parent, f".{name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(dest, path)
        shutil.rmtree(old, ignore_errors=True)
    if multi:
        ocp.multihost.sync_global_processes("mbpo_grad.checkpoint.save_pytree:done")
    return path


def _like_target(tleaf: Any, value: Any) -> Any:
    """A restored leaf as the target leaf's type: NumPy for NumPy, else a JAX array with the
    target's sharding (Orbax returns a leaf saved from NumPy as NumPy whatever the target)."""
    if isinstance(tleaf, (np.ndarray, np.generic)):
        return np.asarray(value)
    if isinstance(tleaf, (jax.Array, jax.ShapeDtypeStruct)) and not isinstance(value, jax.Array):
        sharding = getattr(tleaf, "sharding", None)
        return jax.device_put(value, sharding if isinstance(sharding, jax.sharding.Sharding) else _default_sharding())
    return value


def load_pytree(path: Any, *, target: Optional[PyTree] = None) -> Tuple[PyTree, Dict[str, Any]]:
    """Load what ``save_pytree`` wrote: ``(tree, metadata)``.

    Without ``target`` the tree comes back as nested dicts/lists of NumPy arrays with the saved
    dtypes (float64 stays float64 even with 64-bit JAX off; NamedTuples become dicts by field
    name, a typed PRNG key its key data, a Python scalar a 0-d array). With ``target`` (a pytree of arrays
    or ``jax.ShapeDtypeStruct``, e.g. from ``jax.eval_shape``) it takes the target's structure
    (NamedTuples) and leaf types, with the target leaves' shardings.
    """
    path = _check_directory(path, "path")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"path: no saved pytree at {path!r}")
    ocp = _ocp()
    ckptr = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    try:
        step_meta = ckptr.metadata(path)
        custom = dict(step_meta.custom_metadata or {})
        if target is None:
            abstract = jax.tree_util.tree_map(
                lambda m: np.empty(m.shape, np.dtype(m.dtype)) if hasattr(m, "shape") else m,
                step_meta.item_metadata.tree if hasattr(step_meta.item_metadata, "tree") else step_meta.item_metadata)
            tree = ckptr.restore(path, args=ocp.args.StandardRestore(abstract))
            tree = jax.tree_util.tree_map(lambda x: np.asarray(x) if isinstance(x, jax.Array) else x, tree)
        else:
            tree = ckptr.restore(path, args=ocp.args.StandardRestore(target))
            tree = jax.tree_util.tree_map(_like_target, target, tree)
    finally:
        ckptr.close()
    return tree, custom.get("mbpo_grad", {})
