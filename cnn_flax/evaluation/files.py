"""Figures for the evaluation package, written atomically like every other file of a run.

Figures such as `training.png` are redrawn every epoch while a user may have them open; they go through
`cnn_flax.atomic` like the JSON and text files (re-exported here for the package's modules).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnn_flax.atomic import atomic_file, write_json, write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["new_figure", "save_figure", "write_json", "write_text"]


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
