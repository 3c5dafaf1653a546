"""The deck's models in Keras 3, trained and run the way a Keras user would: `train_on_batch`, `predict_on_batch`.

The backend is TensorFlow unless KERAS_BACKEND names another before this module is imported; `compile`
keeps Keras's own `jit_compile="auto"` (XLA where Keras judges the model supports it), which the peer's
line reports. Each model is built with the layers, orders and defaults of ours (Glorot-uniform kernels,
zero biases, BatchNorm momentum 0.99 and epsilon 1e-3, TensorFlow's 'same' padding), outputs logits, and
trains with its config's SGD and L2 penalty on the kernels.
"""

import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402 - the backend is chosen by the environment before the import
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

from cnn_flax.bench.peers.deck import BN_EPSILON, BN_MOMENTUM, INCEPTION, MINI_GOOGLENET, MINIVGG_STAGES, MODELS  # noqa: E402


def _conv_module(x, features: int, kernel: int, *, strides: int = 1, padding: str = "same", act_first: bool = False,
                 l2: float = 0.0):
    regularizer = keras.regularizers.L2(l2) if l2 else None
    x = layers.Conv2D(features, kernel, strides=strides, padding=padding, kernel_regularizer=regularizer)(x)
    bn = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON)
    relu = layers.Activation("relu")
    return bn(relu(x)) if act_first else relu(bn(x))


def _minivgg(x):
    for features in MINIVGG_STAGES:  # (CONV -> RELU -> BN) x 2 -> POOL -> DROPOUT
        x = _conv_module(x, features, 3, act_first=True)
        x = _conv_module(x, features, 3, act_first=True)
        x = layers.Dropout(0.25)(layers.MaxPooling2D(2)(x))
    x = layers.Dense(512)(layers.Flatten()(x))
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON)(layers.Activation("relu")(x))
    return layers.Dropout(0.5)(x)


def _minigooglenet(x):
    x = _conv_module(x, 96, 3)
    for kind, *filters in MINI_GOOGLENET:
        if kind == "inc":
            x = layers.Concatenate()([_conv_module(x, filters[0], 1), _conv_module(x, filters[1], 3)])
        else:
            conv = _conv_module(x, filters[0], 3, strides=2, padding="valid")
            x = layers.Concatenate()([conv, layers.MaxPooling2D(3, 2)(x)])
    x = layers.Dropout(0.5)(layers.AveragePooling2D(7)(x))
    return layers.Flatten()(x)


def _deepergooglenet(x, l2: float):
    def conv(y, features, kernel):
        return _conv_module(y, features, kernel, l2=l2)

    def pool(y):
        return layers.MaxPooling2D(3, 2, padding="same")(y)

    x = pool(conv(x, 64, 5))
    x = pool(conv(conv(x, 64, 1), 192, 3))
    for stage in (("3a", "3b"), ("4a", "4b", "4c", "4d", "4e")):
        for name in stage:
            n1x1, n3x3_reduce, n3x3, n5x5_reduce, n5x5, pool_proj = INCEPTION[name]
            x = layers.Concatenate()([
                conv(x, n1x1, 1), conv(conv(x, n3x3_reduce, 1), n3x3, 3), conv(conv(x, n5x5_reduce, 1), n5x5, 5),
                conv(layers.MaxPooling2D(3, 1, padding="same")(x), pool_proj, 1)])
        x = pool(x)
    x = layers.Dropout(0.4)(layers.AveragePooling2D(4)(x))
    return layers.Flatten()(x)


def build(name: str) -> keras.Model:
    """The model `name` of the deck, with logits out, uncompiled."""
    deck = MODELS[name]
    inputs = keras.Input((deck.image_size, deck.image_size, 3))
    if name == "minivgg":
        x = _minivgg(inputs)
    elif name == "minigooglenet":
        x = _minigooglenet(inputs)
    else:
        x = _deepergooglenet(inputs, deck.l2)
    regularizer = keras.regularizers.L2(deck.l2) if deck.l2 else None
    return keras.Model(inputs, layers.Dense(deck.classes, kernel_regularizer=regularizer)(x), name=name)


class Peer:
    """One model on one random batch: `train(steps)` and `infer(steps)` return their seconds."""

    def __init__(self, name: str, batch: int, train: bool) -> None:
        keras.utils.set_random_seed(0)
        deck = MODELS[name]
        self.model = build(name)
        rng = np.random.default_rng(0)
        self.x = keras.ops.convert_to_tensor(rng.random((batch, deck.image_size, deck.image_size, 3), np.float32))
        self.y = keras.ops.convert_to_tensor(rng.integers(0, deck.classes, batch).astype(np.int32))
        if train:
            optimizer = keras.optimizers.SGD(deck.learning_rate, momentum=deck.momentum, nesterov=deck.nesterov)
            self.model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        self.params = self.model.count_params()
        self.framework = f"keras-{keras.__version__}/{keras.backend.backend()}"

    @property
    def xla(self) -> bool:
        """Whether Keras compiled the train step with XLA (its `jit_compile`, resolved once training started)."""
        return bool(getattr(self.model, "jit_compile", False))

    def train(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self.model.train_on_batch(self.x, self.y)  # returns the loss on the host: the step is done
        return time.perf_counter() - start

    def infer(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self.model.predict_on_batch(self.x)  # returns NumPy: the batch is done
        return time.perf_counter() - start
