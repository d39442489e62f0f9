"""Sweeps as one compiled program: ``vmap`` a training function over seeds × hyper-parameters.

    def train(key, hp):                       # pure and jittable
        opt = optax.adam(hp["lr"])            # float hyper-parameters arrive as traced scalars
        ...                                    # lax.scan over updates
        return {"return": returns_every_k}     # keep metrics small: summaries every k updates

    metrics = mg.sweep(train, seeds=16, hparams={"lr": [1e-3, 3e-4], "lam": [0.9, 0.95]})
    metrics["return"].shape                   # [n_grid=4, n_seeds=16, ...]

What is batched: the flattened run axis ``n_grid * n_seeds`` is one ``jax.vmap``
axis inside a single ``jax.jit``; every (grid point, seed) pair is one lane.
Changing hyper-parameter *values* (same number of values) reuses the compiled
program; changing the number of seeds or grid points, or anything that fixes a
shape (horizon, network width, batch size), is a new program: close over such
static settings (``functools.partial``) and call ``sweep`` once per setting.
The compiled program is cached per ``train_fn`` object, so define ``train_fn``
once rather than as a fresh lambda in a loop.

Sharding: with ``shard=True`` (default) the run axis is laid out over every
visible device with a 1-D ``jax.sharding.Mesh`` and ``NamedSharding(mesh,
P("runs"))``; the batch is padded to a multiple of the device count (padding
lanes repeat the first run and are dropped afterwards). On an 8-GPU host all
eight devices work with no code change; on one device this is plain
``jit(vmap(...))``.

Several processes (hosts): call ``initialize_distributed()`` (a thin wrapper of
``jax.distributed.initialize``) first thing in every process, then call
``sweep`` with identical arguments in every process. ``jax.devices()`` then
spans all processes, so the run axis is laid out over every device of every
process (each process computes the runs on its own devices; the inputs are
built from the same host arrays everywhere with ``make_array_from_callback``),
and the metrics are all-gathered (``multihost_utils.process_allgather``) so
every process gets the full result, equal to a single-process sweep's. The
processes' seeds and hyper-parameter values are compared first (one small
collective): a process that passes other values gets a ValueError instead of a
silently mixed result. With ``shard=False`` every process runs the whole sweep
on its own first device, independently. CPU processes talk through gloo (JAX's
default ``jax_cpu_collectives_implementation``); GPUs through NCCL.

Metrics come back on the host as NumPy arrays with leading axes
``[n_grid, n_seeds]``; ``grid_points`` gives the hyper-parameter values of each
grid index, in the same order.
"""
from __future__ import annotations

import hashlib
import inspect
import itertools
import weakref
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any

__all__ = ["sweep", "grid_points", "initialize_distributed", "AXIS"]

AXIS = "runs"

# train_fn (or a bound method's instance) -> {(seed kind, shard, devices): jitted batched function}
_CACHE: "weakref.WeakKeyDictionary[Callable, Dict[Any, Callable]]" = weakref.WeakKeyDictionary()


def initialize_distributed(**kwargs) -> None:
    """Join a multi-process run: ``jax.distributed.initialize(**kwargs)`` unless already joined.

    Call it in every process before any other JAX call. On managed clusters no
    arguments are needed: under SLURM (``srun``, one task per host)
    ``jax.distributed.initialize`` reads ``SLURM_STEP_NODELIST`` (the coordinator is the
    first node, on a port derived from ``SLURM_JOB_ID``), ``SLURM_NTASKS``, ``SLURM_PROCID``
    and ``SLURM_LOCALID``; Cloud TPU and Open MPI are detected likewise. Otherwise pass ``coordinator_address="host:port",
    num_processes=N, process_id=i`` (the same address and N everywhere, i = 0..N-1).
    Afterwards ``jax.devices()`` lists every process's devices and
    ``jax.local_devices()`` this process's own. CPU processes exchange data through
    gloo, JAX's default ``jax_cpu_collectives_implementation``: nothing to configure.
    """
    if jax.distributed.is_initialized():
        return
    jax.distributed.initialize(**kwargs)


def _as_values(name: str, values: Any) -> np.ndarray:
    if isinstance(values, (jax.Array,)) and not isinstance(values, jax.core.Tracer):
        arr = np.asarray(values)
    elif isinstance(values, jax.core.Tracer):
        raise TypeError(f"hparams[{name!r}] must hold concrete values (the sweep traces them itself)")
    else:
        arr = np.asarray(values)
    if arr.ndim == 0:
        raise ValueError(f"hparams[{name!r}] must be a 1-D list/array of values to sweep over, got a scalar {arr}; "
                         "close over fixed values in train_fn instead")
    if arr.shape[0] == 0:
        raise ValueError(f"hparams[{name!r}] is empty; give at least one value")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
            or np.issubdtype(arr.dtype, np.bool_)):
        raise TypeError(f"hparams[{name!r}] must be numeric (traced values); got dtype {arr.dtype}. "
                        "Strings and shape-fixing settings are static: close over them in train_fn")
    return arr


def grid_points(hparams: Mapping[str, Any], *, grid: bool = True) -> Dict[str, np.ndarray]:
    """The hyper-parameter values at each grid index: ``{name: array [n_grid, ...]}``.

    ``grid=True``: the Cartesian product in ``itertools.product`` order over the
    dict's insertion order (the first name varies slowest). ``grid=False``: the
    values are zipped (all names need the same number of values).
    """
    if not isinstance(hparams, Mapping):
        raise TypeError(f"hparams must be a dict name -> values, got {type(hparams).__name__}")
    for name in hparams:
        if not isinstance(name, str):
            raise TypeError(f"hparams keys must be str, got {name!r}")
    values = {name: _as_values(name, v) for name, v in hparams.items()}
    if not values:
        return {}
    if grid:
        index = list(itertools.product(*[range(v.shape[0]) for v in values.values()]))
        idx = np.asarray(index, dtype=np.int64).reshape(len(index), len(values))
        return {name: v[idx[:, i]] for i, (name, v) in enumerate(values.items())}
    lengths = {name: v.shape[0] for name, v in values.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"hparams: with grid=False every name needs the same number of values, got {lengths}")
    return dict(values)


def _seed_batch(seeds: Any):
    """(host array to shard, kind, n) for int seeds, raw uint32 keys or typed keys."""
    if isinstance(seeds, (bool, np.bool_)):
        raise TypeError(f"seeds must be an int count, a 1-D array of int seeds or a batch of PRNG keys, got {seeds!r}")
    if isinstance(seeds, (int, np.integer)):
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1 when given as a count, got {seeds}")
        return np.arange(int(seeds), dtype=np.int32), ("int",), int(seeds)
    if isinstance(seeds, jax.Array) and jax.dtypes.issubdtype(seeds.dtype, jax.dtypes.prng_key):
        if seeds.ndim != 1 or seeds.shape[0] == 0:
            raise ValueError(f"seeds: a typed key batch must have shape [n_seeds], got {seeds.shape}")
        impl = jax.random.key_impl(seeds)
        return np.asarray(jax.random.key_data(seeds)), ("typed", impl), seeds.shape[0]
    arr = np.asarray(seeds)
    if arr.ndim == 1 and np.issubdtype(arr.dtype, np.integer):
        if arr.shape[0] == 0:
            raise ValueError("seeds is empty")
        return arr.astype(np.int32), ("int",), arr.shape[0]
    if arr.ndim == 2 and arr.dtype == np.uint32:
        if arr.shape[0] == 0:
            raise ValueError("seeds is empty")
        return arr, ("raw",), arr.shape[0]
    raise ValueError(
        "seeds must be an int count, a 1-D int array of seeds, a [n_seeds, 2] uint32 batch of "
        f"jax.random.PRNGKey keys or a [n_seeds] typed key batch; got dtype {arr.dtype} shape {arr.shape}"
    )


def _batched_fn(train_fn: Callable, kind: tuple, shard: bool, devices: tuple):
    cache_key = (kind, shard, devices)
    owner = train_fn
    if inspect.ismethod(train_fn):  # a bound method is a new object on every attribute access
        owner, cache_key = train_fn.__self__, (train_fn.__func__,) + cache_key
    try:
        per_fn = _CACHE.setdefault(owner, {})
    except TypeError:  # not weak-referenceable: no caching across calls
        per_fn = {}
    if cache_key in per_fn:
        return per_fn[cache_key]

    def one(seed, hp):
        if kind[0] == "int":
            key = jax.random.PRNGKey(seed)
        elif kind[0] == "typed":
            key = jax.random.wrap_key_data(seed, impl=kind[1])
        else:
            key = seed
        return train_fn(key, hp)

    batched = jax.vmap(one)
    if shard:
        sharding = NamedSharding(Mesh(np.asarray(devices), (AXIS,)), PartitionSpec(AXIS))
        fn = jax.jit(batched, in_shardings=sharding, out_shardings=sharding)
    else:
        fn = jax.jit(batched)
    per_fn[cache_key] = fn
    return fn


def _place(host: np.ndarray, sharding: Optional[NamedSharding]):
    if sharding is None:
        return jnp.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _check_same_everywhere(seed_flat: np.ndarray, hp_flat: Dict[str, np.ndarray]) -> None:
    """In a multi-process sweep, refuse seeds / hparams that differ between processes."""
    from jax.experimental import multihost_utils

    def digest(label: str, arrays) -> np.ndarray:
        h = hashlib.sha256(label.encode())
        for a in arrays:
            h.update(str((a.dtype, a.shape)).encode())
            h.update(np.ascontiguousarray(a).tobytes())
        return np.frombuffer(h.digest(), np.uint8)

    names = sorted(hp_flat)
    mine = np.stack([digest("", [seed_flat]), digest("\0".join(names), [hp_flat[k] for k in names])])
    everyone = np.asarray(multihost_utils.process_allgather(mine))  # [n_processes, 2, 32]
    for row, name in enumerate(("seeds", "hparams")):
        if not (everyone[:, row] == everyone[0, row]).all():
            raise ValueError(f"{name}: the processes of this multi-process sweep passed different {name}; "
                             "call sweep with identical arguments in every process")


def _fetch(x: jax.Array) -> np.ndarray:
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def sweep(
    train_fn: Callable[[jax.Array, Dict[str, jax.Array]], PyTree],
    seeds: Union[int, Sequence[int], np.ndarray, jax.Array],
    hparams: Optional[Mapping[str, Any]] = None,
    *,
    grid: bool = True,
    shard: bool = True,
) -> PyTree:
    """Run ``train_fn`` for every (grid point, seed) in one compiled, vmapped program.

    Args:
      train_fn: ``train_fn(key, hp) -> metrics`` for ONE run: pure, jittable;
        ``hp`` maps each name in ``hparams`` to one traced value (a scalar, or an
        array for vector-valued entries). ``key`` is ``jax.random.PRNGKey(seed)``
        for int seeds, or the given key itself.
      seeds: a count n (seeds 0..n-1), a 1-D int array of seeds, a ``[n, 2]``
        uint32 batch of ``PRNGKey`` keys, or a ``[n]`` batch of typed keys.
      hparams: ``{name: values}`` with a leading axis over values; None or {} for
        a seeds-only sweep (``hp`` is then ``{}``).
      grid: True: all combinations (see ``grid_points`` for the order); False:
        values zipped (same number of values per name).
      shard: lay the run axis out over all of ``jax.devices()``, those of every
        process in a multi-process run (see module doc).

    Returns:
      The metrics pytree as NumPy arrays, every leaf with leading axes
      ``[n_grid, n_seeds]`` followed by the leaf's own shape (``n_grid = 1``
      for a seeds-only sweep). Entry ``[g, s]`` is exactly what
      ``train_fn(key_s, {name: grid_points(hparams)[name][g]})`` returns, up to
      floating-point reassociation from batching.
    """
    if not callable(train_fn):
        raise TypeError(f"train_fn must be a callable train_fn(key, hparams) -> metrics, got {type(train_fn).__name__}")
    if not isinstance(grid, bool):
        raise TypeError(f"grid must be a bool, got {grid!r}")
    if not isinstance(shard, bool):
        raise TypeError(f"shard must be a bool, got {shard!r}")
    points = grid_points(hparams or {}, grid=grid)
    n_grid = next(iter(points.values())).shape[0] if points else 1
    seed_host, kind, n_seeds = _seed_batch(seeds)

    # Flattened run axis: run r = g * n_seeds + s.
    seed_flat = np.tile(seed_host, (n_grid,) + (1,) * (seed_host.ndim - 1))
    hp_flat = {name: np.repeat(v, n_seeds, axis=0) for name, v in points.items()}
    n_runs = n_grid * n_seeds

    devices = tuple(jax.devices()) if shard else ()
    sharding = None
    if shard:
        sharding = NamedSharding(Mesh(np.asarray(devices), (AXIS,)), PartitionSpec(AXIS))
        pad = (-n_runs) % len(devices)
        if pad:
            seed_flat = np.concatenate([seed_flat, np.repeat(seed_flat[:1], pad, axis=0)])
            hp_flat = {k: np.concatenate([v, np.repeat(v[:1], pad, axis=0)]) for k, v in hp_flat.items()}

    # Host values in the dtype JAX will use (float64 -> float32 unless x64 is on).
    seed_flat = seed_flat.astype(jax.dtypes.canonicalize_dtype(seed_flat.dtype))
    hp_flat = {k: v.astype(jax.dtypes.canonicalize_dtype(v.dtype)) for k, v in hp_flat.items()}

    if shard and jax.process_count() > 1:
        _check_same_everywhere(seed_flat, hp_flat)
    fn = _batched_fn(train_fn, kind, shard, devices)
    seed_dev = _place(seed_flat, sharding)
    hp_dev = {k: _place(v, sharding) for k, v in hp_flat.items()}
    out = fn(seed_dev, hp_dev)

    def unflatten(x):
        host = _fetch(x)[:n_runs]
        return host.reshape((n_grid, n_seeds) + host.shape[1:])

    return jax.tree_util.tree_map(unflatten, out)
