"""The settings every BatchNorm network of the deck takes, declared once.

MiniVGG, MiniGoogLeNet and DeeperGoogLeNet are built from `ConvModule`s that all need the same five
choices: where BatchNorm sits, the activation, the compute dtype, the device axis BatchNorm averages
over under `jax.pmap`, and whether pooling and BatchNorm take `cpu_kernels.py`. The last three fields
belong to the code that runs the model, not to its config
(`create_model` sets them).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class BatchNormModule(nn.Module, kw_only=True):
    """Base of the BatchNorm networks and blocks; a subclass may change a default (MiniVGG: BatchNorm after
    the activation)."""

    bn_order: str = "conv_bn_act"
    activation: str = "relu"
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None  # set for jax.pmap by the code that runs the model
    cpu_kernels: bool = False  # set for XLA's CPU backend by the code that runs the model

    @property
    def conv_options(self) -> dict[str, Any]:
        """The keyword arguments of each `ConvModule` (and of the blocks made of them)."""
        return dict(bn_order=self.bn_order, activation=self.activation, dtype=self.dtype,
                    bn_axis_name=self.bn_axis_name, cpu_kernels=self.cpu_kernels)
