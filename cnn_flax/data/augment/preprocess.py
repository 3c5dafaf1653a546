"""What the train step does to uint8 batches on the accelerator: normalise, then (training only) augment.

Batches travel as uint8 (4x less host-to-device traffic than float32) and are turned into float inputs
inside the jitted step, so the same function serves the host pipeline and the on-device path.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cnn_flax.data.augment.keras_affine import random_affine
from cnn_flax.data.augment.recipes import MODERN_KEYS, modern_options
from cnn_flax.data.constants import CAFFE_BGR_MEAN, TORCHVISION_MEAN, TORCHVISION_STD
from cnn_flax.data.dataset import DatasetInfo
from cnn_flax.defaults import base_data_config, with_defaults
from cnn_flax.errors import UserError

NORMALIZE_METHODS = ("scale", "mean_image", "mean_rgb", "caffe", "torchvision", "none")
# The preprocessings of published ImageNet weights, which need no statistics of the run's own data.
IMAGENET_NORMALIZATIONS = ("caffe", "torchvision")


def caffe_preprocess(images: np.ndarray | jax.Array) -> np.ndarray | jax.Array:
    """float32 RGB→BGR minus the ImageNet means; numpy stays numpy, jax arrays (jit tracers too) stay jax.

    The channels are reversed with `flip` (a `rev` op), not `[..., ::-1]`: with a symbolic batch
    dimension (an exported program) JAX lowers that slice to a gather, which TensorFlow Lite cannot convert."""
    xp = jnp if isinstance(images, jax.Array) else np
    bgr = xp.flip(xp.asarray(images).astype(xp.float32), axis=-1)
    return bgr - xp.asarray(CAFFE_BGR_MEAN, dtype=xp.float32)


def normalize(images: jax.Array, method: str, info: DatasetInfo) -> jax.Array:
    """float32 images: /255 ('scale'), minus the train mean image or mean RGB (pixel scale), Keras's VGG
    'caffe' (BGR minus ImageNet means), torchvision's ImageNet mean and deviation ('torchvision'), or as is."""
    x = jnp.asarray(images).astype(jnp.float32)
    if method == "scale":
        return x / 255.0
    if method == "mean_image":
        return x - jnp.asarray(info.mean_image, jnp.float32)
    if method == "mean_rgb":
        return x - jnp.asarray(info.mean_rgb, jnp.float32)
    if method == "caffe":
        return caffe_preprocess(x)
    if method == "torchvision":
        mean = jnp.asarray(TORCHVISION_MEAN, jnp.float32)
        return (x / 255.0 - mean) / jnp.asarray(TORCHVISION_STD, jnp.float32)
    if method == "none":
        return x
    raise UserError(f"data.normalize={method!r} is unknown; use one of {', '.join(NORMALIZE_METHODS)}")


def augment_options(data_config) -> dict:
    """The keyword arguments of `random_affine` from `data_config.augment` (its keys: base()'s, all off there)."""
    known = base_data_config().augment
    given = with_defaults(data_config).augment
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise UserError(f"data.augment.{unknown[0]} is unknown; use {', '.join(known)}")
    options = {key: value for key, value in given.items() if key not in MODERN_KEYS}
    for key, value in options.items():
        if key != "horizontal_flip" and (not isinstance(value, int | float) or value < 0):
            raise UserError(f"data.augment.{key}={value!r} must be a number >= 0 (0 turns it off)")
    return {k: (bool(v) if k == "horizontal_flip" else float(v)) for k, v in options.items()}


def make_preprocess(data_config, info: DatasetInfo) -> Callable[[jax.Array, jax.Array | None], jax.Array]:
    """`preprocess(images, rng=None)`: normalise, then augment when an rng is given and augmentation is on.

    With an rng the order is: crop and RandAugment/TrivialAugment on the pixels, normalisation, the deck's
    affine warp, random erasing (mixup/CutMix come after, in the step).
    """
    method = with_defaults(data_config).normalize
    if method not in NORMALIZE_METHODS:
        raise UserError(f"data.normalize={method!r} is unknown; use one of {', '.join(NORMALIZE_METHODS)}")
    options = augment_options(data_config)
    augmenting = any(options.values())
    modern = modern_options(with_defaults(data_config).augment.to_dict())

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
