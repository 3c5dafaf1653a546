"""Inception-style random-resized-crop on the accelerator: a box per image, resized back to the image size.

The box is drawn as torchvision's `RandomResizedCrop` draws it (area a uniform fraction `scale` of the
image, aspect ratio log-uniform in `ratio`, up to ten tries, then the central crop of the nearest
allowed ratio), but all tries of all images are drawn at once and the first fitting one is picked with
an argmax, so the whole batch is one vectorised computation without data-dependent control flow.
Resizing is bilinear with half-pixel centres and no antialiasing (TensorFlow's and big_vision's default),
sampling only inside the box; the box is never larger than the image, so it is always an upsampling.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

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


def _interpolation(start: jax.Array, size: jax.Array, out: int, full: int) -> jax.Array:
    """[N, out, full] bilinear weights: output i samples box coordinate (i + 0.5) * size / out - 0.5."""
    centres = jnp.arange(out, dtype=jnp.float32)[None, :]
    src = jnp.clip((centres + 0.5) * size[:, None] / out - 0.5, 0.0, size[:, None] - 1) + start[:, None]
    low = jnp.floor(src)
    frac = (src - low)[..., None]
    low = low.astype(jnp.int32)
    return (1 - frac) * jax.nn.one_hot(low, full) + frac * jax.nn.one_hot(low + 1, full)


def resize_boxes(images: jax.Array, boxes: jax.Array) -> jax.Array:
    """Each image's box [N, 4] (top, left, height, width) resized bilinearly to the full image size.

    Bilinear resizing is separable, so it is two batched matrix products with per-image interpolation
    matrices (two non-zero weights a row, inside the box): no gathers, and an accelerator's matrix units.
    """
    n, h, w = images.shape[:3]
    top, left, box_h, box_w = (boxes[:, i].astype(jnp.float32) for i in range(4))
    rows, cols = _interpolation(top, box_h, h, h), _interpolation(left, box_w, w, w)
    highest = jax.lax.Precision.HIGHEST
    x = images.astype(jnp.float32)
    x = jnp.einsum("nri,nijc->nrjc", rows, x, precision=highest)
    x = jnp.einsum("nsj,nrjc->nrsc", cols, x, precision=highest)
    if jnp.issubdtype(images.dtype, jnp.integer):
        info = jnp.iinfo(images.dtype)
        x = jnp.clip(jnp.round(x), info.min, info.max)
    return x.astype(images.dtype)


def random_resized_crop(
    rng: jax.Array, images: jax.Array, scale: tuple[float, float], ratio: tuple[float, float]
) -> jax.Array:
    """[N, H, W, C] images, each replaced by a random box of itself resized to H x W (same dtype)."""
    n, h, w = images.shape[:3]
    return resize_boxes(images, sample_crop_boxes(rng, n, h, w, scale, ratio))
