"""Real image folders for the folder-dataset tests: scikit-learn's digits saved in every format a folder holds.

Each class folder gets digits of one label, cycled through JPEG, PNG (grey, RGBA, palette, 16-bit), BMP,
GIF, WebP and CMYK JPEG with mixed-case extensions and a subfolder, so prepare meets every decoder
path; `add_junk` adds what real folders also hold (text files, broken, empty, truncated and hidden files).
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

SIZE = 24  # pixels of the saved images (the digits are 8x8)
FORMATS = ("jpg", "PNG", "png_grey", "bmp", "gif", "webp", "png_rgba", "png16", "jpeg_cmyk", "JPEG")
JUNK = {  # relative path inside the first class folder -> reason prefix in skipped.txt
    "notes.txt": "not an image file",
    "broken.jpg": "not a readable image",
    "empty.png": "empty file",
    "cut.jpg": "unreadable or truncated image",
}
HIDDEN = (".DS_Store", "._photo.jpg", ".thumbs/a.png")


def digit_images(labels: tuple[int, ...], per_class: int) -> dict[int, list[np.ndarray]]:
    """uint8 [SIZE, SIZE] digits, the first `per_class` of each label, upsampled bilinearly."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = {}
    for label in labels:
        picks = digits.images[digits.target == label][:per_class]
        grey = np.round(picks * (255 / 16)).astype(np.uint8)
        out[label] = [np.asarray(Image.fromarray(g).resize((SIZE, SIZE), Image.Resampling.BILINEAR)) for g in grey]
    return out


def save_as(grey: np.ndarray, path_stem: str, kind: str) -> str:
    """Saves a grey digit as `kind`; returns the file name written."""
    rgb = Image.fromarray(np.repeat(grey[..., None], 3, axis=-1))
    if kind in ("jpg", "JPEG"):
        path = f"{path_stem}.{kind}"
        rgb.save(path, quality=95)
    elif kind == "PNG":
        path = f"{path_stem}.PNG"
        rgb.save(path)
    elif kind == "png_grey":
        path = f"{path_stem}.png"
        Image.fromarray(grey).save(path)
    elif kind == "bmp":
        path = f"{path_stem}.bmp"
        rgb.save(path)
    elif kind == "gif":
        path = f"{path_stem}.gif"
        rgb.quantize(64).save(path)
    elif kind == "webp":
        path = f"{path_stem}.webp"
        rgb.save(path, lossless=True)
    elif kind == "png_rgba":
        path = f"{path_stem}.png"
        rgba = rgb.convert("RGBA")
        rgba.putalpha(255)
        rgba.save(path)
    elif kind == "png16":
        path = f"{path_stem}.png"
        Image.fromarray(grey.astype(np.uint16) * 257).save(path)  # 16-bit grayscale PNG
    elif kind == "jpeg_cmyk":
        path = f"{path_stem}.jpeg"
        rgb.convert("CMYK").save(path, quality=95)
    else:
        raise ValueError(kind)
    return os.path.basename(path)


def write_class(folder: str, images: list[np.ndarray], offset: int = 0) -> list[str]:
    """Writes `images` into `folder` (every third one in a subfolder); returns the relative names."""
    names = []
    for k, grey in enumerate(images):
        sub = os.path.join(folder, "more") if k % 3 == 2 else folder
        os.makedirs(sub, exist_ok=True)
        name = save_as(grey, os.path.join(sub, f"img{offset + k:03d}"), FORMATS[(offset + k) % len(FORMATS)])
        names.append(os.path.relpath(os.path.join(sub, name), folder))
    return names


def add_junk(folder: str) -> None:
    with open(os.path.join(folder, "notes.txt"), "w") as f:
        f.write("not a picture\n")
    with open(os.path.join(folder, "broken.jpg"), "wb") as f:
        f.write(os.urandom(300))
    open(os.path.join(folder, "empty.png"), "wb").close()
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    with open(os.path.join(folder, "cut.jpg"), "wb") as f:
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    for hidden in HIDDEN:
        path = os.path.join(folder, hidden)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"\x00\x01 hidden junk")


def write_flat(root: str, labels: tuple[int, ...] = (0, 1, 7), per_class: int = 20, junk: bool = True) -> list[str]:
    """root/<class>/... with class folders named after the digits; returns the class names."""
    names = []
    for label, images in digit_images(labels, per_class).items():
        name = f"digit_{label}"
        write_class(os.path.join(root, name), images)
        names.append(name)
    if junk:
        add_junk(os.path.join(root, names[0]))
    return sorted(names)


def write_split_layout(root: str, labels: tuple[int, ...] = (3, 4), per_class: int = 16, val: int = 4) -> None:
    """root/train/<class>/ and root/val/<class>/ (no test/: carved from train)."""
    for label, images in digit_images(labels, per_class + val).items():
        write_class(os.path.join(root, "train", f"d{label}"), images[:per_class])
        write_class(os.path.join(root, "val", f"d{label}"), images[per_class:], offset=per_class)
