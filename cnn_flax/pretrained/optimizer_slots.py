"""A Keras file's optimizer variables put onto our parameters: which saved array is whose momentum or velocity.

Keras has named and ordered these variables in four ways, and the book's checkpoints exist in each:

  Keras 3              iteration, learning_rate, then every trainable variable's slots in turn
                       ('adam/..._momentum', 'adam/..._velocity'; only numbered in .keras). By position.
  tf.keras 2.11+       'iteration:0', then 'SGD/m/conv2d/kernel:0' (Adam also 'Adam/v/conv2d/kernel:0').
  tf.keras <= 2.10     (and Keras 2.4-2.10, which are tf.keras; today tf.keras.optimizers.legacy):
                       'SGD/iter:0', 'SGD/conv2d/kernel/momentum:0'; Adam every '…/m:0' then every '…/v:0'.
                       These two are found by the model variable's name inside (the file's model_weights
                       names each weight, `conv2d/kernel:0`), whatever scope stands in front.
  standalone Keras 2.0-2.3 (the `keras` package of the book's era, TensorFlow backend): 'SGD/iterations:0'
                       (2.0.0: 'iterations:0'), then one list per slot in model.trainable_weights order with
                       names that say nothing of the variable: SGD's moments 'training/SGD/Variable:0',
                       'Variable_1:0', … (2.3: 'training/SGD/moment_0:0', …); Adam's ms, vs and, from 2.1.3,
                       vhats (one-element zeros unless amsgrad) as 'Variable_k' (2.3: 'm_0', 'v_0', 'vhat_0').
                       By position.

Every array is checked against the shape of the weight it is put on, so a file of another network is an
error, not a silently wrong state.
"""

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from cnn_flax.errors import UserError
from cnn_flax.pretrained.h5_layouts import FileLayer, FileOptimizer, KerasFile, read_array
from cnn_flax.pretrained.model_layers import TRAINABLE, ModelLayer

SUPPORTED_OPTIMIZERS = ("sgd", "adam")
SLOT_NAMES = {"sgd": ("momentum",), "adam": ("momentum", "velocity")}
_NAMED_SLOTS = {"m": "momentum", "momentum": "momentum", "v": "velocity"}  # tf.keras 2's slot names
_ITERATION_NAMES = ("iter", "iteration", "iterations")
Pairs = list[tuple[ModelLayer, FileLayer]]


@dataclasses.dataclass(frozen=True)
class KerasOptimizerState:
    """A Keras optimizer's variables in our parameters' structure: slots by Keras's names, iteration count."""

    name: str  # 'sgd' or 'adam'
    iterations: int
    slots: dict[str, Any]  # 'momentum' / 'velocity' -> a tree like variables['params'] (empty: SGD without momentum)


def optimizer_state(path: str, keras_file: KerasFile, pairs: Pairs,
                    variables: Mapping[str, Any]) -> tuple[KerasOptimizerState | None, str]:
    """The file's optimizer state on our parameters, or None and why it is not continued."""
    saved = keras_file.optimizer
    name = re.sub(r"_\d+$", "", saved.class_name.split(">")[-1]).lower()  # 'sgd_1': a second SGD in that process
    if name not in SUPPORTED_OPTIMIZERS:
        return None, (f"its optimizer {saved.class_name or '(unnamed)'} is not continued (only SGD and Adam "
                      "states are)")
    if saved.config.get("amsgrad"):
        return None, "its Adam runs with amsgrad, which is not continued (its vhat slots have no place here)"
    trainable = _trainable_in_keras_order(keras_file, pairs)
    if not saved.names or _base(saved.names[1 if len(saved.names) > 1 else 0]) == "learning_rate":
        iterations, slots = _keras3_slots(path, saved, trainable, name, variables)
    else:
        iterations, slots = _named_slots(path, saved, pairs, trainable, name, variables)
        if not slots and len(saved.names) > 1:
            iterations, slots = _positional_keras2_slots(path, saved, trainable, name, variables)
    if name == "sgd" and not saved.config.get("momentum", 1.0):
        slots = {}  # Keras 2.0-2.3 keep moments even at momentum 0; they never enter the update
    trees = {}
    for slot in SLOT_NAMES[name]:
        if slot not in slots:
            continue
        tree = jax.tree_util.tree_map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), _plain(variables["params"]))
        for (layer, leaf), array in zip(trainable, slots[slot], strict=True):
            node = tree
            for key in layer.path:
                node = node[key]
            node[leaf[1]] = array
        trees[slot] = tree
    return KerasOptimizerState(name, iterations, trees), ""


def _base(saved_name: str) -> str:
    """'training/SGD/Variable_3:0' -> 'Variable_3'; 'adam/learning_rate' -> 'learning_rate'."""
    return saved_name.removesuffix(":0").split("/")[-1]


def _plain(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {key: _plain(value) for key, value in tree.items()}
    return tree


def _trainable_in_keras_order(keras_file: KerasFile, pairs: Pairs) -> list:
    """(our layer, leaf) of each variable Keras trains, in model.trainable_variables order (model.layers order)."""
    if keras_file.graph is not None:
        names = [g.name for g in keras_file.graph.layers if g.config.get("trainable", True)]
        by_name = {file_layer.name: layer for layer, file_layer in pairs}
        order = [by_name[name] for name in names if name in by_name]
    else:  # a chain: model.layers is the chain's order, ours
        order = [layer for layer, _ in pairs]
    return [(layer, leaf) for layer in order for leaf in layer.leaves[:TRAINABLE[layer.kind]]]


def _keras3_slots(path: str, saved: FileOptimizer, trainable: list, name: str,
                  variables: Mapping[str, Any]) -> tuple[int, dict[str, list[np.ndarray]]]:
    """Keras 3: iteration, learning_rate, then each trainable variable's slots in turn (Adam: m, v interleaved)."""
    header, arrays, slot_names = 2, saved.arrays, SLOT_NAMES[name]
    if len(arrays) == header and name == "sgd":  # SGD without momentum keeps no slots
        slot_names = ()
    if len(arrays) != header + len(slot_names) * len(trainable):
        raise UserError(f"{path}: the file's {name} optimizer holds {len(arrays)} variables, not "
                        f"{header} + {len(slot_names)} per each of the model's {len(trainable)} trainable "
                        "weights; it was saved from another network")
    slots: dict[str, list[np.ndarray]] = {slot: [] for slot in slot_names}
    for index, (layer, leaf) in enumerate(trainable):
        for offset, slot in enumerate(slot_names):
            array = read_array(arrays[header + index * len(slot_names) + offset])
            slots[slot].append(_checked_slot(path, layer, leaf, slot, array, variables))
    return int(read_array(arrays[0])), slots


def _iterations(saved: FileOptimizer) -> int:
    counts = [read_array(array) for n, array in zip(saved.names, saved.arrays, strict=True)
              if re.sub(r"_\d+$", "", _base(n)) in _ITERATION_NAMES]
    return int(counts[0]) if counts else 0


def _named_slots(path: str, saved: FileOptimizer, pairs: Pairs, trainable: list, name: str,
                 variables: Mapping[str, Any]) -> tuple[int, dict[str, list[np.ndarray]]]:
    """tf.keras 2: each slot variable's name holds the model variable's ('SGD/m/conv2d/kernel:0',
    'training/Adam/conv2d/kernel/m:0'); what remains around it names the slot."""
    variable_names = {}
    for layer, file_layer in pairs:
        for leaf, weight_name in zip(layer.leaves, file_layer.weight_names, strict=False):
            variable_names[(layer.path, leaf)] = weight_name.removesuffix(":0")
    found = {}
    for saved_name, dataset in zip(saved.names, saved.arrays, strict=True):
        stripped = saved_name.removesuffix(":0")
        matches = [key for key, var in variable_names.items() if f"/{var}/" in f"/{stripped}/"]
        if not matches:
            continue
        key = max(matches, key=lambda k: len(variable_names[k]))
        rest = [t for t in f"/{stripped}/".replace(f"/{variable_names[key]}/", "/").split("/") if t][1:]
        slot = _NAMED_SLOTS.get(rest[-1] if rest else "")
        if slot is not None:
            found[(key, slot)] = dataset
    slots: dict[str, list[np.ndarray]] = {}
    for slot in SLOT_NAMES[name]:
        if not any(s == slot for _, s in found):
            continue
        slots[slot] = []
        for layer, leaf in trainable:
            dataset = found.get(((layer.path, leaf), slot))
            if dataset is None:
                raise UserError(f"{path}: the file's optimizer has no {slot} for {layer.label}/{leaf[1]}; it was "
                                "saved from another network")
            slots[slot].append(_checked_slot(path, layer, leaf, slot, read_array(dataset), variables))
    return _iterations(saved), slots


def _positional_keras2_slots(path: str, saved: FileOptimizer, trainable: list, name: str,
                             variables: Mapping[str, Any]) -> tuple[int, dict[str, list[np.ndarray]]]:
    """Standalone Keras 2.0-2.3: [iterations] + SGD's moments, or Adam's ms + vs (+ vhats), in trainable order."""
    arrays = [array for n, array in zip(saved.names, saved.arrays, strict=True)
              if re.sub(r"_\d+$", "", _base(n)) not in _ITERATION_NAMES]
    count, groups = len(trainable), (1,) if name == "sgd" else (2, 3)
    if len(arrays) not in [count * group for group in groups]:
        wanted = " or ".join(f"{count * group}" for group in groups)
        raise UserError(f"{path}: the file's {name} optimizer holds {len(arrays)} slot variables ("
                        f"{', '.join(saved.names[:3])}, …), not {wanted} for the model's {count} trainable "
                        "weights; it was saved from another network")
    slots: dict[str, list[np.ndarray]] = {}
    for group, slot in enumerate(SLOT_NAMES[name]):
        slots[slot] = [_checked_slot(path, layer, leaf, slot, read_array(arrays[group * count + index]), variables)
                       for index, (layer, leaf) in enumerate(trainable)]
    return _iterations(saved), slots


def _checked_slot(path: str, layer: ModelLayer, leaf: tuple[str, str], slot: str, array: np.ndarray,
                  variables: Mapping[str, Any]) -> np.ndarray:
    shape = tuple(layer.template(variables, leaf).shape)
    if tuple(array.shape) != shape:
        raise UserError(f"{path}: the optimizer's {slot} for {layer.label}/{leaf[1]} has shape {tuple(array.shape)} "
                        f"but the weight has {shape}; the optimizer was saved from another network")
    return array
