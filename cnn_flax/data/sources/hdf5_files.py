"""The split-file format (what `prepare` writes and the reader trusts): atomic writes and validation.

A file only gets its final name once every row is in, so a crash never leaves a file that looks
finished; every check names the file and says how to rebuild it. Reading lives in `hdf5_reader`.
"""

from __future__ import annotations

import os
from types import TracebackType

import h5py
import numpy as np

from cnn_flax.atomic import partial_path, remove_stale_partials
from cnn_flax.data.dataset import one_line
from cnn_flax.errors import UserError

CHUNK_ROWS = 64
_CACHE_BYTES = 4 << 20


def reprepare(path: str, problem: str) -> UserError:
    return UserError(
        f"{path}: {problem}; re-run `python launch.py --config ... --mode=prepare --overwrite` to rebuild it"
    )


class SplitWriter:
    """Writes one split file under a temporary name and renames it only once every row is in.

    The temporary name (`cnn_flax.atomic.partial_path`) lets the next prepare remove what a killed one left.

    With `at_most`, `num_rows` is an upper bound (files that turn out unreadable are left out) and the
    file is cut to the rows written when it closes.
    """

    def __init__(self, path: str, num_rows: int, image_shape: tuple[int, int, int], attrs: dict,
                 at_most: bool = False):
        self.path, self.num_rows, self.image_shape, self.attrs = path, num_rows, image_shape, attrs
        self.at_most = at_most
        self.tmp = partial_path(path)
        self.rows_written = 0

    def __enter__(self) -> SplitWriter:
        remove_stale_partials(self.path)
        self.file = h5py.File(self.tmp, "w")
        chunks = (min(CHUNK_ROWS, self.num_rows), *self.image_shape) if self.num_rows else None
        grow = dict(maxshape=(None, *self.image_shape), chunks=chunks or True) if self.at_most else dict(chunks=chunks)
        self.images = self.file.create_dataset("images", (self.num_rows, *self.image_shape), np.uint8, **grow)
        self.labels = self.file.create_dataset("labels", (self.num_rows,), np.int32,
                                               **(dict(maxshape=(None,)) if self.at_most else {}))
        for key, value in self.attrs.items():
            self.file.attrs[key] = value
        return self

    def write(self, images: np.ndarray, labels: np.ndarray) -> None:
        lo, hi = self.rows_written, self.rows_written + len(labels)
        self.images[lo:hi] = images
        self.labels[lo:hi] = labels
        self.rows_written = hi

    def __exit__(self, kind: type | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None and self.at_most and self.rows_written < self.num_rows:
            self.images.resize(self.rows_written, axis=0)
            self.labels.resize(self.rows_written, axis=0)
            self.num_rows = self.rows_written
        complete = kind is None and self.rows_written == self.num_rows
        self.file.close()
        if complete:
            os.replace(self.tmp, self.path)
        else:
            os.remove(self.tmp)
            if kind is None:
                raise RuntimeError(f"{self.path}: wrote {self.rows_written} of {self.num_rows} rows")


def open_file(path: str) -> h5py.File:
    if not os.path.isfile(path):
        raise reprepare(path, "file not found")
    try:
        return h5py.File(path, "r", rdcc_nbytes=_CACHE_BYTES)
    except OSError as error:
        raise reprepare(path, f"corrupt or truncated HDF5 ({one_line(error)})") from error


def check_file(f: h5py.File, image_shape: tuple[int, ...], num_classes: int) -> np.ndarray:
    """Checks the layout of an open split file and returns its labels (int32 [N])."""
    path = f.filename
    if "images" not in f or "labels" not in f:
        raise reprepare(path, "no 'images' or 'labels' dataset")
    images, labels = f["images"], f["labels"]
    if images.dtype != np.uint8 or images.shape[1:] != tuple(image_shape):
        raise reprepare(path, f"images are {images.dtype} {images.shape}, expected uint8 [N, {image_shape}]")
    if labels.shape != (images.shape[0],):
        raise reprepare(path, f"labels have shape {labels.shape}, expected ({images.shape[0]},)")
    try:
        values = labels[()].astype(np.int32)
    except OSError as error:
        raise reprepare(path, f"unreadable labels ({one_line(error)})") from error
    if len(values) and (values.min() < 0 or values.max() >= num_classes):
        raise reprepare(path, f"labels span [{values.min()}, {values.max()}], outside [0, {num_classes})")
    return values


def read_all(path: str) -> np.ndarray:
    with open_file(path) as f:
        images = f["images"]
        out = np.empty(images.shape, np.uint8)
        if len(out):
            try:
                images.read_direct(out)
            except OSError as error:
                raise reprepare(path, f"read failed ({one_line(error)})") from error
        return out
