"""The datasets `config.data.name` can name, each registered with the `config.data` keys it reads.

`config.data` is one flat section holding every dataset's keys (so each can be set from the command
line), with its defaults in one place, `cnn_flax/defaults.py::base()`. A key the chosen dataset does not
read, set to anything but its default, is an error naming the keys that dataset does read, rather
than silently ignored. Adding a dataset is one decorated builder here:

    @register_source("name", keys=("dir", "root"))
    def _name(data: ml_collections.ConfigDict) -> DataSource:
        from cnn_flax.data.name import NameSource   # sources import their readers lazily
        return NameSource(data.dir, data.root, prefetch=data.prefetch)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from cnn_flax.data.dataset import DataSource
from cnn_flax.defaults import base_data_config, with_defaults
from cnn_flax.errors import UserError

# Read for every dataset: by the source, the preprocessing in the step, or the orchestration.
SHARED_KEYS = ("name", "image_size", "normalize", "augment", "on_device", "prefetch")


@dataclasses.dataclass(frozen=True)
class SourceEntry:
    build: Callable[[ml_collections.ConfigDict], DataSource]
    keys: tuple[str, ...] | None  # besides SHARED_KEYS; None: stands in for any dataset and reads only those
    # Facts known without reading the data, so --mode=summary can size the model and print the rate plan:
    classes: int | None = None  # the class count (None: read from the data, e.g. a photo folder)
    train_size: int | None = None  # train-split images
    preparable: bool = False  # --mode=prepare builds or downloads its files


SOURCES: dict[str, SourceEntry] = {}


def register_source(name: str, keys: tuple[str, ...] | None, *, classes: int | None = None,
                    train_size: int | None = None, preparable: bool = False) -> Callable:
    """Registers `build(data_config) -> DataSource` as `data.name=name`, reading `keys` of config.data."""
    def decorate(build: Callable[[ml_collections.ConfigDict], DataSource]) -> Callable:
        SOURCES[name] = SourceEntry(build, keys, classes, train_size, preparable)
        return build
    return decorate


def source_entry(name: str) -> SourceEntry | None:
    """The registration of `data.name=name` (its facts), or None for a name nobody registered."""
    return SOURCES.get(name)


def source_fact(name: str, fact: str, default: Any) -> Any:
    """A registered dataset's `fact` ("classes", "train_size"), or `default` where it has none or is unknown."""
    entry = SOURCES.get(name)
    value = getattr(entry, fact) if entry is not None else None
    return value if value else default


def check_keys(name: str, data: ml_collections.ConfigDict) -> None:
    """A key the dataset `name` does not read must keep its default: otherwise the user expects an effect."""
    keys = SOURCES[name].keys
    if keys is None:
        return
    defaults = base_data_config()
    for key in data:
        if key in SHARED_KEYS or key in keys:
            continue
        if key not in defaults or data[key] != defaults[key]:
            raise UserError(f"data.{key} does not apply to data.name={name!r}; its keys are "
                            f"{', '.join((*SHARED_KEYS[1:], *keys))}")


def make_source(data_config: Mapping[str, Any]) -> DataSource:
    """The DataSource named by `data_config.name`; building it reads no data."""
    data = with_defaults(data_config)
    if data.name not in SOURCES:
        raise UserError(f"data.name={data.name!r} is unknown; use one of {', '.join(SOURCES)}")
    check_keys(data.name, data)
    return SOURCES[data.name].build(data)


def _check_native_size(data: ml_collections.ConfigDict, native: int) -> None:
    if data.image_size != native:
        raise UserError(f"data.image_size={data.image_size} but {data.name} images are {native}x{native}; "
                        f"set data.image_size={native}")


@register_source("digits", keys=("split_seed", "digits_test_fraction"), classes=10, train_size=1347,
                 preparable=True)
def _digits(data: ml_collections.ConfigDict) -> DataSource:
    from cnn_flax.data.sources.digits import DigitsSource

    return DigitsSource(data.image_size, data.digits_test_fraction, data.split_seed, data.prefetch)


@register_source("cifar10", keys=("dir",), classes=10, train_size=50_000, preparable=True)
def _cifar10(data: ml_collections.ConfigDict) -> DataSource:
    from cnn_flax.data.sources.cifar10 import IMAGE_SIZE, Cifar10Source

    _check_native_size(data, IMAGE_SIZE)
    return Cifar10Source(data.dir, data.prefetch)


@register_source("tiny_imagenet", keys=("dir", "root", "split_seed", "test_per_class", "read_window_mb"),
                 classes=200, train_size=90_000, preparable=True)
def _tiny_imagenet(data: ml_collections.ConfigDict) -> DataSource:
    from cnn_flax.data.sources.hdf5 import HDF5Source
    from cnn_flax.data.sources.tiny_imagenet import IMAGE_SHAPE, build_tiny_imagenet

    _check_native_size(data, IMAGE_SHAPE[0])

    def build(overwrite: bool) -> list[str]:
        return build_tiny_imagenet(data.root, data.dir, test_per_class=data.test_per_class,
                                   split_seed=data.split_seed, overwrite=overwrite)

    return HDF5Source(data.dir, IMAGE_SHAPE, build=build, prefetch=data.prefetch, window_mb=data.read_window_mb)


@register_source("folder", keys=("root", "dir", "resize", "val_fraction", "test_fraction", "split_seed",
                                 "read_window_mb"), preparable=True)
def _folder(data: ml_collections.ConfigDict) -> DataSource:  # your own images: one subfolder per class
    from cnn_flax.data.sources.folder import FolderSource

    return FolderSource(data.root, data.dir, image_size=data.image_size, resize=data.resize,
                        val_fraction=float(data.val_fraction), test_fraction=float(data.test_fraction),
                        split_seed=data.split_seed, prefetch=data.prefetch, window_mb=float(data.read_window_mb))


@register_source("imagenet2012", keys=("dir", "manual_dir", "resize_size", "shuffle_buffer"), classes=1000,
                 train_size=1_281_167, preparable=True)
def _imagenet2012(data: ml_collections.ConfigDict) -> DataSource:
    from cnn_flax.data.sources.imagenet import ImageNetSource

    return ImageNetSource(data.dir, manual_dir=data.manual_dir, image_size=data.image_size,
                          resize_size=data.resize_size, shuffle_buffer=data.shuffle_buffer, prefetch=data.prefetch)


@register_source("synthetic", keys=None)  # --mode=benchmark without the data: random images of the config's shape
def _synthetic(data: ml_collections.ConfigDict) -> DataSource:
    from cnn_flax.data.sources.synthetic import SyntheticSource

    return SyntheticSource.from_config(data)
