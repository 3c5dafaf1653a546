"""A small tiny-imagenet-200 folder, laid out as the official download, for the reader and run tests."""

import os

import numpy as np
from PIL import Image

WNIDS = ["n01443537", "n01629819", "n02124075"]
TINY_IMAGENET_NAMES = ["goldfish", "European fire salamander", "Egyptian cat"]
TRAIN_PER_CLASS, VAL_PER_CLASS, TEST_PER_CLASS = 12, 2, 2
GREY = ("train", 1, 3)  # (split, class, k) of the one grayscale JPEG


def write_tiny_imagenet_root(root: str) -> None:
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "val", "images"))
    with open(os.path.join(root, "wnids.txt"), "w") as f:
        f.write("\n".join(WNIDS) + "\n")
    with open(os.path.join(root, "words.txt"), "w") as f:
        f.write("n00001740\tentity\n")
        f.write("".join(f"{w}\t{n}, other name\n" for w, n in zip(WNIDS, TINY_IMAGENET_NAMES, strict=True)))
    annotations = []
    for c, wnid in enumerate(WNIDS):
        folder = os.path.join(root, "train", wnid, "images")
        os.makedirs(folder)
        for k in range(TRAIN_PER_CLASS):
            grey = ("train", c, k) == GREY
            pixels = rng.integers(0, 256, (64, 64) if grey else (64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(folder, f"{wnid}_{k}.JPEG"))
        for k in range(VAL_PER_CLASS):
            name = f"val_{c * VAL_PER_CLASS + k}.JPEG"
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
                os.path.join(root, "val", "images", name)
            )
            annotations.append(f"{name}\t{wnid}\t0\t0\t63\t63\n")
    with open(os.path.join(root, "val", "val_annotations.txt"), "w") as f:
        f.write("".join(annotations[::-1]))
