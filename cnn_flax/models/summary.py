"""Keras-style model summaries and parameter counts, computed from shapes alone.

Everything here runs under `jax.eval_shape`, so VGG at 224x224 is summarised in a second without
allocating its 138M parameters or running a convolution. Counts follow `model.summary()` in Keras:
BatchNorm's moving mean and variance are non-trainable and part of the total.
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax

from cnn_flax.models import init_traced


@dataclasses.dataclass(frozen=True)
class ParamCounts:
    total: int
    trainable: int
    non_trainable: int

    def lines(self) -> list[str]:
        return [f"Total params: {self.total:,}", f"Trainable params: {self.trainable:,}",
                f"Non-trainable params: {self.non_trainable:,}"]


@dataclasses.dataclass(frozen=True)
class LayerRow:
    name: str
    kind: str
    output_shape: tuple
    params: int


def _size(tree: Any) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def count_params(variables: dict[str, Any]) -> ParamCounts:
    """Trainable = the 'params' collection; non-trainable = every other collection (BatchNorm statistics)."""
    trainable = _size(variables.get("params", {}))
    total = _size(variables)
    return ParamCounts(total, trainable, total - trainable)


def _subtree(variables: dict[str, Any], path: tuple[str, ...]) -> int:
    total = 0
    for collection in variables.values():
        node = collection
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
            if node is None:
                break
        if node is not None:
            total += _size(node)
    return total


def _shape_of(output: Any) -> tuple:
    shapes = [tuple(leaf.shape) for leaf in jax.tree_util.tree_leaves(output)]
    return shapes[0] if len(shapes) == 1 else tuple(shapes)


def layer_rows(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[list[LayerRow], ParamCounts]:
    """One row per direct child of the model, in call order, with its output shape and parameters."""
    calls: list[tuple[tuple[str, ...], str, Any]] = []

    def record(next_fun, args, kwargs, context):
        output = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name == "__call__" and len(module.scope.path) == 1:
            calls.append((tuple(module.scope.path), type(module).__name__, output))
        return output

    def init():
        # Traced on every call; without nested jits (initialisers, jnp functions) it traces faster.
        with nn.intercept_methods(record), jax.disable_jit():
            return init_traced(model, tuple(input_shape), jax.random.key(0))

    variables = jax.eval_shape(init)
    rows, seen = [], set()
    for path, kind, output in calls:
        if path in seen:
            continue
        seen.add(path)
        rows.append(LayerRow("/".join(path), kind, _shape_of(output), _subtree(variables, path)))
    return rows, count_params(variables)


def summary_text(model: nn.Module, input_shape: tuple[int, ...], title: str | None = None) -> str:
    """The table Keras's `model.summary()` prints: layer (type), output shape with None batch, params."""
    rows, counts = layer_rows(model, input_shape)
    name_width = max([len(f"{r.name} ({r.kind})") for r in rows] + [24]) + 2
    shape_width = max([len(_format_shape(r.output_shape)) for r in rows] + [20]) + 2
    width = name_width + shape_width + 12
    lines = [f'Model: "{title or type(model).__name__}"', "_" * width,
             f"{'Layer (type)':<{name_width}}{'Output Shape':<{shape_width}}{'Param #':>10}", "=" * width,
             f"{'input (InputLayer)':<{name_width}}{_format_shape((1, *input_shape)):<{shape_width}}{0:>10,}"]
    for row in rows:
        label = f"{row.name} ({row.kind})"
        lines.append(f"{label:<{name_width}}{_format_shape(row.output_shape):<{shape_width}}{row.params:>10,}")
    lines.append("=" * width)
    lines.extend(counts.lines())
    lines.append("_" * width)
    return "\n".join(lines)


def _format_shape(shape: tuple) -> str:
    if shape and isinstance(shape[0], tuple):
        return ", ".join(_format_shape(s) for s in shape)
    return "(" + ", ".join(["None", *(str(d) for d in shape[1:])]) + ")"
