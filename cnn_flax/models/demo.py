"""The deck's 1x1-convolution demo: 32 5x5 filters on a 28x28x192 input, directly or after a 1x1 squeeze.

Direct: 153,632 parameters. With a 16-filter 1x1 bottleneck first: 15,920 — ten times fewer for the same
24x24x32 output, which is the whole argument for 1x1 convolutions in Inception.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_flax.errors import UserError
from cnn_flax.models.layers import activation_fn, keras_conv

VARIANTS = ("direct", "bottleneck")


class Conv1x1Demo(nn.Module):
    variant: str = "direct"
    activation: str = "relu"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.variant not in VARIANTS:
            raise UserError(f"model.variant={self.variant!r} is not a 1x1 demo; use one of {', '.join(VARIANTS)}")
        act = activation_fn(self.activation)
        if self.variant == "bottleneck":
            x = act(keras_conv(16, 1, dtype=self.dtype, name="conv1x1")(x))
        return act(keras_conv(32, 5, padding="VALID", dtype=self.dtype, name="conv5x5")(x))
