"""Arrays in, batches out: datasets, their files, batching, and the preprocessing that runs in the step.

Knows nothing of models or training. `make_source(config.data)` picks the dataset from the registry in
`sources.py`; every source yields the same plain batches (uint8 images, int32 labels) in an order fixed
by (seed, epoch, split), which is what makes resume bit-exact and multi-host runs equal to single-host ones.

The names below are imported on first use: `prepare` decodes photos in freshly spawned processes that import
`cnn_flax.data.sources.images` (PIL and numpy), and importing this package must not cost them JAX's 1.5 s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cnn_flax.lazy import lazy_attributes

if TYPE_CHECKING:
    from cnn_flax.data.augment.keras_affine import affine_warp, random_affine
    from cnn_flax.data.augment.preprocess import make_preprocess, normalize
    from cnn_flax.data.dataset import SPLITS, DatasetInfo, DataSource, epoch_order
    from cnn_flax.data.on_device import OnDeviceBatches
    from cnn_flax.data.registry import SOURCES, make_source, register_source

_LAZY = {
    "SOURCES": "cnn_flax.data.registry",
    "SPLITS": "cnn_flax.data.dataset",
    "DataSource": "cnn_flax.data.dataset",
    "DatasetInfo": "cnn_flax.data.dataset",
    "OnDeviceBatches": "cnn_flax.data.on_device",
    "affine_warp": "cnn_flax.data.augment.keras_affine",
    "epoch_order": "cnn_flax.data.dataset",
    "make_preprocess": "cnn_flax.data.augment.preprocess",
    "make_source": "cnn_flax.data.registry",
    "normalize": "cnn_flax.data.augment.preprocess",
    "random_affine": "cnn_flax.data.augment.keras_affine",
    "register_source": "cnn_flax.data.registry",
}
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
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
