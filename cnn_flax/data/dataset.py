"""The batching contract every data source shares, kept in one place so that resume and multi-host agree.

The order of an epoch depends only on (seed, epoch, split size); a process only chooses which rows of each
global batch it yields. Therefore the sequence of global batches is the same for any number of processes,
`start_batch` can skip ahead without reading, and the in-memory, HDF5 and on-device paths can be checked
against each other bit for bit.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Iterator

import numpy as np

from cnn_flax.data.prefetch import prefetch
from cnn_flax.errors import UserError

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    split_sizes: dict[str, int]
    mean_rgb: np.ndarray
    mean_image: np.ndarray


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The permutation of `n` examples used in `epoch` of a run seeded with `seed` (int64 [n])."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def one_line(error: BaseException) -> str:
    """The first line of an exception's message, for embedding in a one-line UserError."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


def count_batches(n: int, global_batch_size: int, drop_remainder: bool) -> int:
    if global_batch_size <= 0:
        raise UserError(f"batch size must be positive, got {global_batch_size}; set config.batch_size")
    return n // global_batch_size if drop_remainder else math.ceil(n / global_batch_size)


def local_batch_size(global_batch_size: int, process_count: int) -> int:
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise UserError(
            f"config.batch_size={global_batch_size} must be a positive multiple of the number of "
            f"processes ({process_count}); change config.batch_size"
        )
    return global_batch_size // process_count


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """Which example indices each local batch of one epoch holds, for one process.

    Sources that cannot index rows (ImageNet streams its files) read `shuffle`, `seed` and `epoch` to
    order the epoch themselves, and keep `num_batches`, `local_size` and `start_batch`.
    """

    n: int
    global_batch_size: int
    order: np.ndarray
    num_batches: int
    process_index: int
    process_count: int
    start_batch: int
    drop_remainder: bool
    shuffle: bool = False
    seed: int = 0
    epoch: int = 0

    @property
    def local_size(self) -> int:
        return self.global_batch_size // self.process_count

    def local_indices(self, i: int) -> np.ndarray:
        """Indices of the real rows of local batch `i` (fewer than `local_size` only in a last batch)."""
        lo = i * self.global_batch_size + self.process_index * self.local_size
        return self.order[lo : lo + self.local_size]

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(self.start_batch, self.num_batches):
            yield self.local_indices(i)


def make_plan(
    n: int,
    global_batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
    drop_remainder: bool,
    process_index: int = 0,
    process_count: int = 1,
    start_batch: int = 0,
) -> BatchPlan:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise UserError(f"process_index={process_index} is outside [0, {process_count}); check the launch flags")
    local_batch_size(global_batch_size, process_count)
    num = count_batches(n, global_batch_size, drop_remainder)
    if not 0 <= start_batch <= num:
        raise UserError(f"start_batch={start_batch} is outside [0, {num}]; the checkpoint does not match the data")
    order = epoch_order(seed, epoch, n) if shuffle else np.arange(n)
    return BatchPlan(n, global_batch_size, order, num, process_index, process_count, start_batch, drop_remainder,
                     shuffle, int(seed), int(epoch))


def finish_batch(images: np.ndarray, labels: np.ndarray, size: int, drop_remainder: bool) -> dict[str, np.ndarray]:
    """Turns gathered rows into the batch dict; in evaluation mode pads to `size` rows and adds "mask"."""
    labels = labels.astype(np.int32, copy=False)
    if drop_remainder:
        return {"image": images, "label": labels}
    real = len(labels)
    mask = np.zeros(size, dtype=bool)
    mask[:real] = True
    if real < size:
        images = np.concatenate([images, np.zeros((size - real, *images.shape[1:]), images.dtype)])
        labels = np.concatenate([labels, np.zeros(size - real, np.int32)])
    return {"image": images, "label": labels, "mask": mask}


class DataSource(abc.ABC):
    """One dataset: its facts (`info`), its files (`prepare`) and its batches."""

    prefetch: int = 2

    @property
    @abc.abstractmethod
    def info(self) -> DatasetInfo: ...

    def prepare(self, overwrite: bool = False) -> list[str]:
        """Builds the files this dataset needs; returns the paths written or already present."""
        return []

    @abc.abstractmethod
    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The whole split: uint8 [N, H, W, 3] images and int32 [N] labels."""

    @abc.abstractmethod
    def _stream(self, split: str, plan: BatchPlan) -> Iterator[dict[str, np.ndarray]]:
        """Yields the batches of `plan` in order; runs in the prefetch thread."""

    def _queue_depth(self, split: str, plan: BatchPlan) -> int:
        return self.prefetch

    def num_batches(self, split: str, global_batch_size: int, drop_remainder: bool) -> int:
        check_split(split)
        return count_batches(self.info.split_sizes[split], global_batch_size, drop_remainder)

    def batches(
        self,
        split: str,
        global_batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        epoch: int,
        drop_remainder: bool,
        process_index: int = 0,
        process_count: int = 1,
        start_batch: int = 0,
    ) -> Iterator[dict[str, np.ndarray]]:
        """One epoch of local batches for this process, read ahead in a background thread."""
        check_split(split)
        plan = make_plan(
            self.info.split_sizes[split],
            global_batch_size,
            shuffle=shuffle,
            seed=seed,
            epoch=epoch,
            drop_remainder=drop_remainder,
            process_index=process_index,
            process_count=process_count,
            start_batch=start_batch,
        )
        return prefetch(lambda: self._stream(split, plan), self._queue_depth(split, plan))


# What a run keeps of its data's facts (beside config.json), so that prediction from a workdir copied to another
# machine needs no dataset: class names, image shape, and the means the 'mean_rgb'/'mean_image' normalisations use.
INFO_FILE = "dataset.json"
MEAN_IMAGE_FILE = "mean_image.npy"


def info_record(info: DatasetInfo) -> dict:
    """dataset.json's content (the mean image goes beside it, in mean_image.npy)."""
    return {"name": info.name, "num_classes": int(info.num_classes), "class_names": list(info.class_names),
            "image_shape": [int(v) for v in info.image_shape],
            "split_sizes": {k: int(v) for k, v in info.split_sizes.items()},
            "mean_rgb": [float(v) for v in np.asarray(info.mean_rgb).reshape(-1)]}


def info_from_record(record: dict, mean_image: np.ndarray | None, where: str) -> DatasetInfo:
    """The DatasetInfo `info_record` described; `where` names the files in errors."""
    try:
        shape = tuple(int(v) for v in record["image_shape"])
        names = tuple(str(n) for n in record["class_names"])
        info = DatasetInfo(name=str(record["name"]), num_classes=int(record["num_classes"]), class_names=names,
                           image_shape=shape, split_sizes={k: int(v) for k, v in record["split_sizes"].items()},
                           mean_rgb=np.asarray(record["mean_rgb"], np.float32),
                           mean_image=np.zeros(shape, np.float32) if mean_image is None else mean_image)
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(f"{where} is damaged ({type(error).__name__}: {error}); train again or delete it") from None
    if len(names) != info.num_classes or info.mean_image.shape != shape:
        raise UserError(f"{where} is damaged: {len(names)} class names for {info.num_classes} classes, mean image "
                        f"{info.mean_image.shape} for images {shape}")
    return info
