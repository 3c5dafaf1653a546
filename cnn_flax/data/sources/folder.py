"""Your own images: a folder of class subfolders, decoded once into the HDF5 split files training reads.

`prepare` decodes every image in worker processes (a chunked, ordered `imap`), streams the results into
the split files a block at a time (so memory never holds more than a block of images), and renames each
file only when it is complete, train first. Files that cannot be used are left out and listed, with the
reason, in `skipped.txt` beside the split files; each split file also keeps its own list, so skipped.txt
stays complete when a later run rebuilds only some files. Each row keeps the image's path relative to
the root (dataset `paths`), so reports can name files. Files of another build (root, size, resize,
fractions, seed) in the same `data.dir` are refused rather than silently reused.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import time

import h5py
import numpy as np
from tqdm import tqdm

from cnn_flax.atomic import atomic_file, remove_stale_partials
from cnn_flax.data.dataset import SPLITS, DatasetInfo
from cnn_flax.data.sources.folder_scan import FolderScan, check_root, class_folders, scan
from cnn_flax.data.sources.hdf5 import HDF5Source
from cnn_flax.data.sources.hdf5_files import SplitWriter
from cnn_flax.data.sources.images import RESIZE_MODES, decode_task
from cnn_flax.errors import UserError

NAME = "folder"
SKIPPED_FILE = "skipped.txt"
BLOCK = 512  # images decoded and written per step: bounds the memory prepare needs
# What a set of split files was built from; files whose values differ belong to another build.
RECIPE = ("root", "image_size", "resize", "val_fraction", "test_fraction", "split_seed")

log = logging.getLogger("cnn_flax")


def recipe(root: str, image_size: int, resize: str, val_fraction: float, test_fraction: float,
           split_seed: int) -> dict:
    return dict(root=os.path.abspath(os.path.expanduser(root)), image_size=int(image_size), resize=resize,
                val_fraction=float(val_fraction), test_fraction=float(test_fraction), split_seed=int(split_seed))


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _write_split(path: str, split: str, found: FolderScan, attrs: dict, pool) -> list[tuple[str, str]]:
    """Decodes `split` into `path`; returns the (relative path, reason) of every image left out."""
    items = found.splits[split]
    size, resize = attrs["image_size"], attrs["resize"]
    shape = (size, size, 3)
    total = np.zeros(shape, np.float64)
    per_class = np.zeros(len(found.class_names), np.int64)
    kept: list[str] = []
    skipped: list[tuple[str, str]] = []
    with SplitWriter(path, len(items), shape, {**attrs, "split": split}, at_most=True) as writer:
        with tqdm(total=len(items), desc=f"{split} images", unit="img") as bar:
            for lo in range(0, len(items), BLOCK):
                block = items[lo:lo + BLOCK]
                tasks = [(os.path.join(found.root, rel), size, resize) for rel, _ in block]
                images, labels = [], []
                for (rel, label), (image, reason) in zip(block, pool.imap(decode_task, tasks, chunksize=16),
                                                         strict=True):
                    if image is None:
                        skipped.append((rel, reason))
                    else:
                        images.append(image)
                        labels.append(label)
                        kept.append(rel)
                    bar.update(1)
                if images:
                    batch = np.stack(images)
                    writer.write(batch, np.asarray(labels, np.int32))
                    per_class += np.bincount(labels, minlength=len(per_class))
                    if split == "train":
                        total += batch.sum(axis=0, dtype=np.float64)
        if split == "train":
            _check_every_class(found, per_class, skipped)
            mean_image = (total / max(writer.rows_written, 1)).astype(np.float32)
            writer.file.create_dataset("mean_image", data=mean_image)
            writer.file.attrs["mean_rgb"] = mean_image.astype(np.float64).mean(axis=(0, 1)).astype(np.float32)
        strings = h5py.string_dtype()  # file names as the OS gives them: not every name is valid UTF-8
        writer.file.create_dataset("paths", data=np.array([os.fsencode(p) for p in kept], dtype=object),
                                   dtype=strings)
        rows = [(os.fsencode(rel), reason.encode()) for rel, reason in skipped]
        writer.file.create_dataset("skipped", data=np.array(rows, dtype=object).reshape(-1, 2), dtype=strings)
    return skipped


def _check_every_class(found: FolderScan, per_class: np.ndarray, skipped: list[tuple[str, str]]) -> None:
    if not per_class.any():
        example = f" (e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise UserError(f"{found.root}: none of its images could be read{example}; nothing was written")
    empty = [name for name, count in zip(found.class_names, per_class, strict=True) if count == 0]
    if empty:
        raise UserError(f"class folder {empty[0]} in {found.root} has no readable image for train; add images or "
                        "remove the folder (the reasons are in the prepare output)")


def check_class_count(root: str, num_classes: int | None) -> None:
    """A model sized for another number of classes than the folder has, caught before anything is decoded."""
    if num_classes in (-1, None):
        return
    names = class_folders(check_root(root))
    if len(names) != num_classes:
        raise UserError(f"model.num_classes={num_classes} but {root} has {len(names)} class folders; set "
                        "model.num_classes=-1 to take the count from the folders")


def _check_recipe(path: str, wanted: dict, root_given: bool) -> None:
    """Refuses a split file written from another root or with other settings (any root when none is given)."""
    with h5py.File(path, "r") as f:
        stored = {key: f.attrs.get(key) for key in RECIPE}
    keys = [key for key in RECIPE if root_given or key != "root"]
    differ = [key for key in keys if str(stored[key]) != str(wanted[key])]
    if differ:
        key = differ[0]
        raise UserError(f"{path} was prepared with {key}={stored[key]} (this config: {wanted[key]}); use another "
                        "data.dir, or run --mode=prepare --overwrite to rebuild it")


def _write_skipped_list(data_dir: str, found: FolderScan, paths: dict[str, str]) -> int:
    """skipped.txt from the scan and every split file; returns the number of files it lists."""
    entries = list(found.not_images)
    for split in SPLITS:
        with h5py.File(paths[split], "r") as f:
            if "skipped" in f:
                entries += [(os.fsdecode(row[0]), row[1].decode()) for row in f["skipped"][()]]
    with atomic_file(os.path.join(data_dir, SKIPPED_FILE), errors="surrogateescape") as handle:
        handle.writelines(f"{rel}\t{reason}\n" for rel, reason in sorted(entries))
    return len(entries)


def build_folder(root: str, data_dir: str, *, image_size: int, resize: str = "aspect", val_fraction: float = 0.1,
                 test_fraction: float = 0.1, split_seed: int = 42, overwrite: bool = False) -> list[str]:
    """Writes the missing (with `overwrite`: all) train/val/test.hdf5 of `root` into `data_dir`."""
    if not data_dir:
        raise UserError("data.dir is empty; set data.dir to the folder that holds (or will hold) the prepared files")
    if resize not in RESIZE_MODES:
        raise UserError(f"data.resize={resize!r} is unknown; use one of {', '.join(RESIZE_MODES)}")
    if image_size < 8:
        raise UserError(f"data.image_size={image_size} is too small; set e.g. 64 or 224")
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    paths = {split: os.path.join(data_dir, f"{split}.hdf5") for split in SPLITS}
    wanted = recipe(root, image_size, resize, val_fraction, test_fraction, split_seed)
    for path in paths.values():  # also of splits already written: a killed prepare may have left them
        remove_stale_partials(path)
    todo = [s for s in SPLITS if overwrite or not os.path.isfile(paths[s])]
    for split in SPLITS:
        if split not in todo:
            _check_recipe(paths[split], wanted, bool(root))
    if not todo:
        return list(paths.values())
    found = scan(root, val_fraction, test_fraction, split_seed)
    attrs = {"name": NAME, "num_classes": len(found.class_names), "class_names": list(found.class_names),
             "test_per_class": "", "carved": ",".join(found.carved), **wanted}
    os.makedirs(data_dir, exist_ok=True)
    skipped, started = 0, time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(_workers()) as pool:  # spawn: safe beside JAX's threads
        for split in todo:
            skipped += len(_write_split(paths[split], split, found, attrs, pool))
    listed = _write_skipped_list(data_dir, found, paths)
    counts = ", ".join(f"{s} {len(found.splits[s])}" for s in SPLITS)
    decoded, seconds = sum(len(found.splits[s]) for s in todo) - skipped, time.perf_counter() - started
    log.info("%s: %d classes (%s files found); %d images decoded in %.1f s (%.0f img/s)", found.root,
             len(found.class_names), counts, decoded, seconds, decoded / max(seconds, 1e-9))
    if listed:
        log.warning("%d files skipped (not images, unreadable or outside class folders); the list with reasons is "
                    "in %s", listed, os.path.join(data_dir, SKIPPED_FILE))
    return list(paths.values())


class FolderSource(HDF5Source):
    """The prepared files of a folder dataset; prepares them on first use and refuses another build's files."""

    def __init__(self, root: str, data_dir: str, *, image_size: int, resize: str, val_fraction: float,
                 test_fraction: float, split_seed: int, prefetch: int = 2, window_mb: float = 64.0):
        self.root = root
        self.options = dict(image_size=image_size, resize=resize, val_fraction=val_fraction,
                            test_fraction=test_fraction, split_seed=split_seed)
        super().__init__(data_dir, (image_size, image_size, 3), build=self._build_files, prefetch=prefetch,
                         window_mb=window_mb)

    def _build_files(self, overwrite: bool) -> list[str]:
        return build_folder(self.root, self.data_dir, overwrite=overwrite, **self.options)

    @functools.cached_property
    def info(self) -> DatasetInfo:
        if self.data_dir and all(os.path.isfile(self.path(s)) for s in SPLITS):
            self._build_files(False)  # checks the files come from this root and these settings
        return HDF5Source.info.func(self)

    def image_paths(self, split: str) -> list[str]:
        """Each row's file, relative to data.root."""
        with h5py.File(self.path(split), "r") as f:
            return [os.fsdecode(p) for p in f["paths"][()]]
