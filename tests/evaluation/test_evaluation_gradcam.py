"""Grad-CAM's arithmetic on arrays: bilinear upsampling, normalising, colouring and laying maps over images
(the computation from a model is tested in tests/run/test_gradcam.py)."""

import jax
import numpy as np

from cnn_flax.evaluation.gradcam import class_activation_maps, display_scale, heat_colours, normalise, overlay, upsample


def test_upsampling_is_bilinear_with_half_pixel_centres():
    maps = np.random.default_rng(0).random((2, 3, 4))
    np.testing.assert_allclose(upsample(maps, (3, 4)), maps)  # the same size: unchanged
    np.testing.assert_allclose(upsample(maps, (12, 10)), jax.image.resize(maps, (2, 12, 10), "linear"), atol=1e-6)
    np.testing.assert_allclose(upsample(np.full((1, 2, 2), 0.25), (7, 5)), np.full((1, 7, 5), 0.25))
    # Enlarging 2 → 4 along a row: centres at 0.25 and 0.75 of the way from one source pixel to the next.
    np.testing.assert_allclose(upsample(np.array([[[0.0, 1.0]]]), (1, 4))[0, 0], [0.0, 0.25, 0.75, 1.0])


def test_normalised_overlays_keep_the_image_and_colour_the_hot_places():
    maps = np.array([[[0.0, 2.0], [1.0, 0.5]], [[0.0, 0.0], [0.0, 0.0]]])
    np.testing.assert_allclose(normalise(maps), [[[0, 1], [0.5, 0.25]], [[0, 0], [0, 0]]])  # zero stays zero
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    scale = display_scale(8, 8)
    assert scale == 28  # 8 px → 224 px, whole pixels
    plain = overlay(image, np.ones((2, 2)), alpha=0.0)
    np.testing.assert_array_equal(plain, np.repeat(np.repeat(image, scale, 0), scale, 1))
    hot = overlay(image, np.array([[0.0, 0.0], [0.0, 1.0]]), alpha=1.0)
    assert hot.shape == (224, 224, 3) and hot.dtype == np.uint8
    np.testing.assert_array_equal(hot[-1, -1], heat_colours(np.ones((1, 1)))[0, 0])  # jet's hottest, dark red
    np.testing.assert_array_equal(hot[0, 0], heat_colours(np.zeros((1, 1)))[0, 0])  # jet's coldest, dark blue
    assert heat_colours(np.ones((1, 1)))[0, 0, 0] > 100 and heat_colours(np.zeros((1, 1)))[0, 0, 2] > 100
    grey = overlay(np.zeros((300, 300), np.uint8), np.zeros((2, 2)), alpha=0.5)
    assert grey.shape == (300, 300, 3)  # large enough already: not enlarged; grayscale drawn as RGB
    np.testing.assert_array_equal(class_activation_maps(np.ones((1, 2, 2, 3)), -np.ones((1, 2, 2, 3))),
                                  np.zeros((1, 2, 2)))  # evidence only against the class: ReLU leaves nothing
