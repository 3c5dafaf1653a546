"""The deck's models as plain tables, for the Keras and PyTorch peers; they import nothing.

The tables are cnn_flax.models' own (a test compares them, and each peer's parameter count with ours), kept
here because importing cnn_flax.models would load Flax and JAX into a peer's process and its memory.
"""

import dataclasses

# MiniGoogLeNet (Zhang et al.): a conv_module of 96, then ('inc', #1x1, #3x3) and ('down', #3x3) modules.
MINI_GOOGLENET = (
    ("inc", 32, 32), ("inc", 32, 48), ("down", 80),
    ("inc", 112, 48), ("inc", 96, 64), ("inc", 80, 80), ("inc", 48, 96), ("down", 96),
    ("inc", 176, 160), ("inc", 176, 160),
)
# DeeperGoogLeNet's inception modules: (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj).
INCEPTION = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
}
MINIVGG_STAGES = (32, 64)
BN_MOMENTUM, BN_EPSILON = 0.99, 1e-3  # Keras's defaults, as ours


@dataclasses.dataclass(frozen=True)
class Deck:
    """A model with the input, optimizer and parameter count of its config (configs/<config>.py)."""

    image_size: int
    classes: int
    learning_rate: float
    momentum: float
    nesterov: bool
    l2: float  # Keras's l2() on every kernel, as optimizer.l2
    params: int  # Keras's count: weights, biases and BatchNorm's moving statistics


MODELS = {
    "minivgg": Deck(32, 10, 0.01, 0.9, True, 0.0, 2_171_178),  # configs/minivgg_cifar10.py
    "minigooglenet": Deck(32, 10, 5e-3, 0.9, False, 0.0, 1_656_250),  # configs/minigooglenet_cifar10.py
    "deepergooglenet": Deck(64, 200, 1e-3, 0.9, False, 2e-4, 3_667_976),  # configs/deeper_sgd_baseline.py
}
