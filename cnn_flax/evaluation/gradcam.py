"""Grad-CAM from arrays: where a network looked, given a feature map and the class score's gradient there.

Selvaraju et al.'s recipe: each channel k of a feature map A [N, h, w, K] is weighted by the spatial mean of
the gradient of the class score with respect to it, and the map is ReLU(Σ_k w_k A_k), so only the places
that speak *for* the class light up. Maps come at the feature map's resolution (7x7 for GoogLeNet) and are
upsampled to the image bilinearly, then coloured and laid over the image. Getting A and its gradient out of
a model is the run layer's business (cnn_flax/run/gradcam.py); this module takes plain arrays, so the
arithmetic can be checked against any independent computation.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from cnn_flax.atomic import atomic_file
from cnn_flax.evaluation.files import CaptionedGrid, save_captioned_grid

# The overlay files of small inputs (digits' and CIFAR-10's 32x32) are enlarged to at least this many pixels a
# side, by whole pixels, so the map can be seen; the heat map itself is interpolated to that size.
MIN_DISPLAY_SIDE = 224
OVERLAY_ALPHA = 0.45  # the heat map's opacity over the image


def channel_weights(gradients: Any) -> np.ndarray:
    """w_k: the spatial mean of d(score)/dA_k, [N, h, w, K] -> [N, K] (the paper's global average pooling)."""
    gradients = _feature_maps(gradients, "gradients")
    return gradients.mean(axis=(1, 2))


def class_activation_maps(features: Any, gradients: Any) -> np.ndarray:
    """ReLU(Σ_k w_k A_k) at the feature map's resolution: [N, h, w, K] twice -> [N, h, w], float64."""
    features, gradients = _feature_maps(features, "features"), _feature_maps(gradients, "gradients")
    if features.shape != gradients.shape:
        raise ValueError(f"features {features.shape} and gradients {gradients.shape} must have the same shape")
    weighted = np.einsum("nhwk,nk->nhw", features, channel_weights(gradients))
    return np.maximum(weighted, 0.0)


def _feature_maps(values: Any, what: str) -> np.ndarray:
    values = np.asarray(values, np.float64)
    if values.ndim != 4:
        raise ValueError(f"{what} must be feature maps [N, h, w, K], got shape {values.shape}")
    return values


def upsample(maps: Any, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of [N, h, w] maps to [N, H, W] with pixel centres aligned (half-pixel offsets) and the
    edge values held beyond the outer centres: what image libraries' "linear" resize does when enlarging."""
    maps = np.asarray(maps, np.float64)
    if maps.ndim != 3:
        raise ValueError(f"maps must be [N, h, w], got shape {maps.shape}")
    rows = _linear_weights(maps.shape[1], size[0])
    cols = _linear_weights(maps.shape[2], size[1])
    return np.einsum("Hh,nhw,Ww->nHW", rows, maps, cols)


def _linear_weights(source: int, target: int) -> np.ndarray:
    """[target, source] interpolation matrix of one axis."""
    position = np.clip((np.arange(target) + 0.5) * source / target - 0.5, 0.0, source - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, source - 1)
    frac = position - low
    weights = np.zeros((target, source))
    np.add.at(weights, (np.arange(target), low), 1.0 - frac)
    np.add.at(weights, (np.arange(target), high), frac)
    return weights


def normalise(maps: Any) -> np.ndarray:
    """Each map divided by its own maximum, into [0, 1]; a map that is zero everywhere (no place speaks for the
    class) stays zero rather than being stretched."""
    maps = np.asarray(maps, np.float64)
    peak = maps.reshape(len(maps), -1).max(axis=1) if maps.size else np.zeros(len(maps))
    scale = np.where(peak > 0, peak, 1.0)
    return np.clip(maps / scale.reshape(-1, *([1] * (maps.ndim - 1))), 0.0, 1.0)


def display_scale(height: int, width: int) -> int:
    """The whole-pixel enlargement of an image for its overlay file (1 for images already large enough)."""
    return max(1, math.ceil(MIN_DISPLAY_SIDE / max(1, min(height, width))))


def heat_colours(maps: Any) -> np.ndarray:
    """[N, H, W] maps in [0, 1] as uint8 RGB with matplotlib's 'jet' (blue cold, red hot), as Keras's example."""
    from matplotlib import colormaps

    maps = np.clip(np.asarray(maps, np.float64), 0.0, 1.0)
    return np.round(colormaps["jet"](maps)[..., :3] * 255).astype(np.uint8)


def overlay(image: Any, cam: Any, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """One uint8 image [H, W, 3] (or grayscale [H, W] / [H, W, 1]) with its map [h, w] laid over it in colour.

    The image is enlarged by whole pixels to `display_scale`, the map interpolated to the same size; the
    result is (1 − alpha)·image + alpha·colour(map), uint8.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"image must be uint8 [H, W(, C)], got {image.dtype} {image.shape}")
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    scale = display_scale(*image.shape[:2])
    big = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
    heat = heat_colours(normalise(upsample(np.asarray(cam)[None], big.shape[:2]))[0][None])[0]
    blended = (1.0 - alpha) * big.astype(np.float64) + alpha * heat.astype(np.float64)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """A uint8 RGB array as a PNG file, written atomically."""
    from PIL import Image

    with atomic_file(path, binary=True) as handle:
        Image.fromarray(np.asarray(image, np.uint8)).save(handle, format="PNG")


def plot_mistake_maps(images: Any, true_maps: Any, predicted_maps: Any, captions: Sequence[tuple[str, str, str]],
                      path: str | os.PathLike, title: str = "Where the network looked (Grad-CAM)") -> CaptionedGrid:
    """A figure with one row per image: the image, the map of its true class, the map of the predicted class.

    captions: per row (image caption, true-class caption, predicted-class caption). The image is enlarged by
    whole pixels as its overlays are, so that the three panels of a row have one size.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(f"images must be uint8 [N, H, W(, C)], got {images.dtype} {images.shape}")
    count = len(images)
    if not (len(true_maps) == len(predicted_maps) == len(captions) == count) or count == 0:
        raise ValueError(f"need one true map, predicted map and caption per image ({count} images), got "
                         f"{len(true_maps)}, {len(predicted_maps)} and {len(captions)}")
    tiles = []
    for image, true_map, predicted_map in zip(images, true_maps, predicted_maps, strict=True):
        tiles += [overlay(image, true_map, alpha=0.0), overlay(image, true_map), overlay(image, predicted_map)]
    return save_captioned_grid(np.stack(tiles), [text for row in captions for text in row],
                               ["black", "green", "red"] * count, 3, path, title)
