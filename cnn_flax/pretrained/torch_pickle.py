"""PyTorch `torch.save` files (.pth, .pt, .bin) read as data: no torch, and no code from the file ever runs.

A torch file is a pickle, and unpickling can call any importable function the file names. Here the
unpickler's `find_class` knows only what a state dict of tensors needs -- `collections.OrderedDict`,
torch's tensor and parameter rebuild functions and its storage types -- each mapped to a stand-in of our
own that records numbers; any other name refuses the file with one line naming it. Tensors become numpy
arrays cut from the storages' raw bytes.

Two layouts exist (both read): the zip archive torch has written since 1.6 (`archive/data.pkl`, one
record per storage under `archive/data/`, `archive/byteorder`), and the older stream of pickles (magic
number, protocol version, system info, the object, the storage keys, then each storage as an int64
element count and its bytes) in which torchvision's VGG16 and VGG19 files were published. The even older
tar layout (PyTorch before 0.2) is refused.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

from cnn_flax.errors import UserError

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001
STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32), "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16), "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64), "IntStorage": np.dtype(np.int32), "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8), "ByteStorage": np.dtype(np.uint8), "BoolStorage": np.dtype(np.bool_),
    "UntypedStorage": np.dtype(np.uint8),
}


class _StorageType:
    """What `torch.FloatStorage` and its siblings stand for in the pickle: only an element type."""

    def __init__(self, name: str) -> None:
        self.name, self.dtype = name, STORAGE_DTYPES[name]


class _Storage:
    """One storage: its element type and count now; its bytes once read (after the pickle, in the old layout)."""

    def __init__(self, dtype: np.dtype, numel: int) -> None:
        self.dtype, self.numel = dtype, numel
        self.array: np.ndarray | None = None
        self.given = False  # its array is some tensor's own: another tensor on it gets a copy


class _Tensor:
    """A tensor as the pickle describes it: a strided view of a storage, materialised when the bytes are in."""

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _rebuild_tensor(storage, storage_offset, size, stride, *_):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    """Builds only containers, numbers, strings and our tensor stand-ins; names anything else and stops."""

    def __init__(self, handle: io.BufferedIOBase, path: str, storage_for) -> None:
        super().__init__(handle)
        self.path, self.storage_for = path, storage_for

    def find_class(self, module: str, name: str) -> Any:
        if module in ("torch", "torch.storage") and name in STORAGE_DTYPES:
            return _StorageType(name)
        found = _ALLOWED.get((module, name))
        if found is None:
            raise UserError(f"{self.path}: the file needs {module}.{name}, which a file of tensors does not; "
                            "it is not read, since unpickling it would run code from the file (save a plain "
                            "state_dict, or convert it to .safetensors)")
        return found

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and _ascii(pid[0]) == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[4], int)):
            raise UserError(f"{self.path}: a persistent reference {str(pid)[:60]!r} that is not a tensor storage; "
                            "the file is not a PyTorch state dict")
        if len(pid) > 5 and pid[5] is not None:
            raise UserError(f"{self.path}: storage views of the PyTorch 0.3 era are not supported; load the file "
                            "in PyTorch and save its state_dict again")
        return self.storage_for(_ascii(pid[2]), pid[1].dtype, pid[4])


def _ascii(value: Any) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


def read_torch_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a torch.save file as {name: numpy array}, the names as the state dict has them.

    A checkpoint that wraps its state dict ({'state_dict': ...}, {'model': ...}) gives the wrapped one.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file; give the .pth file torchvision (or timm) downloaded")
    try:
        if zipfile.is_zipfile(path):
            obj = _read_zip(path)
        else:
            obj = _read_legacy(path)
    except UserError:
        raise
    except (pickle.UnpicklingError, EOFError, struct.error, ValueError, KeyError, IndexError, TypeError,
            zipfile.BadZipFile, OSError) as error:
        raise UserError(f"{path}: not a readable PyTorch file ({type(error).__name__}: {error}); download it "
                        "again") from None
    return _state_dict(path, obj)


def _read_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise UserError(f"{path}: a zip archive without torch's data.pkl (TorchScript or another format); "
                            "save the model's state_dict with torch.save")
        prefix = pickles[0][:-len("data.pkl")]
        big_endian = f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder").strip() == b"big"
        storages: dict[str, _Storage] = {}

        def storage_for(key: str, dtype: np.dtype, numel: int) -> _Storage:
            if key not in storages:
                storage = _Storage(dtype, numel)
                raw = archive.read(f"{prefix}data/{key}")  # read-only bytes (zipfile checks their CRC on the way)
                storage.array = _from_bytes(path, raw, dtype.newbyteorder(">") if big_endian else dtype, numel)
                storages[key] = storage
            return storages[key]

        with archive.open(pickles[0]) as handle:
            return _Unpickler(io.BytesIO(handle.read()), path, storage_for).load()


def _read_legacy(path: str) -> Any:
    with open(path, "rb") as handle:
        if handle.read(262)[257:262] == b"ustar":
            raise UserError(f"{path}: the tar layout of PyTorch before 0.2 is not supported; load it in PyTorch "
                            "and save its state_dict again")
        handle.seek(0)
        header = _Unpickler(handle, path, None)
        if header.load() != _MAGIC_NUMBER:
            raise UserError(f"{path}: not a PyTorch file (no torch.save magic number); give the .pth file "
                            "torchvision or timm downloaded")
        if header.load() != _PROTOCOL_VERSION:
            raise UserError(f"{path}: a torch.save protocol other than {_PROTOCOL_VERSION}; save it again")
        sys_info = header.load()
        little = not isinstance(sys_info, Mapping) or sys_info.get("little_endian", True)
        storages: dict[str, _Storage] = {}

        def storage_for(key: str, dtype: np.dtype, numel: int) -> _Storage:
            return storages.setdefault(key, _Storage(dtype, numel))

        obj = _Unpickler(handle, path, storage_for).load()
        keys = _Unpickler(handle, path, None).load()
        for key in keys:
            storage = storages.get(_ascii(key))
            if storage is None:
                raise UserError(f"{path}: storage {key} is listed but never used; the file is damaged")
            (count,) = struct.unpack("<q" if little else ">q", handle.read(8))
            dtype = storage.dtype if little else storage.dtype.newbyteorder(">")
            storage.array = _from_bytes(path, _read_all(handle, count * dtype.itemsize), dtype, count)
    return obj


def _read_all(handle: Any, size: int) -> bytearray:
    """Up to `size` bytes into a buffer of our own: arrays on it are writable without a copy (VGG16's weights
    are 528 MB; copying them cost a second)."""
    buffer = bytearray(size)
    with memoryview(buffer) as view:
        done = 0
        while done < size:
            count = handle.readinto(view[done:])
            if not count:
                break
            done += count
    return buffer if done == size else buffer[:done]


def _from_bytes(path: str, raw: bytes | bytearray, dtype: np.dtype, numel: int) -> np.ndarray:
    if len(raw) < numel * dtype.itemsize:
        raise UserError(f"{path}: a storage holds {len(raw)} bytes where {numel} elements of {dtype} need "
                        f"{numel * dtype.itemsize}; the file is truncated, download it again")
    return np.frombuffer(raw, dtype, numel).astype(dtype.newbyteorder("="), copy=False)


def _materialise(path: str, name: str, tensor: _Tensor) -> np.ndarray:
    storage = tensor.storage
    if not isinstance(storage, _Storage) or storage.array is None:
        raise UserError(f"{path}: tensor {name} has no storage data; the file is damaged")
    size = tuple(int(s) for s in tensor.size)
    stride = tuple(int(s) for s in tensor.stride)
    offset = int(tensor.offset)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in (*size, *stride)):
        raise UserError(f"{path}: tensor {name} has an impossible layout; the file is damaged")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) if all(size) else offset - 1
    if last >= storage.array.size:
        raise UserError(f"{path}: tensor {name} reaches past its storage; the file is damaged")
    flat = storage.array
    item = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size, strides=tuple(s * item for s in stride))
    whole = offset == 0 and view.size == flat.size and view.flags.c_contiguous
    if whole and flat.flags.writeable and not storage.given:
        storage.given = True  # the whole storage in order, read into a buffer of ours: the tensor is its array
        return flat.reshape(size)
    return np.array(view, order="C")  # contiguous, writable, apart from what other tensors share


def _state_dict(path: str, obj: Any) -> dict[str, np.ndarray]:
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model", "model_state_dict", "module"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping):
        raise UserError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors; save "
                        "model.state_dict() with torch.save")
    tensors = {str(name): _materialise(path, str(name), value) for name, value in obj.items()
               if isinstance(value, _Tensor)}
    if not tensors:
        raise UserError(f"{path}: holds no tensors; save model.state_dict() with torch.save")
    return tensors
