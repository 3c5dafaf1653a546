"""Data parallelism over every device of every process: `jit` over a mesh (default) or `pmap`.

Both present the same small interface to the training loop: put a replicated tree or a process-local
batch on the devices, compile a step, and fetch results back to the host. Batches are split across all
devices of all processes; each process feeds only its own rows (`global_batch // process_count`).

`jit` follows the current JAX recipe: one `Mesh` whose single axis is 'data', the batch sharded along
it and the state replicated; XLA inserts the gradient and BatchNorm reductions. The mesh is built with
`jax.sharding.Mesh` rather than `jax.make_mesh`, whose default explicit axes break Linen's Dropout.
`pmap` is kept for users of the classic API; it names the device axis 'batch' for the collectives.

`num_devices` (config.num_devices) narrows a one-process run to the first N local devices, e.g. one GPU of
eight for a small experiment, or one CPU device where fake devices are forced: eight of them on a 2-core
CPU took 80% more CPU time for the same small training as one.
"""

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from cnn_flax.errors import UserError

PARALLEL_MODES = ("jit", "pmap")


def run_devices(num_devices: int = 0) -> list[jax.Device]:
    """The devices a run uses: every device of every process (0), or the first `num_devices` of this one."""
    if num_devices == 0:
        return jax.devices()
    available = jax.local_devices()
    if num_devices < 0 or num_devices > len(available):
        raise UserError(f"num_devices={num_devices} but this process has {len(available)} device(s); set "
                        f"--config.num_devices to 1..{len(available)}, or 0 for all of them")
    if jax.process_count() > 1:
        raise UserError(f"num_devices={num_devices} narrows a one-process run; a run of {jax.process_count()} "
                        "processes uses all their devices: set --config.num_devices=0")
    return available[:num_devices]


def check_batch_size(global_batch_size: int, devices: int | None = None) -> None:
    devices = jax.device_count() if devices is None else devices
    if global_batch_size % devices:
        raise UserError(f"batch_size={global_batch_size} is not divisible by the {devices} devices; set "
                        f"--config.batch_size to a multiple of {devices}")


class JitParallel:
    axis_name = None

    def __init__(self, devices: list[jax.Device] | None = None) -> None:
        self.devices = jax.devices() if devices is None else list(devices)
        self.device_count = len(self.devices)
        self.mesh = Mesh(np.asarray(self.devices), ("data",))
        self.replicated = NamedSharding(self.mesh, P())
        self.sharded = NamedSharding(self.mesh, P("data"))

    def put_replicated(self, tree: Any) -> Any:
        def put(x):
            x = np.asarray(x)
            return jax.make_array_from_callback(x.shape, self.replicated, lambda index: x[index])
        return jax.tree_util.tree_map(put, tree)

    def put_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        if all(isinstance(v, jax.Array) and v.sharding == self.sharded for v in local_batch.values()):
            return local_batch  # already on the devices (data.on_device)
        return {k: jax.make_array_from_process_local_data(self.sharded, np.asarray(v)) for k, v in local_batch.items()}

    def compile_step(self, fn: Callable, donate: tuple[int, ...] = (0, 2)) -> Callable:
        return jax.jit(fn, out_shardings=self.replicated, donate_argnums=donate)

    def compile_predict(self, fn: Callable) -> Callable:
        return jax.jit(fn, out_shardings=self.sharded)

    def fetch(self, tree: Any) -> Any:
        """Host copy of a replicated tree."""
        return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), tree)

    def fetch_rows(self, array: jax.Array) -> np.ndarray:
        """All rows of a batch-sharded array, gathered from every process."""
        if jax.process_count() == 1:
            return np.asarray(array)
        return np.asarray(multihost_utils.process_allgather(array, tiled=True))


class PmapParallel:
    axis_name = "batch"

    def __init__(self, devices: list[jax.Device] | None = None) -> None:
        self.devices = jax.local_devices() if devices is None else list(devices)
        self.device_count = len(self.devices) * jax.process_count()
        self.stacked = NamedSharding(Mesh(np.asarray(self.devices), ("batch",)), P("batch"))

    def put_replicated(self, tree: Any) -> Any:
        n = len(self.devices)
        return jax.tree_util.tree_map(
            lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n, *np.shape(x))), self.stacked), tree)

    def put_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        n = len(self.devices)

        def split(x):
            x = np.asarray(x)
            return jax.device_put(x.reshape(n, x.shape[0] // n, *x.shape[1:]), self.stacked)
        return {k: split(v) for k, v in local_batch.items()}

    def compile_step(self, fn: Callable, donate: tuple[int, ...] = (0, 2)) -> Callable:
        return jax.pmap(fn, axis_name=self.axis_name, donate_argnums=donate, devices=self._pmap_devices)

    def compile_predict(self, fn: Callable) -> Callable:
        return jax.pmap(fn, axis_name=self.axis_name, devices=self._pmap_devices)

    @property
    def _pmap_devices(self) -> list[jax.Device] | None:
        """None (pmap's own choice, every device of every process) unless the run was narrowed."""
        return None if jax.process_count() > 1 or self.devices == jax.local_devices() else self.devices

    def fetch(self, tree: Any) -> Any:
        return jax.tree_util.tree_map(lambda x: np.asarray(x[0]), tree)

    def fetch_rows(self, array: jax.Array) -> np.ndarray:
        local = np.asarray(array).reshape(-1, *array.shape[2:])
        if jax.process_count() == 1:
            return local
        return np.asarray(multihost_utils.process_allgather(local, tiled=True))


def batch_norm_axis(mode: str) -> str | None:
    """The device axis a model's BatchNorm must average over under this mode (its `bn_axis_name`)."""
    return PmapParallel.axis_name if mode == "pmap" else None


def make_parallel(mode: str, num_devices: int = 0) -> JitParallel | PmapParallel:
    if mode == "jit":
        return JitParallel(run_devices(num_devices))
    if mode == "pmap":
        return PmapParallel(None if num_devices == 0 else run_devices(num_devices))
    raise UserError(f"parallel={mode!r} is not known; use one of {', '.join(PARALLEL_MODES)}")


def device_prefetch(batches: Iterator[dict], put: Callable[[dict], dict], depth: int = 2) -> Iterator[dict]:
    """Keep `depth` batches already transferred, so copying overlaps the running step."""
    queue: deque = deque()
    for batch in batches:
        queue.append(put(batch))
        if len(queue) > depth:
            yield queue.popleft()
    while queue:
        yield queue.popleft()
