"""Fill a VGG's Flax parameters from a Keras weight file (the published ImageNet VGG16/VGG19 .h5 files).

Our VGG names its layers as keras.applications does and lays out Conv2D kernels (H, W, in, out) and
Dense kernels (in, out) the same way, with a row-major channels-last Flatten before fc1; so a file's
arrays go into the parameter of the same name unchanged. Layers are matched by name, and within a layer
by order (kernel, then bias), as Keras does. Keras 3 files that did not record layer names are matched
by position among the layers of the same kind (the i-th Conv2D of the file to the i-th 4-D kernel of
the model), which is how Keras itself reloads them.

What may differ: a file with the classifier (fc1, fc2, predictions) loads into an include_top=False
model, its dense layers left unread; every other layer the file holds must be in the model, so a VGG19
file never half-loads into a VGG16. Anything else that differs is a UserError naming the file, the
first layer in the model's order, and both shapes.
"""

import os
from collections.abc import Collection, Mapping
from typing import Any

import jax.numpy as jnp

from cnn_flax.errors import UserError
from cnn_flax.pretrained.h5_layouts import FileLayer, open_keras_weights, read_array

# Keras stores a layer's weights kernel first, then bias; ours are named.
_WEIGHT_ORDER = ("kernel", "bias")
_RANK_KIND = {4: "conv", 2: "dense"}


def load_keras_weights(path: str | os.PathLike, variables: Mapping[str, Any], *,
                       skip: Collection[str] = ()) -> dict[str, Any]:
    """New variables with `variables`' structure, shapes and dtypes, the parameters read from `path`.

    `variables` is the template from `init_variables` (its arrays, or jax.ShapeDtypeStructs from
    jax.eval_shape: only shapes and dtypes are read). Layers named in `skip` (say ('predictions',) to
    train a new classifier) and collections other than 'params' are returned as the template has them.
    """
    path = os.fspath(path)
    params = variables["params"]
    targets = _model_layers(path, params)
    unknown = sorted(set(skip) - set(params))
    if unknown:
        raise UserError(f"{path}: cannot skip {', '.join(unknown)}: the model has no such layer; its "
                        f"layers are {', '.join(params)}")
    with open_keras_weights(path) as (layout, file_layers):
        by_name = _name_layers(file_layers, targets)
        wanted = [(name, leaves) for name, leaves in targets if name not in skip]
        for name, leaves in wanted:
            _check_layer(path, name, leaves, by_name, file_layers)
        _check_unused(path, layout, file_layers, by_name, targets)
        loaded = {name: {leaf: jnp.asarray(read_array(dataset), dtype=template.dtype)
                         for (leaf, template), dataset in zip(leaves, by_name[name].weights, strict=True)}
                  for name, leaves in wanted}
    new_params = {name: loaded.get(name, value) for name, value in params.items()}
    return {**variables, "params": new_params}


def _model_layers(path: str, params: Mapping[str, Any]) -> list[tuple[str, list[tuple[str, Any]]]]:
    """(layer name, [(weight name, template leaf)] in Keras's order) for each layer of the model."""
    layers = []
    for name, weights in params.items():
        if not isinstance(weights, Mapping) or "kernel" not in weights or set(weights) - set(_WEIGHT_ORDER) \
                or len(getattr(weights["kernel"], "shape", ())) not in _RANK_KIND:
            raise UserError(f"{path}: the model's layer {name} is not a plain Conv2D or Dense layer; Keras "
                            "weight files load into models of Keras-named conv/dense layers (model.name=vgg)")
        layers.append((name, [(leaf, weights[leaf]) for leaf in _WEIGHT_ORDER if leaf in weights]))
    return layers


def _kind(leaves: list[tuple[str, Any]]) -> str:
    return _RANK_KIND[len(leaves[0][1].shape)]


def _name_layers(file_layers: list[FileLayer], targets: list) -> dict[str, FileLayer]:
    """File layers by name; unnamed (old Keras 3) ones take the model's names in order within each kind."""
    named = {layer.name: layer for layer in file_layers if layer.name is not None}
    for kind in set(_RANK_KIND.values()):
        unnamed = [layer for layer in file_layers if layer.name is None and layer.kind == kind]
        model_names = [name for name, leaves in targets if _kind(leaves) == kind and name not in named]
        named.update(zip(model_names, unnamed, strict=False))
    return named


def _check_layer(path: str, name: str, leaves: list, by_name: dict[str, FileLayer],
                 file_layers: list[FileLayer]) -> None:
    layer = by_name.get(name)
    if layer is None:
        if _kind(leaves) == "dense" and not any(f.kind == "dense" for f in file_layers):
            hint = "the file has no classifier (a _notop file): build the model with include_top=False"
        else:
            hint = f"the file holds {', '.join(f.label for f in file_layers)}"
        raise UserError(f"{path}: layer {name} of the model is not in the file; {hint}")
    if len(layer.weights) != len(leaves):
        raise UserError(f"{path}: layer {name} has {len(layer.weights)} weights in the file but "
                        f"{len(leaves)} ({', '.join(leaf for leaf, _ in leaves)}) in the model")
    for (leaf, template), dataset in zip(leaves, layer.weights, strict=True):
        file_shape, model_shape = tuple(dataset.shape), tuple(template.shape)
        if file_shape != model_shape:
            source = "" if layer.name == name else f" (as {layer.key})"
            hint = _shape_hint(layer, leaf, file_shape, file_layers)
            raise UserError(f"{path}: layer {name}{source} has {leaf} {file_shape} in the file but "
                            f"{model_shape} in the model; {hint}")


def _shape_hint(layer: FileLayer, leaf: str, file_shape: tuple[int, ...],
                file_layers: list[FileLayer]) -> str:
    dense = [other for other in file_layers if other.kind == "dense"]
    convs = [other for other in file_layers if other.kind == "conv"]
    if dense and layer is dense[0] and leaf == "kernel" and convs:
        channels = convs[-1].weights[0].shape[-1]
        side = round((file_shape[0] / channels) ** 0.5)
        if side * side * channels == file_shape[0]:
            return f"build the model at {32 * side}x{32 * side} or use include_top=False"
        return "build the model at the file's input size or use include_top=False"
    if dense and layer is dense[-1]:
        classes = file_shape[-1]
        return f"the file classifies {classes} classes: set model.num_classes={classes} or skip this layer"
    return "the file is for another network (VGG16 is model.variant='D', VGG19 'E')"


def _check_unused(path: str, layout: str, file_layers: list[FileLayer], by_name: dict[str, FileLayer],
                  targets: list) -> None:
    """File layers the model lacks: only a classifier the model was built without may be left unread."""
    matched = {id(by_name[name]) for name, _ in targets if name in by_name}
    model_has_dense = any(_kind(leaves) == "dense" for _, leaves in targets)
    for layer in file_layers:
        if id(layer) in matched or layer.kind == "dense" and not model_has_dense:
            continue
        raise UserError(f"{path}: the file ({layout} layout) has layer {layer.label} with kernel "
                        f"{tuple(layer.weights[0].shape)} that the model lacks; the file is for another "
                        "network (VGG16 is model.variant='D', VGG19 'E')")
