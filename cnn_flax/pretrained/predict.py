"""From class probabilities to what --mode=predict reports: top-k per image, as a JSON-ready list and a table.

Kept free of any model so the same code ranks Keras's output and ours in the tests; classify_images
is the one place that runs a model, with the preprocessing the ImageNet VGG weights need.
"""

import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn_flax.errors import UserError
from cnn_flax.pretrained.images import caffe_preprocess, load_images

# {'index': int, 'name': str, 'prob': float}: one ranked class, as written to predictions.json.
Prediction = dict[str, Any]


def top_k_predictions(probs: np.ndarray, class_names: Sequence[str], k: int = 5) -> list[list[Prediction]]:
    """Per row of `probs` [N, C], its k most probable classes as {index, name, prob}, most probable first.

    Ties keep the lower class index first. k larger than C gives all C classes.
    """
    probs = np.asarray(probs)
    if probs.ndim != 2:
        raise ValueError(f"probs must be [N, C], got shape {probs.shape}")
    if probs.shape[1] != len(class_names):
        raise UserError(f"the model gives {probs.shape[1]} classes but {len(class_names)} class names were "
                        "given; set model.num_classes to match the class names (1000 for ImageNet)")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[{"index": int(i), "name": class_names[i], "prob": float(row[i])} for i in top]
            for row, top in zip(probs, order, strict=True)]


def format_predictions(paths: Sequence[str | os.PathLike], top: Sequence[Sequence[Mapping[str, Any]]]) -> str:
    """A printable table: one block per image, one line per ranked class (rank, probability, index, name)."""
    names = [os.fspath(path) for path in paths]
    width = max([len("image"), *map(len, names)])
    lines = [f"{'image':<{width}}  rank  {'prob':>7}  class"]
    for name, predictions in zip(names, top, strict=True):
        for rank, entry in enumerate(predictions, start=1):
            label = name if rank == 1 else ""
            cls = f"{entry['index']:>4} {entry['name']}"
            lines.append(f"{label:<{width}}  {rank:>4}  {entry['prob']:>7.4f}  {cls}")
    return "\n".join(lines)


def classify_images(model: nn.Module, variables: Mapping[str, Any], paths: Sequence[str | os.PathLike],
                    size: tuple[int, int], class_names: Sequence[str], k: int = 5,
                    batch_size: int = 16) -> list[list[Prediction]]:
    """Load, resize to `size` = (height, width), caffe-preprocess, run `model` (logits), rank the softmax.

    The last batch is padded to the size of the others, so the model compiles once.
    """
    @jax.jit
    def probabilities(weights: Mapping[str, Any], batch: jax.Array) -> jax.Array:
        return jax.nn.softmax(model.apply(weights, caffe_preprocess(batch), train=False), axis=-1)

    batch_size = max(1, min(batch_size, len(paths)))
    top: list[list[Prediction]] = []
    for start in range(0, len(paths), batch_size):
        images = load_images(paths[start:start + batch_size], size)
        padded = np.zeros((batch_size, *images.shape[1:]), np.uint8)
        padded[:len(images)] = images
        probs = np.asarray(probabilities(variables, jnp.asarray(padded)))[:len(images)]
        top += top_k_predictions(probs, class_names, k)
    return top
