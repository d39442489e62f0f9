"""Data-parallel training: the env axis of a train state laid out over a 1-D device mesh.

    mesh = parallel.data_mesh(4)                                # the first 4 devices, axis "envs"
    shard = parallel.state_shardings(state_shapes, agent.env_axes, mesh)
    init = jax.jit(agent.init, out_shardings=shard)             # (``driver.run(devices=4)`` does this)

An agent's ``env_axes`` says which parts of its train state carry the env batch on their leading
axis (0) and which are shared (None): SHAC's env states and episode returns are split over the
devices, its networks, optimiser states and observation statistics are replicated. The update is
the *same* jitted program as on one device: under ``jit`` with these shardings XLA's SPMD
partitioner runs each device's envs locally and turns every reduction over the env axis (the
mean of the per-env gradients, the critic's minibatch losses, the episode statistics) into an
all-reduce, so the parameters stay replicated and equal on every device. No ``pmap`` (in
maintenance in current JAX) and no hand-written collectives: what one device computes is what
the mesh computes, up to the order of floating-point reductions. Random draws are the same
as on one device (JAX's partitionable threefry), so a data-parallel run reproduces the
single-device run (tested on 4 forced CPU devices).

Where a state part is a replay buffer (the off-policy agents) it is replicated: collection runs
per device on its envs, the new transitions are gathered into every device's buffer, and the
learner's minibatch updates run replicated.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mbpo_grad.validation import check_int

AXIS = "envs"
PyTree = Any


def data_mesh(devices: Union[None, int, Sequence[Any]] = None) -> Mesh:
    """A 1-D mesh named ``"envs"``: all devices (None), the first ``devices`` of ``jax.devices()``
    (an int), or the given device list. Across processes (``mg.initialize_distributed``),
    ``jax.devices()`` are the global devices."""
    if devices is None:
        devs = jax.devices()
    elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        count = check_int(devices, "devices")
        if count > jax.device_count():
            raise ValueError(f"devices: asked for {count} devices, {jax.device_count()} available "
                             "(CPU: XLA_FLAGS=--xla_force_host_platform_device_count=N before JAX starts)")
        devs = jax.devices()[:count]
    else:
        devs = list(devices)
        if not devs:
            raise ValueError("devices: an empty device list")
    return Mesh(np.asarray(devs), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def state_shardings(state: PyTree, env_axes: PyTree, mesh: Mesh) -> PyTree:
    """Shardings for ``state`` (arrays or ``jax.ShapeDtypeStruct``s): leaves under an ``env_axes``
    entry of 0 are split over the mesh along their leading (env) axis, leaves under None are
    replicated. ``env_axes`` is a prefix of the state's structure (e.g. ``SHACState(None, ...,
    env_state=0, ...)``). The env count must be a multiple of the number of devices."""
    if env_axes is None:
        raise ValueError("agent: this agent does not declare env_axes, so its state cannot be laid out "
                         "over devices (devices= needs Agent.env_axes)")
    size = mesh.devices.size
    split, rep = NamedSharding(mesh, PartitionSpec(AXIS)), replicated(mesh)

    def place(ax, sub):
        if ax is None:
            return jax.tree_util.tree_map(lambda _: rep, sub)
        if ax != 0:
            raise ValueError(f"env_axes: entries must be 0 or None, got {ax!r}")

        def one(leaf):
            n = leaf.shape[0] if leaf.shape else None
            if n is None or n % size:
                raise ValueError(f"num_envs: {n} envs cannot be split evenly over {size} devices; "
                                 f"use a multiple of {size}")
            return split

        return jax.tree_util.tree_map(one, sub)

    return jax.tree_util.tree_map(place, env_axes, state, is_leaf=lambda x: x is None)


def describe(mesh: Optional[Mesh]) -> str:
    """One line for progress output: how many devices of which kind."""
    if mesh is None:
        return "1 device"
    d = mesh.devices.reshape(-1)
    return f"{d.size} {d[0].platform} devices (env axis split over mesh axis {AXIS!r})"


__all__ = ["AXIS", "data_mesh", "replicated", "state_shardings", "describe"]
