"""The deck's augmentation on the accelerator, and normalisation, against independent numpy/scipy code."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict
from scipy import ndimage

from cnn_flax.data import affine_warp, make_preprocess, normalize, random_affine
from cnn_flax.data.dataset import DatasetInfo
from cnn_flax.errors import UserError

DECK = dict(rotation=18.0, zoom=0.15, width_shift=0.2, height_shift=0.2, shear=0.15, horizontal_flip=True)


def images(n=8, size=16, dtype=np.uint8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(dtype)


def info_for(x):
    mean_image = x.astype(np.float64).mean(0).astype(np.float32)
    return DatasetInfo("t", 10, tuple("0123456789"), x.shape[1:], {}, mean_image.mean((0, 1)), mean_image)


def keras_reference(image, theta, tx, ty, shear, zx, zy):
    """Keras's apply_affine_transform (current recipe) for one float HxWxC image, angles in degrees."""
    t, s = np.deg2rad(theta), np.deg2rad(shear)
    rotation = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    shift = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]])
    shearing = np.array([[1, -np.sin(s), 0], [0, np.cos(s), 0], [0, 0, 1]])
    zoom = np.array([[zx, 0, 0], [0, zy, 0], [0, 0, 1]])
    h, w = image.shape[:2]
    o_x, o_y = h / 2 - 0.5, w / 2 - 0.5
    m = np.array([[1, 0, o_x], [0, 1, o_y], [0, 0, 1]]) @ rotation @ shift @ shearing @ zoom
    m = m @ np.array([[1, 0, -o_x], [0, 1, -o_y], [0, 0, 1]])
    m[:, [0, 1]] = m[:, [1, 0]]
    m[[0, 1]] = m[[1, 0]]
    return np.stack(
        [ndimage.affine_transform(image[..., c], m[:2, :2], m[:2, 2], order=1, mode="nearest") for c in range(3)],
        axis=-1,
    )


def test_affine_warp_matches_keras_apply_affine_transform():
    x = images(n=2, size=12, dtype=np.float32)
    params = [(10.0, 2.5, -1.5, 8.0, 1.1, 0.9), (-17.0, -3.0, 2.0, -12.0, 0.85, 1.15)]
    arrays = {
        k: jnp.array(v, jnp.float32)
        for k, v in zip(["theta", "tx", "ty", "shear", "zx", "zy"], zip(*params, strict=True), strict=True)
    }
    arrays["theta"], arrays["shear"] = jnp.deg2rad(arrays["theta"]), jnp.deg2rad(arrays["shear"])
    got = np.asarray(affine_warp(jnp.asarray(x), flip=jnp.zeros(2, bool), **arrays))
    for i, p in enumerate(params):
        np.testing.assert_allclose(got[i], keras_reference(x[i].astype(np.float64), *p), atol=2e-3)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_random_affine_keeps_shape_and_dtype_and_varies_per_image(dtype):
    x = np.repeat(images(n=1, dtype=dtype), 8, axis=0)
    out = jax.jit(lambda k, v: random_affine(k, v, **DECK))(jax.random.key(0), x)
    assert out.shape == x.shape and out.dtype == x.dtype
    out = np.asarray(out)
    assert len({o.tobytes() for o in out}) == 8 and not np.array_equal(out[0], x[0])


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_zero_strength_is_exactly_the_identity(dtype):
    x = images(dtype=dtype)
    assert np.array_equal(np.asarray(random_affine(jax.random.key(1), jnp.asarray(x))), x)


def test_pure_horizontal_flip():
    x = images()
    zeros, ones = jnp.zeros(8), jnp.ones(8)
    flipped = affine_warp(x, theta=zeros, tx=zeros, ty=zeros, shear=zeros, zx=ones, zy=ones, flip=ones > 0)
    assert np.array_equal(np.asarray(flipped), x[:, :, ::-1])
    out = np.asarray(random_affine(jax.random.key(2), x, horizontal_flip=True))
    is_flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, x, strict=True)]
    is_same = [np.array_equal(o, i) for o, i in zip(out, x, strict=True)]
    assert all(a != b for a, b in zip(is_flipped, is_same, strict=True)) and any(is_flipped) and any(is_same)


def test_width_shift_moves_columns_with_edge_fill():
    x = images(n=1, size=10, dtype=np.float32)
    one = jnp.ones(1)
    out = np.asarray(affine_warp(x, theta=0 * one, tx=2 * one, ty=0 * one, shear=0 * one, zx=one, zy=one, flip=one < 0))
    assert np.array_equal(out[0, :, :8], x[0, :, 2:]) and np.array_equal(out[0, :, 8], x[0, :, 9])


def test_normalize_methods_match_numpy():
    x = images()
    info = info_for(x)
    f = x.astype(np.float32)
    np.testing.assert_allclose(np.asarray(normalize(x, "scale", info)), f / 255.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(normalize(x, "mean_image", info)), f - info.mean_image, atol=1e-5)
    np.testing.assert_allclose(np.asarray(normalize(x, "mean_rgb", info)), f - info.mean_rgb, atol=1e-5)
    assert normalize(x, "none", info).dtype == jnp.float32
    with pytest.raises(UserError, match="data.normalize='zscore' is unknown; use one of scale, mean_image"):
        normalize(x, "zscore", info)


def test_make_preprocess_normalises_then_augments_only_with_an_rng():
    x = images()
    info = info_for(x)
    on = make_preprocess(ConfigDict({"normalize": "mean_rgb", "augment": DECK}), info)
    off = make_preprocess(ConfigDict({"normalize": "mean_rgb"}), info)
    plain = np.asarray(normalize(x, "mean_rgb", info))
    assert np.array_equal(np.asarray(on(x)), plain) and np.array_equal(np.asarray(off(x, jax.random.key(0))), plain)
    warped = jax.jit(on)(x, jax.random.key(0))
    assert warped.shape == x.shape and warped.dtype == jnp.float32 and not np.allclose(np.asarray(warped), plain)
    with pytest.raises(UserError, match="data.augment.rotation_range is unknown"):
        make_preprocess(ConfigDict({"augment": {"rotation_range": 10}}), info)
    with pytest.raises(UserError, match="data.augment.zoom=-0.1 must be a number >= 0"):
        make_preprocess(ConfigDict({"augment": {"zoom": -0.1}}), info)
