"""Random images of a config's shape, so throughput can be measured on a machine without the dataset.

`--mode=benchmark` times the real training loop, input pipeline included; when CIFAR-10 or Tiny ImageNet
is absent it swaps in this source, which goes through the same in-memory batcher (`ArraySource`) and
batch plan as the real in-memory datasets, so the loop does the same host work per batch. Pixels and
labels are uniform and fixed by `seed`; the numbers they produce mean nothing beyond speed.
"""

from __future__ import annotations

import numpy as np

from cnn_flax.data.dataset import DatasetInfo
from cnn_flax.data.sources.in_memory import ArraySource, Splits, build_info
from cnn_flax.errors import UserError


def synthetic_splits(image_size: int, num_classes: int, sizes: dict[str, int],
                     seed: int) -> tuple[DatasetInfo, Splits]:
    """uint8 [N, size, size, 3] images and int32 labels in [0, num_classes) per split, from `seed`."""
    if image_size < 1:
        raise UserError(f"data.image_size={image_size} must be positive for synthetic data; set e.g. 32")
    if num_classes < 1:
        raise UserError(f"data.num_classes={num_classes} must be positive for synthetic data; set e.g. 10")
    rng = np.random.default_rng(seed)
    splits: Splits = {}
    for split in ("train", "val", "test"):
        n = int(sizes[split])
        if n < 1:
            raise UserError(f"data.synthetic_sizes.{split}={n} must be positive")
        images = rng.integers(0, 256, (n, image_size, image_size, 3), dtype=np.uint8)
        splits[split] = (images, rng.integers(0, num_classes, n).astype(np.int32))
    names = tuple(f"class_{i}" for i in range(num_classes))
    return build_info("synthetic", names, splits), splits


class SyntheticSource(ArraySource):
    def __init__(self, image_size: int, num_classes: int, sizes: dict[str, int], seed: int = 0, prefetch: int = 2):
        super().__init__(lambda: synthetic_splits(image_size, num_classes, sizes, seed), prefetch)

    @classmethod
    def from_config(cls, data) -> SyntheticSource:
        """From `data.image_size`, `data.num_classes`, `data.synthetic_sizes` and `data.split_seed`."""
        return cls(int(data.image_size), int(data.num_classes), data.synthetic_sizes.to_dict(), int(data.split_seed),
                   int(data.prefetch))
