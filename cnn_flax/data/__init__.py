"""Arrays in, batches out: datasets, their files, batching, and the preprocessing that runs in the step.

Knows nothing of models or training. `make_source(config.data)` picks the dataset; every source yields
the same plain batches (uint8 images, int32 labels) in an order fixed by (seed, epoch, split), which is
what makes resume bit-exact and multi-host runs equal to single-host ones.
"""

from __future__ import annotations

from cnn_flax.data.augment import affine_warp, random_affine
from cnn_flax.data.core import SPLITS, DatasetInfo, DataSource, epoch_order
from cnn_flax.data.on_device import OnDeviceBatches
from cnn_flax.data.preprocess import make_preprocess, normalize
from cnn_flax.errors import UserError

NAMES = ("digits", "cifar10", "tiny_imagenet", "imagenet2012", "folder")
_NATIVE_SIZE = {"cifar10": 32, "tiny_imagenet": 64}

__all__ = [
    "NAMES",
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
]


def make_source(data_config) -> DataSource:
    """The DataSource named by `data_config.name`; building it reads no data."""
    name = data_config.get("name", "")
    prefetch = int(data_config.get("prefetch", 2))
    split_seed = int(data_config.get("split_seed", 42))
    image_size = int(data_config.get("image_size", 0) or 0)
    data_dir = data_config.get("dir", "") or ""
    if name in _NATIVE_SIZE and image_size not in (0, _NATIVE_SIZE[name]):
        raise UserError(
            f"data.image_size={image_size} but {name} images are {_NATIVE_SIZE[name]}x{_NATIVE_SIZE[name]}; "
            f"set data.image_size={_NATIVE_SIZE[name]}"
        )
    if name == "digits":
        from cnn_flax.data.digits import DigitsSource

        fraction = float(data_config.get("digits_test_fraction", 0.25))
        return DigitsSource(image_size or 32, fraction, split_seed, prefetch)
    if name == "cifar10":
        from cnn_flax.data.cifar10 import Cifar10Source

        return Cifar10Source(data_dir, prefetch)
    if name == "tiny_imagenet":
        from cnn_flax.data.hdf5_source import HDF5Source
        from cnn_flax.data.tiny_imagenet import IMAGE_SHAPE, build_tiny_imagenet

        root = data_config.get("root", "") or ""
        test_per_class = int(data_config.get("test_per_class", 50))

        def build(overwrite: bool) -> list[str]:
            return build_tiny_imagenet(
                root, data_dir, test_per_class=test_per_class, split_seed=split_seed, overwrite=overwrite
            )

        return HDF5Source(
            data_dir,
            IMAGE_SHAPE,
            build=build,
            prefetch=prefetch,
            window_mb=float(data_config.get("read_window_mb", 64)),
        )
    if name == "folder":  # your own images: one subfolder per class
        from cnn_flax.data.folder import FolderSource

        return FolderSource(
            data_config.root,
            data_dir,
            image_size=image_size,
            resize=data_config.resize,
            val_fraction=float(data_config.val_fraction),
            test_fraction=float(data_config.test_fraction),
            split_seed=split_seed,
            prefetch=prefetch,
            window_mb=float(data_config.get("read_window_mb", 64)),
        )
    if name == "imagenet2012":
        from cnn_flax.data.imagenet import ImageNetSource

        return ImageNetSource(
            data_dir,
            manual_dir=data_config.get("manual_dir", "") or "",
            image_size=image_size or 224,
            resize_size=int(data_config.get("resize_size", 0) or 0),
            shuffle_buffer=int(data_config.get("shuffle_buffer", 10_000)),
            prefetch=prefetch,
        )
    if name == "synthetic":  # random images of the configured shape: --mode=benchmark without the data
        from cnn_flax.data.synthetic import SyntheticSource

        return SyntheticSource.from_config(data_config)
    raise UserError(f"data.name={name!r} is unknown; use one of {', '.join(NAMES)}")
