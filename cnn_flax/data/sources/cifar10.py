"""CIFAR-10 from TensorFlow Datasets, read once into numpy and then batched like any in-memory dataset.

TensorFlow is only a file reader here: it is imported lazily (it costs seconds) and kept off the GPU so
that JAX owns the accelerator's memory. Loading never downloads; only `prepare` does, so a machine without
network fails fast with the instruction to prepare elsewhere.
"""

from __future__ import annotations

import socket

import numpy as np

from cnn_flax.data.dataset import DatasetInfo, one_line
from cnn_flax.data.sources.in_memory import ArraySource, Splits, build_info
from cnn_flax.data.sources.tfds import import_tfds, shown_dir
from cnn_flax.errors import UserError

NAME = "cifar10"
IMAGE_SIZE = 32
_READ_BATCH = 10_000
_DOWNLOAD_HOST = "www.cs.toronto.edu"  # where TFDS fetches CIFAR-10; checked first to fail fast offline


def _absent(data_dir: str) -> UserError:
    return UserError(
        f"TFDS data for {NAME} not found in data.dir={shown_dir(data_dir)}; run `python launch.py "
        "--config ... --mode=prepare` on a machine with network (or copy the TFDS folder there)"
    )


def _read_split(tfds, split: str, data_dir: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    try:
        ds, tfds_info = tfds.load(
            NAME, split=split, data_dir=data_dir or None, download=False, as_supervised=True, with_info=True
        )
    except (AssertionError, FileNotFoundError) as error:
        raise _absent(data_dir) from error
    images, labels = [], []
    for image, label in tfds.as_numpy(ds.batch(_READ_BATCH)):
        images.append(image)
        labels.append(label)
    names = tuple(tfds_info.features["label"].names)
    return np.concatenate(images).astype(np.uint8), np.concatenate(labels).astype(np.int32), names


def load_cifar10_splits(data_dir: str) -> tuple[DatasetInfo, Splits]:
    tfds = import_tfds()
    train_x, train_y, names = _read_split(tfds, "train", data_dir)
    test_x, test_y, _ = _read_split(tfds, "test", data_dir)
    splits = {"train": (train_x, train_y), "val": (test_x, test_y), "test": (test_x, test_y)}
    return build_info(NAME, names, splits), splits


class Cifar10Source(ArraySource):
    def __init__(self, data_dir: str = "", prefetch: int = 2):
        super().__init__(lambda: load_cifar10_splits(data_dir), prefetch)
        self.data_dir = data_dir

    def prepare(self, overwrite: bool = False) -> list[str]:
        """Downloads and prepares the TFDS files (network needed once); `overwrite` re-downloads them."""
        tfds = import_tfds()
        builder = tfds.builder(NAME, data_dir=self.data_dir or None)
        if overwrite or not builder.is_prepared():
            try:
                socket.getaddrinfo(_DOWNLOAD_HOST, 443)
            except OSError as error:
                raise UserError(
                    f"cannot reach {_DOWNLOAD_HOST} to download {NAME} into data.dir={shown_dir(self.data_dir)}; "
                    "run --mode=prepare on a machine with network, or copy the TFDS folder there"
                ) from error
            config = tfds.download.DownloadConfig(
                download_mode=tfds.download.GenerateMode.FORCE_REDOWNLOAD
                if overwrite
                else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
            )
            try:
                builder.download_and_prepare(download_config=config)
            except OSError as error:
                raise UserError(
                    f"could not download {NAME} into data.dir={shown_dir(self.data_dir)} "
                    f"({one_line(error)}); run --mode=prepare on a machine with network, or copy the TFDS "
                    "folder there"
                ) from error
        return [str(builder.data_dir)]
