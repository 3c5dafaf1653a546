"""VGG configurations A, A-LRN, B, C, D (VGG16) and E (VGG19), written as the paper's Table 1.

Layer names follow keras.applications (block1_conv1 … block5_pool, flatten, fc1, fc2, predictions) so
that Keras's published weight files map onto these parameters one to one. Each column of the table is a
list of 'convK-F' / 'LRN' / 'pool' entries; the module walks it top to bottom.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_flax.errors import UserError
from cnn_flax.models.layers import (
    Flatten,
    GlobalAvgPool,
    GlobalMaxPool,
    LocalResponseNorm,
    MaxPool,
    activation_fn,
    keras_conv,
    keras_dense,
)

_BLOCK3_A = ["conv3-256", "conv3-256", "pool"]
_BLOCK45_A = ["conv3-512", "conv3-512", "pool"]

VGG_TABLE: dict[str, list[str]] = {
    "A": ["conv3-64", "pool", "conv3-128", "pool", *_BLOCK3_A, *_BLOCK45_A, *_BLOCK45_A],
    "A-LRN": ["conv3-64", "LRN", "pool", "conv3-128", "pool", *_BLOCK3_A, *_BLOCK45_A, *_BLOCK45_A],
    "B": ["conv3-64", "conv3-64", "pool", "conv3-128", "conv3-128", "pool", *_BLOCK3_A, *_BLOCK45_A,
          *_BLOCK45_A],
    "C": ["conv3-64", "conv3-64", "pool", "conv3-128", "conv3-128", "pool",
          "conv3-256", "conv3-256", "conv1-256", "pool",
          "conv3-512", "conv3-512", "conv1-512", "pool",
          "conv3-512", "conv3-512", "conv1-512", "pool"],
    "D": ["conv3-64", "conv3-64", "pool", "conv3-128", "conv3-128", "pool",
          "conv3-256", "conv3-256", "conv3-256", "pool",
          "conv3-512", "conv3-512", "conv3-512", "pool",
          "conv3-512", "conv3-512", "conv3-512", "pool"],
    "E": ["conv3-64", "conv3-64", "pool", "conv3-128", "conv3-128", "pool",
          "conv3-256", "conv3-256", "conv3-256", "conv3-256", "pool",
          "conv3-512", "conv3-512", "conv3-512", "conv3-512", "pool",
          "conv3-512", "conv3-512", "conv3-512", "conv3-512", "pool"],
}
POOLINGS = (None, "avg", "max")


class VGG(nn.Module):
    """One column of VGG's table; `include_top=False` gives the convolutional features (Keras-style)."""

    variant: str = "D"
    num_classes: int = 1000
    include_top: bool = True
    pooling: str | None = None
    dropout_rate: float = 0.5
    activation: str = "relu"
    dtype: Any = jnp.float32
    cpu_kernels: bool = False  # set for XLA's CPU backend by the code that runs the model

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.variant not in VGG_TABLE:
            raise UserError(f"model.variant={self.variant!r} is not a VGG configuration; use one of "
                            f"{', '.join(VGG_TABLE)}")
        if self.pooling not in POOLINGS:
            raise UserError(f"model.pooling={self.pooling!r} is not known; use one of None, 'avg', 'max'")
        act = activation_fn(self.activation)
        block, conv_in_block = 1, 0
        for layer in VGG_TABLE[self.variant]:
            if layer == "pool":
                x = MaxPool(2, 2, cpu_kernels=self.cpu_kernels, name=f"block{block}_pool")(x)
                block, conv_in_block = block + 1, 0
            elif layer == "LRN":
                x = LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, bias=2.0, name=f"block{block}_lrn")(x)
            else:
                kernel, features = (int(v) for v in layer.removeprefix("conv").split("-"))
                conv_in_block += 1
                x = act(keras_conv(features, kernel, dtype=self.dtype, name=f"block{block}_conv{conv_in_block}",
                                   cpu_kernels=self.cpu_kernels)(x))
        if self.include_top:
            x = Flatten(name="flatten")(x)
            for name in ("fc1", "fc2"):
                x = act(keras_dense(4096, self.dtype, name=name)(x))
                x = nn.Dropout(self.dropout_rate, deterministic=not train, name=f"{name}_dropout")(x)
            return keras_dense(self.num_classes, self.dtype, name="predictions")(x)
        if self.pooling == "avg":
            return GlobalAvgPool(name="global_average_pooling")(x)
        if self.pooling == "max":
            return GlobalMaxPool(name="global_max_pooling")(x)
        return x
