"""Images in, VGG inputs out, exactly as Keras prepares them for its ImageNet VGG16/VGG19 weights.

The published weights come from Caffe: they expect BGR pixels with the ImageNet channel means
subtracted and no scaling (Keras's preprocess_input, mode 'caffe': `data.preprocess.caffe_preprocess`,
which the 'caffe' normalisation of training uses too). Resizing follows
keras.utils.load_img(target_size=...): PIL, converted to RGB, nearest-neighbour by default, no aspect
ratio kept, EXIF orientation ignored. Any other choice changes the logits enough to change top-5
rankings against Keras.
"""

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from cnn_flax.data.augment.preprocess import CAFFE_BGR_MEAN, caffe_preprocess
from cnn_flax.errors import UserError

__all__ = ["CAFFE_BGR_MEAN", "RESAMPLING", "caffe_preprocess", "load_images"]

RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "hamming": Image.Resampling.HAMMING,
    "box": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
}


def load_images(paths: Sequence[str | os.PathLike], size: tuple[int, int],
                interpolation: str = "nearest") -> np.ndarray:
    """uint8 [N, height, width, 3] RGB, each file resized to `size` = (height, width) as Keras's load_img."""
    if interpolation not in RESAMPLING:
        raise UserError(f"interpolation={interpolation!r} is not known; use one of {', '.join(RESAMPLING)}")
    height, width = size
    return np.stack([_load_one(os.fspath(path), (width, height), RESAMPLING[interpolation])
                     for path in paths]) if paths else np.zeros((0, height, width, 3), np.uint8)


def _load_one(path: str, width_height: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such image file; check the paths given to --images")
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB") if image.mode != "RGB" else image
            if rgb.size != width_height:
                rgb = rgb.resize(width_height, resample)
            return np.asarray(rgb, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise UserError(f"{path}: cannot be read as an image ({error}); give a JPEG, PNG or other "
                        "PIL-readable file") from None
