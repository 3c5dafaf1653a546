"""A DataSource over prepared split files (train/val/test.hdf5), building them on first use when it can.

Every file is validated when the source first opens it (layout, shapes, label range, and that the three
files come from the same build), so a bad file fails at start-up with the fix, not hours into training.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterator

import numpy as np

from cnn_flax.data.dataset import SPLITS, BatchPlan, DatasetInfo, DataSource, check_split
from cnn_flax.data.sources import hdf5_files, hdf5_reader
from cnn_flax.errors import UserError

BUILD_ATTRS = ("name", "num_classes", "split_seed", "test_per_class")


class HDF5Source(DataSource):
    """Reads `<dir>/<split>.hdf5`; `build(overwrite)` (if given) writes them and returns their paths."""

    def __init__(
        self,
        data_dir: str,
        image_shape: tuple[int, int, int],
        build: Callable[[bool], list[str]] | None = None,
        missing_hint: str = "run --mode=prepare",
        prefetch: int = 2,
        window_mb: float = 64.0,
        mapped: bool = True,
    ):
        self.data_dir, self.image_shape = data_dir, tuple(image_shape)
        self._build, self._missing_hint = build, missing_hint
        self.prefetch, self.window_mb, self.mapped = prefetch, window_mb, mapped
        self._labels: dict[str, np.ndarray] = {}

    def path(self, split: str) -> str:
        return os.path.join(os.path.expanduser(self.data_dir), f"{split}.hdf5")

    def prepare(self, overwrite: bool = False) -> list[str]:
        if self._build is None:
            return [self.path(s) for s in SPLITS]
        self.__dict__.pop("info", None)  # rebuilt files: read the facts again
        self._labels = {}
        return self._build(overwrite)

    @functools.cached_property
    def info(self) -> DatasetInfo:  # read once: it opens files
        if not self.data_dir:
            raise UserError("data.dir is empty; set data.dir to the folder that holds the prepared HDF5 files")
        if not all(os.path.isfile(self.path(s)) for s in SPLITS):
            if self._build is None:
                missing = next(self.path(s) for s in SPLITS if not os.path.isfile(self.path(s)))
                raise UserError(f"{missing} not found; {self._missing_hint}")
            self._build(False)
        with hdf5_files.open_file(self.path("train")) as f:
            attrs = {key: f.attrs.get(key) for key in BUILD_ATTRS}
            if attrs["num_classes"] is None or "mean_rgb" not in f.attrs or "mean_image" not in f:
                raise hdf5_files.reprepare(f.filename, "missing class or mean attributes")
            num_classes = int(attrs["num_classes"])
            class_names = tuple(str(c) for c in f.attrs["class_names"])
            mean_rgb = np.asarray(f.attrs["mean_rgb"], np.float32)
            mean_image = np.asarray(f["mean_image"][()], np.float32)
        labels = {}
        for split in SPLITS:
            with hdf5_files.open_file(self.path(split)) as f:
                for key, value in attrs.items():
                    if str(f.attrs.get(key)) != str(value):
                        raise hdf5_files.reprepare(f.filename,
                                                   f"attribute {key} differs from train.hdf5's (another build)")
                labels[split] = hdf5_files.check_file(f, self.image_shape, num_classes)
        self._labels = labels
        return DatasetInfo(
            name=str(attrs["name"]),
            num_classes=num_classes,
            class_names=class_names,
            image_shape=self.image_shape,
            split_sizes={split: len(labels[split]) for split in SPLITS},
            mean_rgb=mean_rgb,
            mean_image=mean_image,
        )

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        check_split(split)
        _ = self.info  # validates the files and loads the labels
        return hdf5_files.read_all(self.path(split)), self._labels[split]

    def _rows_per_window(self, plan: BatchPlan) -> int:
        return hdf5_reader.window_rows(self.image_shape, self.window_mb, plan.local_size)

    def _queue_depth(self, split: str, plan: BatchPlan) -> int:
        # Room for one whole window of batches, so the next window is read while this one is consumed.
        if self.prefetch <= 0:
            return 0
        return self.prefetch + math.ceil(self._rows_per_window(plan) / plan.local_size)

    def _stream(self, split: str, plan: BatchPlan) -> Iterator[dict[str, np.ndarray]]:
        return hdf5_reader.stream(self.path(split), self._labels[split], plan, self._rows_per_window(plan), self.mapped)
