"""Figures for the evaluation package, written atomically like every other file of a run.

Figures such as `training.png` are redrawn during training while a user may have them open; they go through
`cnn_flax.atomic` like the JSON and text files (re-exported here for the package's modules).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cnn_flax.atomic import atomic_file, write_json, write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["new_figure", "save_captioned_grid", "save_figure", "write_json", "write_text"]


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


def _mosaic(images: np.ndarray, rows: int, cols: int, caption_rows: float) -> tuple[np.ndarray, list]:
    """The images ([N, H, W(, C)] uint8) on a white RGB canvas, row by row, with a band above each for its
    caption (`caption_rows` of an image's height) and a gap between columns; returns the canvas and each
    image's (top, left) pixel."""
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim == 3:
        images = np.repeat(images[..., None], 3, axis=-1)  # grayscale shown as gray, as cmap="gray" would
    height, width = images.shape[1:3]
    band, gap = max(1, round(height * caption_rows)), max(1, round(width * 0.1))
    canvas = np.full((rows * (band + height), cols * (width + gap) - gap, 3), 255, np.uint8)
    corners = []
    for i, image in enumerate(images):
        top, left = (i // cols) * (band + height) + band, (i % cols) * (width + gap)
        canvas[top:top + height, left:left + width] = image
        corners.append((top, left))
    return canvas, corners


def save_captioned_grid(tiles: np.ndarray, captions: Sequence[str], colours: Sequence[str], cols: int,
                        path: str | os.PathLike, title: str, tile_inches: float = 2.6) -> None:
    """Equal-sized uint8 tiles [N, H, W(, C)] row by row under `title`, each with its caption above it.

    One Axes shows one image of every tile and the captions are its texts: a grid of 25 Axes with titles took
    most of a second to draw, this a fifth of that. The grid is fixed (no layout engine, another second).
    """
    rows = math.ceil(len(tiles) / cols)
    lines = max(caption.count("\n") + 1 for caption in captions)
    canvas, corners = _mosaic(tiles, rows, cols, caption_rows=0.08 + 0.14 * lines)
    height = tile_inches * rows + 0.6
    figure = new_figure(figsize=(tile_inches * cols, height))
    ax = figure.add_axes((0.02, 0.02, 0.96, 0.98 - 0.6 / height))
    ax.imshow(canvas, vmin=0, vmax=255, interpolation="nearest")
    ax.axis("off")
    for (top, left), caption, colour in zip(corners, captions, colours, strict=True):
        ax.text(left + tiles.shape[2] / 2, top - 0.5, caption, ha="center", va="bottom", fontsize=7, color=colour)
    figure.suptitle(title)
    save_figure(figure, path, dpi=100)
