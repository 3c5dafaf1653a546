"""RandAugment (Cubuk et al. 2020) and TrivialAugment (Müller & Hutter 2021) on uint8 batches, in jnp.

Each of the fourteen operations is written for one uint8 H x W x 3 image with PIL's arithmetic (ImageOps
and ImageEnhance: integer grayscale, truncating blends, nearest-neighbour affine maps on pixel centres),
so a test can hold it against PIL. A policy picks an operation per image by computing the candidates
and selecting one (what `lax.switch` becomes under `vmap` anyway); the ops are grouped so that every
image pays for one warp, one blend and five cheap pixel ops per layer rather than for all fourteen.

RandAugment applies `n` layers of a uniformly chosen op at the fixed magnitude `m` (0..10, timm's scale:
rand-m9 is m=9) with a random sign; TrivialAugment applies one op with a magnitude drawn uniformly from
31 levels, over torchvision's wider "TrivialAugmentWide" ranges. Geometric ops fill with gray (128).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

FILL = 128
OP_NAMES = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
            "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
TRIVIAL_LEVELS = 31


class Ranges(NamedTuple):
    """Magnitudes at level 1; translate below 1 is a fraction of the image side, 1 or more pixels."""

    rotate: float  # degrees
    shear: float  # shear factor
    translate: float
    enhance: float  # factor 1 ± enhance
    posterize: int  # bits removed
    solarize: float  # threshold 255 - solarize


RANDAUGMENT_RANGES = Ranges(rotate=30.0, shear=0.3, translate=0.45, enhance=0.9, posterize=4, solarize=255.0)
TRIVIAL_RANGES = Ranges(rotate=135.0, shear=0.99, translate=32.0, enhance=0.99, posterize=6, solarize=255.0)


# -- the operations, one uint8 [H, W, C] image each --------------------------------------------------------
def _affine_nearest(image: jax.Array, a, b, c, d, e, f) -> jax.Array:
    """PIL's Image.transform(AFFINE, (a, b, c, d, e, f), NEAREST, fillcolor=FILL): output pixel centre
    (x, y) reads input pixel floor(a x + b y + c, d x + e y + f)."""
    h, w = image.shape[:2]
    ys = jnp.arange(h, dtype=jnp.float32)[:, None] + 0.5
    xs = jnp.arange(w, dtype=jnp.float32)[None, :] + 0.5
    col = jnp.floor(a * xs + b * ys + c).astype(jnp.int32)
    row = jnp.floor(d * xs + e * ys + f).astype(jnp.int32)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    picked = image[jnp.clip(row, 0, h - 1), jnp.clip(col, 0, w - 1)]
    return jnp.where(inside[..., None], picked, jnp.asarray(FILL, image.dtype))


def shear_x(image: jax.Array, factor) -> jax.Array:
    return _affine_nearest(image, 1.0, factor, 0.0, 0.0, 1.0, 0.0)


def shear_y(image: jax.Array, factor) -> jax.Array:
    return _affine_nearest(image, 1.0, 0.0, 0.0, factor, 1.0, 0.0)


def translate_x(image: jax.Array, pixels) -> jax.Array:
    """Content moves left by `pixels` (PIL's sign convention, as timm uses it)."""
    return _affine_nearest(image, 1.0, 0.0, pixels, 0.0, 1.0, 0.0)


def translate_y(image: jax.Array, pixels) -> jax.Array:
    return _affine_nearest(image, 1.0, 0.0, 0.0, 0.0, 1.0, pixels)


def _rotation(height: int, width: int, degrees) -> tuple:
    angle = -jnp.deg2rad(degrees)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    cx, cy = width / 2.0, height / 2.0
    return cos, sin, cx - (cos * cx + sin * cy), -sin, cos, cy - (-sin * cx + cos * cy)


def rotate(image: jax.Array, degrees) -> jax.Array:
    """Counter-clockwise about the image centre, as PIL's Image.rotate."""
    return _affine_nearest(image, *_rotation(image.shape[0], image.shape[1], degrees))


def _blend(degenerate: jax.Array, image: jax.Array, factor) -> jax.Array:
    """PIL's Image.blend for uint8: degenerate + factor * (image - degenerate), clipped and truncated."""
    d = degenerate.astype(jnp.float32)
    out = d + factor * (image.astype(jnp.float32) - d)
    return jnp.floor(jnp.clip(out, 0.0, 255.0)).astype(jnp.uint8)


def grayscale(image: jax.Array) -> jax.Array:
    """PIL's convert('L'): ITU-R 601-2 luma in 16-bit fixed point, rounded; [H, W, 1]."""
    rgb = image.astype(jnp.int32)
    luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
    return luma[..., None].astype(jnp.uint8)


def brightness(image: jax.Array, factor) -> jax.Array:
    return _blend(jnp.zeros_like(image), image, factor)


def color(image: jax.Array, factor) -> jax.Array:
    return _blend(jnp.broadcast_to(grayscale(image), image.shape), image, factor)


def _mean_gray(image: jax.Array) -> jax.Array:
    return jnp.floor(jnp.mean(grayscale(image).astype(jnp.float32)) + 0.5)


def contrast(image: jax.Array, factor) -> jax.Array:
    return _blend(jnp.full(image.shape, _mean_gray(image), jnp.float32), image, factor)


def sharpness(image: jax.Array, factor) -> jax.Array:
    """Blend with PIL's SMOOTH filter (3x3, centre 5, others 1, /13); the one-pixel border stays as is."""
    return _blend(_smoothed(image), image, factor)


def _smoothed(image: jax.Array) -> jax.Array:
    x = image.astype(jnp.float32)
    h, w = image.shape[:2]
    padded = jnp.pad(x, ((1, 1), (1, 1), (0, 0)))
    neighbours = sum(padded[i:i + h, j:j + w] for i in range(3) for j in range(3))
    smooth = jnp.round((neighbours + 4.0 * x) / 13.0)
    rows = jnp.arange(h)[:, None]
    cols = jnp.arange(w)[None, :]
    border = (rows == 0) | (rows == h - 1) | (cols == 0) | (cols == w - 1)
    return jnp.where(border[..., None], x, smooth)


def posterize(image: jax.Array, bits) -> jax.Array:
    """Keeps the top `bits` bits of every value."""
    shift = (8 - jnp.asarray(bits, jnp.int32)).astype(jnp.uint8)
    return jnp.left_shift(jnp.right_shift(image, shift), shift)


def solarize(image: jax.Array, threshold) -> jax.Array:
    """Values at or above `threshold` are inverted."""
    return jnp.where(image.astype(jnp.float32) >= threshold, 255 - image, image)


def autocontrast(image: jax.Array) -> jax.Array:
    """Each channel stretched linearly to 0..255 (constant channels unchanged)."""
    x = image.astype(jnp.float32)
    low = jnp.min(x, axis=(0, 1))
    high = jnp.max(x, axis=(0, 1))
    flat = high <= low
    scale = jnp.where(flat, 1.0, 255.0 / jnp.where(flat, 1.0, high - low))
    out = (x - jnp.where(flat, 0.0, low)) * scale
    return jnp.floor(jnp.clip(out, 0.0, 255.0)).astype(jnp.uint8)


def _equalize_channel(channel: jax.Array) -> jax.Array:
    histogram = jnp.bincount(channel.reshape(-1).astype(jnp.int32), length=256)
    last = histogram[255 - jnp.argmax(histogram[::-1] > 0)]  # count of the highest value present
    step = (jnp.sum(histogram) - last) // 256
    safe = jnp.maximum(step, 1)
    before = jnp.cumsum(histogram) - histogram
    lut = jnp.clip((before + safe // 2) // safe, 0, 255)
    equalised = lut[channel.astype(jnp.int32)].astype(jnp.uint8)
    return jnp.where(step > 0, equalised, channel)


def equalize(image: jax.Array) -> jax.Array:
    """PIL's ImageOps.equalize: per channel, the lookup table of the cumulative histogram."""
    return jnp.stack([_equalize_channel(image[..., c]) for c in range(image.shape[-1])], axis=-1)


# -- policies -------------------------------------------------------------------------------------------
# The ops in families that share their expensive part: the five geometric ops are one warp whose matrix
# depends on the op, and the four enhancements one blend whose degenerate image does. Per image this
# computes seven candidates (not fourteen) and selects one.
# Family of each op of OP_NAMES: identity, warp, blend, posterize, solarize, autocontrast, equalize.
_FAMILY = (0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 3, 4, 5, 6)


def _translate_pixels(amount: float, side: int) -> float:
    return amount * side if amount < 1 else amount


def _transform(image: jax.Array, op: jax.Array, level: jax.Array, sign: jax.Array, ranges: Ranges) -> jax.Array:
    """One uint8 image by op OP_NAMES[op] at the signed magnitude level * sign (level in 0..1)."""
    h, w = image.shape[:2]
    signed = sign * level

    def is_op(name: str) -> jax.Array:
        return op == OP_NAMES.index(name)

    shear = signed * ranges.shear
    tx, ty = signed * _translate_pixels(ranges.translate, w), signed * _translate_pixels(ranges.translate, h)
    matrices = {"shear_x": (1.0, shear, 0.0, 0.0, 1.0, 0.0), "shear_y": (1.0, 0.0, 0.0, shear, 1.0, 0.0),
                "translate_x": (1.0, 0.0, tx, 0.0, 1.0, 0.0), "translate_y": (1.0, 0.0, 0.0, 0.0, 1.0, ty),
                "rotate": _rotation(h, w, signed * ranges.rotate)}
    matrix = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    for name, chosen in matrices.items():
        matrix = tuple(jnp.where(is_op(name), m, current) for m, current in zip(chosen, matrix, strict=True))
    warped = _affine_nearest(image, *matrix)

    gray = jnp.broadcast_to(grayscale(image), image.shape).astype(jnp.float32)
    degenerate = jnp.where(is_op("color"), gray, jnp.where(is_op("contrast"), _mean_gray(image),
                           jnp.where(is_op("sharpness"), _smoothed(image), 0.0)))
    blended = _blend(degenerate, image, 1.0 + signed * ranges.enhance)

    posterized = posterize(image, 8 - jnp.round(level * ranges.posterize).astype(jnp.int32))
    solarized = solarize(image, ranges.solarize * (1.0 - level))
    family = jnp.asarray(_FAMILY, jnp.int32)[op]
    candidates = (image, warped, blended, posterized, solarized, autocontrast(image), equalize(image))
    return jax.lax.select_n(family, *candidates)


def apply_ops(images: jax.Array, ops: jax.Array, levels: jax.Array, signs: jax.Array, ranges: Ranges) -> jax.Array:
    """uint8 [N, H, W, 3] images, image i transformed by op OP_NAMES[ops[i]] at levels[i] * signs[i]."""
    if images.dtype != jnp.uint8:
        raise ValueError(f"RandAugment/TrivialAugment work on uint8 images, not {images.dtype}")

    def one(image, op, level, sign):
        return _transform(image, op, level, sign, ranges)

    return jax.vmap(one)(images, ops.astype(jnp.int32), levels.astype(jnp.float32), signs.astype(jnp.float32))


def _signs(rng: jax.Array, n: int) -> jax.Array:
    return jnp.where(jax.random.bernoulli(rng, 0.5, (n,)), 1.0, -1.0)


def randaugment(rng: jax.Array, images: jax.Array, num_layers: int, magnitude: float) -> jax.Array:
    """RandAugment(n=num_layers, m=magnitude on 0..10): each layer one uniform op per image."""
    n = images.shape[0]
    levels = jnp.full((n,), magnitude / 10.0, jnp.float32)
    for layer_key in jax.random.split(rng, num_layers):
        op_key, sign_key = jax.random.split(layer_key)
        ops = jax.random.randint(op_key, (n,), 0, len(OP_NAMES))
        images = apply_ops(images, ops, levels, _signs(sign_key, n), RANDAUGMENT_RANGES)
    return images


def trivial_augment(rng: jax.Array, images: jax.Array) -> jax.Array:
    """TrivialAugmentWide: one uniform op per image at one of 31 uniform levels."""
    n = images.shape[0]
    op_key, level_key, sign_key = jax.random.split(rng, 3)
    ops = jax.random.randint(op_key, (n,), 0, len(OP_NAMES))
    levels = jax.random.randint(level_key, (n,), 0, TRIVIAL_LEVELS) / (TRIVIAL_LEVELS - 1)
    return apply_ops(images, ops, levels, _signs(sign_key, n), TRIVIAL_RANGES)

