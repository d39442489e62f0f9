"""Atomic checkpoints of any pytree train state, guarded by the run's config.

    mg.checkpoint.save(run_dir / "ckpt", step, state, config=config, keep=3)
    step, state = mg.checkpoint.restore(run_dir / "ckpt", config=config, target=state)

``state`` is whatever the caller needs to continue: parameters, optimizer state
(optax NamedTuples), normalisers, replay buffer, PRNG key (raw ``uint32[2]`` or
typed ``jax.random.key``), Python ints such as the step. ``config`` is a
JSON-serialisable dict stored beside the arrays; restoring under a different
config raises ``ValueError`` naming the differing keys.

Layout, one folder per step::

    DIR/step_0000001000/arrays.npz   every leaf, in tree-flatten order (leaf_0, leaf_1, ...)
    DIR/step_0000001000/meta.json    step, config, key path / kind / dtype / shape per leaf,
                                     treedef text, SHA-256 of arrays.npz

Atomicity (the crash contract). A save writes both files into a fresh
temporary folder ``DIR/.tmp-step_…-<pid>-<random>`` in the same parent, flushes
and ``fsync``s each file and the folder, then renames the folder into place
(``os.replace``; a rename within one filesystem is atomic on POSIX) and
``fsync``s ``DIR``. A checkpoint therefore either exists completely under its
final name or not at all: a process killed at any point of ``save`` leaves every
earlier checkpoint untouched, and the only debris is a ``.tmp-*`` folder, which
``latest_step``/``restore`` never look at and the next ``save`` deletes (when the
process that wrote it is no longer alive). Old checkpoints beyond ``keep`` are
first renamed to a ``.trash-*`` name and then deleted, so a crash during
deletion never leaves a half-deleted folder under a valid name. ``restore``
verifies the SHA-256 recorded in ``meta.json`` before reading any array.

Why our own format instead of Orbax (orbax-checkpoint is installed and also
finalises through a temporary folder and a rename): the crash contract above is
the whole point of this module, and with one ``.npz`` plus one JSON file written
synchronously by the calling thread it can be read off a few hundred lines and tested by
killing a writer, with no background commit threads, barriers or TensorStore
layers in between. The format also handles exactly what the agents store —
typed PRNG keys (saved as raw key data plus the implementation name), optax
NamedTuple states and Python scalars restored through ``target`` with a
structure check that names the mismatching leaf path — and costs nothing to
import. The arrays are ordinary NumPy ``.npz`` content, readable without
mbpo_grad. One writer per checkpoint folder (multi-host: only process 0 saves).
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

PyTree = Any

__all__ = ["save", "restore", "latest_step", "all_steps", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_STEP_RE = re.compile(r"^step_(\d+)$")
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_ARRAYS = "arrays.npz"
_META = "meta.json"
# Crash-test hook for programs that save (e.g. ``experiments.train``): with
# MBPO_GRAD_CHECKPOINT_PAUSE="<step>:<seconds>" the save of that step sleeps after writing
# arrays.npz into its temporary folder, so a test can SIGKILL the process at a known point
# mid-write. Unset (always, outside such tests) it does nothing.
_PAUSE_ENV = "MBPO_GRAD_CHECKPOINT_PAUSE"


def _test_pause(step: int) -> None:
    spec = os.environ.get(_PAUSE_ENV)
    if not spec:
        return
    want, _, seconds = spec.partition(":")
    if int(want) == step:
        time.sleep(float(seconds or 60.0))


# --------------------------------------------------------------------------- helpers


def _step_dirname(step: int) -> str:
    return f"step_{step:010d}"


def _check_directory(directory: Any) -> str:
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"directory must be a str or os.PathLike, got {type(directory).__name__}")
    return os.fspath(directory)


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


def _normalize_config(config: Any) -> Dict[str, Any]:
    """The config as it reads back from JSON (tuples become lists, keys strings)."""
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict (JSON-serialisable), got {type(config).__name__}")
    try:
        text = json.dumps(config, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError) as err:
        raise TypeError(f"config must be JSON-serialisable: {err}") from None
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


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _encode_leaf(path: str, leaf: Any) -> Tuple[np.ndarray, Dict[str, Any]]:
    """A leaf as a NumPy array that ``np.savez`` stores exactly, plus what rebuilds it."""
    if isinstance(leaf, (bool, np.bool_)) and not isinstance(leaf, np.ndarray):
        return np.asarray(bool(leaf)), {"kind": "bool"}
    if isinstance(leaf, (int,)) and not isinstance(leaf, np.integer):
        return np.asarray(leaf, dtype=np.int64), {"kind": "int"}
    if isinstance(leaf, float):
        return np.asarray(leaf, dtype=np.float64), {"kind": "float"}
    if _is_key(leaf):
        data = np.asarray(jax.random.key_data(leaf))
        return data, {"kind": "key", "impl": str(jax.random.key_impl(leaf)), "dtype": str(data.dtype),
                      "shape": list(leaf.shape)}
    if isinstance(leaf, jax.Array):
        kind = "jax"
        arr = np.asarray(jax.device_get(leaf))
    elif isinstance(leaf, (np.ndarray, np.generic)):
        kind = "numpy"
        arr = np.asarray(leaf)
    else:
        raise TypeError(
            f"state leaf at {path} has type {type(leaf).__name__}; checkpoints hold arrays, PRNG keys "
            "and Python int/float/bool (register custom classes as pytrees)"
        )
    if arr.dtype == object:
        raise TypeError(f"state leaf at {path} is an object array; only numeric arrays can be saved")
    meta = {"kind": kind, "dtype": str(arr.dtype), "shape": list(arr.shape)}
    if isinstance(leaf, np.generic):
        meta["scalar"] = True  # a NumPy scalar such as np.int64(5), not a 0-d array
    if arr.dtype.type.__module__ != "numpy":  # bfloat16, float8 ... (ml_dtypes): store the raw bits
        arr = arr.view(np.dtype(f"u{arr.dtype.itemsize}"))
    return arr, meta


def _decode_leaf(path: str, arr: np.ndarray, meta: Dict[str, Any]) -> Any:
    kind = meta["kind"]
    if kind == "bool":
        return bool(arr)
    if kind == "int":
        return int(arr)
    if kind == "float":
        return float(arr)
    if kind == "key":
        return jax.random.wrap_key_data(jnp.asarray(arr), impl=meta["impl"])
    dtype = jnp.dtype(meta["dtype"])
    if arr.dtype != dtype:
        arr = arr.view(dtype)
    arr = arr.reshape(meta["shape"])
    if kind == "numpy":
        return arr[()] if meta.get("scalar") else arr
    if jax.dtypes.canonicalize_dtype(dtype) != dtype:
        raise ValueError(
            f"checkpoint leaf {path} is {dtype} but 64-bit JAX is off; enable it before restoring "
            "(jax.config.update('jax_enable_x64', True) / --x64) so the array is not silently downcast"
        )
    return jnp.asarray(arr)


def _leaf_paths(tree: PyTree) -> Tuple[List[str], List[Any], Any]:
    with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
    paths = [jax.tree_util.keystr(p) for p, _ in with_path]
    leaves = [leaf for _, leaf in with_path]
    return paths, leaves, treedef


def _entries(directory: str) -> List[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def _cleanup_debris(directory: str) -> None:
    """Delete temporary folders of dead writers and trash folders."""
    for name in _entries(directory):
        full = os.path.join(directory, name)
        if name.startswith(_TRASH_PREFIX):
            shutil.rmtree(full, ignore_errors=True)
        elif name.startswith(_TMP_PREFIX):
            parts = name.split("-")
            try:
                pid = int(parts[-2])
            except (IndexError, ValueError):
                pid = -1
            if pid < 0 or not _pid_alive(pid) or pid == os.getpid():
                shutil.rmtree(full, ignore_errors=True)


def _discard(directory: str, name: str) -> None:
    """Rename a finished checkpoint out of the valid namespace, then delete it."""
    trash = os.path.join(directory, f"{_TRASH_PREFIX}{name}-{os.getpid()}-{secrets.token_hex(4)}")
    os.replace(os.path.join(directory, name), trash)
    _fsync_dir(directory)
    shutil.rmtree(trash, ignore_errors=True)


# --------------------------------------------------------------------------- public API


def all_steps(directory: Any) -> List[int]:
    """Steps of the complete checkpoints in ``directory``, ascending (temporary folders ignored)."""
    directory = _check_directory(directory)
    steps = []
    for name in _entries(directory):
        m = _STEP_RE.match(name)
        if m and os.path.isfile(os.path.join(directory, name, _META)):
            steps.append(int(m.group(1)))
    return sorted(steps)


def latest_step(directory: Any) -> Optional[int]:
    """The newest complete checkpoint's step, or None when there is none."""
    steps = all_steps(directory)
    return steps[-1] if steps else None


def save(directory: Any, step: int, state: PyTree, *, config: Dict[str, Any], keep: Optional[int] = 3) -> str:
    """Write ``state`` at ``step`` atomically; keep the newest ``keep`` checkpoints.

    Args:
      directory: the checkpoint folder (created if missing).
      step: int >= 0, the training step this state belongs to (names the folder).
      state: any pytree of arrays, PRNG keys and Python scalars. Arrays are fetched
        to the host (sharded arrays must be fully addressable, i.e. call this on a
        single host or after gathering).
      config: JSON-serialisable dict; ``restore`` refuses a different one.
      keep: how many checkpoints to keep (>= 1), or None to keep all.

    Saving a step that already exists replaces it (the old copy is renamed away
    just before the new one is renamed in).

    Returns the path of the written checkpoint folder.
    """
    directory = _check_directory(directory)
    step = _check_step(step)
    if keep is not None:
        if isinstance(keep, bool) or not isinstance(keep, (int, np.integer)) or keep < 1:
            raise ValueError(f"keep must be an int >= 1 or None, got {keep!r}")
    cfg = _normalize_config(config)

    paths, leaves, treedef = _leaf_paths(state)
    arrays: Dict[str, np.ndarray] = {}
    leaf_meta = []
    for i, (path, leaf) in enumerate(zip(paths, leaves)):
        arr, meta = _encode_leaf(path, leaf)
        arrays[f"leaf_{i}"] = arr
        leaf_meta.append({"path": path, **meta})

    os.makedirs(directory, exist_ok=True)
    _cleanup_debris(directory)
    name = _step_dirname(step)
    tmp = os.path.join(directory, f"{_TMP_PREFIX}{name}-{os.getpid()}-{secrets.token_hex(4)}")
    os.mkdir(tmp)
    try:
        arrays_path = os.path.join(tmp, _ARRAYS)
        with open(arrays_path, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        _test_pause(step)
        meta = {
            "format_version": FORMAT_VERSION,
            "step": step,
            "config": cfg,
            "treedef": str(treedef),
            "leaves": leaf_meta,
            "sha256": {_ARRAYS: _sha256(arrays_path)},
        }
        _write_file(os.path.join(tmp, _META), json.dumps(meta, indent=1, sort_keys=True).encode())
        _fsync_dir(tmp)
        final = os.path.join(directory, name)
        if os.path.exists(final):
            _discard(directory, name)
        os.replace(tmp, final)
        _fsync_dir(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    if keep is not None:
        for old in all_steps(directory)[:-keep]:
            _discard(directory, _step_dirname(old))
    return final


def _check_target(saved_paths: List[str], leaf_meta: List[Dict[str, Any]], target: PyTree) -> Tuple[List[Any], Any]:
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
            last = i == len(kp) - 1
            if last:
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
        leaf is checked for shape and dtype; arrays are placed with the target
        leaf's sharding when it has one. Without it, containers come back as
        nested dicts and lists keyed like the saved tree.

    Raises:
      FileNotFoundError when there is no (such) checkpoint; ValueError for a
      config or structure mismatch or a corrupted file.
    """
    directory = _check_directory(directory)
    cfg = _normalize_config(config)
    if step is None:
        step = latest_step(directory)
        if step is None:
            raise FileNotFoundError(f"directory: no complete checkpoint in {directory!r}")
    else:
        step = _check_step(step)
    folder = os.path.join(directory, _step_dirname(step))
    meta_path = os.path.join(folder, _META)
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"step: no checkpoint for step {step} in {directory!r} (have {all_steps(directory)})")
    with open(meta_path, "rb") as f:
        meta = json.loads(f.read().decode())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"checkpoint {folder!r} has format version {meta.get('format_version')}, expected {FORMAT_VERSION}")
    diff = config_diff(meta["config"], cfg)
    if diff:
        raise ValueError(
            f"config: the checkpoint in {folder!r} was written under a different config; differing keys: "
            + "; ".join(diff)
        )
    arrays_path = os.path.join(folder, _ARRAYS)
    digest = _sha256(arrays_path)
    if digest != meta["sha256"][_ARRAYS]:
        raise ValueError(f"checkpoint {folder!r} is corrupted: {_ARRAYS} does not match its recorded SHA-256")

    leaf_meta = meta["leaves"]
    saved_paths = [m["path"] for m in leaf_meta]
    with np.load(arrays_path, allow_pickle=False) as npz:
        raw = [npz[f"leaf_{i}"] for i in range(len(leaf_meta))]
    values = [_decode_leaf(m["path"], a, m) for a, m in zip(raw, leaf_meta)]

    if target is None:
        state = _unflatten_by_paths(values, [_parse_keypath(p) for p in saved_paths])
        return int(meta["step"]), state

    target_leaves, treedef = _check_target(saved_paths, leaf_meta, target)
    placed = []
    for value, tleaf in zip(values, target_leaves):
        sharding = getattr(tleaf, "sharding", None)
        if isinstance(value, jax.Array) and isinstance(sharding, jax.sharding.Sharding):
            value = jax.device_put(value, sharding)
        placed.append(value)
    return int(meta["step"]), jax.tree_util.tree_unflatten(treedef, placed)
