"""The settings every BatchNorm network of the deck and each of its blocks take, declared once.

MiniVGG, MiniGoogLeNet and DeeperGoogLeNet, and the `ConvModule`s and inception blocks they are built
from, all need the same choices: where BatchNorm sits, how fast its running statistics follow the
batches, the activation, the compute dtype, the device axis BatchNorm averages over under `jax.pmap`, and
whether pooling and BatchNorm take `cpu_kernels.py`. The last three belong to the code that runs the
model, not to its config (`create_model` sets them). The fields are keyword-only, so each subclass keeps
its own fields (a block's filter counts, a network's class count) first and positional.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class BatchNormModule(nn.Module, kw_only=True):
    """Base of the BatchNorm networks and blocks; a subclass may change a default (MiniVGG: BatchNorm after
    the activation)."""

    bn_order: str = "conv_bn_act"
    # Keras's 0.99: the running statistics average about the last 100 steps. A shorter memory (0.9) follows
    # statistics that move fast, e.g. in bfloat16 or on a small dataset, so inference matches training sooner.
    bn_momentum: float = 0.99
    activation: str = "relu"
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None  # set for jax.pmap by the code that runs the model
    cpu_kernels: bool = False  # set for XLA's CPU backend by the code that runs the model

    @property
    def conv_options(self) -> dict[str, Any]:
        """The keyword arguments of each `ConvModule` (and of the blocks made of them)."""
        return dict(bn_order=self.bn_order, bn_momentum=self.bn_momentum, activation=self.activation,
                    dtype=self.dtype, bn_axis_name=self.bn_axis_name, cpu_kernels=self.cpu_kernels)
