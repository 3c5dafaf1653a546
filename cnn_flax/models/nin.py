"""Network in Network (Lin et al.) for CIFAR-10: three mlpconv blocks and global average pooling.

The deck's motivation for 1x1 convolutions: each mlpconv is a spatial conv followed by two 1x1 convs
(a small MLP slid over the image), and the last block emits one map per class, so no dense layer is
needed; as in the paper, the class maps pass a ReLU before the average.
Filters 192-160-96 / 192-192-192 / 192-192-10, as in the paper's CIFAR-10 model.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_flax.models.layers import AvgPool, GlobalAvgPool, MaxPool, activation_fn, keras_conv

# (kernel of the spatial conv, (filters of conv, 1x1, 1x1)), then the pooling after the block.
MLPCONV_BLOCKS = (
    (5, (192, 160, 96), "max"),
    (5, (192, 192, 192), "avg"),
    (3, (192, 192, None), None),
)


class NiN(nn.Module):
    num_classes: int = 10
    activation: str = "relu"
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32
    cpu_kernels: bool = False  # set for XLA's CPU backend by the code that runs the model

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        act = activation_fn(self.activation)
        for block, (kernel, filters, pool) in enumerate(MLPCONV_BLOCKS, start=1):
            filters = tuple(self.num_classes if f is None else f for f in filters)
            conv_options = dict(dtype=self.dtype, cpu_kernels=self.cpu_kernels)
            x = act(keras_conv(filters[0], kernel, name=f"mlpconv{block}_conv", **conv_options)(x))
            x = act(keras_conv(filters[1], 1, name=f"mlpconv{block}_cccp1", **conv_options)(x))
            x = act(keras_conv(filters[2], 1, name=f"mlpconv{block}_cccp2", **conv_options)(x))
            if pool is None:
                break
            name = f"mlpconv{block}_pool"
            if pool == "max":
                x = MaxPool(3, 2, "SAME", cpu_kernels=self.cpu_kernels, name=name)(x)
            else:
                x = AvgPool(3, 2, "SAME", name=name)(x)
            x = nn.Dropout(self.dropout_rate, deterministic=not train, name=f"mlpconv{block}_dropout")(x)
        return GlobalAvgPool(name="global_average_pooling")(x)
