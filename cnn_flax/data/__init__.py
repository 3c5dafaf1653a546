"""Arrays in, batches out: datasets, their files, batching, and the preprocessing that runs in the step.

Knows nothing of models or training. `make_source(config.data)` picks the dataset from the registry in
`sources.py`; every source yields the same plain batches (uint8 images, int32 labels) in an order fixed
by (seed, epoch, split), which is what makes resume bit-exact and multi-host runs equal to single-host ones.
"""

from __future__ import annotations

from cnn_flax.data.augment.keras_affine import affine_warp, random_affine
from cnn_flax.data.augment.preprocess import make_preprocess, normalize
from cnn_flax.data.dataset import SPLITS, DatasetInfo, DataSource, epoch_order
from cnn_flax.data.on_device import OnDeviceBatches
from cnn_flax.data.registry import SOURCES, make_source, register_source

__all__ = [
    "SOURCES",
    "SPLITS",
    "DataSource",
    "DatasetInfo",
    "OnDeviceBatches",
    "affine_warp",
    "epoch_order",
    "make_preprocess",
    "make_source",
    "normalize",
    "random_affine",
    "register_source",
]
