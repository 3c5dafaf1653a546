"""Turns the official `tiny-imagenet-200` folder into the book's three HDF5 splits (`--mode=prepare`).

Decoding ~110,000 JPEGs once is slow; training then reads uint8 arrays at memory speed. The test split is
carved from train (stratified, seeded) because the official test images are unlabelled; the official val
set is the validation split. The class count always comes from `wnids.txt`.
"""

from __future__ import annotations

import concurrent.futures
import os

import numpy as np
from PIL import Image
from tqdm import tqdm

from cnn_flax.atomic import remove_stale_partials
from cnn_flax.data.dataset import SPLITS, one_line
from cnn_flax.data.sources.hdf5_files import SplitWriter
from cnn_flax.errors import UserError

NAME = "tiny_imagenet"
IMAGE_SHAPE = (64, 64, 3)
_SUFFIXES = (".jpeg", ".jpg", ".png")
_BLOCK = 1024

Items = list[tuple[str, int]]


def _lines(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise UserError(f"{path} not found; data.root must be the unpacked tiny-imagenet-200 folder")
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def read_classes(root: str) -> tuple[list[str], list[str]]:
    """wnids in wnids.txt order, and the first name words.txt gives each (the wnid if it has none)."""
    wnids = [line.strip() for line in _lines(os.path.join(root, "wnids.txt"))]
    words_path = os.path.join(root, "words.txt")
    words = {}
    if os.path.isfile(words_path):
        for line in _lines(words_path):
            wnid, _, names = line.partition("\t")
            words[wnid.strip()] = names.split(",")[0].strip()
    return wnids, [words.get(w) or w for w in wnids]


def _train_files(root: str, wnid: str) -> list[str]:
    folder = os.path.join(root, "train", wnid, "images")
    if not os.path.isdir(folder):
        raise UserError(f"{folder} not found; every class in wnids.txt needs a train/<wnid>/images folder")
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.lower().endswith(_SUFFIXES)]


def list_splits(root: str, wnids: list[str], test_per_class: int, split_seed: int) -> dict[str, Items]:
    """(path, label) per split: 'test' carved per class from train with `split_seed`; 'val' the official."""
    rng = np.random.default_rng(split_seed)
    train: Items = []
    test: Items = []
    for label, wnid in enumerate(wnids):
        files = _train_files(root, wnid)
        if test_per_class >= len(files):
            raise UserError(
                f"{os.path.join(root, 'train', wnid, 'images')} has {len(files)} images, not more than "
                f"data.test_per_class={test_per_class}; lower data.test_per_class"
            )
        chosen = set(rng.choice(len(files), test_per_class, replace=False).tolist())
        for k, path in enumerate(files):
            (test if k in chosen else train).append((path, label))
    return {"train": train, "val": _val_items(root, wnids), "test": test}


def _val_items(root: str, wnids: list[str]) -> Items:
    path = os.path.join(root, "val", "val_annotations.txt")
    labels = {w: i for i, w in enumerate(wnids)}
    items = []
    for number, line in enumerate(_lines(path), start=1):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in labels:
            raise UserError(f"{path} line {number}: expected 'file<TAB>wnid' with a wnid from wnids.txt")
        items.append((os.path.join(root, "val", "images", fields[0]), labels[fields[1]]))
    return items


def decode(path: str) -> np.ndarray:
    """An RGB uint8 [64, 64, 3] array from an image file of any mode (grayscale, CMYK, palette...)."""
    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as error:
        raise UserError(
            f"{path}: unreadable image ({one_line(error)}); prepare stopped here: replace or delete the file "
            "and re-run --mode=prepare"
        ) from error
    if rgb.shape != IMAGE_SHAPE:
        raise UserError(f"{path}: image is {rgb.shape[1]}x{rgb.shape[0]}, expected 64x64; replace or delete it")
    return rgb


def _write_split(path: str, split: str, items: Items, attrs: dict, pool: concurrent.futures.Executor) -> None:
    total = np.zeros(IMAGE_SHAPE, np.float64)
    with SplitWriter(path, len(items), IMAGE_SHAPE, {**attrs, "split": split}) as writer:
        with tqdm(total=len(items), desc=os.path.basename(path), unit="img") as bar:
            for lo in range(0, len(items), _BLOCK):
                block = items[lo : lo + _BLOCK]
                images = np.stack(list(pool.map(decode, [p for p, _ in block])))
                writer.write(images, np.array([label for _, label in block], np.int32))
                total += images.sum(axis=0, dtype=np.float64)
                bar.update(len(block))
        if split == "train":
            mean_image = (total / max(len(items), 1)).astype(np.float32)
            writer.file.create_dataset("mean_image", data=mean_image)
            writer.file.attrs["mean_rgb"] = mean_image.astype(np.float64).mean(axis=(0, 1)).astype(np.float32)


def build_tiny_imagenet(
    root: str, data_dir: str, *, test_per_class: int = 50, split_seed: int = 42, overwrite: bool = False
) -> list[str]:
    """Writes the missing (with `overwrite`: all) train/val/test.hdf5 into `data_dir`; returns their paths."""
    if not data_dir:
        raise UserError("data.dir is empty; set data.dir to the folder that holds (or will hold) the HDF5 files")
    data_dir = os.path.expanduser(data_dir)
    paths = {split: os.path.join(data_dir, f"{split}.hdf5") for split in SPLITS}
    for path in paths.values():  # also of splits already written: a killed prepare may have left them
        remove_stale_partials(path)
    todo = [s for s in SPLITS if overwrite or not os.path.isfile(paths[s])]
    if not todo:
        return list(paths.values())
    if not root:
        raise UserError(
            f"{paths[todo[0]]} not found and data.root is empty; set data.root to the unpacked "
            "tiny-imagenet-200 folder and run --mode=prepare"
        )
    root = os.path.expanduser(root)
    if not os.path.isdir(root):
        raise UserError(f"data.root={root}: folder not found; point it at the unpacked tiny-imagenet-200 folder")
    wnids, names = read_classes(root)
    items = list_splits(root, wnids, test_per_class, split_seed)
    attrs = {
        "name": NAME,
        "num_classes": len(wnids),
        "wnids": wnids,
        "class_names": names,
        "split_seed": split_seed,
        "test_per_class": test_per_class,
    }
    os.makedirs(data_dir, exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for split in todo:
            _write_split(paths[split], split, items[split], attrs, pool)
    return list(paths.values())
