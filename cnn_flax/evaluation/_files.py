"""Atomic writes for everything the evaluation package leaves in a workdir.

Figures such as `training.png` are redrawn every epoch while a user may have them open, and `metrics.json`
is read by other tools (comparison tables, W&B); a reader must never see a half-written file. Each write
goes to a hidden temporary file in the destination folder and is then renamed over the target with
`os.replace`, which is atomic on one filesystem.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@contextlib.contextmanager
def _atomic_target(path: str | os.PathLike, *, binary: bool) -> Iterator[IO[Any]]:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its 0600 mode would survive the rename; open(..., "x") honours the umask like any file.
    tmp = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "xb" if binary else "x", encoding=None if binary else "utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with _atomic_target(path, binary=False) as handle:
        handle.write(text)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Strict JSON (no NaN/Infinity literals), so any JSON reader can load it."""
    write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def save_figure(figure: Figure, path: str | os.PathLike, **savefig_kwargs: Any) -> None:
    """Render with the Agg canvas (no display needed) in the format the file name ends with."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    with _atomic_target(path, binary=True) as handle:
        figure.savefig(handle, format=fmt, **savefig_kwargs)


def new_figure(**figure_kwargs: Any) -> Figure:
    """A figure bound to the Agg canvas and not registered with pyplot, so nothing leaks between calls."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # imported when drawn: a second at start-up
    from matplotlib.figure import Figure

    figure = Figure(**figure_kwargs)
    FigureCanvasAgg(figure)
    return figure
