"""Keras's ImageNet models on image files: Keras's resizing and 'caffe' preprocessing on the shared prediction path.

Ranking and batching live in `cnn_flax.predict` (re-exported here); this only fixes what the published
VGG weights need, so our top-5 equals Keras's for the same files.
"""

import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn

from cnn_flax.errors import UserError
from cnn_flax.predict import Prediction, classify, format_predictions, model_probabilities, top_k_predictions
from cnn_flax.pretrained.images import caffe_preprocess, load_images

__all__ = ["Prediction", "classify_images", "format_predictions", "keras_loader", "top_k_predictions"]


def keras_loader(size: tuple[int, int], interpolation: str = "nearest"):
    """`load(path)` resizing as keras.utils.load_img(target_size=size) does."""
    return lambda path: load_images([path], size, interpolation)[0]


def classify_images(model: nn.Module, variables: Mapping[str, Any], paths: Sequence[str | os.PathLike],
                    size: tuple[int, int], class_names: Sequence[str], k: int = 5,
                    batch_size: int = 16) -> list[list[Prediction]]:
    """Load, resize to `size` = (height, width), caffe-preprocess, run `model` (logits), rank the softmax."""
    ranked, skipped = classify(model_probabilities(model, variables, caffe_preprocess), paths, keras_loader(size),
                               class_names, k=k, batch_size=batch_size)
    if skipped:
        raise UserError(skipped[0][1])
    return [top for _, top in ranked]
