"""Figures for the evaluation package, written atomically like every other file of a run.

Figures such as `training.png` are redrawn during training while a user may have them open; they go through
`cnn_flax.atomic` like the JSON and text files (re-exported here for the package's modules).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cnn_flax.atomic import atomic_file, write_json, write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["CaptionedGrid", "new_figure", "save_captioned_grid", "save_figure", "write_json", "write_text"]


def save_figure(figure: Figure, path: str | os.PathLike, **savefig_kwargs: Any) -> None:
    """Render with the Agg canvas (no display needed) in the format the file name ends with."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    with atomic_file(path, binary=True) as handle:
        figure.savefig(handle, format=fmt, **savefig_kwargs)


def new_figure(**figure_kwargs: Any) -> Figure:
    """A figure bound to the Agg canvas and not registered with pyplot, so nothing leaks between calls."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # imported when drawn: a second at start-up
    from matplotlib.figure import Figure

    figure = Figure(**figure_kwargs)
    FigureCanvasAgg(figure)
    return figure


@dataclasses.dataclass(frozen=True)
class CaptionedGrid:
    """What `save_captioned_grid` drew: the image saved, each tile's (top, left) pixel in it and its enlargement."""

    image: np.ndarray  # uint8 [H, W, 3], the PNG's pixels
    corners: list[tuple[int, int]]
    scale: int
    captions: list[str]
    colours: list[str]
    title: str


# The captions' and title's font: DejaVu Sans, the one matplotlib ships and draws the other figures with.
_FONT_FILE = os.path.join("mpl-data", "fonts", "ttf", "DejaVuSans.ttf")
CAPTION_PIXELS, TITLE_PIXELS, MARGIN = 12, 17, 10


@functools.lru_cache(maxsize=4)
def _font(pixels: int) -> Any:
    """DejaVu Sans at `pixels` from matplotlib's folder, found without importing matplotlib; Pillow's own
    scalable font where that file is missing."""
    from PIL import ImageFont

    spec = importlib.util.find_spec("matplotlib")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = os.path.join(folder, _FONT_FILE)
        if os.path.isfile(path):
            return ImageFont.truetype(path, pixels)
    return ImageFont.load_default(pixels)


def save_captioned_grid(tiles: np.ndarray, captions: Sequence[str], colours: Sequence[str], cols: int,
                        path: str | os.PathLike, title: str, tile_pixels: int = 240) -> CaptionedGrid:
    """Equal-sized uint8 tiles [N, H, W(, C)] row by row under `title`, each with its caption above it, as PNG.

    Each tile is enlarged by whole pixels (nearest) to about `tile_pixels` on its longer side and the text is
    drawn straight onto the pixels with Pillow: a matplotlib figure of the same grid took 0.15-0.2 s (most of
    it resampling the mosaic and encoding the larger canvas), twice at the end of every run; this takes a
    tenth of that.
    """
    from PIL import Image, ImageDraw

    if tiles.ndim == 4 and tiles.shape[-1] == 1:
        tiles = tiles[..., 0]
    if tiles.ndim == 3:
        tiles = np.repeat(tiles[..., None], 3, axis=-1)  # grayscale shown as gray
    height, width = tiles.shape[1:3]
    scale = max(1, round(tile_pixels / max(height, width)))
    side_h, side_w = height * scale, width * scale
    caption_font, title_font = _font(CAPTION_PIXELS), _font(TITLE_PIXELS)
    line = round(CAPTION_PIXELS * 1.25)
    band = line * max(caption.count("\n") + 1 for caption in captions) + 6
    gap, top_band = max(4, side_w // 10), TITLE_PIXELS + 2 * MARGIN
    rows = math.ceil(len(tiles) / cols)
    canvas = np.full((top_band + rows * (band + side_h) + MARGIN, 2 * MARGIN + cols * (side_w + gap) - gap, 3), 255,
                     np.uint8)
    corners = []
    for i, tile in enumerate(tiles):
        top, left = top_band + (i // cols) * (band + side_h) + band, MARGIN + (i % cols) * (side_w + gap)
        canvas[top:top + side_h, left:left + side_w] = np.repeat(np.repeat(tile, scale, axis=0), scale, axis=1)
        corners.append((top, left))
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    draw.text((canvas.shape[1] / 2, MARGIN), title, fill="black", font=title_font, anchor="ma")
    for (top, left), caption, colour in zip(corners, captions, colours, strict=True):
        draw.multiline_text((left + side_w / 2, top - 3), caption, fill=colour, font=caption_font, anchor="md",
                            align="center", spacing=line - CAPTION_PIXELS)
    with atomic_file(path, binary=True) as handle:
        picture.save(handle, format="PNG")
    return CaptionedGrid(np.asarray(picture), corners, scale, list(captions), list(colours), title)
