"""The layer graph a Keras file records (its model config), walked in the order our models run their layers.

Layer names in a Keras file are whatever the building process gave them (`conv2d_17` depends on how many
models that process had built before), and `model.layers` lists layers by graph depth, interleaving
the branches of an inception module. Neither says which file layer is which of ours. The graph does:
walking it depth-first from the outputs, each layer's inputs in their order (a concatenation's
branches left to right) and every layer after its inputs, gives the order in which code like the
book's builds the network — branch after branch, as our modules run theirs. Several outputs (GoogLeNet's
auxiliary heads) are walked shallowest first, so a side head comes right after the module it hangs on.
"""

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

from cnn_flax.errors import UserError

# Keras layer classes whose weights we load, by the kind of our layer they become.
WEIGHT_KINDS = {"Conv2D": "conv", "Convolution2D": "conv", "Dense": "dense", "BatchNormalization": "bn"}
ACTIVATION_LAYERS = {"ReLU": "relu", "ELU": "elu", "LeakyReLU": "leaky_relu", "Softmax": "softmax"}
_MODEL_CLASSES = ("Functional", "Sequential", "Model")


@dataclasses.dataclass(frozen=True)
class GraphLayer:
    name: str
    class_name: str
    config: dict[str, Any]
    inputs: tuple[str, ...]  # names of the layers feeding it, in argument order

    @property
    def kind(self) -> str | None:
        return WEIGHT_KINDS.get(self.class_name.split(">")[-1])

    @property
    def activation(self) -> str | None:
        """The nonlinearity this layer applies (an Activation layer, or a conv/dense with activation=...)."""
        if self.class_name in ACTIVATION_LAYERS:
            return ACTIVATION_LAYERS[self.class_name]
        value = self.config.get("activation")
        if isinstance(value, dict):  # a serialized function
            value = value.get("config", value.get("class_name"))
        return value if isinstance(value, str) and value not in ("linear", None) else None


@dataclasses.dataclass(frozen=True)
class KerasGraph:
    layers: tuple[GraphLayer, ...]  # as the config lists them: Keras's model.layers order
    outputs: tuple[str, ...]

    def by_name(self) -> dict[str, GraphLayer]:
        return {layer.name: layer for layer in self.layers}

    def build_order(self) -> list[GraphLayer]:
        """Every layer once, inputs before the layers they feed, branches one after the other (see above)."""
        layers = self.by_name()
        depth = self._depths(layers)
        order, seen = [], set()
        for output in sorted(self.outputs, key=lambda name: depth[name]):  # stable: ties keep Keras's order
            stack = [(output, False)]
            while stack:
                name, expanded = stack.pop()
                if name in seen:
                    continue
                if expanded:
                    seen.add(name)
                    order.append(layers[name])
                    continue
                stack.append((name, True))
                stack.extend((parent, False) for parent in reversed(layers[name].inputs) if parent not in seen)
        return order

    def _depths(self, layers: dict[str, GraphLayer]) -> dict[str, int]:
        depth: dict[str, int] = {}
        for layer in self.layers:  # model.layers is a topological order
            depth[layer.name] = 1 + max((depth.get(parent, 0) for parent in layer.inputs), default=0)
        return depth

    def activations(self) -> set[str]:
        return {layer.activation for layer in self.layers if layer.activation} - {"softmax"}

    def bn_orders(self) -> set[str]:
        """'conv_bn_act' where a BatchNormalization follows its conv/dense, 'conv_act_bn' after an activation."""
        layers, orders = self.by_name(), set()
        for layer in self.layers:
            if layer.kind == "bn" and layer.inputs:
                parent = layers[layer.inputs[0]]
                orders.add("conv_act_bn" if parent.activation or parent.class_name == "Activation" else "conv_bn_act")
        return orders


def parse_model_config(text: str | bytes, source: str) -> KerasGraph:
    """A KerasGraph from the JSON of model.to_json() / a file's model_config (tf.keras 2 or Keras 3)."""
    try:
        config = json.loads(text)
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{source}: its model config is not valid JSON ({error}); the file is damaged") from error
    class_name, body = config.get("class_name"), config.get("config", {})
    if class_name == "Sequential":
        return _sequential(body, source)
    if class_name not in _MODEL_CLASSES or "layers" not in body:
        raise UserError(f"{source}: its model config describes a {class_name}, not a Functional or Sequential "
                        "Keras model")
    layers = tuple(_functional_layer(entry, source) for entry in body["layers"])
    known = {layer.name for layer in layers}
    outputs = tuple(_output_names(body.get("output_layers", [])))
    for layer in layers:
        missing = [name for name in layer.inputs if name not in known]
        if missing:
            raise UserError(f"{source}: layer {layer.name} of its model config reads {missing[0]}, which the "
                            "config does not define; the file is damaged")
    if not outputs or any(name not in known for name in outputs):
        raise UserError(f"{source}: its model config names no usable output layers; the file is damaged")
    return KerasGraph(layers, outputs)


def _sequential(body: dict[str, Any] | list, source: str) -> KerasGraph:
    layers, previous = [], ()
    for entry in body if isinstance(body, list) else body.get("layers", []):  # Keras 2.0-2.1: a bare list
        _refuse_nested(entry, source)
        name = entry.get("config", {}).get("name") or entry.get("name")
        layers.append(GraphLayer(name, entry["class_name"], entry.get("config", {}), previous))
        previous = (name,)
    if not layers:
        raise UserError(f"{source}: its Sequential model config has no layers")
    return KerasGraph(tuple(layers), previous)


def _functional_layer(entry: dict[str, Any], source: str) -> GraphLayer:
    _refuse_nested(entry, source)
    name = entry.get("name") or entry.get("config", {}).get("name")
    inputs: list[str] = []
    for parent in _history_names(entry.get("inbound_nodes", [])):
        if parent not in inputs:
            inputs.append(parent)
    return GraphLayer(name, entry["class_name"], entry.get("config", {}), tuple(inputs))


def _refuse_nested(entry: dict[str, Any], source: str) -> None:
    if entry.get("class_name") in _MODEL_CLASSES:
        raise UserError(f"{source}: layer {entry.get('config', {}).get('name')} is itself a Keras model; nested "
                        "models are not supported (save the outer model flattened, as the book's code builds it)")


def _history_names(node: Any) -> Iterator[str]:
    """Input layer names in argument order, from Keras 3 (`keras_history`) or tf.keras 2 ([name, i, j, {}]) nodes."""
    if isinstance(node, dict):
        history = node.get("config", {}).get("keras_history") if node.get("class_name") == "__keras_tensor__" \
            else None
        if history:
            yield history[0]
            return
        for key in ("args", "kwargs"):
            if key in node:
                yield from _history_names(node[key])
        if "args" not in node and "kwargs" not in node:
            for value in node.values():
                yield from _history_names(value)
    elif isinstance(node, list):
        if len(node) >= 3 and isinstance(node[0], str) and isinstance(node[1], int):
            yield node[0]
            return
        for item in node:
            yield from _history_names(item)


def _output_names(outputs: Any) -> Iterator[str]:
    if isinstance(outputs, list) and outputs and isinstance(outputs[0], str):
        yield outputs[0]
        return
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    for item in outputs if isinstance(outputs, list) else []:
        yield from _output_names(item)
