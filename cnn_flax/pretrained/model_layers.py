"""Our model's layers with weights, in the order the model runs them, and where each weight lives.

A Keras file is matched against this list (keras_h5). The order comes from running the model once
abstractly (jax.eval_shape, nothing computed) and noting each Conv, Dense and BatchNorm as it is called:
the variables themselves come back as dicts sorted by name, which says nothing about the network.
"""

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax

# Our leaves per kind, in the order Keras stores the layer's weights (kernel, bias; gamma, beta,
# moving mean, moving variance), as (collection, leaf name).
KERAS_WEIGHT_ORDER = {
    "conv": (("params", "kernel"), ("params", "bias")),
    "dense": (("params", "kernel"), ("params", "bias")),
    "bn": (("params", "scale"), ("params", "bias"), ("batch_stats", "mean"), ("batch_stats", "var")),
}
TRAINABLE = {"conv": 2, "dense": 2, "bn": 2}  # how many of those Keras trains (BN's statistics it does not)
_KINDS = ((nn.Conv, "conv"), (nn.Dense, "dense"), (nn.BatchNorm, "bn"))


@dataclasses.dataclass(frozen=True)
class ModelLayer:
    path: tuple[str, ...]
    kind: str
    leaves: tuple[tuple[str, str], ...]  # (collection, leaf) in Keras's weight order, those the model has

    @property
    def label(self) -> str:
        return "/".join(self.path)

    def template(self, variables: Mapping[str, Any], leaf: tuple[str, str]) -> Any:
        node = variables[leaf[0]]
        for key in (*self.path, leaf[1]):
            node = node[key]
        return node


def model_layers(model: nn.Module, input_shape: tuple[int, ...], variables: Mapping[str, Any]) -> list[ModelLayer]:
    """The Conv/Dense/BatchNorm layers of `model` in call order (training mode, so auxiliary heads count)."""
    shape = tuple(int(d) for d in input_shape)
    try:
        hash(model)
    except TypeError:  # a module with an unhashable field (a list of widths, say): traced every time
        order = _call_order.__wrapped__(model, shape)
    else:
        order = _call_order(model, shape)
    layers = []
    for path, kind in order:
        leaves = tuple(leaf for leaf in KERAS_WEIGHT_ORDER[kind] if _has(variables, leaf[0], (*path, leaf[1])))
        layers.append(ModelLayer(path, kind, leaves))
    return layers


@functools.lru_cache(maxsize=32)
def _call_order(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[tuple[tuple[str, ...], str], ...]:
    """(path, kind) of each layer as the model calls it; kept per model (Linen modules compare by their fields)
    and input shape, because tracing GoogLeNet takes a quarter of a second and a run may read many files."""
    from cnn_flax.models import init_traced

    calls: list[tuple[tuple[str, ...], str]] = []

    def note(next_fun, args, kwargs, context):
        if context.method_name == "__call__":
            for cls, kind in _KINDS:
                if isinstance(context.module, cls) and all(path != context.module.path for path, _ in calls):
                    calls.append((tuple(context.module.path), kind))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(note):
        jax.eval_shape(lambda: init_traced(model, input_shape, jax.random.key(0)))
    return tuple(calls)


def is_chain(layers: list[ModelLayer], variables: Mapping[str, Any]) -> bool:
    """True when each layer reads the previous one's output (VGG, MiniVGG, NiN), False for branched networks.

    Told by channel counts: a conv whose input channels are not the previous conv's outputs reads
    something else (a concatenation, a module's shared input).
    """
    previous: dict[str, int] = {}
    for layer in layers:
        kernel = layer.template(variables, ("params", "kernel")) if layer.kind != "bn" else None
        if layer.kind == "bn":
            width = layer.template(variables, ("params", "scale")).shape[0]
            if width != previous.get("last"):
                return False
            continue
        fan_in, fan_out = kernel.shape[-2], kernel.shape[-1]
        if layer.kind in previous and previous[layer.kind] != fan_in:
            return False
        previous[layer.kind] = previous["last"] = fan_out
    return True


def _has(variables: Mapping[str, Any], collection: str, keys: tuple[str, ...]) -> bool:
    node = variables.get(collection, {})
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return False
        node = node[key]
    return True
