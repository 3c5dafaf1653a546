"""Throughput of the input pipeline alone, so a slow run can be blamed on data or on compute.

python -m cnn_flax.bench.input --rows 20000 --file /tmp/bench_tiny.hdf5   # reader and augmentation
python -m cnn_flax.bench.input --augmentations --size 32 --batch 128       # each augmentation on vs off
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import numpy as np

from cnn_flax.data.dataset import DataSource
from cnn_flax.errors import UserError


def measure_input(source: DataSource, split: str, batch_size: int, seconds: float) -> float:
    """Images per second that `source.batches` delivers for `split` (shuffled, as in training)."""
    if source.num_batches(split, batch_size, drop_remainder=True) == 0:
        raise UserError(f"the {split} split has fewer than {batch_size} images; lower the batch size")
    images, epoch = 0, 0
    start = time.perf_counter()
    while True:
        batches = source.batches(split, batch_size, shuffle=True, seed=0, epoch=epoch, drop_remainder=True)
        with contextlib.closing(batches):
            for batch in batches:
                images += len(batch["label"])
                elapsed = time.perf_counter() - start
                if elapsed >= seconds:
                    return images / elapsed
        epoch += 1


def measure_augment(shape: tuple[int, int, int, int], seconds: float, **options: float) -> float:
    """Images per second of the jitted `random_affine` on the default JAX device for uint8 batches."""
    import jax

    from cnn_flax.data.augment.keras_affine import random_affine

    warp = jax.jit(lambda key, x: random_affine(key, x, **options))
    batch = jax.device_put(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8))
    key = jax.random.key(0)
    warp(key, batch).block_until_ready()
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        key, sub = jax.random.split(key)
        warp(sub, batch).block_until_ready()
        images += shape[0]
    return images / (time.perf_counter() - start)


# Each augmentation alone at a recipe's usual setting (timm's defaults), then all of them together.
AUGMENTATIONS = {
    "off (normalise only)": {},
    "deck affine": dict(rotation=18.0, zoom=0.15, width_shift=0.2, height_shift=0.2, shear=0.15,
                        horizontal_flip=True),
    "random_resized_crop": dict(random_resized_crop=True, rrc_scale=(0.08, 1.0), rrc_ratio=(3 / 4, 4 / 3)),
    "randaugment n=2 m=9": dict(randaugment_n=2, randaugment_m=9.0),
    "trivial_augment": dict(trivial_augment=True),
    "random_erasing p=0.25": dict(random_erasing=0.25, erasing_mode="pixel"),
    "mixup 0.8": dict(mixup_alpha=0.8, mix_switch_prob=0.5, mix_prob=1.0),
    "cutmix 1.0": dict(cutmix_alpha=1.0, mix_switch_prob=0.5, mix_prob=1.0),
}
AUGMENTATIONS["all (crop, trivial, erasing, mixup/cutmix)"] = {
    **AUGMENTATIONS["random_resized_crop"], **AUGMENTATIONS["trivial_augment"],
    **AUGMENTATIONS["random_erasing p=0.25"], **AUGMENTATIONS["mixup 0.8"], **AUGMENTATIONS["cutmix 1.0"]}


def measure_augmentations(shape: tuple[int, int, int, int], seconds: float) -> dict[str, float]:
    """Images per second of the step's jitted preprocessing (and mixing) for each entry of AUGMENTATIONS.

    What the train step runs before the model, on uint8 batches on the default device: the difference
    to "off" is what an augmentation adds to every step.
    """
    import jax
    from ml_collections import ConfigDict

    from cnn_flax.data.augment.preprocess import make_preprocess
    from cnn_flax.data.augment.recipes import make_mixing
    from cnn_flax.data.dataset import DatasetInfo

    info = DatasetInfo("bench", 10, tuple("0123456789"), shape[1:], {}, np.full(3, 127.5, np.float32), None)
    batch = jax.device_put(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8))
    labels = jax.device_put(np.arange(shape[0], dtype=np.int32) % 10)
    figures = {}
    for name, augment in AUGMENTATIONS.items():
        data = ConfigDict({"normalize": "scale", "augment": augment})
        preprocess, mixing = make_preprocess(data, info), make_mixing(data)

        def step(key, images, labels, preprocess=preprocess, mixing=mixing):
            x = preprocess(images, key)
            if mixing is None:
                return x, labels
            draw = mixing.draw(key, *x.shape[:3])
            return mixing.images(x, draw), mixing.targets(labels, draw, 10)

        figures[name] = _images_per_second(jax.jit(step), batch, labels, seconds)
    return figures


def _images_per_second(fn, batch, labels, seconds: float) -> float:
    import jax

    key = jax.random.key(0)
    jax.block_until_ready(fn(key, batch, labels))
    images, start, step = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        step += 1
        jax.block_until_ready(fn(jax.random.fold_in(key, step), batch, labels))
        images += batch.shape[0]
    return images / (time.perf_counter() - start)


def write_synthetic(path: str, rows: int, size: int = 64, num_classes: int = 200) -> None:
    """A split file shaped like Tiny ImageNet's train.hdf5, with random pixels (for benchmarks only)."""
    from cnn_flax.data.sources.hdf5_files import SplitWriter

    rng = np.random.default_rng(0)
    attrs = {"name": "synthetic", "num_classes": num_classes, "split_seed": 0, "test_per_class": 0}
    with SplitWriter(path, rows, (size, size, 3), attrs) as writer:
        for lo in range(0, rows, 4096):
            n = min(4096, rows - lo)
            writer.write(rng.integers(0, 256, (n, size, size, 3), np.uint8), rng.integers(0, num_classes, n))
        writer.file.attrs["class_names"] = [str(i) for i in range(num_classes)]
        writer.file.attrs["mean_rgb"] = np.full(3, 127.5, np.float32)
        writer.file.create_dataset("mean_image", data=np.full((size, size, 3), 127.5, np.float32))


def main() -> None:
    from cnn_flax.data.sources.hdf5 import HDF5Source

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", default="/tmp/cnn_flax_bench/train.hdf5", help="synthetic file to (re)use")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--window_mb", type=float, default=64.0)
    parser.add_argument("--reader", choices=("mapped", "blocks"), default="mapped", help="blocks: h5py reads")
    parser.add_argument("--augmentations", action="store_true", help="only time each augmentation on vs off")
    parser.add_argument("--size", type=int, default=32, help="image side for --augmentations")
    args = parser.parse_args()
    if args.augmentations:
        shape = (args.batch, args.size, args.size, 3)
        figures = measure_augmentations(shape, args.seconds)
        off = figures["off (normalise only)"]
        for name, rate in figures.items():
            print(f"augment {name:<44} batch={args.batch}x{args.size}x{args.size}x3: {rate:>10,.0f} img/s "
                  f"({rate / off:.2f}x off)")
        return
    folder = os.path.dirname(os.path.abspath(args.file))
    os.makedirs(folder, exist_ok=True)
    if not os.path.isfile(args.file):
        write_synthetic(args.file, args.rows)
    for split in ("val", "test"):
        alias = os.path.join(folder, f"{split}.hdf5")
        if not os.path.exists(alias):
            os.symlink(args.file, alias)
    source = HDF5Source(folder, (64, 64, 3), window_mb=args.window_mb, mapped=args.reader == "mapped")
    reader = measure_input(source, "train", args.batch, args.seconds)
    rows = source.info.split_sizes["train"]
    print(f"hdf5 reader={args.reader} rows={rows} batch={args.batch}: {reader:,.0f} img/s")
    deck = dict(rotation=18, zoom=0.15, width_shift=0.2, height_shift=0.2, shear=0.15, horizontal_flip=True)
    augment = measure_augment((args.batch, 64, 64, 3), args.seconds, **deck)
    print(f"random_affine batch={args.batch}x64x64x3: {augment:,.0f} img/s")


if __name__ == "__main__":
    main()
