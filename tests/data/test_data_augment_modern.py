"""Random-resized-crop, mixup/CutMix, RandAugment/TrivialAugment and random erasing against independent code."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict
from PIL import Image, ImageEnhance, ImageOps

from cnn_flax.data.augment import policies as policy
from cnn_flax.data.augment.crops import resize_boxes, sample_crop_boxes
from cnn_flax.data.augment.erasing import erase_boxes, random_erasing, sample_erase_boxes
from cnn_flax.data.augment.mixing import Mixing, mix_images, mix_targets
from cnn_flax.data.augment.preprocess import make_preprocess, normalize
from cnn_flax.data.augment.recipes import make_mixing
from cnn_flax.data.dataset import DatasetInfo
from cnn_flax.errors import UserError
from configs.common import base


def pixels(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# -- random-resized-crop -----------------------------------------------------------------------------------
def torchvision_boxes(rng, n, h, w, scale, ratio):
    """torchvision's RandomResizedCrop.get_params, written out in numpy (one box at a time)."""
    boxes = []
    for _ in range(n):
        for _ in range(10):
            area = h * w * rng.uniform(*scale)
            aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
            bw, bh = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 0 < bw <= w and 0 < bh <= h:
                boxes.append((bh, bw))
                break
        else:
            boxes.append((h, w))
    return np.asarray(boxes)


def test_crop_boxes_lie_inside_with_the_requested_scale_and_ratio_distribution():
    h, w, scale, ratio = 24, 40, (0.08, 1.0), (3 / 4, 4 / 3)
    boxes = np.asarray(sample_crop_boxes(jax.random.key(0), 4000, h, w, scale, ratio))
    top, left, bh, bw = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (bh >= 1).all() and (bw >= 1).all()
    assert (top + bh <= h).all() and (left + bw <= w).all()
    area, aspect = bh * bw / (h * w), bw / bh
    rounding = 2.5 / min(h, w)  # one rounded pixel per side
    assert area.min() >= scale[0] - rounding and area.max() <= 1.0
    assert (aspect >= ratio[0] * (1 - 2 * rounding)).all() and (aspect <= ratio[1] * (1 + 2 * rounding)).all()
    # The largest box of ratio <= 4/3 in a 24x40 image is 24x32, 80% of it.
    assert area.min() < 0.1 and area.max() == 0.8 and aspect.min() < 0.8 and aspect.max() > 1.25
    reference = torchvision_boxes(np.random.default_rng(0), 4000, h, w, scale, ratio)
    ref_area = reference.prod(1) / (h * w)
    assert abs(area.mean() - ref_area.mean()) < 0.02
    assert abs(np.log(aspect).mean() - np.log(reference[:, 1] / reference[:, 0]).mean()) < 0.02
    # Offsets cover every position where the box fits.
    full = np.asarray(sample_crop_boxes(jax.random.key(1), 2000, 8, 8, (0.25, 0.25), (1.0, 1.0)))
    assert (full[:, 2:] == 4).all() and set(full[:, 0]) == set(range(5)) and set(full[:, 1]) == set(range(5))


def test_crop_falls_back_to_the_centre_crop_of_the_nearest_ratio():
    boxes = np.asarray(sample_crop_boxes(jax.random.key(0), 5, 32, 32, (1.0, 1.0), (2.0, 3.0)))
    np.testing.assert_array_equal(boxes, np.tile([8, 0, 16, 32], (5, 1)))


def test_resize_of_a_box_is_bilinear_with_half_pixel_centres():
    images = pixels((3, 12, 16, 3)).astype(np.float32)
    boxes = np.array([[2, 3, 5, 7], [0, 0, 12, 16], [6, 9, 6, 4]], np.int32)
    out = np.asarray(resize_boxes(jnp.asarray(images), jnp.asarray(boxes)))
    for image, (t, c, bh, bw), got in zip(images, boxes, out, strict=True):
        expected = jax.image.resize(image[t:t + bh, c:c + bw], (12, 16, 3), "linear", antialias=False)
        np.testing.assert_allclose(got, expected, atol=1e-3)
    np.testing.assert_array_equal(out[1], images[1])
    as_uint8 = resize_boxes(jnp.asarray(images.astype(np.uint8)), jnp.asarray(boxes))
    assert as_uint8.dtype == jnp.uint8
    np.testing.assert_array_equal(as_uint8, np.clip(np.round(out), 0, 255))


# -- mixup / CutMix ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("mixing", [Mixing(0.4, 0.0), Mixing(0.0, 1.0), Mixing(0.4, 1.0, switch_prob=0.5)])
def test_mixed_images_and_targets_equal_numpy_on_the_same_draw(mixing):
    images = np.random.default_rng(1).normal(size=(6, 8, 10, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 4, 0], np.int32)
    for seed in range(4):
        draw = mixing.draw(jax.random.key(seed), 6, 8, 10)
        perm, lam, box = np.asarray(draw.perm), float(draw.lam), np.asarray(draw.box)
        assert sorted(perm) == list(range(6))
        expected = images * lam + images[perm] * np.float32(1 - lam)
        if bool(draw.cutmix):
            r0, r1, c0, c1 = box
            assert 0 <= r0 <= r1 <= 8 and 0 <= c0 <= c1 <= 10
            assert lam == pytest.approx(1 - (r1 - r0) * (c1 - c0) / 80, abs=1e-6)
            expected = images.copy()
            expected[:, r0:r1, c0:c1] = images[perm][:, r0:r1, c0:c1]
        else:
            assert (box == 0).all() and 0 < lam < 1
        np.testing.assert_allclose(np.asarray(mix_images(jnp.asarray(images), draw)), expected, rtol=1e-6)
        onehot = np.eye(5, dtype=np.float32)
        np.testing.assert_allclose(np.asarray(mix_targets(jnp.asarray(labels), draw, 5)),
                                   lam * onehot[labels] + (1 - lam) * onehot[labels[perm]], rtol=1e-6)


def test_mixing_switch_and_probability_shares():
    draws = jax.vmap(lambda k: Mixing(0.4, 1.0, switch_prob=0.3, prob=0.8).draw(k, 4, 8, 8))(
        jax.random.split(jax.random.key(0), 1000))
    mixed = np.asarray(draws.lam) < 1
    assert 0.75 < mixed.mean() < 0.85
    assert 0.25 < np.asarray(draws.cutmix).mean() < 0.35
    box = np.asarray(draws.box)
    assert ((box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2]))[~mixed].max() == 0
    images = jnp.arange(4 * 8 * 8 * 3, dtype=jnp.float32).reshape(4, 8, 8, 3)
    off = Mixing(0.4, 1.0, prob=0.0).draw(jax.random.key(3), 4, 8, 8)
    np.testing.assert_array_equal(mix_images(images, off), images)
    np.testing.assert_array_equal(mix_targets(jnp.arange(4), off, 4), np.eye(4))


# -- RandAugment / TrivialAugment ops against PIL ---------------------------------------------------------
def _pil(image, fn):
    return np.asarray(fn(Image.fromarray(image)))


@pytest.fixture(scope="module")
def photo():
    """A smooth, photo-like 12x10 image (random pixels would make every op trivially saturated)."""
    y, x = np.mgrid[0:12, 0:10]
    base_image = np.stack([40 + 12 * x + 3 * y, 200 - 9 * y, 90 + 5 * ((x * y) % 17)], axis=-1)
    return np.clip(base_image + np.random.default_rng(0).integers(-20, 20, (12, 10, 3)), 0, 255).astype(np.uint8)


def test_ops_match_pil(photo):
    exact = {
        "solarize": (policy.solarize(photo, 128), _pil(photo, lambda im: ImageOps.solarize(im, 128))),
        "posterize": (policy.posterize(photo, 3), _pil(photo, lambda im: ImageOps.posterize(im, 3))),
        "equalize": (policy.equalize(photo), _pil(photo, ImageOps.equalize)),
        "shear_x": (policy.shear_x(photo, 0.25), _pil(photo, lambda im: im.transform(
            im.size, Image.AFFINE, (1, 0.25, 0, 0, 1, 0), Image.NEAREST, fillcolor=(128,) * 3))),
        "shear_y": (policy.shear_y(photo, -0.5), _pil(photo, lambda im: im.transform(
            im.size, Image.AFFINE, (1, 0, 0, -0.5, 1, 0), Image.NEAREST, fillcolor=(128,) * 3))),
        "grayscale": (policy.grayscale(photo)[..., 0], _pil(photo, lambda im: im.convert("L"))),
    }
    for name, (got, expected) in exact.items():
        np.testing.assert_array_equal(np.asarray(got), expected, err_msg=name)
    within_one = {
        "autocontrast": (policy.autocontrast(photo), _pil(photo, ImageOps.autocontrast)),
        "brightness": (policy.brightness(photo, 1.7), _pil(photo, lambda im: ImageEnhance.Brightness(im).enhance(1.7))),
        "color": (policy.color(photo, 0.3), _pil(photo, lambda im: ImageEnhance.Color(im).enhance(0.3))),
        "contrast": (policy.contrast(photo, 1.6), _pil(photo, lambda im: ImageEnhance.Contrast(im).enhance(1.6))),
        "sharpness": (policy.sharpness(photo, 1.8), _pil(photo, lambda im: ImageEnhance.Sharpness(im).enhance(1.8))),
    }
    for name, (got, expected) in within_one.items():
        diff = np.abs(np.asarray(got).astype(int) - expected.astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.9, name


def test_geometric_ops_move_pixels_as_numpy(photo):
    square = photo[:10]
    np.testing.assert_array_equal(policy.rotate(square, 90.0), np.rot90(square))
    shifted = np.full_like(photo, 128)
    shifted[:, :7] = photo[:, 3:]
    np.testing.assert_array_equal(policy.translate_x(photo, 3.0), shifted)
    shifted = np.full_like(photo, 128)
    shifted[2:] = photo[:-2]
    np.testing.assert_array_equal(policy.translate_y(photo, -2.0), shifted)


def test_policy_picks_each_op_at_its_magnitude(photo):
    images = np.stack([photo] * len(policy.OP_NAMES))
    ops = jnp.arange(len(policy.OP_NAMES))
    apply_ops = jax.jit(policy.apply_ops, static_argnums=4)
    out = np.asarray(apply_ops(jnp.asarray(images), ops, jnp.full(len(ops), 0.5), -jnp.ones(len(ops)),
                                      policy.RANDAUGMENT_RANGES))
    enhance = 1 - 0.5 * 0.9
    expected = {"identity": photo, "shear_x": policy.shear_x(photo, -0.15), "shear_y": policy.shear_y(photo, -0.15),
                "translate_x": policy.translate_x(photo, -0.45 * 0.5 * 10),
                "translate_y": policy.translate_y(photo, -0.45 * 0.5 * 12), "rotate": policy.rotate(photo, -15.0),
                "brightness": policy.brightness(photo, enhance), "color": policy.color(photo, enhance),
                "contrast": policy.contrast(photo, enhance), "sharpness": policy.sharpness(photo, enhance),
                "posterize": policy.posterize(photo, 6), "solarize": policy.solarize(photo, 127.5),
                "autocontrast": policy.autocontrast(photo), "equalize": policy.equalize(photo)}
    assert set(expected) == set(policy.OP_NAMES)
    for name, image in expected.items():
        np.testing.assert_array_equal(out[policy.OP_NAMES.index(name)], image, err_msg=name)


def test_randaugment_and_trivialaugment_keep_shape_dtype_and_are_deterministic():
    images = jnp.asarray(pixels((6, 10, 10, 3)))
    randaugment = jax.jit(lambda k: policy.randaugment(k, images, 2, 9.0))
    for augment in (randaugment, jax.jit(lambda k: policy.trivial_augment(k, images))):
        first, again, other = (np.asarray(augment(jax.random.key(s))) for s in (0, 0, 1))
        assert first.shape == images.shape and first.dtype == np.uint8
        np.testing.assert_array_equal(first, again)
        assert (first != other).any() and (first != np.asarray(images)).any()
    with pytest.raises(ValueError, match="uint8"):
        policy.trivial_augment(jax.random.key(0), images.astype(jnp.float32))


# -- random erasing ----------------------------------------------------------------------------------------
def test_erasing_boxes_follow_timm_and_the_region_is_replaced():
    boxes = np.asarray(sample_erase_boxes(jax.random.key(0), 3000, 20, 30, 0.6))
    top, left, bh, bw = boxes.T
    erased = bh > 0
    assert 0.55 < erased.mean() < 0.65
    assert (top + bh <= 20).all() and (left + bw <= 30).all() and (bh < 20).all() and (bw < 30).all()
    area = (bh * bw)[erased] / 600
    assert area.min() > 0.02 - 0.02 and area.max() < 1 / 3 + 0.05 and area.mean() == pytest.approx(0.177, abs=0.03)
    images = np.random.default_rng(0).normal(size=(3, 20, 30, 3)).astype(np.float32)
    fill = np.random.default_rng(1).normal(size=images.shape).astype(np.float32)
    chosen = boxes[erased][:3]
    expected = images.copy()
    for i, (t, c, h, w) in enumerate(chosen):
        expected[i, t:t + h, c:c + w] = fill[i, t:t + h, c:c + w]
    np.testing.assert_array_equal(erase_boxes(jnp.asarray(images), jnp.asarray(chosen), jnp.asarray(fill)), expected)
    zeroed = np.asarray(random_erasing(jax.random.key(2), jnp.asarray(images), 1.0, "zero"))
    box_key, _ = jax.random.split(jax.random.key(2))
    boxes = np.asarray(sample_erase_boxes(box_key, 3, 20, 30, 1.0))
    for image, got, (t, c, h, w) in zip(images, zeroed, boxes, strict=True):
        keep = np.ones((20, 30), bool)
        keep[t:t + h, c:c + w] = False
        assert h > 0 and (got[~keep] == 0).all() and (got[keep] == image[keep]).all()


# -- configuration ------------------------------------------------------------------------------------------
def _info(shape):
    return DatasetInfo("t", 5, tuple("abcde"), shape, {}, np.full(3, 127.0, np.float32), None)


def test_defaults_leave_preprocessing_as_the_deck_and_bad_values_fail_clearly():
    data = base("t").data
    images = pixels((4, 8, 8, 3))
    preprocess = make_preprocess(data, _info((8, 8, 3)))
    np.testing.assert_array_equal(preprocess(images, jax.random.key(0)), normalize(images, "scale", None))
    assert make_mixing(data) is None
    bad = {"rrc_scale": (0.0, 1.0), "randaugment_m": 11, "erasing_mode": "noise", "mixup_alpha": -1.0,
           "mix_switch_prob": 1.5}
    switches = {"rrc_scale": dict(random_resized_crop=True), "randaugment_m": dict(randaugment_n=2),
                "erasing_mode": dict(random_erasing=0.5), "mix_switch_prob": dict(cutmix_alpha=1.0)}
    for key, value in bad.items():
        config = base("t").data
        config.augment.update({**switches.get(key, {}), key: value})
        with pytest.raises(UserError, match=f"data.augment.{key}="):
            make_preprocess(config, _info((8, 8, 3)))
            make_mixing(config)
    both = ConfigDict({"augment": {"randaugment_n": 1, "randaugment_m": 5, "trivial_augment": True}})
    with pytest.raises(UserError, match="choose one"):
        make_preprocess(both, _info((8, 8, 3)))
