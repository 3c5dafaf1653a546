"""GoogLeNet (Szegedy et al.), DeeperGoogLeNet (its Tiny ImageNet cousin) and MiniGoogLeNet (Zhang et al.).

INCEPTION holds the paper's table, one row per inception module with its columns (#1x1, #3x3 reduce,
#3x3, #5x5 reduce, #5x5, pool proj). GoogLeNet and DeeperGoogLeNet both read it; each `__call__` then
follows its table from top to bottom.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_flax.models.batchnorm_module import BatchNormModule
from cnn_flax.models.layers import (
    AvgPool,
    ConvModule,
    Downsample,
    Flatten,
    Inception,
    LocalResponseNorm,
    MaxPool,
    SmallInception,
    activation_fn,
    keras_conv,
    keras_dense,
)

INCEPTION: dict[str, tuple[int, int, int, int, int, int]] = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}
AUX_AFTER = ("4a", "4d")


def caffe_lrn(name: str) -> LocalResponseNorm:
    """GoogLeNet's LRN as Caffe defines it: alpha is divided by the 5-channel window, bias 1."""
    return LocalResponseNorm(size=5, alpha=1e-4 / 5, beta=0.75, bias=1.0, name=name)


def pool_3x3s2(cpu_kernels: bool, name: str) -> MaxPool:
    """The 3x3/2 'same' max pool that halves the feature map between GoogLeNet's stages."""
    return MaxPool(3, 2, "SAME", cpu_kernels=cpu_kernels, name=name)


class AuxiliaryHead(nn.Module):
    """The paper's side classifier: avgpool 5x5/3 → 1x1 conv 128 → FC 1024 → dropout 70% → linear."""

    num_classes: int
    activation: str = "relu"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        act = activation_fn(self.activation)
        x = AvgPool(5, 3, name="pool")(x)
        x = act(keras_conv(128, 1, dtype=self.dtype, name="conv")(x))
        x = act(keras_dense(1024, self.dtype, name="fc")(Flatten(name="flatten")(x)))
        x = nn.Dropout(0.7, deterministic=not train, name="dropout")(x)
        return keras_dense(self.num_classes, self.dtype, name="logits")(x)


class GoogLeNet(nn.Module):
    """The ILSVRC-2014 network as tabled in the paper: no BatchNorm, LRN in the stem.

    In training with `aux_heads` it returns (logits, aux_logits_4a, aux_logits_4d), and the loss is
    loss + 0.3·aux0 + 0.3·aux1; in inference the heads are skipped and only the logits come back.
    """

    num_classes: int = 1000
    aux_heads: bool = True
    activation: str = "relu"
    dtype: Any = jnp.float32
    cpu_kernels: bool = False  # set for XLA's CPU backend by the code that runs the model

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array | tuple[jax.Array, ...]:
        def conv(features: int, kernel: int, strides: int, name: str) -> ConvModule:
            return ConvModule(features, kernel, strides, batch_norm=False, activation=self.activation,
                              dtype=self.dtype, name=name)

        def inception(name: str) -> Inception:
            return Inception(INCEPTION[name], batch_norm=False, activation=self.activation, dtype=self.dtype,
                             cpu_kernels=self.cpu_kernels, name=f"inception_{name}")

        x = conv(64, 7, 2, "conv1_7x7")(x)
        x = pool_3x3s2(self.cpu_kernels, "pool1")(x)
        x = caffe_lrn("lrn1")(x)
        x = conv(64, 1, 1, "conv2_3x3_reduce")(x)
        x = conv(192, 3, 1, "conv2_3x3")(x)
        x = caffe_lrn("lrn2")(x)
        x = pool_3x3s2(self.cpu_kernels, "pool2")(x)
        x = inception("3a")(x)
        x = inception("3b")(x)
        x = pool_3x3s2(self.cpu_kernels, "pool3")(x)
        aux_logits = []
        for name in ("4a", "4b", "4c", "4d", "4e"):
            x = inception(name)(x)
            if self.aux_heads and train and name in AUX_AFTER:
                head = AuxiliaryHead(self.num_classes, self.activation, self.dtype, name=f"aux_{name}")
                aux_logits.append(head(x, train))
        x = pool_3x3s2(self.cpu_kernels, "pool4")(x)
        x = inception("5a")(x)
        x = inception("5b")(x)
        x = AvgPool(7, 1, name="avg_pool")(x)
        x = nn.Dropout(0.4, deterministic=not train, name="dropout")(x)
        logits = keras_dense(self.num_classes, self.dtype, name="logits")(Flatten(name="flatten")(x))
        return (logits, *aux_logits) if aux_logits else logits


class DeeperGoogLeNet(BatchNormModule):
    """GoogLeNet adapted to 64x64 Tiny ImageNet: conv 5x5/1 stem, BatchNorm in every conv_module.

    Spatial sizes 64 → 32 → 16 → 8 → 4 → 1. `stage4=False` removes inception 4a–4e (the deck's
    experiments 1 and 2). The L2 penalty on kernels is the optimizer's business (`optimizer.l2`).
    """

    num_classes: int = 200
    stage4: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        options = self.conv_options
        x = ConvModule(64, 5, name="conv1_5x5", **options)(x, train)
        x = pool_3x3s2(self.cpu_kernels, "pool1")(x)
        x = ConvModule(64, 1, name="conv2_3x3_reduce", **options)(x, train)
        x = ConvModule(192, 3, name="conv2_3x3", **options)(x, train)
        x = pool_3x3s2(self.cpu_kernels, "pool2")(x)
        for name in ("3a", "3b"):
            x = Inception(INCEPTION[name], name=f"inception_{name}", **options)(x, train)
        x = pool_3x3s2(self.cpu_kernels, "pool3")(x)
        if self.stage4:
            for name in ("4a", "4b", "4c", "4d", "4e"):
                x = Inception(INCEPTION[name], name=f"inception_{name}", **options)(x, train)
        x = pool_3x3s2(self.cpu_kernels, "pool4")(x)
        x = AvgPool(4, 1, name="avg_pool")(x)
        x = nn.Dropout(0.4, deterministic=not train, name="dropout")(x)
        return keras_dense(self.num_classes, self.dtype, name="logits")(Flatten(name="flatten")(x))


# conv_module 96 first; then ('inc', #1x1, #3x3) and ('down', #3x3) modules as in Zhang et al.'s figure.
MINI_GOOGLENET = (
    ("inc", 32, 32), ("inc", 32, 48), ("down", 80),
    ("inc", 112, 48), ("inc", 96, 64), ("inc", 80, 80), ("inc", 48, 96), ("down", 96),
    ("inc", 176, 160), ("inc", 176, 160),
)


class MiniGoogLeNet(BatchNormModule):
    """Inception-small for CIFAR-10 (1,656,250 parameters, 0.90 accuracy in the deck): 32 → 15 → 7 → 1."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        options = self.conv_options
        x = ConvModule(96, 3, name="conv1", **options)(x, train)
        inception, downsample = 0, 0
        for kind, *filters in MINI_GOOGLENET:
            if kind == "inc":
                inception += 1
                x = SmallInception(*filters, name=f"inception{inception}", **options)(x, train)
            else:
                downsample += 1
                x = Downsample(*filters, name=f"downsample{downsample}", **options)(x, train)
        x = AvgPool(7, 1, name="avg_pool")(x)
        x = nn.Dropout(0.5, deterministic=not train, name="dropout")(x)
        return keras_dense(self.num_classes, self.dtype, name="logits")(Flatten(name="flatten")(x))
