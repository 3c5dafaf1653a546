"""Fill any of our models from a Keras file of the same network: weights, BatchNorm statistics, optimizer.

Layers are matched by the network's structure, never by Keras's names: the file's layer graph is walked
in build order (keras_graph) and paired one to one with our Conv/Dense/BatchNorm layers in call order
(model_layers), each pair checked for kind and every weight's shape. Keras lays out Conv2D kernels
(H, W, in, out), Dense kernels (in, out) and Flatten (row-major, channels last) as we do, so arrays go
in unchanged. A weights-only file (no graph: the published ImageNet VGG files, `save_weights`) is
paired kind by kind in the file's order, which is the network's order only for a chain of layers; a
branched network then needs its graph (`model.to_json()` saved beside it as x.json, or a full-model
file).

What may differ: a file with a classifier loads into a model built without one (VGG include_top=False),
its dense layers left unread; layers named in `skip` are paired but keep the model's values. Anything
else is a UserError naming the file, the first of our layers that does not fit, and both shapes — and
nothing is loaded. The activation and BatchNorm order the graph records must be the model's too, since
weights of the same shapes would load silently into a network computing something else.
"""

import dataclasses
import os
import re
from collections.abc import Collection, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from cnn_flax.errors import UserError
from cnn_flax.pretrained.h5_layouts import FileLayer, KerasFile, open_keras_file, read_array
from cnn_flax.pretrained.model_layers import ModelLayer, is_chain, model_layers
from cnn_flax.pretrained.optimizer_slots import KerasOptimizerState, optimizer_state


@dataclasses.dataclass(frozen=True)
class KerasCheckpoint:
    variables: dict[str, Any]
    optimizer: KerasOptimizerState | None  # None: the file holds no optimizer
    optimizer_note: str = ""  # why a held optimizer could not be read, if so


def load_keras_weights(path: str | os.PathLike, model: nn.Module, variables: Mapping[str, Any],
                       input_shape: tuple[int, ...], *, skip: Collection[str] = ()) -> dict[str, Any]:
    """New variables with `variables`' structure, shapes and dtypes, the weights and statistics read from `path`.

    `variables` is the template from `init_variables(model, …, input_shape)` (arrays or ShapeDtypeStructs:
    only shapes and dtypes are read). Top-level layers named in `skip` (say ('predictions',) to train a new
    classifier) keep the template's values.
    """
    return read_keras_checkpoint(path, model, variables, input_shape, skip=skip, optimizer=False).variables


def read_keras_checkpoint(path: str | os.PathLike, model: nn.Module, variables: Mapping[str, Any],
                          input_shape: tuple[int, ...], *, skip: Collection[str] = (),
                          optimizer: bool = True) -> KerasCheckpoint:
    """`load_keras_weights` plus, with `optimizer`, the file's optimizer variables mapped onto our parameters."""
    path = os.fspath(path)
    unknown = sorted(set(skip) - set(variables["params"]))
    if unknown:
        raise UserError(f"{path}: cannot skip {', '.join(unknown)}: the model has no such layer; its "
                        f"layers are {', '.join(variables['params'])}")
    ours = model_layers(model, input_shape, variables)
    with open_keras_file(path) as keras_file:
        pairs = _pair(path, keras_file, ours, variables, model, skip, input_shape[0])
        loaded = _new_variables(variables, [(o, f) for o, f in pairs if o.path[0] not in skip])
        state, note = None, ""
        if optimizer and keras_file.optimizer is not None:
            state, note = optimizer_state(path, keras_file, pairs, variables)
    return KerasCheckpoint(loaded, state, note)


def epoch_from_name(path: str) -> int | None:
    """The N of the book's EpochCheckpoint names (epoch_40.hdf5), else None."""
    match = re.search(r"epoch_(\d+)", os.path.basename(path))
    return int(match.group(1)) if match else None


# ------------------------------------------------------------------------------------------------- pairing
def _pair(path: str, keras_file: KerasFile, ours: list[ModelLayer], variables: Mapping[str, Any],
          model: nn.Module, skip: Collection[str], input_side: int) -> list[tuple[ModelLayer, FileLayer]]:
    if keras_file.graph is not None:
        theirs = _graph_layers(path, keras_file)
        _check_computation(path, keras_file, model)
    elif is_chain(ours, variables):
        theirs = _kind_by_kind(keras_file.layers, ours)
    else:
        raise UserError(f"{path}: the file holds weights but no layer graph, and this {type(model).__name__}'s "
                        "branches cannot be told apart without one; save the Keras model with model.save('x.keras') "
                        "or model.save('x.h5'), or its model.to_json() beside the file as "
                        f"{re.sub(r'((.weights)?.(h5|hdf5))?$', '', path, count=1)}.json")
    if not any(layer.kind == "dense" for layer in ours):  # a classifier the model was built without
        theirs = [layer for layer in theirs if layer.kind != "dense"]
    pairs, stage4 = [], _stage4_hint(model, len(theirs), len(ours))
    for index, layer in enumerate(ours):  # in order, so the error names the first layer that does not fit
        if index >= len(theirs):
            raise UserError(f"{path}: layer {layer.label} of the model is not in the file; "
                            f"{_missing_hint(layer, keras_file.layers)}")
        file_layer = theirs[index]
        if file_layer.kind != layer.kind:
            raise UserError(f"{path}: layer {layer.label} is a {_KIND_WORDS[layer.kind]} with "
                            f"{layer.leaves[0][1]} {tuple(layer.template(variables, layer.leaves[0]).shape)} but the "
                            f"file has a {_KIND_WORDS.get(file_layer.kind, file_layer.kind)} ({file_layer.label}) "
                            f"with {_first_weight(file_layer)} at its place; the file is for another network or "
                            f"configuration{stage4}")
        if layer.path[0] not in skip:
            _check_shapes(path, layer, file_layer, variables, keras_file.layers, (type(model).__name__, input_side))
        pairs.append((layer, file_layer))
    if len(theirs) > len(ours):
        extra = theirs[len(ours)]
        raise UserError(f"{path}: the file ({keras_file.layout} layout) has layer {extra.label} with "
                        f"{_first_weight(extra)} that the model lacks; the file is for another network or "
                        f"configuration{_variant_hint(type(model).__name__)}{stage4}")
    return pairs


def _stage4_hint(model: nn.Module, file_count: int, model_count: int) -> str:
    """DeeperGoogLeNet with or without inception 4a-4e: told by the number of layers with weights."""
    stage4 = getattr(model, "stage4", None)
    if stage4 is None or file_count == model_count or (file_count > model_count) == stage4:
        return ""
    return f" (with{'' if file_count > model_count else 'out'} inception 4a-4e: set model.stage4={not stage4})"


_KIND_WORDS = {"conv": "Conv2D", "dense": "Dense", "bn": "BatchNormalization"}


def _graph_layers(path: str, keras_file: KerasFile) -> list[FileLayer]:
    """The file's weighted layers in the graph's build order."""
    graph = keras_file.graph
    by_name = {layer.name: layer for layer in keras_file.layers if layer.name is not None}
    by_key = {layer.key: layer for layer in keras_file.layers}
    counters: dict[str, int] = {}
    located: dict[str, FileLayer] = {}
    for graph_layer in graph.layers:  # Keras 3 keys count each class in model.layers order
        base = _snake(graph_layer.class_name.split(">")[-1])
        number = counters.get(base, 0)
        counters[base] = number + 1
        found = by_name.get(graph_layer.name) or (by_key.get(base if number == 0 else f"{base}_{number}")
                                                  if not by_name else None)
        if found is not None:
            located[graph_layer.name] = found
    ordered = []
    for graph_layer in graph.build_order():
        file_layer = located.get(graph_layer.name)
        if file_layer is None:
            if graph_layer.kind is not None and graph_layer.config.get("trainable", True) is not None \
                    and keras_file.layers:
                raise UserError(f"{path}: layer {graph_layer.name} ({graph_layer.class_name}) of the model config "
                                "has no weights in the file; the file is damaged")
            continue
        if graph_layer.kind is None:
            raise UserError(f"{path}: layer {graph_layer.name} is a {graph_layer.class_name} with weights, which "
                            "none of our models has; the file is for another network")
        ordered.append(dataclasses.replace(file_layer, name=graph_layer.name))
    return ordered


def _snake(class_name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z][a-z])|(?<=[a-z0-9])(?=[A-Z])", "_", class_name).lower()


def _kind_by_kind(file_layers: list[FileLayer], ours: list[ModelLayer]) -> list[FileLayer]:
    """A weights-only file of a chain: our i-th layer of each kind takes the file's i-th of that kind."""
    queues = {kind: [layer for layer in file_layers if layer.kind == kind] for kind in ("conv", "dense", "bn")}
    ordered = []
    for layer in ours:
        if not queues[layer.kind]:
            break
        ordered.append(queues[layer.kind].pop(0))
    leftovers = [layer for layer in file_layers if all(layer is not taken for taken in ordered)]
    return ordered + leftovers


def _check_computation(path: str, keras_file: KerasFile, model: nn.Module) -> None:
    """Same shapes, other computation: the graph's activation and BatchNorm order against the model's."""
    graph = keras_file.graph
    ours = getattr(model, "activation", None)
    others = sorted(graph.activations() - {ours}) if ours else []
    if others:
        raise UserError(f"{path}: the file's network uses {', '.join(others)} where the model uses {ours}; set "
                        f"--config.model.activation={others[0]}")
    order = getattr(model, "bn_order", None)
    orders = graph.bn_orders()
    if order and orders and orders != {order}:
        theirs = sorted(orders - {order})[0]
        raise UserError(f"{path}: the file's network puts BatchNormalization in the order {theirs} where the "
                        f"model has {order}; set --config.model.bn_order={theirs}")


def _check_shapes(path: str, layer: ModelLayer, file_layer: FileLayer, variables: Mapping[str, Any],
                  file_layers: list[FileLayer], network: tuple[str, int]) -> None:
    if len(file_layer.weights) != len(layer.leaves):
        raise UserError(f"{path}: layer {layer.label} has {len(file_layer.weights)} weights in the file but "
                        f"{len(layer.leaves)} ({', '.join(leaf for _, leaf in layer.leaves)}) in the model")
    for leaf, dataset in zip(layer.leaves, file_layer.weights, strict=True):
        file_shape, model_shape = tuple(dataset.shape), tuple(layer.template(variables, leaf).shape)
        if file_shape != model_shape:
            source = "" if file_layer.label == layer.label else f" (the file's {file_layer.label})"
            hint = _shape_hint(layer, leaf[1], file_layer, file_shape, model_shape, file_layers, network)
            raise UserError(f"{path}: layer {layer.label}{source} has {leaf[1]} {file_shape} in the file but "
                            f"{model_shape} in the model; {hint}")


def _shape_hint(layer: ModelLayer, leaf: str, file_layer: FileLayer, file_shape: tuple[int, ...],
                model_shape: tuple[int, ...], file_layers: list[FileLayer], network: tuple[str, int]) -> str:
    dense = [other for other in file_layers if other.kind == "dense"]
    convs = [other for other in file_layers if other.kind == "conv"]
    is_first, is_last = (dense and file_layer.key == dense[i].key for i in (0, -1))
    class_name, input_side = network
    if is_first and leaf == "kernel" and convs and layer.path[0] in ("fc1",):
        # The first dense layer reads the flattened last feature map, whose side scales with the input's.
        side = input_side * (file_shape[0] / model_shape[0]) ** 0.5
        if class_name != "VGG":
            return (f"the file's network reads {round(side)}x{round(side)} images: set data.image_size="
                    f"{round(side)}" if side == round(side) else "build the model at the file's input size")
        if side == round(side):
            return f"build the model at {round(side)}x{round(side)} or use include_top=False"
        return "build the model at the file's input size or use include_top=False"
    if is_last and layer.kind == "dense":
        classes = file_shape[-1]
        return (f"the file classifies {classes} classes: set model.num_classes={classes} or skip this layer "
                f"(init_skip={layer.path[0]})")
    return "the file is for another network or configuration" + _variant_hint(class_name)


def _variant_hint(class_name: str) -> str:
    return " (VGG16 is model.variant='D', VGG19 'E')" if class_name == "VGG" else ""


def _missing_hint(layer: ModelLayer, file_layers: list[FileLayer]) -> str:
    if layer.kind == "dense" and not any(f.kind == "dense" for f in file_layers):
        return "the file has no classifier (a _notop file): build the model with include_top=False"
    return f"the file holds {len(file_layers)} layers with weights, fewer than the model's"


def _first_weight(layer: FileLayer) -> str:
    return f"{'kernel' if layer.kind != 'bn' else 'gamma'} {tuple(layer.weights[0].shape)}"


def _new_variables(variables: Mapping[str, Any], pairs: list[tuple[ModelLayer, FileLayer]]) -> dict[str, Any]:
    """A copy of the template's nested dicts with the paired layers' arrays put in (read only now: all fit)."""
    result = jax.tree_util.tree_map(lambda leaf: leaf, _plain(variables))
    for layer, file_layer in pairs:
        for leaf, dataset in zip(layer.leaves, file_layer.weights, strict=True):
            template = layer.template(variables, leaf)
            node = result[leaf[0]]
            for key in layer.path:
                node = node[key]
            node[leaf[1]] = np.asarray(read_array(dataset), dtype=template.dtype)
    return result


def _plain(tree: Any) -> Any:
    """Nested plain dicts (mutable), whatever mapping type the template used."""
    if isinstance(tree, Mapping):
        return {key: _plain(value) for key, value in tree.items()}
    return tree
