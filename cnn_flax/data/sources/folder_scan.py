"""Which image files a folder dataset holds, their classes, and which split each belongs to.

Two layouts, told apart by the root's subfolders: `root/<class>/...` (every split carved from it), or
`root/train/<class>/...` with optional `val/` and `test/` beside it (only the missing ones carved from
train). Class names are the class folder names, sorted, so labels never depend on the file system's
listing order. Carving is stratified and seeded: each class gives the same share to each split, so every
class is in every split, and the same seed gives the same files on every machine. Nothing here opens
an image; files that cannot be images (wrong extension, outside a class folder) are noted for
skipped.txt, and hidden files (.DS_Store, ._photo.jpg, dot folders) are ignored without a word.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from cnn_flax.data.dataset import SPLITS
from cnn_flax.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")

Items = list[tuple[str, int]]  # (path relative to the root, label)


@dataclasses.dataclass(frozen=True)
class FolderScan:
    root: str
    class_names: tuple[str, ...]
    splits: dict[str, Items]
    carved: tuple[str, ...]  # the splits taken from train
    not_images: tuple[tuple[str, str], ...]  # (relative path, reason) of files that are not images


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def walk_files(folder: str) -> list[str]:
    """Every non-hidden file under `folder` (hidden folders pruned), sorted, as absolute paths."""
    found = []
    for here, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not is_hidden(d))
        found += [os.path.join(here, f) for f in files if not is_hidden(f)]
    return sorted(found)


def image_files(paths: list[str]) -> list[str]:
    """Files as given, and every image file under each given folder (recursively, hidden ones ignored)."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            files += [f for f in walk_files(path) if is_image_name(f)]
        else:
            files.append(path)
    return files


def _subfolders(folder: str) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not is_hidden(e.name))


def check_root(root: str) -> str:
    if not root:
        raise UserError("data.root is empty; set data.root to the folder holding one subfolder per class")
    path = os.path.abspath(os.path.expanduser(root))
    if not os.path.exists(path):
        raise UserError(f"data.root={root}: folder not found; point it at the folder holding one subfolder per class")
    if not os.path.isdir(path):
        raise UserError(f"data.root={root} is a file, not a folder; point it at the folder holding one subfolder "
                        "per class")
    return path


def has_split_layout(root: str) -> bool:
    """True for root/train/<class>/ (with optional val/ and test/); False for root/<class>/."""
    folders = _subfolders(root)
    return "train" in folders and set(folders) <= set(SPLITS)


def class_folders(root: str) -> list[str]:
    """The sorted class names of a layout (the folders of root/train, or of root)."""
    base = os.path.join(root, "train") if has_split_layout(root) else root
    return _subfolders(base)


def _list_class(folder: str, root: str, label: int, not_images: list) -> Items:
    items = []
    for path in walk_files(folder):
        rel = os.path.relpath(path, root)
        if is_image_name(path):
            items.append((rel, label))
        else:
            not_images.append((rel, f"not an image file (extension {os.path.splitext(path)[1] or 'none'})"))
    return items


def _loose_files(folder: str, root: str, not_images: list) -> None:
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_file() and not is_hidden(entry.name):
            not_images.append((os.path.relpath(entry.path, root), "not inside a class folder"))


def _split_counts(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Images per carved split for a class of `n`: the fraction rounded, at least one each."""
    return {split: max(1, math.floor(n * fraction + 0.5)) for split, fraction in fractions.items()}


def carve(items: Items, fractions: dict[str, float], seed: int, class_folder: dict[int, str]) -> dict[str, Items]:
    """Splits train items per class by `fractions` ({split: share}); what is left stays in train."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[tuple[str, int]]] = {}
    for item in items:
        by_class.setdefault(item[1], []).append(item)
    out: dict[str, Items] = {split: [] for split in ("train", *fractions)}
    for label in sorted(by_class):
        members = by_class[label]
        counts = _split_counts(len(members), fractions)
        if sum(counts.values()) >= len(members):
            wanted = ", ".join(f"{c} for {s}" for s, c in counts.items())
            raise UserError(f"{class_folder[label]} has {len(members)} images, too few to carve {wanted} and keep "
                            "one for train; add images or set data.val_fraction/data.test_fraction lower")
        order = rng.permutation(len(members))
        assigned = np.full(len(members), "train", dtype=object)
        start = 0
        for split, count in counts.items():
            assigned[order[start:start + count]] = split
            start += count
        for item, split in zip(members, assigned, strict=True):
            out[split].append(item)
    return out


def scan(root: str, val_fraction: float, test_fraction: float, split_seed: int) -> FolderScan:
    """Lists the images of `root` by split and class; raises a one-line UserError for every layout problem."""
    root = check_root(root)
    for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise UserError(f"data.{key}={value} must be between 0 and 1 (the share of train carved off); "
                            "e.g. 0.1")
    split_layout = has_split_layout(root)
    base = os.path.join(root, "train") if split_layout else root
    names = _subfolders(base)
    if not names:
        raise UserError(f"{base} holds no class folders; put each class's images in its own subfolder "
                        f"({base}/cats/..., {base}/dogs/...)")
    if len(names) < 2:
        raise UserError(f"{base} holds one class folder ({names[0]}); a classifier needs at least two classes")
    not_images: list[tuple[str, str]] = []
    _loose_files(root, root, not_images)
    if split_layout:
        _loose_files(base, root, not_images)
    labels = {name: label for label, name in enumerate(names)}
    train: Items = []
    for name in names:
        items = _list_class(os.path.join(base, name), root, labels[name], not_images)
        if not items:
            raise UserError(f"{os.path.join(base, name)} holds no image files ({', '.join(IMAGE_SUFFIXES)}); add "
                            "images or remove the folder")
        train += items
    splits: dict[str, Items] = {"train": train}
    for split in ("val", "test") if split_layout else ():
        folder = os.path.join(root, split)
        if not os.path.isdir(folder):
            continue
        _loose_files(folder, root, not_images)
        splits[split] = []
        for name in _subfolders(folder):
            if name not in labels:
                raise UserError(f"{os.path.join(folder, name)} is a class that train/ does not have; rename it "
                                f"to one of {', '.join(names)} or add it to train/")
            splits[split] += _list_class(os.path.join(folder, name), root, labels[name], not_images)
        if not splits[split]:
            raise UserError(f"{folder} holds no images in class folders; fill it or remove it to carve {split} "
                            "from train")
    fractions = {s: f for s, f in (("val", val_fraction), ("test", test_fraction)) if s not in splits}
    if fractions:
        class_folder = {label: os.path.join(base, name) for name, label in labels.items()}
        splits.update(carve(splits["train"], fractions, split_seed, class_folder))
    return FolderScan(root, tuple(names), {s: splits[s] for s in SPLITS}, tuple(fractions), tuple(not_images))
