"""MiniVGG: the deck's small VGG for CIFAR-10 (2,171,178 parameters, 0.82 accuracy in the deck).

Two stages of (CONV→ACT→BN) x 2 → POOL → DROPOUT with 32 then 64 filters, then FC512 → ACT → BN →
DROPOUT → FC. The deck puts BN after the activation here; `bn_order` switches it.
"""

import flax.linen as nn
import jax

from cnn_flax.models.batchnorm_module import BatchNormModule
from cnn_flax.models.layers import ConvModule, Flatten, MaxPool, keras_dense, norm_and_activate

STAGES = (32, 64)


class MiniVGG(BatchNormModule):
    num_classes: int = 10
    bn_order: str = "conv_act_bn"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        options = self.conv_options
        for stage, features in enumerate(STAGES, start=1):
            x = ConvModule(features, 3, name=f"block{stage}_conv1", **options)(x, train)
            x = ConvModule(features, 3, name=f"block{stage}_conv2", **options)(x, train)
            x = MaxPool(2, 2, cpu_kernels=self.cpu_kernels, name=f"block{stage}_pool")(x)
            x = nn.Dropout(0.25, deterministic=not train, name=f"block{stage}_dropout")(x)
        x = Flatten(name="flatten")(x)
        x = keras_dense(512, self.dtype, name="fc1")(x)
        x = norm_and_activate(x, order=self.bn_order, activation=self.activation, train=train, dtype=self.dtype,
                              bn_axis_name=self.bn_axis_name, cpu_kernels=self.cpu_kernels,
                              momentum=self.bn_momentum, name="fc1_bn")
        x = nn.Dropout(0.5, deterministic=not train, name="fc1_dropout")(x)
        return keras_dense(self.num_classes, self.dtype, name="predictions")(x)
