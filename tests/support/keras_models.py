"""The deck's networks written in Keras the way the book's code writes them, for the Keras-file tests.

Functional code with a conv_module (Conv2D → BatchNormalization → Activation, or Conv2D → Activation →
BatchNormalization), inception modules concatenating their branches left to right, Sequential for
MiniVGG as the book has it, and Keras's automatic layer names (which the loader must not rely on).
GoogLeNet and VGG, which the book does not write, follow the papers as our models do; GoogLeNet's LRN
is tf.nn.local_response_normalization in a Lambda layer with Caffe's constants.
`dropout=False` builds the same weights without dropout, so a training step is deterministic. Each
builder takes the Keras module `k`: keras (Keras 3), or tf_keras for tf.keras 2 files.
"""

import types

from cnn_flax.models.googlenet import INCEPTION, MINI_GOOGLENET
from cnn_flax.models.nin import MLPCONV_BLOCKS
from cnn_flax.models.vgg import VGG_TABLE


class _Builder:
    def __init__(self, k: types.ModuleType, bn_order: str = "conv_bn_act", activation: str = "relu",
                 dropout: bool = True) -> None:
        self.k, self.L = k, k.layers
        self.bn_order, self.activation, self.dropout = bn_order, activation, dropout

    def drop(self, rate: float):
        return self.L.Dropout(rate if self.dropout else 0.0)

    def norm_act(self) -> list:
        act, bn = self.L.Activation(self.activation), self.L.BatchNormalization()
        return [bn, act] if self.bn_order == "conv_bn_act" else [act, bn]

    def conv_module(self, x, filters: int, kernel: int, strides: int = 1, padding: str = "same"):
        x = self.L.Conv2D(filters, kernel, strides=strides, padding=padding)(x)
        for layer in self.norm_act():
            x = layer(x)
        return x

    def inception_module(self, x, filters):
        n1x1, n3x3_reduce, n3x3, n5x5_reduce, n5x5, pool_proj = filters
        first = self.conv_module(x, n1x1, 1)
        second = self.conv_module(self.conv_module(x, n3x3_reduce, 1), n3x3, 3)
        third = self.conv_module(self.conv_module(x, n5x5_reduce, 1), n5x5, 5)
        fourth = self.conv_module(self.L.MaxPooling2D(3, 1, padding="same")(x), pool_proj, 1)
        return self.L.concatenate([first, second, third, fourth])


def minivgg(k, input_shape, classes: int, bn_order: str = "conv_act_bn", activation: str = "relu",
            dropout: bool = True):
    """The book's MiniVGGNet.build: Sequential, CONV => RELU => BN twice per block, then FC 512."""
    b = _Builder(k, bn_order, activation, dropout)
    model = k.Sequential([k.Input(input_shape)])
    for filters in (32, 64):
        for _ in range(2):
            model.add(b.L.Conv2D(filters, (3, 3), padding="same"))
            for layer in b.norm_act():
                model.add(layer)
        model.add(b.L.MaxPooling2D(pool_size=(2, 2)))
        model.add(b.drop(0.25))
    model.add(b.L.Flatten())
    model.add(b.L.Dense(512))
    for layer in b.norm_act():
        model.add(layer)
    model.add(b.drop(0.5))
    model.add(b.L.Dense(classes))
    model.add(b.L.Activation("softmax"))
    return model


def minigooglenet(k, input_shape, classes: int, bn_order: str = "conv_bn_act", activation: str = "relu",
                  dropout: bool = True):
    """The book's MiniGoogLeNet.build: inception = concatenate([1x1, 3x3]), downsample = [3x3/2, pool]."""
    b = _Builder(k, bn_order, activation, dropout)
    inputs = k.Input(input_shape)
    x = b.conv_module(inputs, 96, 3)
    for kind, *filters in MINI_GOOGLENET:
        if kind == "inc":
            x = b.L.concatenate([b.conv_module(x, filters[0], 1), b.conv_module(x, filters[1], 3)])
        else:
            x = b.L.concatenate([b.conv_module(x, filters[0], 3, 2, "valid"), b.L.MaxPooling2D(3, 2)(x)])
    x = b.drop(0.5)(b.L.AveragePooling2D(7)(x))
    x = b.L.Dense(classes)(b.L.Flatten()(x))
    return k.Model(inputs, b.L.Activation("softmax")(x))


def deepergooglenet(k, input_shape, classes: int, stage4: bool = True, bn_order: str = "conv_bn_act",
                    activation: str = "relu", dropout: bool = True):
    """The book's DeeperGoogLeNet.build (64x64 Tiny ImageNet), 4a-4e optional as in the deck's experiments."""
    b = _Builder(k, bn_order, activation, dropout)
    inputs = k.Input(input_shape)
    x = b.L.MaxPooling2D(3, 2, padding="same")(b.conv_module(inputs, 64, 5))
    x = b.conv_module(b.conv_module(x, 64, 1), 192, 3)
    x = b.L.MaxPooling2D(3, 2, padding="same")(x)
    x = b.inception_module(b.inception_module(x, INCEPTION["3a"]), INCEPTION["3b"])
    x = b.L.MaxPooling2D(3, 2, padding="same")(x)
    if stage4:
        for name in ("4a", "4b", "4c", "4d", "4e"):
            x = b.inception_module(x, INCEPTION[name])
    x = b.L.MaxPooling2D(3, 2, padding="same")(x)
    x = b.drop(0.4)(b.L.AveragePooling2D(4)(x))
    x = b.L.Dense(classes)(b.L.Flatten()(x))
    return k.Model(inputs, b.L.Activation("softmax")(x))


def _lrn(x):
    import tensorflow as tf

    return tf.nn.local_response_normalization(x, depth_radius=2, bias=1.0, alpha=1e-4 / 5, beta=0.75)


def googlenet(k, classes: int, aux_heads: bool = True, dropout: bool = True, input_size: int = 224):
    """The paper's GoogLeNet (no BatchNorm); the auxiliary heads after 4a and 4d are further outputs."""
    b = _Builder(k, dropout=dropout)
    L = b.L

    def conv(x, filters, kernel, strides=1):
        return L.Conv2D(filters, kernel, strides=strides, padding="same", activation="relu")(x)

    def inception(x, filters):
        n1x1, n3r, n3, n5r, n5, proj = filters
        return L.concatenate([conv(x, n1x1, 1), conv(conv(x, n3r, 1), n3, 3), conv(conv(x, n5r, 1), n5, 5),
                              conv(L.MaxPooling2D(3, 1, padding="same")(x), proj, 1)])

    inputs = k.Input((input_size, input_size, 3))
    x = L.Lambda(_lrn)(L.MaxPooling2D(3, 2, padding="same")(conv(inputs, 64, 7, 2)))
    x = L.Lambda(_lrn)(conv(conv(x, 64, 1), 192, 3))
    x = L.MaxPooling2D(3, 2, padding="same")(x)
    x = L.MaxPooling2D(3, 2, padding="same")(inception(inception(x, INCEPTION["3a"]), INCEPTION["3b"]))
    aux = []
    for name in ("4a", "4b", "4c", "4d", "4e"):
        x = inception(x, INCEPTION[name])
        if aux_heads and name in ("4a", "4d"):
            head = conv(L.AveragePooling2D(5, 3)(x), 128, 1)
            head = b.drop(0.7)(L.Dense(1024, activation="relu")(L.Flatten()(head)))
            aux.append(L.Dense(classes)(head))
    x = L.MaxPooling2D(3, 2, padding="same")(x)
    x = inception(inception(x, INCEPTION["5a"]), INCEPTION["5b"])
    x = b.drop(0.4)(L.AveragePooling2D(7, 1)(x))
    logits = L.Dense(classes)(L.Flatten()(x))
    return k.Model(inputs, [logits, *aux] if aux else logits)


def nin(k, input_shape, classes: int, dropout: bool = True):
    """Network in Network: three mlpconv blocks (conv, 1x1, 1x1, all ReLU), then global average pooling."""
    b = _Builder(k, dropout=dropout)
    inputs = k.Input(input_shape)
    x = inputs
    for kernel, filters, pool in MLPCONV_BLOCKS:
        filters = tuple(classes if f is None else f for f in filters)
        x = b.L.Conv2D(filters[0], kernel, padding="same", activation="relu")(x)
        x = b.L.Conv2D(filters[1], 1, activation="relu")(x)
        x = b.L.Conv2D(filters[2], 1, activation="relu")(x)
        if pool is not None:
            pool_layer = b.L.MaxPooling2D if pool == "max" else b.L.AveragePooling2D
            x = b.drop(0.5)(pool_layer(3, 2, padding="same")(x))
    return k.Model(inputs, b.L.GlobalAveragePooling2D()(x))


def vgg(k, variant: str, input_shape, classes: int = 1000, include_top: bool = True, dropout: bool = True):
    """One column of VGG's table (not A-LRN), with or without the classifier fc1, fc2, predictions."""
    b = _Builder(k, dropout=dropout)
    inputs = k.Input(input_shape)
    x = inputs
    for layer in VGG_TABLE[variant]:
        if layer == "pool":
            x = b.L.MaxPooling2D(2, 2)(x)
        else:
            kernel, filters = (int(v) for v in layer.removeprefix("conv").split("-"))
            x = b.L.Conv2D(filters, kernel, padding="same", activation="relu")(x)
    if not include_top:
        return k.Model(inputs, x)
    x = b.L.Flatten()(x)
    for _ in range(2):
        x = b.drop(0.5)(b.L.Dense(4096, activation="relu")(x))
    return k.Model(inputs, b.L.Dense(classes)(x))
