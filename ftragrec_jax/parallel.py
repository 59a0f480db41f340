"""Data parallelism in one place: the device mesh, how batches and parameters are placed, multi-host start.

The same jitted step runs on 1 or N devices: batches are sharded along the mesh's `data` axis, parameters and
optimizer state are replicated, and XLA inserts the gradient all-reduce. Nothing here is a home-made loop.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ftragrec_jax.errors import ConfigError

DATA_AXIS = "data"


def maybe_initialize_distributed(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
    """Start `jax.distributed` when a launcher asks for it (arguments or the usual environment variables).

    Environment: FTRAGREC_COORDINATOR (host:port), FTRAGREC_NUM_PROCESSES, FTRAGREC_PROCESS_ID; cluster
    launchers that jax detects by itself (SLURM, Open MPI, ...) need only FTRAGREC_DISTRIBUTED=1.
    """
    coordinator = coordinator or os.environ.get("FTRAGREC_COORDINATOR")
    if num_processes is None and os.environ.get("FTRAGREC_NUM_PROCESSES"):
        num_processes = int(os.environ["FTRAGREC_NUM_PROCESSES"])
    if process_id is None and os.environ.get("FTRAGREC_PROCESS_ID"):
        process_id = int(os.environ["FTRAGREC_PROCESS_ID"])
    if coordinator is None and os.environ.get("FTRAGREC_DISTRIBUTED") != "1":
        return False
    _enable_cpu_collectives()
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    return True


def _enable_cpu_collectives() -> None:
    """Cross-process collectives on CPU need an implementation: gloo is the default in jax 0.10.2 (here), some
    older versions default to none (then the first cross-process collective fails), and a version without
    the option has no choice to make."""
    try:
        if jax.config.jax_cpu_collectives_implementation in (None, "none"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except AttributeError:
        pass


def make_mesh(n_devices: int | None = None) -> Mesh:
    """A 1-D mesh over `n_devices` devices (None = every device of every process)."""
    devices = jax.devices()
    n = len(devices) if n_devices is None else n_devices
    if not 1 <= n <= len(devices):
        raise ConfigError(f"config key 'mesh': expected 1..{len(devices)} devices, got {n_devices!r}")
    return Mesh(np.asarray(devices[:n]), (DATA_AXIS,))


def check_batch_divides(global_batch: int, mesh: Mesh, key: str = "train_batch_size") -> int:
    """Per-device batch; the global batch stays the configured one."""
    n = mesh.size
    if global_batch % n:
        raise ConfigError(f"config key {key!r}: {global_batch} is not divisible by the {n} devices of the mesh")
    return global_batch // n


def data_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def replicate(tree, mesh: Mesh):
    return jax.device_put(tree, replicated(mesh))


def place_step_data(data, mesh: Mesh):
    """Per-step data (FTragrec's knowledge base) on the mesh: replicated, except a value that knows how to
    split itself along the data axis (`Memory.shard_over`: keys sharded, searched per device)."""
    if data is None:
        return None
    if hasattr(data, "shard_over"):
        return data.shard_over(mesh)
    return replicate(data, mesh)


def int32_host(a) -> np.ndarray:
    """Host int64 fields (row indices, ids) as int32: what jax makes of them anyway (no x64), without its
    dtype warning; other dtypes unchanged."""
    a = np.asarray(a)
    return a.astype(np.int32) if a.dtype == np.int64 else a


def put_batch(batch: dict, mesh: Mesh) -> dict:
    """Shard a batch along the data axis.

    Single process: `batch` is the global batch. Multi-process: each process passes only its own rows (its
    slice of the global batch), and `make_array_from_process_local_data` assembles the global array.
    """
    sharding = data_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def process_slice(global_batch: int) -> slice:
    """Rows of a global batch that this process loads (multi-host)."""
    per = global_batch // jax.process_count()
    start = jax.process_index() * per
    return slice(start, start + per)


def is_main_process() -> bool:
    """Logs, results and checkpoint metadata are written by process 0 only."""
    return jax.process_index() == 0
