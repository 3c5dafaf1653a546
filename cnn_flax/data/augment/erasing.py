"""Random erasing (Zhong et al. 2017) on the accelerator: with probability p, a box of each image is blanked.

The box is drawn as timm's `RandomErasing` draws it: area a uniform 2%..1/3 of the image, aspect ratio
log-uniform in 0.3..1/0.3, up to ten tries for a box strictly smaller than the image (none fitting: the
image is left as is), top-left uniform over the fitting positions. It runs on normalised float images,
filled with standard-normal noise per pixel ('pixel', timm's default) or with zeros ('zero'). All tries
of all images are drawn at once and the first fitting one picked with an argmax.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

ERASING_MODES = ("pixel", "zero")
AREA = (0.02, 1 / 3)
ASPECT = (0.3, 1 / 0.3)
ATTEMPTS = 10


def sample_erase_boxes(rng: jax.Array, n: int, height: int, width: int, probability: float) -> jax.Array:
    """[n, 4] int32 (top, left, box_height, box_width); height 0 where the image keeps all its pixels."""
    apply_key, area_key, ratio_key, top_key, left_key = jax.random.split(rng, 5)
    apply = jax.random.bernoulli(apply_key, probability, (n,))
    area = height * width * jax.random.uniform(area_key, (n, ATTEMPTS), jnp.float32, AREA[0], AREA[1])
    aspect = jnp.exp(jax.random.uniform(ratio_key, (n, ATTEMPTS), jnp.float32, math.log(ASPECT[0]),
                                        math.log(ASPECT[1])))  # height / width, as in timm
    box_h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    box_w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (box_h < height) & (box_w < width) & (box_h > 0) & (box_w > 0)
    first = jnp.argmax(fits, axis=1)
    box_h = jnp.take_along_axis(box_h, first[:, None], axis=1)[:, 0]
    box_w = jnp.take_along_axis(box_w, first[:, None], axis=1)[:, 0]
    erase = apply & jnp.any(fits, axis=1)
    top = jnp.floor(jax.random.uniform(top_key, (n,)) * (height - box_h + 1)).astype(jnp.int32)
    left = jnp.floor(jax.random.uniform(left_key, (n,)) * (width - box_w + 1)).astype(jnp.int32)
    top = jnp.clip(top, 0, height - box_h)
    left = jnp.clip(left, 0, width - box_w)
    zero = jnp.zeros_like(box_h)
    return jnp.stack([jnp.where(erase, top, zero), jnp.where(erase, left, zero),
                      jnp.where(erase, box_h, zero), jnp.where(erase, box_w, zero)], axis=1)


def erase_boxes(images: jax.Array, boxes: jax.Array, fill: jax.Array) -> jax.Array:
    """Images with each box [N, 4] (top, left, height, width) replaced by the same pixels of `fill`."""
    h, w = images.shape[1:3]
    top, left, box_h, box_w = (boxes[:, i][:, None, None] for i in range(4))
    rows = jnp.arange(h)[None, :, None]
    cols = jnp.arange(w)[None, None, :]
    inside = (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)
    return jnp.where(inside[..., None], fill.astype(images.dtype), images)


def random_erasing(rng: jax.Array, images: jax.Array, probability: float, mode: str = "pixel") -> jax.Array:
    """Float [N, H, W, C] images, each with probability `probability` given one erased box."""
    if mode not in ERASING_MODES:
        raise ValueError(f"erasing mode {mode!r} is not one of {ERASING_MODES}")
    n, h, w = images.shape[:3]
    box_key, noise_key = jax.random.split(rng)
    boxes = sample_erase_boxes(box_key, n, h, w, probability)
    if mode == "pixel":
        fill = jax.random.normal(noise_key, images.shape, jnp.float32)
    else:
        fill = jnp.zeros(images.shape, jnp.float32)
    return erase_boxes(images, boxes, fill)
