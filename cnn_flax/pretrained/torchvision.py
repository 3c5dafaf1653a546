"""torchvision's (and timm's) VGG weights in our VGG: the columns A, B, D and E that Keras never published.

torchvision names the layers by their place in two `nn.Sequential`s: `features.N` (convolutions among
ReLUs and poolings) and `classifier.0/3/6` (the three fully connected layers); timm's copies on the
Hugging Face Hub (`timm/vgg16.tv_in1k`, ...) hold the same numbers with the classifier renamed and
reshaped as convolutions (`pre_logits.fc1` 7x7, `pre_logits.fc2` 1x1, `head.fc`). Both are read here.

The conversions: convolution kernels go from PyTorch's (out, in, kh, kw) to Flax's (kh, kw, in, out),
dense kernels are transposed, and the first dense layer's rows are reordered. torchvision flattens the
last feature map [512, 7, 7] channel first (row c·49 + h·7 + w) where our Flatten, like Keras's, is channel
last (row h·7·512 + w·512 + c). torchvision's `AdaptiveAvgPool2d((7, 7))` in front of the classifier is
the identity at 224x224 (the last feature map is already 7x7), the input size these weights are for; a
model with the classifier must be built at 224x224, and one without (`include_top=False`) takes any size.

Preprocessing differs from Keras's Caffe weights: RGB scaled to [0, 1], minus the ImageNet mean, divided
by its standard deviation (`data.normalize="torchvision"`).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from cnn_flax.errors import UserError

# The number of convolutions of each torchvision VGG and the column of the paper's table it is.
TORCHVISION_VARIANTS = {8: ("vgg11", "A"), 10: ("vgg13", "B"), 13: ("vgg16", "D"), 16: ("vgg19", "E")}
# torchvision's published files per column: (file name, full sha256 where we have it). The name carries the
# first 8 hex digits of the file's sha256, which torch.hub checks on download.
TORCHVISION_FILES = {
    "A": ("vgg11-8a719046.pth", None),
    "B": ("vgg13-19584684.pth", None),
    "D": ("vgg16-397923af.pth", "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0"),
    "E": ("vgg19-dcbb9e9d.pth", "dcbb9e9dad569fff7a846263a77324fc34978fea2bfb039c012d710e1776ae44"),
}
_CLASSIFIERS = {  # layout -> our dense layer -> the file's layer
    "torchvision": {"fc1": "classifier.0", "fc2": "classifier.3", "predictions": "classifier.6"},
    "timm": {"fc1": "pre_logits.fc1", "fc2": "pre_logits.fc2", "predictions": "head.fc"},
}
_FEATURE = re.compile(r"features\.(\d+)\.(weight|bias|running_mean|running_var|num_batches_tracked)$")


def is_torchvision_vgg(state: Mapping[str, Any]) -> bool:
    return any(_FEATURE.match(name) for name in state)


def load_torchvision_vgg(path: str, state: Mapping[str, np.ndarray], model: Any, variables: Mapping[str, Any],
                         input_shape: tuple[int, ...], *, skip: Collection[str] = ()) -> dict[str, Any]:
    """New variables with `variables`' structure and dtypes, the weights taken from torchvision's `state`.

    `model` is our VGG; `variables` the template from `init_variables` (arrays or shape structs);
    top-level layers named in `skip` (say 'predictions', to train a new classifier) keep the template's.
    """
    from cnn_flax.models.vgg import VGG, VGG_TABLE

    if not isinstance(model, VGG):
        raise UserError(f"{path}: torchvision VGG weights load only into model.name='vgg', not "
                        f"{type(model).__name__}")
    params = variables["params"]
    unknown = sorted(set(skip) - set(params))
    if unknown:
        raise UserError(f"{path}: cannot skip {', '.join(unknown)}: the model has no such layer; its layers are "
                        f"{', '.join(params)}")
    if any(name.endswith("running_mean") for name in state):
        raise UserError(f"{path}: a VGG with BatchNorm (torchvision's vgg*_bn); our VGG columns have none: use "
                        "the plain vgg11/vgg13/vgg16/vgg19 file")
    convs = _file_convs(path, state)
    ours = _our_convs(VGG_TABLE[model.variant])
    if len(convs) != len(ours):
        known = TORCHVISION_VARIANTS.get(len(convs))
        hint = (f"it is {known[0]}: set --config.model.variant={known[1]}" if known else
                "the file is not one of torchvision's VGG11/13/16/19")
        raise UserError(f"{path}: {len(convs)} convolutions in the file but {len(ours)} in VGG column "
                        f"{model.variant}; {hint}")
    pairs: list[tuple[str, str, np.ndarray]] = []  # (our layer, leaf, array in our layout)
    for name, index in zip(ours, convs, strict=True):
        weight, bias = state[f"features.{index}.weight"], state.get(f"features.{index}.bias")
        if weight.ndim != 4 or bias is None:
            raise UserError(f"{path}: features.{index} is not a convolution with a bias; the file is not a "
                            "torchvision VGG")
        pairs += [(name, "kernel", weight.transpose(2, 3, 1, 0)), (name, "bias", bias)]
    used = {f"features.{i}.{leaf}" for i in convs for leaf in ("weight", "bias")}
    if getattr(model, "include_top", True):
        layout = _classifier_layout(path, state)
        for ours_name, theirs in _CLASSIFIERS[layout].items():
            weight, bias = state.get(f"{theirs}.weight"), state.get(f"{theirs}.bias")
            if weight is None or bias is None:
                raise UserError(f"{path}: {theirs}.weight or .bias is missing; the file has no complete classifier: "
                                "build the model with include_top=False")
            used |= {f"{theirs}.weight", f"{theirs}.bias"}
            if ours_name == "fc1":
                kernel = _first_dense(path, weight, params["fc1"]["kernel"].shape, input_shape)
            else:
                kernel = weight.reshape(weight.shape[0], -1).T
            pairs += [(ours_name, "kernel", kernel), (ours_name, "bias", bias)]
    extra = sorted(name for name in state if name not in used and not name.startswith(("classifier.", "pre_logits.",
                                                                                      "head.")))
    if extra:
        raise UserError(f"{path}: {extra[0]} is not part of a torchvision VGG; the file is for another network")
    return _filled(path, variables, pairs, skip)


def _file_convs(path: str, state: Mapping[str, np.ndarray]) -> list[int]:
    indices = sorted({int(m.group(1)) for m in map(_FEATURE.match, state) if m and m.group(2) == "weight"})
    if not indices:
        raise UserError(f"{path}: no features.N.weight tensors; the file is not a torchvision VGG state dict")
    return indices


def _our_convs(table: list[str]) -> list[str]:
    names, block, count = [], 1, 0
    for entry in table:
        if entry == "pool":
            block, count = block + 1, 0
        elif entry.startswith("conv"):
            count += 1
            names.append(f"block{block}_conv{count}")
    return names


def _classifier_layout(path: str, state: Mapping[str, np.ndarray]) -> str:
    if "classifier.0.weight" in state:
        return "torchvision"
    if "pre_logits.fc1.weight" in state:
        return "timm"
    raise UserError(f"{path}: the file has the convolutions but no classifier (classifier.0 or pre_logits.fc1); "
                    "build the model with include_top=False")


def _first_dense(path: str, weight: np.ndarray, ours: tuple[int, ...], input_shape: tuple[int, ...]) -> np.ndarray:
    """[4096, 512·7·7] (or timm's [4096, 512, 7, 7]) channel-first rows -> our [7·7·512, 4096] channel-last rows."""
    out = weight.shape[0]
    if weight.ndim == 2:
        if weight.shape[1] % 512:
            raise UserError(f"{path}: the first classifier layer reads {weight.shape[1]} values, not 512 channels "
                            "of a square map; the file is not a torchvision VGG")
        side = round((weight.shape[1] // 512) ** 0.5)
        weight = weight.reshape(out, 512, side, side)
    side = weight.shape[2]
    if (weight.shape[1] * weight.shape[2] * weight.shape[3], out) != tuple(ours):  # before the costly reordering
        raise UserError(f"{path}: the classifier reads a {side}x{side}x512 feature map ({side * 32}x{side * 32} "
                        f"images) but the model is built for {input_shape[0]}x{input_shape[1]}: set "
                        f"data.image_size={side * 32}, or use include_top=False")
    return _channels_last_rows(weight)


def _channels_last_rows(weight: np.ndarray, tile: int = 64) -> np.ndarray:
    """weight [out, C, H, W] -> [H·W·C, out], tile by tile: numpy's one-go transpose of VGG16's 103M-value
    layer strides across memory and took 2.7 s here; 64x64 tiles take 0.35 s."""
    out, channels = weight.shape[:2]
    rows = weight.reshape(out, channels, -1)
    kernel = np.empty((rows.shape[2], channels, out), weight.dtype)
    for o in range(0, out, tile):
        for c in range(0, channels, tile):
            kernel[:, c:c + tile, o:o + tile] = rows[o:o + tile, c:c + tile].transpose(2, 1, 0)
    return kernel.reshape(-1, out)


def _filled(path: str, variables: Mapping[str, Any], pairs: list[tuple[str, str, np.ndarray]],
            skip: Collection[str]) -> dict[str, Any]:
    """A copy of the template with the pairs put in; every shape checked before anything is kept."""
    params = variables["params"]
    for layer, leaf, array in pairs:
        if layer in skip:
            continue
        expected = tuple(params[layer][leaf].shape)
        if tuple(array.shape) != expected:
            hint = (f"the file classifies {array.shape[-1]} classes: set model.num_classes={array.shape[-1]} or "
                    "skip the layer (init_skip=predictions)" if layer == "predictions" else
                    "the file is for another VGG configuration")
            raise UserError(f"{path}: layer {layer} has {leaf} {tuple(array.shape)} in the file but {expected} in "
                            f"the model; {hint}")
    result = {collection: {name: dict(leaves) for name, leaves in layers.items()}
              for collection, layers in variables.items()}
    for layer, leaf, array in pairs:
        if layer not in skip:
            result["params"][layer][leaf] = np.ascontiguousarray(array, dtype=params[layer][leaf].dtype)
    return result
