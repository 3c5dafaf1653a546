"""Grad-CAM of a zoo model: the feature map of one of its layers and the class score's gradient there.

The layer is a direct child of the model, named as `--mode=summary` lists it ("block2_conv2",
"inception_5b"); by default the last one that holds parameters and gives a feature map [N, H, W, C], i.e. the
last convolution (or inception block) before the classifier. Its output A is captured with
`nn.intercept_methods`, which also adds a zero tensor to it: the gradient of the class score with respect to
that zero is d(score)/dA, so one forward and one backward pass give both, for any architecture and without
touching its code. The score is the class's logit (before the softmax), as in the paper. Inference mode:
BatchNorm uses its running statistics, so each image's gradient is its own even in a batch.
The arithmetic after that (weights, ReLU, upsampling, colours) is cnn_flax/evaluation/gradcam.py.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn_flax.atomic import write_json
from cnn_flax.errors import UserError
from cnn_flax.evaluation.gradcam import class_activation_maps, overlay, plot_mistake_maps, write_png
from cnn_flax.evaluation.mistakes import WorstMistakes
from cnn_flax.models.summary import layer_rows

log = logging.getLogger("cnn_flax")
Preprocess = Callable[[jax.Array], jax.Array]  # uint8 images -> the model's input


def _is_feature_map(shape: tuple) -> bool:
    return len(shape) == 4 and all(isinstance(d, int) for d in shape)


def feature_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """The direct children that hold parameters and give a feature map [N, H, W, C], in call order."""
    rows, _ = layer_rows(model, input_shape)
    return [row.name for row in rows if row.params and _is_feature_map(row.output_shape)]


def choose_layer(model: nn.Module, input_shape: tuple[int, ...], layer: str = "") -> str:
    """`layer` checked against the model's layers, or (empty) the last convolutional one."""
    rows, _ = layer_rows(model, input_shape)
    name = type(model).__name__
    convolutional = [row.name for row in rows if row.params and _is_feature_map(row.output_shape)]
    if layer:
        shapes = {row.name: row.output_shape for row in rows}
        if layer not in shapes:
            raise UserError(f"gradcam.layer={layer!r} is not a layer of {name}; its layers (as --mode=summary "
                            f"lists them) are {', '.join(shapes)}")
        if not _is_feature_map(shapes[layer]):
            raise UserError(f"gradcam.layer={layer!r} gives {shapes[layer]}, not a feature map [N, H, W, C]; "
                            f"choose a convolutional layer of {name}: {', '.join(convolutional)}")
        return layer
    if not convolutional:
        raise UserError(f"{name} has no convolutional layer to take a Grad-CAM map from")
    return convolutional[-1]


class GradCam:
    """Grad-CAM maps of one model and set of weights at one layer; compiled once per batch size."""

    def __init__(self, model: nn.Module, variables: Mapping[str, Any], preprocess: Preprocess,
                 input_shape: tuple[int, ...], layer: str = "", batch_size: int = 32) -> None:
        # The model's own input (preprocessing may change the channels or the dtype) for the shape checks.
        model_input = jax.eval_shape(preprocess, jax.ShapeDtypeStruct((1, *input_shape), jnp.uint8))
        outputs = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, model_input)
        if len(getattr(outputs, "shape", ())) != 2:
            raise UserError(f"{type(model).__name__} gives {getattr(outputs, 'shape', 'several outputs')}, not class "
                            "scores [N, C]: Grad-CAM needs a classifier")
        self.model, self.variables, self.preprocess = model, variables, preprocess
        self.input_shape = tuple(input_shape)
        self.num_classes = int(outputs.shape[1])
        self.layer = choose_layer(model, tuple(model_input.shape[1:]), layer)
        self.batch_size = max(1, int(batch_size))
        self._compiled = jax.jit(self._features_and_gradients)

    def _apply(self, variables: Mapping[str, Any], inputs: jax.Array, delta: jax.Array | None):
        """Logits, and the layer's output A (with `delta` added to it on its way to the rest of the network)."""
        captured = {}

        def intercept(next_fun, args, kwargs, context):
            output = next_fun(*args, **kwargs)
            module = context.module
            if context.method_name == "__call__" and tuple(module.scope.path) == (self.layer,):
                captured["features"] = output
                if delta is not None:
                    return output + delta.astype(output.dtype)
            return output

        with nn.intercept_methods(intercept):
            logits = self.model.apply(variables, inputs, train=False)
        return logits, captured["features"]

    def _features_and_gradients(self, variables: Mapping[str, Any], images: jax.Array,
                                classes: jax.Array) -> tuple[jax.Array, jax.Array]:
        inputs = self.preprocess(images)
        _, shape = jax.eval_shape(lambda: self._apply(variables, inputs, None))
        if len(shape.shape) != 4:
            raise UserError(f"layer {self.layer} gives {shape.shape}, not a feature map [N, H, W, C]")

        def score(delta):
            logits, features = self._apply(variables, inputs, delta)
            picked = jnp.take_along_axis(logits.astype(jnp.float32), classes[:, None], axis=1)
            return jnp.sum(picked), features  # images are independent in inference: one sum, every gradient

        gradients, features = jax.grad(score, has_aux=True)(jnp.zeros(shape.shape, jnp.float32))
        return features.astype(jnp.float32), gradients

    def features_and_gradients(self, images: np.ndarray, classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The layer's feature maps A and d(logit of classes[i])/dA, both [N, h, w, K] float32, for uint8 images."""
        images = np.asarray(images)
        classes = np.asarray(classes, np.int32)
        if images.dtype != np.uint8 or images.shape[1:] != self.input_shape:
            raise ValueError(f"images must be uint8 [N, {', '.join(map(str, self.input_shape))}], got {images.dtype} "
                             f"{list(images.shape)}")
        if classes.shape != (len(images),) or (classes.size and not 0 <= classes.min() <= classes.max()
                                                < self.num_classes):
            raise ValueError(f"classes must be {len(images)} indices below {self.num_classes}, got {classes}")
        features, gradients = [], []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            padded = np.zeros((self.batch_size, *self.input_shape), np.uint8)  # one compiled shape for every batch
            padded[:len(chunk)] = chunk
            wanted = np.zeros(self.batch_size, np.int32)
            wanted[:len(chunk)] = classes[start:start + len(chunk)]
            a, g = self._compiled(self.variables, jnp.asarray(padded), jnp.asarray(wanted))
            features.append(np.asarray(a)[:len(chunk)])
            gradients.append(np.asarray(g)[:len(chunk)])
        return np.concatenate(features), np.concatenate(gradients)

    def maps(self, images: np.ndarray, classes: Sequence[int]) -> np.ndarray:
        """Grad-CAM maps [N, h, w] at the layer's resolution (unnormalised; `evaluation.gradcam` draws them)."""
        return class_activation_maps(*self.features_and_gradients(images, classes))


def unique_stems(paths: Sequence[str]) -> list[str]:
    """File-name stems for one output per path: photos/a/x.jpg and photos/b/x.jpg become x and x_2."""
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0] or "image"
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return stems


def write_overlays(cam: GradCam, load: Callable[[str], np.ndarray], paths: Sequence[str], classes: Sequence[int],
                   folder: str, class_names: Sequence[str], chunk: int = 64) -> list[dict[str, Any]]:
    """`folder/<image stem>_cam.png` per image: the map of classes[i] over the image the model saw (`load(path)`,
    a chunk of images at a time), and `folder/gradcam.json` saying which image, class and layer each shows.
    Overlays of an earlier call that this one does not rewrite are removed, as predictions.json is replaced."""
    os.makedirs(folder, exist_ok=True)
    stems = unique_stems(paths)
    for name in set(os.listdir(folder)) - {f"{stem}_cam.png" for stem in stems}:
        if name.endswith("_cam.png"):  # an earlier prediction's overlay: the folder shows this prediction only
            os.remove(os.path.join(folder, name))
    rows = []
    for start in range(0, len(paths), chunk):
        part = slice(start, start + chunk)
        images = np.stack([load(path) for path in paths[part]])
        maps = cam.maps(images, classes[part])
        for image, cam_map, cls, path, stem in zip(images, maps, classes[part], paths[part], stems[part],
                                                   strict=True):
            out = os.path.join(folder, f"{stem}_cam.png")
            write_png(out, overlay(image, cam_map))
            rows.append(dict(image=path, cam=out, class_index=int(cls), class_name=str(class_names[int(cls)]),
                             layer=cam.layer))
    write_json(os.path.join(folder, "gradcam.json"), rows)
    return rows


def write_mistake_maps(cam: GradCam, worst: WorstMistakes, class_names: Sequence[str], path: str,
                       count: int) -> int:
    """The first `count` worst mistakes with the maps of their true and their predicted class, as one figure
    (the report page shows it); returns how many are shown. No mistakes: no figure (an old one is removed)."""
    shown = min(count, len(worst.index))
    if shown == 0 or worst.images is None:
        if os.path.exists(path):
            os.remove(path)  # an earlier evaluation's figure would no longer be true
        return 0
    images = np.asarray(worst.images[:shown])
    true, predicted = worst.label[:shown], worst.predicted[:shown]
    true_maps, predicted_maps = cam.maps(images, true), cam.maps(images, predicted)
    captions = [(f"#{int(worst.index[i])}  p(true) {worst.p_true[i]:.3g}",
                 f"true: {_short(class_names[true[i]])}", f"predicted: {_short(class_names[predicted[i]])}")
                for i in range(shown)]
    plot_mistake_maps(images, true_maps, predicted_maps, captions, path,
                      title=f"Where the network looked: Grad-CAM at {cam.layer}, true and predicted class")
    return shown


def _short(name: str, limit: int = 22) -> str:
    name = str(name).split(",")[0].strip()
    return name if len(name) <= limit else name[:limit - 1] + "…"
