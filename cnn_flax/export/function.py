"""The one function every export format is written from: uint8 images in, probabilities and top-5 out.

A shipped model must not depend on code that knows the dataset, so the config's normalisation (with the
training set's mean image or mean colour as constants) is part of the function, and it runs the model
in inference mode: BatchNorm uses its running statistics, dropout is off, GoogLeNet's auxiliary heads are
not called and their weights are left out. It always computes in float32: a run trained with
`half_precision` (bfloat16 activations, float32 weights) exports the same weights as a float32 graph,
which every runtime supports and which agrees with the Flax model in float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn_flax.data.augment.preprocess import normalize
from cnn_flax.data.dataset import DatasetInfo

TOP_K = 5
# Only these collections hold what inference reads; optimizer state and EMA copies are not shipped.
INFERENCE_COLLECTIONS = ("params", "batch_stats")


def inference_variables(model: nn.Module, variables: Mapping[str, Any],
                        input_shape: tuple[int, int, int]) -> dict[str, Any]:
    """The subset of `variables` an inference pass reads, as numpy float32 arrays.

    Which weights that is comes from initialising the model in inference mode (shapes only), so parts
    that only training calls (GoogLeNet's auxiliary heads) drop out whatever their names.
    """
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *input_shape), jnp.float32),
                                               train=False))

    def pick(wanted: Any, given: Any) -> Any:
        if isinstance(wanted, Mapping):
            return {key: pick(value, given[key]) for key, value in wanted.items()}
        return np.asarray(given, np.float32)

    return {name: pick(shapes[name], variables[name]) for name in INFERENCE_COLLECTIONS if name in shapes}


@dataclasses.dataclass(frozen=True)
class InferenceFunction:
    """The model, its inference weights and its input contract; `outputs(variables, images)` is pure."""

    model: nn.Module
    variables: dict[str, Any]
    input_shape: tuple[int, int, int]
    normalization: str
    info: DatasetInfo | None  # the training data's means, for 'mean_rgb' and 'mean_image'

    def probabilities(self, variables: Mapping[str, Any], images: jax.Array) -> jax.Array:
        x = normalize(images, self.normalization, self.info)
        logits = self.model.apply(variables, x, train=False)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    def outputs(self, variables: Mapping[str, Any], images: jax.Array) -> dict[str, jax.Array]:
        """probabilities [N, C] float32 and top5 [N, min(5, C)] int32: a stable sort, so ties go to the lower
        class index, as TensorFlow's `top_k` (which the SavedModel uses) orders them."""
        probs = self.probabilities(variables, images)
        k = min(TOP_K, probs.shape[-1])
        top = jnp.argsort(-probs, axis=-1, stable=True)[:, :k]
        return {"probabilities": probs, "top5": top.astype(jnp.int32)}

    @property
    def num_classes(self) -> int:
        return int(jax.eval_shape(self.probabilities, self.variables, self.image_spec(1)).shape[-1])

    def image_spec(self, batch: Any) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct((batch, *self.input_shape), jnp.uint8)

    def bound_outputs(self) -> Callable[[jax.Array], dict[str, jax.Array]]:
        return lambda images: self.outputs(self.variables, images)

    def bound_probabilities(self) -> Callable[[jax.Array], jax.Array]:
        return lambda images: self.probabilities(self.variables, images)


def build_inference_function(model: nn.Module, variables: Mapping[str, Any], input_shape: tuple[int, int, int],
                             normalization: str, info: DatasetInfo | None) -> InferenceFunction:
    """`model` must be built in float32 (see the module docstring); `variables` may be a training state's."""
    shape = tuple(int(v) for v in input_shape)
    return InferenceFunction(model, inference_variables(model, variables, shape), shape, normalization, info)
