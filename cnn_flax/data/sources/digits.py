"""scikit-learn's 8x8 digits as a 3-channel image dataset: the quickstart runs in seconds with no download."""

from __future__ import annotations

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


def load_digits_splits(image_size: int, test_fraction: float, split_seed: int) -> tuple[DatasetInfo, Splits]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if image_size < 1:
        raise UserError(f"data.image_size={image_size} must be positive for digits; set e.g. 32")
    if not 0.0 < test_fraction < 1.0:
        raise UserError(f"data.digits_test_fraction={test_fraction} must be in (0, 1); set e.g. 0.25")
    digits = load_digits()
    grey = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = _resize(grey, image_size)
    labels = digits.target.astype(np.int32)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=split_seed
    )
    test = (images[test_idx], labels[test_idx])
    splits = {"train": (images[train_idx], labels[train_idx]), "val": test, "test": test}
    return build_info("digits", tuple(str(d) for d in range(10)), splits), splits


class DigitsSource(ArraySource):
    def __init__(self, image_size: int = 32, test_fraction: float = 0.25, split_seed: int = 42, prefetch: int = 2):
        super().__init__(lambda: load_digits_splits(image_size, test_fraction, split_seed), prefetch)
