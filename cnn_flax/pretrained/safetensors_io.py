"""Our variables as a flat safetensors file, and any safetensors file read back as numpy arrays.

Keys are the variables' paths joined by '/', collection first: `params/block1_conv1/kernel`,
`batch_stats/conv_1_bn/mean`; the part after the collection is the layer as `--mode=summary` names it, so a
file lines up with the model table. Every array of the variables goes in (parameters, BatchNorm
statistics, GoogLeNet's auxiliary heads), unchanged, so a round trip is exact. The file's metadata says
which model it is (`cnn_flax.model`, the model's config as JSON).

Reading is written here rather than taken from `safetensors.numpy`, which has no bfloat16: the format is
an 8-byte little-endian header length, a JSON header ({name: {dtype, shape, data_offsets}}), then the raw
little-endian bytes, and nothing in it can run.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Collection, Mapping
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

from cnn_flax.errors import UserError

SAFETENSORS_FILE = "model.safetensors"
COLLECTIONS = ("params", "batch_stats")
_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "I64": np.int64,
    "I32": np.int32, "I16": np.int16, "I8": np.int8, "U64": np.uint64, "U32": np.uint32, "U16": np.uint16,
    "U8": np.uint8, "BOOL": np.bool_,
}
_MAX_HEADER = 100 << 20


def flatten_variables(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """{'params/layer/.../leaf': array} for every array of every collection, in sorted key order."""
    return {key: np.asarray(leaf) for key, leaf in _leaves(variables).items()}


def _leaves(variables: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for key in sorted(node):
                walk(f"{prefix}/{key}" if prefix else str(key), node[key])
        else:
            flat[prefix] = node

    for collection in sorted(variables):
        walk(collection, variables[collection])
    return flat


def unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, array in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = array
    return tree


def save_variables(path: str | os.PathLike, variables: Mapping[str, Any],
                   metadata: Mapping[str, str] | None = None) -> None:
    """Write every array of `variables` to a safetensors file, atomically and byte for byte reproducibly.

    Written here, not by `safetensors.numpy.save_file`: that library stores the metadata in a hash map whose
    order changes from process to process, so the same weights gave a file with another digest each time
    (an export's sha256 in export.json, and a Hub upload, would change for nothing). Tensors go in name
    order and the header's keys are sorted.
    """
    from cnn_flax.atomic import partial_path, remove_stale_partials

    path = os.fspath(path)
    codes = {np.dtype(dtype): code for code, dtype in _DTYPES.items()}
    flat = {key: np.ascontiguousarray(value) for key, value in flatten_variables(variables).items()}
    # bfloat16 (half-precision runs keep float32 weights; a cast tree may not) as float32: numpy readers lack it
    flat = {key: value.astype(np.float32) if value.dtype == ml_dtypes.bfloat16 else value
            for key, value in flat.items()}
    header: dict[str, Any] = {"__metadata__": {"format": "cnn_flax", **(metadata or {})}}
    offset, chunks = 0, []
    for key in sorted(flat):
        value = flat[key]
        data = value.tobytes()
        header[key] = {"dtype": codes[value.dtype], "shape": list(value.shape),
                       "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as the format's own writer leaves it
    remove_stale_partials(path)
    partial = partial_path(path)
    try:
        with open(partial, "wb") as handle:
            handle.write(struct.pack("<Q", len(text)))
            handle.write(text)
            for data in chunks:
                handle.write(data)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """({name: array}, metadata) of a safetensors file; arrays are copies, the file is closed after."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file; give a .safetensors file or the folder holding {SAFETENSORS_FILE}")
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise UserError(f"{path}: too short for a safetensors file; the file is damaged")
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, _MAX_HEADER):
            raise UserError(f"{path}: not a safetensors file (its header length is impossible)")
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            raise UserError(f"{path}: not a safetensors file (its header is not JSON)") from None
        if not isinstance(header, dict):
            raise UserError(f"{path}: not a safetensors file (its header is not a table of tensors)")
        metadata = header.pop("__metadata__", None) or {}
        arrays = {name: _tensor(path, name, spec, handle, 8 + length, size - 8 - length)
                  for name, spec in header.items()}
    return arrays, {str(k): str(v) for k, v in metadata.items()}


def _tensor(path: str, name: str, spec: Any, handle: BinaryIO, start: int, data_size: int) -> np.ndarray:
    """One tensor read from the file straight into its own array: one copy from the kernel's page cache, where
    a memory map copied twice (478 MB of VGG classifier: 0.13 s against 0.46 s once the process's memory is
    paged in; a fresh process spends about a second paging it in either way)."""
    try:
        dtype = np.dtype(_DTYPES[spec["dtype"]])
        shape = tuple(int(d) for d in spec["shape"])
        begin, end = (int(v) for v in spec["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path}: tensor {name} has a dtype, shape or offsets this reader does not know "
                        f"({str(spec)[:80]})") from None
    count = int(np.prod(shape, dtype=np.int64))
    if not 0 <= begin <= end <= data_size or end - begin != count * dtype.itemsize:
        raise UserError(f"{path}: tensor {name} lies outside the file or has the wrong size; the file is damaged "
                        "or truncated")
    stored = np.empty(shape, dtype.newbyteorder("<"))  # safetensors is little-endian
    handle.seek(start + begin)
    if handle.readinto(memoryview(stored.reshape(-1).view(np.uint8))) != end - begin:
        raise UserError(f"{path}: tensor {name} is cut short; the file is damaged or truncated")
    return stored.astype(dtype, copy=False)


def is_our_layout(arrays: Mapping[str, Any]) -> bool:
    return bool(arrays) and all(name.split("/", 1)[0] in COLLECTIONS and "/" in name for name in arrays)


def load_flat_variables(path: str, arrays: Mapping[str, np.ndarray], variables: Mapping[str, Any], *,
                        skip: Collection[str] = ()) -> dict[str, Any]:
    """New variables with `variables`' structure and dtypes from a file `save_variables` wrote.

    Every array the model has must be in the file with its shape (apart from the layers in `skip`, which
    keep the template's values), and the file must hold nothing else: a file of another model is named
    as such rather than half loaded.
    """
    wanted = _leaves(variables)
    layers = {key.split("/")[1] for key in wanted}
    unknown = sorted(set(skip) - layers)
    if unknown:
        raise UserError(f"{path}: cannot skip {', '.join(unknown)}: the model has no such layer")
    skipped = lambda key: key.split("/")[1] in skip  # noqa: E731
    missing = [key for key in wanted if key not in arrays and not skipped(key)]
    if missing:
        raise UserError(f"{path}: {missing[0]} is not in the file ({len(missing)} of the model's arrays are "
                        "missing); the file is for another model or configuration")
    extra = sorted(set(arrays) - set(wanted))
    if extra:
        raise UserError(f"{path}: {extra[0]} is in the file but not in the model; the file is for another model "
                        "or configuration")
    loaded = {}
    for key, template in wanted.items():
        if skipped(key):
            loaded[key] = template
            continue
        array = arrays[key]
        if tuple(array.shape) != tuple(template.shape):
            layer = key.split("/")[1]
            hint = (f"the file classifies {array.shape[-1]} classes: set model.num_classes={array.shape[-1]} or "
                    f"skip the layer (init_skip={layer})" if layer == "predictions" or "classifier" in layer
                    else "the file is for another configuration or input size")
            raise UserError(f"{path}: {key} is {tuple(array.shape)} in the file but {tuple(template.shape)} in the "
                            f"model; {hint}")
        loaded[key] = np.asarray(array, dtype=template.dtype)
    return unflatten(loaded)
