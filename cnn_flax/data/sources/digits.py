"""scikit-learn's 8x8 digits as a 3-channel image dataset: the quickstart runs in seconds with no download.

The 1,797 digits ship inside scikit-learn as one small CSV file, read here directly: importing scikit-learn
(and SciPy with it) took 0.7 s of every run's start, more than reading and splitting the data. The split is
this module's own, stratified and seeded.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import math
import os

import numpy as np
from PIL import Image

from cnn_flax.data.dataset import DatasetInfo
from cnn_flax.data.sources.in_memory import ArraySource, Splits, build_info
from cnn_flax.errors import UserError


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, h, w] -> uint8 [N, size, size, 3] by bilinear resampling, grey copied to three channels."""
    if images.shape[1:] == (size, size):
        grey = images
    else:
        grey = np.stack(
            [np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BILINEAR)) for im in images]
        )
    return np.repeat(grey[..., None], 3, axis=-1)


def _digits_file() -> str | None:
    """Where scikit-learn keeps the digits (found without importing scikit-learn), or None."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("data.name='digits' needs scikit-learn, which ships the digits: pip install scikit-learn")
    path = os.path.join(next(iter(spec.submodule_search_locations)), "datasets", "data", "digits.csv.gz")
    return path if os.path.isfile(path) else None


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as uint8 [N, 8, 8] in 0..255 (scikit-learn's 0..16 scaled) and int32 labels [N]."""
    path = _digits_file()
    if path is None:  # a scikit-learn that keeps the file elsewhere: its own loader
        from sklearn.datasets import load_digits

        digits = load_digits()
        pixels, labels = digits.images, digits.target
    else:
        with gzip.open(path, "rt") as handle:
            table = np.loadtxt(handle, delimiter=",", dtype=np.float64)
        pixels, labels = table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    return np.round(pixels * (255.0 / 16.0)).astype(np.uint8), labels.astype(np.int32)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices, each in a seeded random order; the test split holds ceil(fraction * N) items.

    Every class gives the test split its exact share of those places rounded down, and the places left
    over go to the classes with the largest remainders (the lower class first on ties): each class's count
    is within one of its share, and the total does not depend on how the classes are sized.
    """
    classes, counts = np.unique(labels, return_counts=True)
    num_test = math.ceil(test_fraction * len(labels))
    shares = counts * (num_test / len(labels))
    per_class = np.floor(shares).astype(int)
    leftover = num_test - int(per_class.sum())
    per_class[np.argsort(-(shares - per_class), kind="stable")[:leftover]] += 1
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label, count in zip(classes, per_class, strict=True):
        members = rng.permutation(np.flatnonzero(labels == label))
        test.append(members[:count])
        train.append(members[count:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


@functools.lru_cache(maxsize=4)
def _digits_at(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Every digit at `image_size`, read-only (the splits index copies out of it), and the labels.

    Kept per size: resizing the 1,797 images one by one takes a tenth of a second, which a process that
    builds several experiments (an ablation, evaluate after train, a notebook) paid each time."""
    grey, labels = read_digits()
    images = _resize(grey, image_size)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def load_digits_splits(image_size: int, test_fraction: float, split_seed: int) -> tuple[DatasetInfo, Splits]:
    if image_size < 1:
        raise UserError(f"data.image_size={image_size} must be positive for digits; set e.g. 32")
    if not 0.0 < test_fraction < 1.0:
        raise UserError(f"data.digits_test_fraction={test_fraction} must be in (0, 1); set e.g. 0.25")
    images, labels = _digits_at(image_size)
    train_idx, test_idx = stratified_split(labels, test_fraction, split_seed)
    test = (images[test_idx], labels[test_idx])
    splits = {"train": (images[train_idx], labels[train_idx]), "val": test, "test": test}
    return build_info("digits", tuple(str(d) for d in range(10)), splits), splits


class DigitsSource(ArraySource):
    def __init__(self, image_size: int = 32, test_fraction: float = 0.25, split_seed: int = 42, prefetch: int = 2):
        super().__init__(lambda: load_digits_splits(image_size, test_fraction, split_seed), prefetch)
