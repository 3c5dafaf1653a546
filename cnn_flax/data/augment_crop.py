"""Inception-style random-resized-crop on the accelerator: a box per image, resized back to the image size.

The box is drawn as torchvision's `RandomResizedCrop` draws it (area a uniform fraction `scale` of the
image, aspect ratio log-uniform in `ratio`, up to ten tries, then the central crop of the nearest
allowed ratio), but all tries of all images are drawn at once and the first fitting one is picked with
an argmax, so the whole batch is one vectorised computation without data-dependent control flow.
Resizing is bilinear with half-pixel centres and no antialiasing (TensorFlow's and big_vision's default),
sampling only inside the box.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from cnn_flax.data.augment import bilinear_sample

ATTEMPTS = 10


def sample_crop_boxes(
    rng: jax.Array, n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> jax.Array:
    """[n, 4] int32 boxes (top, left, box_height, box_width), each inside the height x width image."""
    area_key, ratio_key, top_key, left_key = jax.random.split(rng, 4)
    area = height * width * jax.random.uniform(area_key, (n, ATTEMPTS), jnp.float32, scale[0], scale[1])
    log_ratio = jax.random.uniform(ratio_key, (n, ATTEMPTS), jnp.float32, math.log(ratio[0]), math.log(ratio[1]))
    aspect = jnp.exp(log_ratio)  # width / height
    box_w = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    box_h = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (box_w > 0) & (box_w <= width) & (box_h > 0) & (box_h <= height)
    first = jnp.argmax(fits, axis=1)  # the first fitting try (0 when none fits: masked below)
    found = jnp.any(fits, axis=1)
    box_h = jnp.take_along_axis(box_h, first[:, None], axis=1)[:, 0]
    box_w = jnp.take_along_axis(box_w, first[:, None], axis=1)[:, 0]
    # No try fitted: the whole image, cut to the nearest allowed aspect ratio, centred.
    image_ratio = width / height
    if image_ratio < ratio[0]:
        fallback_w, fallback_h = width, int(round(width / ratio[0]))
    elif image_ratio > ratio[1]:
        fallback_w, fallback_h = int(round(height * ratio[1])), height
    else:
        fallback_w, fallback_h = width, height
    box_h = jnp.where(found, box_h, fallback_h)
    box_w = jnp.where(found, box_w, fallback_w)
    # Offsets uniform over the positions where the box fits (integers 0..size-box inclusive).
    top = jnp.floor(jax.random.uniform(top_key, (n,)) * (height - box_h + 1)).astype(jnp.int32)
    left = jnp.floor(jax.random.uniform(left_key, (n,)) * (width - box_w + 1)).astype(jnp.int32)
    top = jnp.where(found, jnp.minimum(top, height - box_h), (height - fallback_h) // 2)
    left = jnp.where(found, jnp.minimum(left, width - box_w), (width - fallback_w) // 2)
    return jnp.stack([top, left, box_h, box_w], axis=1)


def resize_boxes(images: jax.Array, boxes: jax.Array) -> jax.Array:
    """Each image's box [N, 4] (top, left, height, width) resized bilinearly to the full image size."""
    n, h, w = images.shape[:3]
    top, left, box_h, box_w = (boxes[:, i].astype(jnp.float32)[:, None, None] for i in range(4))
    rows = jnp.arange(h, dtype=jnp.float32)[None, :, None]
    cols = jnp.arange(w, dtype=jnp.float32)[None, None, :]
    # Half-pixel centres: output pixel r samples box row (r + 0.5) * box_h / h - 0.5, kept inside the box.
    src_r = jnp.clip((rows + 0.5) * box_h / h - 0.5, 0.0, box_h - 1) + top
    src_c = jnp.clip((cols + 0.5) * box_w / w - 0.5, 0.0, box_w - 1) + left
    return bilinear_sample(images, jnp.broadcast_to(src_r, (n, h, w)), jnp.broadcast_to(src_c, (n, h, w)))


def random_resized_crop(
    rng: jax.Array, images: jax.Array, scale: tuple[float, float], ratio: tuple[float, float]
) -> jax.Array:
    """[N, H, W, C] images, each replaced by a random box of itself resized to H x W (same dtype)."""
    n, h, w = images.shape[:3]
    return resize_boxes(images, sample_crop_boxes(rng, n, h, w, scale, ratio))
