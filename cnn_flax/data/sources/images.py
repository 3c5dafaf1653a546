"""One image file to one uint8 RGB square, the same way for `prepare` and for `--mode=predict`.

Real folders hold every kind of file a camera, a scanner or a web page leaves: grayscale, palette,
RGBA, 16-bit and CMYK images all become 8-bit RGB; phone photos are stood upright by their EXIF
orientation tag; animated GIFs give their first frame. `resize="aspect"` is the book's aspect-aware
preprocessor (shorter side to the target, centre crop), so objects keep their proportions;
`"stretch"` squeezes the whole picture into the square. JPEGs are decoded at a reduced scale when the
target is much smaller than the photo (`draft`), which is most of the decoding time saved.

This module imports only PIL and numpy: `prepare` runs it in freshly spawned worker processes, which
should not pay for importing JAX. (Spawned workers import the main script again, so a script that
prepares data calls it under `if __name__ == "__main__":`.)
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

RESIZE_MODES = ("aspect", "stretch")
_RESAMPLE = Image.Resampling.BILINEAR  # antialiased when shrinking
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageProblem(ValueError):
    """A file that cannot become a training image; the message is the reason skipped.txt gives."""


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT or image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        if image.mode in _SIXTEEN_BIT or values.max(initial=0) > 255:
            values = values / 257.0  # 0..65535 onto 0..255
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def _crop_box(width: int, height: int) -> tuple[float, float, float, float]:
    """The centred square of the shorter side."""
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return (left, top, left + side, top + side)


def load_square(path: str, size: int, resize: str = "aspect") -> np.ndarray:
    """uint8 [size, size, 3]; raises ImageProblem (the reason) for a file that is not a usable image."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize={resize!r}; use one of {RESIZE_MODES}")
    try:
        if os.path.getsize(path) == 0:
            raise ImageProblem("empty file")
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft("RGB", (size, size))  # decode at 1/2, 1/4 or 1/8 scale, never below the target
            image.load()
            try:
                upright = ImageOps.exif_transpose(image)
            except (OSError, ValueError, TypeError, KeyError, SyntaxError):  # a broken EXIF block: keep as stored
                upright = image
            rgb = _to_rgb(upright)
            box = _crop_box(*rgb.size) if resize == "aspect" else None
            square = rgb.resize((size, size), _RESAMPLE, box=box)
            return np.asarray(square, dtype=np.uint8)
    except ImageProblem:
        raise
    except UnidentifiedImageError:
        raise ImageProblem("not a readable image (unknown format or corrupt header)") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ImageProblem(f"unreadable or truncated image ({reason})") from None


def decode_task(task: tuple[str, int, str]) -> tuple[np.ndarray | None, str]:
    """Worker-process entry point: (image, "") or (None, reason) for (path, size, resize)."""
    path, size, resize = task
    try:
        return load_square(path, size, resize), ""
    except ImageProblem as problem:
        return None, str(problem)
