"""What the train step does to uint8 batches on the accelerator: normalise, then (training only) augment.

Batches travel as uint8 (4x less host-to-device traffic than float32) and are turned into float inputs
inside the jitted step, so the same function serves the host pipeline and the on-device path.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from cnn_flax.data.augment import random_affine
from cnn_flax.data.augment_modern import MODERN_KEYS, modern_options
from cnn_flax.data.core import DatasetInfo
from cnn_flax.errors import UserError

NORMALIZE_METHODS = ("scale", "mean_image", "mean_rgb", "caffe", "none")
# Keras's 'caffe' preprocessing for VGG and the ImageNet weights: RGB→BGR, minus these BGR means.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
AUGMENT_DEFAULTS = {
    "rotation": 0.0,
    "zoom": 0.0,
    "width_shift": 0.0,
    "height_shift": 0.0,
    "shear": 0.0,
    "horizontal_flip": False,
}


def normalize(images: jax.Array, method: str, info: DatasetInfo) -> jax.Array:
    """float32 images: /255 ('scale'), minus the train mean image or mean RGB (pixel scale), Keras's VGG
    'caffe' (BGR minus ImageNet means), or as is."""
    x = jnp.asarray(images).astype(jnp.float32)
    if method == "scale":
        return x / 255.0
    if method == "mean_image":
        return x - jnp.asarray(info.mean_image, jnp.float32)
    if method == "mean_rgb":
        return x - jnp.asarray(info.mean_rgb, jnp.float32)
    if method == "caffe":
        return x[..., ::-1] - jnp.asarray(CAFFE_BGR_MEAN, jnp.float32)
    if method == "none":
        return x
    raise UserError(f"data.normalize={method!r} is unknown; use one of {', '.join(NORMALIZE_METHODS)}")


def _augment_mapping(data_config) -> dict:
    given = data_config.get("augment", None) or {}
    return given.to_dict() if hasattr(given, "to_dict") else dict(given)


def augment_options(data_config) -> dict:
    """The keyword arguments of `random_affine` from `data_config.augment` (missing keys: off)."""
    given = _augment_mapping(data_config)
    unknown = sorted(set(given) - set(AUGMENT_DEFAULTS) - set(MODERN_KEYS))
    if unknown:
        raise UserError(f"data.augment.{unknown[0]} is unknown; use {', '.join((*AUGMENT_DEFAULTS, *MODERN_KEYS))}")
    options = {**AUGMENT_DEFAULTS, **{k: v for k, v in given.items() if k in AUGMENT_DEFAULTS}}
    for key, value in options.items():
        if key != "horizontal_flip" and (not isinstance(value, int | float) or value < 0):
            raise UserError(f"data.augment.{key}={value!r} must be a number >= 0 (0 turns it off)")
    options["horizontal_flip"] = bool(options["horizontal_flip"])
    return {k: (v if k == "horizontal_flip" else float(v)) for k, v in options.items()}


def make_preprocess(data_config, info: DatasetInfo) -> Callable[[jax.Array, jax.Array | None], jax.Array]:
    """`preprocess(images, rng=None)`: normalise, then augment when an rng is given and augmentation is on.

    With an rng the order is: crop and RandAugment/TrivialAugment on the pixels, normalisation, the deck's
    affine warp, random erasing (mixup/CutMix come after, in the step).
    """
    method = data_config.get("normalize", "scale")
    if method not in NORMALIZE_METHODS:
        raise UserError(f"data.normalize={method!r} is unknown; use one of {', '.join(NORMALIZE_METHODS)}")
    options = augment_options(data_config)
    augmenting = any(options.values())
    modern = modern_options(_augment_mapping(data_config))

    def preprocess(images: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        if rng is not None and modern.on_pixels:
            images = modern.augment_pixels(rng, images)
        x = normalize(images, method, info)
        if rng is not None and augmenting:
            x = random_affine(rng, x, **options)
        if rng is not None:
            x = modern.augment_normalized(rng, x)
        return x

    return preprocess
