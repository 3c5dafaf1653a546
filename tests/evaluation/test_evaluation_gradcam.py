"""Grad-CAM's arithmetic on arrays: bilinear upsampling, normalising, colouring and laying maps over images
(the computation from a model is tested in tests/run/test_gradcam.py)."""

import jax
import numpy as np
from PIL import Image

from cnn_flax.evaluation.gradcam import (
    class_activation_maps,
    display_scale,
    heat_colours,
    normalise,
    overlay,
    plot_mistake_maps,
    upsample,
)


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


def test_the_mistakes_figure_is_one_image_of_three_panels_per_mistake(tmp_path):
    """Each row: the image enlarged as its overlays are, then the true and the predicted class's overlays."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 16, 16, 1), dtype=np.uint8)  # grayscale, shown in RGB
    true_maps, predicted_maps = rng.random((2, 4, 4)), rng.random((2, 4, 4))
    captions = [("#3", "true: cat", "predicted: dog"), ("#9", "true: dog", "predicted: cat")]
    grid = plot_mistake_maps(images, true_maps, predicted_maps, captions, tmp_path / "maps.png", title="Maps")
    assert grid.title == "Maps"
    assert grid.captions == [text for row in captions for text in row]
    assert grid.colours == ["black", "green", "red"] * 2
    side = 16 * display_scale(16, 16)
    assert grid.scale == 1 and len(grid.corners) == 6  # the overlays are enlarged already
    for row in range(2):
        panels = (overlay(images[row], true_maps[row], alpha=0.0), overlay(images[row], true_maps[row]),
                  overlay(images[row], predicted_maps[row]))
        for col, panel in enumerate(panels):
            top, left = grid.corners[3 * row + col]
            np.testing.assert_array_equal(grid.image[top:top + side, left:left + side], panel)
    np.testing.assert_array_equal(panels[0][..., 0], np.repeat(np.repeat(images[1, ..., 0], 14, 0), 14, 1))
    with Image.open(tmp_path / "maps.png") as saved:
        assert saved.size[1] > saved.size[0] / 2
        np.testing.assert_array_equal(np.asarray(saved.convert("RGB")), grid.image)
