"""Keeps a whole split in accelerator memory and cuts batches inside jit: no host pipeline at all.

For datasets that fit (CIFAR-10 is 150 MB as uint8) this is how the fastest trainers feed a GPU. The
host sends one index vector per epoch, built by the same `epoch_order` as the host readers, so both
paths give identical batches and a run can switch between them.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from cnn_flax.data.dataset import count_batches, make_plan
from cnn_flax.errors import UserError


def _gather(images: jax.Array, labels: jax.Array, order: jax.Array, i: jax.Array, masked: bool) -> dict:
    rows = jax.lax.dynamic_index_in_dim(order, i, keepdims=False)
    real = rows < labels.shape[0]
    safe = jnp.where(real, rows, 0)
    batch = {"image": jnp.take(images, safe, axis=0), "label": jnp.take(labels, safe, axis=0)}
    if masked:
        batch["image"] = jnp.where(real[:, None, None, None], batch["image"], 0).astype(images.dtype)
        batch["label"] = jnp.where(real, batch["label"], 0)
        batch["mask"] = real
    return batch


class OnDeviceBatches:
    """A split replicated on every device of `mesh`; batches come out sharded over its 'data' axis."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mesh: Mesh):
        if jax.process_count() > 1:
            raise UserError("data.on_device supports one process; set data.on_device=False")
        if "data" not in mesh.axis_names:
            raise UserError(f"the mesh has axes {mesh.axis_names}; data.on_device needs one named 'data'")
        self.mesh = mesh
        self.num_examples = int(len(labels))
        self._replicated = NamedSharding(mesh, P())
        self._sharded = NamedSharding(mesh, P("data"))
        self.images = jax.device_put(np.asarray(images), self._replicated)
        self.labels = jax.device_put(np.asarray(labels, np.int32), self._replicated)
        self._gather = jax.jit(_gather, static_argnames=("masked",), out_shardings=self._sharded)

    def num_batches(self, global_batch_size: int, drop_remainder: bool = True) -> int:
        return count_batches(self.num_examples, global_batch_size, drop_remainder)

    def batches(
        self,
        global_batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        epoch: int,
        drop_remainder: bool = True,
        start_batch: int = 0,
    ) -> Iterator[dict[str, jax.Array]]:
        """The global batches of one epoch as jax arrays sharded on 'data' (with "mask" if not dropping)."""
        devices = self.mesh.shape["data"]
        if global_batch_size % devices:
            raise UserError(
                f"config.batch_size={global_batch_size} must be a multiple of the {devices} devices on the "
                "'data' axis; change config.batch_size"
            )
        plan = make_plan(
            self.num_examples,
            global_batch_size,
            shuffle=shuffle,
            seed=seed,
            epoch=epoch,
            drop_remainder=drop_remainder,
            start_batch=start_batch,
        )
        return self._iterate(plan.order, plan.num_batches, global_batch_size, not drop_remainder, start_batch)

    def _iterate(self, order: np.ndarray, num: int, size: int, masked: bool, start: int) -> Iterator[dict]:
        table = np.full(num * size, self.num_examples, np.int32)
        table[: min(len(order), num * size)] = order[: num * size]
        table = jax.device_put(table.reshape(num, size), self._replicated)
        for i in range(start, num):
            yield self._gather(self.images, self.labels, table, np.int32(i), masked=masked)
