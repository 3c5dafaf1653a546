"""The deck's Keras ImageDataGenerator augmentation as one batched, jittable warp on the accelerator.

Each image draws its own rotation, zoom, shift, shear and flip as Keras draws them, and the warp is a
single gather with bilinear weights and edge clamping (Keras's fill_mode='nearest'), so it costs a few
milliseconds per batch on a GPU instead of a CPU pool per image. The geometry is that of current Keras
(`apply_affine_transform`: matrices in (x, y) = (column, row) order about the centre ((W-1)/2, (H-1)/2)).
One deliberate difference: Keras scales its x shift by the height range and its y shift by the width
range; here width_shift moves columns and height_shift moves rows (the same for square images).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _uniform(key: jax.Array, n: int, low: float, high: float) -> jax.Array:
    return jax.random.uniform(key, (n,), jnp.float32, low, high)


def random_affine(
    rng: jax.Array,
    images: jax.Array,
    *,
    rotation: float = 0.0,
    zoom: float = 0.0,
    width_shift: float = 0.0,
    height_shift: float = 0.0,
    shear: float = 0.0,
    horizontal_flip: bool = False,
) -> jax.Array:
    """Random per-image affine warp of [N, H, W, C] images; ranges as in Keras (degrees, fractions, zoom ±).

    Shifts below 1 are fractions of the height/width and 1 or more are pixels, as in Keras.
    """
    n, h, w = images.shape[:3]
    keys = jax.random.split(rng, 7)
    dx = width_shift * w if width_shift < 1 else width_shift
    dy = height_shift * h if height_shift < 1 else height_shift
    flip = jax.random.bernoulli(keys[6], 0.5, (n,)) if horizontal_flip else jnp.zeros((n,), bool)
    return affine_warp(
        images,
        theta=jnp.deg2rad(_uniform(keys[0], n, -rotation, rotation)),
        tx=_uniform(keys[1], n, -dx, dx),
        ty=_uniform(keys[2], n, -dy, dy),
        shear=jnp.deg2rad(_uniform(keys[3], n, -shear, shear)),
        zx=_uniform(keys[4], n, 1.0 - zoom, 1.0 + zoom),
        zy=_uniform(keys[5], n, 1.0 - zoom, 1.0 + zoom),
        flip=flip,
    )


def affine_warp(
    images: jax.Array,
    *,
    theta: jax.Array,
    tx: jax.Array,
    ty: jax.Array,
    shear: jax.Array,
    zx: jax.Array,
    zy: jax.Array,
    flip: jax.Array,
) -> jax.Array:
    """Warps image i by Keras's matrix rotation(theta) @ shift(tx, ty) @ shear @ zoom(zx, zy) (all [N]).

    As in Keras's `apply_affine_transform` the matrix acts on (x, y) = (column, row) about the centre and
    maps output to input coordinates (tx moves columns, ty rows; angles in radians); a flip then mirrors
    the warped image left-right.
    """
    n, h, w, c = images.shape
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    shear_sin, shear_cos = jnp.sin(shear), jnp.cos(shear)
    # Linear part rotation @ shear @ zoom and the rotated shift, written out elementwise so that no
    # reduced-precision matmul can perturb coordinates (the zero-strength warp must be exact).
    a_xx, a_xy = cos * zx, -(cos * shear_sin + sin * shear_cos) * zy
    a_yx, a_yy = sin * zx, (cos * shear_cos - sin * shear_sin) * zy
    off_x, off_y = cos * tx - sin * ty, sin * tx + cos * ty
    centre_x, centre_y = (w - 1) / 2.0, (h - 1) / 2.0

    def per_image(v: jax.Array) -> jax.Array:
        return v[:, None, None]

    ys = jnp.arange(h, dtype=jnp.float32)[None, :, None] - centre_y
    xs = jnp.arange(w, dtype=jnp.float32)[None, None, :]
    xs = jnp.where(per_image(flip), (w - 1) - xs, xs) - centre_x
    src_x = per_image(a_xx) * xs + per_image(a_xy) * ys + per_image(off_x) + centre_x
    src_y = per_image(a_yx) * xs + per_image(a_yy) * ys + per_image(off_y) + centre_y
    return _bilinear(images, src_y, src_x)


def _bilinear(images: jax.Array, src_r: jax.Array, src_c: jax.Array) -> jax.Array:
    """Samples images at float coordinates [N, H, W] with edge clamping, in one gather per corner."""
    n, h, w, c = images.shape
    flat = images.reshape(n, h * w, c).astype(jnp.float32)
    r0, c0 = jnp.floor(src_r), jnp.floor(src_c)
    fr, fc = (src_r - r0)[..., None], (src_c - c0)[..., None]
    r0, c0 = r0.astype(jnp.int32), c0.astype(jnp.int32)

    def at(r: jax.Array, cc: jax.Array) -> jax.Array:
        index = jnp.clip(r, 0, h - 1) * w + jnp.clip(cc, 0, w - 1)
        return jnp.take_along_axis(flat, index.reshape(n, h * w, 1), axis=1).reshape(n, h, w, c)

    top = at(r0, c0) * (1 - fc) + at(r0, c0 + 1) * fc
    bottom = at(r0 + 1, c0) * (1 - fc) + at(r0 + 1, c0 + 1) * fc
    out = top * (1 - fr) + bottom * fr
    if jnp.issubdtype(images.dtype, jnp.integer):
        info = jnp.iinfo(images.dtype)
        out = jnp.clip(jnp.round(out), info.min, info.max)
    return out.astype(images.dtype)
