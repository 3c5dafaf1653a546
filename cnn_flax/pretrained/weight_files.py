"""`init_from` for weight files: which reader a source needs, by its name and content, never by running it.

    .h5 .hdf5 .keras          Keras (keras_h5), any deck architecture
    .pth .pt .bin             a PyTorch state dict (torch_pickle): torchvision's or timm's VGG
    .safetensors              ours (`--mode=export`'s model.safetensors, keys `params/layer/leaf`), or a
                              torchvision/timm VGG (timm's Hub files)
    hf://user/name[@rev]      a Hub repository holding one of the above as model.safetensors
    a folder with model.safetensors (an export folder, a Hub snapshot)

Orbax checkpoints (a workdir or its checkpoints/epoch_N) are not files of this kind; the run layer reads them.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from typing import Any

import flax.linen as nn

from cnn_flax.errors import UserError
from cnn_flax.pretrained.hub import download, is_hub_source
from cnn_flax.pretrained.safetensors_io import SAFETENSORS_FILE

KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")
TORCH_SUFFIXES = (".pth", ".pt", ".bin")


def is_weight_file(source: str) -> bool:
    """True for the sources this module reads (see the module docstring), False for an Orbax checkpoint."""
    source = os.fspath(source)
    if is_hub_source(source) or source.endswith((*KERAS_SUFFIXES, *TORCH_SUFFIXES, ".safetensors")):
        return True
    return os.path.isdir(source) and os.path.isfile(os.path.join(source, SAFETENSORS_FILE))


def local_weight_file(source: str) -> str:
    """The file behind a source: a Hub repository downloaded (or found in the cache), a folder's model file."""
    source = os.fspath(source)
    if is_hub_source(source):
        source = download(source)
    if os.path.isdir(source):
        candidate = os.path.join(source, SAFETENSORS_FILE)
        if not os.path.isfile(candidate):
            raise UserError(f"{source} holds no {SAFETENSORS_FILE}; give a weight file or an export folder")
        return candidate
    if not os.path.exists(source):
        raise UserError(f"init_from={source!r} does not exist; give a weight file (.h5, .pth, .safetensors), "
                        "hf://user/name, or an Orbax checkpoint folder")
    return source


def load_weight_file(source: str, model: nn.Module, variables: Mapping[str, Any], input_shape: tuple[int, ...], *,
                     skip: Collection[str] = ()) -> dict[str, Any]:
    """New variables shaped as `variables` (the model's fresh ones) with the weights of `source`."""
    path = local_weight_file(source)
    if path.endswith(KERAS_SUFFIXES):
        from cnn_flax.pretrained.keras_h5 import load_keras_weights

        return load_keras_weights(path, model, variables, input_shape, skip=skip)
    if path.endswith(".safetensors"):
        from cnn_flax.pretrained.safetensors_io import is_our_layout, load_flat_variables, read_safetensors

        arrays, _ = read_safetensors(path)
        if is_our_layout(arrays):
            return load_flat_variables(path, arrays, variables, skip=skip)
        return _torch_layout(path, arrays, model, variables, input_shape, skip)
    if path.endswith(TORCH_SUFFIXES):
        from cnn_flax.pretrained.torch_pickle import read_torch_file

        return _torch_layout(path, read_torch_file(path), model, variables, input_shape, skip)
    raise UserError(f"init_from={source!r}: not a weight file this project reads (.h5 .hdf5 .keras .pth .pt .bin "
                    ".safetensors, hf://user/name) nor an Orbax checkpoint")


def _torch_layout(path: str, arrays: Mapping[str, Any], model: nn.Module, variables: Mapping[str, Any],
                  input_shape: tuple[int, ...], skip: Collection[str]) -> dict[str, Any]:
    from cnn_flax.pretrained.torchvision import is_torchvision_vgg, load_torchvision_vgg

    if not is_torchvision_vgg(arrays):
        first = next(iter(arrays), "nothing")
        raise UserError(f"{path}: PyTorch weights named like {first!r} are not a torchvision VGG state dict, the one "
                        "PyTorch layout read here (torchvision's vgg11/13/16/19 or timm's vgg*.tv_in1k)")
    return load_torchvision_vgg(path, arrays, model, variables, input_shape, skip=skip)
