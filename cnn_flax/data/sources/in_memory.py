"""Serves datasets small enough to hold in host memory (digits, CIFAR-10) through the shared batch plan.

Loading is lazy and happens once per source, so building a source (e.g. for `--mode=summary`) costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from cnn_flax.data.dataset import BatchPlan, DatasetInfo, DataSource, check_split, finish_batch

Splits = dict[str, tuple[np.ndarray, np.ndarray]]


def train_means(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean (3,) and per-pixel mean image (H, W, 3) of uint8 images, float32 in 0..255."""
    mean_image = images.mean(axis=0, dtype=np.float64)
    return mean_image.mean(axis=(0, 1)).astype(np.float32), mean_image.astype(np.float32)


def build_info(name: str, class_names: tuple[str, ...], splits: Splits) -> DatasetInfo:
    """The facts of an in-memory dataset, with means taken from its train split."""
    train_images = splits["train"][0]
    mean_rgb, mean_image = train_means(train_images)
    return DatasetInfo(
        name=name,
        num_classes=len(class_names),
        class_names=class_names,
        image_shape=tuple(int(d) for d in train_images.shape[1:]),
        split_sizes={split: int(len(labels)) for split, (_, labels) in splits.items()},
        mean_rgb=mean_rgb,
        mean_image=mean_image,
    )


class ArraySource(DataSource):
    """A source whose splits are numpy arrays produced by `load()` on first use."""

    def __init__(self, load: Callable[[], tuple[DatasetInfo, Splits]], prefetch: int = 2):
        self._load = load
        self._loaded: tuple[DatasetInfo, Splits] | None = None
        self.prefetch = prefetch

    def _data(self) -> tuple[DatasetInfo, Splits]:
        if self._loaded is None:
            self._loaded = self._load()
        return self._loaded

    @property
    def info(self) -> DatasetInfo:
        return self._data()[0]

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        check_split(split)
        return self._data()[1][split]

    def _stream(self, split: str, plan: BatchPlan) -> Iterator[dict[str, np.ndarray]]:
        images, labels = self.arrays(split)
        for idx in plan:
            yield finish_batch(images[idx], labels[idx], plan.local_size, plan.drop_remainder)
