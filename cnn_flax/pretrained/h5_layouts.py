"""Read every HDF5 layout Keras has written weights in, as one list of named layers with ordered weights.

Keras changed its weight files twice, and VGG16/VGG19 weights exist in all three forms:

  legacy     root attribute `layer_names`; one group per layer with attribute `weight_names` naming its
             datasets (`block1_conv1_W_1:0`, `block1_conv1_b_1:0` in the published ImageNet files,
             `block1_conv1/kernel:0` from tf.keras 2's save_weights). Keras loads by order, kernel first.
  full model the same, under a `model_weights` group (tf.keras 2 and Keras 3 `model.save('x.h5')`).
  Keras 3    `.weights.h5` (also inside a `.keras` zip): `layers/<key>/vars/0, 1, …`, where the key comes
             from the class name (`conv2d_3`, `dense_1`) and recent versions record the layer's own name
             as the `name` attribute of `vars`. tf.keras 2.13 wrote `_layer_checkpoint_dependencies`
             instead of `layers`.

Full-model files also hold the layer graph (`model_config`, or `config.json` in a `.keras` archive) and,
when saved with their optimizer, its variables (`optimizer_weights`, or `optimizer/vars`) and class.

Matching against a model is keras_h5's job; this module only says what the file holds. Datasets are
returned unread so that a full file loaded into a model without its classifier never reads the 400 MB
of fc weights.
"""

import contextlib
import dataclasses
import io
import json
import os
import re
import zipfile
from collections.abc import Iterator

import h5py
import ml_dtypes
import numpy as np

from cnn_flax.errors import UserError
from cnn_flax.pretrained.keras_graph import KerasGraph, parse_model_config

LEGACY, FULL_MODEL, KERAS3 = "legacy", "full model", "Keras 3"
_KERAS3_CONTAINERS = ("layers", "_layer_checkpoint_dependencies")
_ARCHIVE_WEIGHTS = "model.weights.h5"


@dataclasses.dataclass(frozen=True)
class FileLayer:
    """One layer of the file that has weights. `name` is None for Keras 3 files that did not record it."""

    name: str | None
    key: str
    weights: tuple[h5py.Dataset, ...]
    weight_names: tuple[str, ...] = ()  # as the file names them (`conv2d/kernel:0`), where it does (Keras 2)

    @property
    def kind(self) -> str:
        """'conv', 'dense' or 'bn' by its weights: a kernel's rank, or BatchNormalization's four vectors."""
        ranks = [len(weight.shape) for weight in self.weights]
        if ranks == [1, 1, 1, 1]:
            return "bn"
        return {4: "conv", 2: "dense"}.get(ranks[0], f"rank-{ranks[0]}")

    @property
    def label(self) -> str:
        return self.name if self.name is not None else self.key


def read_array(dataset: h5py.Dataset) -> np.ndarray:
    """The dataset's values; Keras 3 stores bfloat16 as raw 2-byte records marked by a `dtype` attribute."""
    values = np.asarray(dataset[()])
    if dataset.attrs.get("dtype") == "bfloat16":
        values = values.view(ml_dtypes.bfloat16)
    return values


@dataclasses.dataclass(frozen=True)
class FileOptimizer:
    """The optimizer variables a file holds, unread, with their names where the format records them."""

    class_name: str  # as saved: 'SGD', 'Adam', … ('' when the file does not say)
    config: dict  # its settings as saved (momentum, amsgrad, …), where the file records them
    names: tuple[str, ...]  # one per variable, or () where the format numbers them only (Keras 3 vars/0, 1, …)
    arrays: tuple[h5py.Dataset, ...]


@dataclasses.dataclass(frozen=True)
class KerasFile:
    layout: str
    layers: list[FileLayer]  # the layers with weights, in the file's order
    graph: KerasGraph | None  # None: a weights-only file
    optimizer: FileOptimizer | None


@contextlib.contextmanager
def open_keras_file(path: str | os.PathLike) -> Iterator[KerasFile]:
    """Yield everything a Keras weight or model file holds; UserError when it is not one or is damaged."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file; give the path of a Keras .h5 / .hdf5 / .keras / .weights.h5 file")
    source: str | io.BytesIO = path
    config_text = None
    if zipfile.is_zipfile(path):
        source, config_text = _archive(path)
    elif path.endswith(".keras"):
        raise UserError(f"{path}: not a complete zip archive; the .keras file is truncated or damaged")
    elif not h5py.is_hdf5(path):
        raise UserError(f"{path}: not an HDF5 file; Keras weights come as .h5, .hdf5, .weights.h5 or .keras files")
    try:
        handle = h5py.File(source, "r")
    except OSError as error:
        raise UserError(f"{path}: cannot be read as HDF5 ({_one_line(error)}); the file is truncated or "
                        "damaged") from error
    try:
        with handle:
            yield _keras_file(path, handle, config_text)
    except (OSError, KeyError, RuntimeError) as error:
        raise UserError(f"{path}: reading it failed ({type(error).__name__}: {_one_line(error)}); the file is "
                        "truncated or damaged") from error


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _archive(path: str) -> tuple[io.BytesIO, bytes | None]:
    try:
        with zipfile.ZipFile(path) as archive:
            if _ARCHIVE_WEIGHTS not in archive.namelist():
                raise UserError(f"{path}: a zip archive without {_ARCHIVE_WEIGHTS}, so not a Keras .keras file")
            config = archive.read("config.json") if "config.json" in archive.namelist() else None
            return io.BytesIO(archive.read(_ARCHIVE_WEIGHTS)), config
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise UserError(f"{path}: the .keras archive is truncated or damaged ({error})") from error


def _keras_file(path: str, handle: h5py.File, config_text: bytes | None) -> KerasFile:
    layout, layers = _layout(path, handle)
    graph, optimizer = None, None
    if layout == FULL_MODEL:
        if "model_config" in handle.attrs:
            graph = parse_model_config(_text(handle.attrs["model_config"]), path)
        optimizer = _legacy_optimizer(path, handle)
    elif layout == KERAS3:
        if config_text is not None:
            graph = parse_model_config(config_text, path)
        optimizer = _keras3_optimizer(handle, config_text)
    if graph is None:
        side = side_config_path(path)
        if side is not None:
            with open(side, "rb") as config_file:
                graph = parse_model_config(config_file.read(), side)
    return KerasFile(layout, layers, graph, optimizer)


def side_config_path(path: str) -> str | None:
    """`x.json` beside a weights-only `x.weights.h5` / `x.h5`: the model's `model.to_json()`, if the user saved it."""
    candidate = re.sub(r"(\.weights)?\.(h5|hdf5)$", ".json", path)
    return candidate if candidate != path and os.path.isfile(candidate) else None


def _text(value: bytes | str) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _legacy_optimizer(path: str, handle: h5py.File) -> FileOptimizer | None:
    group = handle.get("optimizer_weights")
    if not isinstance(group, h5py.Group) or not _has_strings(group, "weight_names"):
        return None
    names = _strings(group, "weight_names")
    missing = [name for name in names if name not in group]
    if missing:
        raise UserError(f"{path}: optimizer variable {missing[0]} is listed but missing; the file is damaged")
    saved = {}
    if "training_config" in handle.attrs:
        saved = json.loads(_text(handle.attrs["training_config"])).get("optimizer_config") or {}
    return FileOptimizer(saved.get("class_name", ""), saved.get("config") or {}, tuple(names),
                         tuple(group[name] for name in names))


def _keras3_optimizer(handle: h5py.File, config_text: bytes | None) -> FileOptimizer | None:
    variables = handle.get("optimizer/vars")
    if not isinstance(variables, h5py.Group) or not len(variables):
        return None
    class_name, settings = _text(variables.attrs.get("name", "")), {}
    if config_text is not None:
        compiled = json.loads(config_text).get("compile_config") or {}
        optimizer = compiled.get("optimizer")
        if isinstance(optimizer, dict):
            class_name, settings = optimizer.get("class_name", class_name), optimizer.get("config") or {}
        else:
            class_name = optimizer or class_name
    return FileOptimizer(class_name, settings, (), tuple(variables[index] for index in sorted(variables, key=int)))


def _layout(path: str, handle: h5py.File) -> tuple[str, list[FileLayer]]:
    if _has_strings(handle, "layer_names"):
        return LEGACY, _legacy_layers(path, handle)
    if "model_weights" in handle and _has_strings(handle["model_weights"], "layer_names"):
        return FULL_MODEL, _legacy_layers(path, handle["model_weights"])
    for container in _KERAS3_CONTAINERS:
        if isinstance(handle.get(container), h5py.Group):
            return KERAS3, _keras3_layers(handle[container])
    raise UserError(f"{path}: an HDF5 file without Keras weights (no layer_names, model_weights or layers); "
                    "save them with Keras's save_weights or model.save")


def _has_strings(group: h5py.Group, name: str) -> bool:
    return name in group.attrs or f"{name}0" in group.attrs


def _strings(group: h5py.Group, name: str) -> list[str]:
    """A string-list attribute, including the `name0`, `name1`, … chunks Keras writes past 64 KB."""
    if name in group.attrs:
        chunks = [group.attrs[name]]
    else:
        chunks = []
        while f"{name}{len(chunks)}" in group.attrs:
            chunks.append(group.attrs[f"{name}{len(chunks)}"])
    values = [item for chunk in chunks for item in np.atleast_1d(chunk)]
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _legacy_layers(path: str, group: h5py.Group) -> list[FileLayer]:
    layers = []
    for name in _strings(group, "layer_names"):
        layer_group = group.get(name)
        weight_names = _strings(layer_group, "weight_names") if isinstance(layer_group, h5py.Group) else None
        if weight_names is None or any(weight not in layer_group for weight in weight_names):
            raise UserError(f"{path}: layer {name} is listed in layer_names but its weights are missing; "
                            "the file is damaged or was not written by Keras")
        weights = tuple(layer_group[weight] for weight in weight_names)
        if weights:
            layers.append(FileLayer(name, name, weights, tuple(weight_names)))
    return layers


def _keras3_layers(container: h5py.Group) -> list[FileLayer]:
    """Layers in saving order: by class name as Keras numbered them (conv2d, conv2d_1, …, dense, …)."""
    layers = []
    for key in sorted(container, key=_key_order):
        variables = container[key].get("vars")
        if not isinstance(variables, h5py.Group) or not len(variables):
            continue
        weights = tuple(variables[index] for index in sorted(variables, key=int))
        name = variables.attrs.get("name")
        layers.append(FileLayer(name.decode("utf8") if isinstance(name, bytes) else name, key, weights))
    return layers


def _key_order(key: str) -> tuple[str, int]:
    base, _, number = key.rpartition("_")
    return (base, int(number)) if number.isdigit() else (key, -1)
