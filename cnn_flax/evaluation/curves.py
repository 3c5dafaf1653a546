"""Training curves and comparison tables: how the deck judges a run and compares runs.

`plot_history` redraws the deck's "Training Loss and Accuracy [Epoch N]" figure from `history.json`
entries after every epoch, so it must cope with a history of one epoch and with epochs that had no
validation pass (val_* missing or None): a curve joins the epochs that have a value and never draws a
missing one as zero. The tables print fractions as percentages with two decimals, the way the deck
reports rank-1/rank-5 ("rank-1: 30.23%").
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cnn_flax.evaluation._files import new_figure, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

HISTORY_CURVES = ("train_loss", "val_loss", "train_accuracy", "val_accuracy")


def _points(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[Any], list[float]]:
    """(epochs, values) for the epochs that have a value for `key` (missing or None are skipped)."""
    present = [entry for entry in history if entry.get(key) is not None]
    return [entry["epoch"] for entry in present], [float(entry[key]) for entry in present]


def history_title(history: Sequence[Mapping[str, Any]]) -> str:
    """The deck's title, naming the last epoch in the history."""
    if not history:
        raise ValueError("history is empty: nothing to plot")
    return f"Training Loss and Accuracy [Epoch {history[-1]['epoch']}]"


def plot_history(
    history: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str | None = None
) -> Figure:
    """Save loss and accuracy against epoch on one axis (the deck's figure) and return the figure.

    Curves that have no value at any epoch (e.g. val_* when there is no validation set) are left out.
    """
    title = history_title(history) if title is None else title
    import matplotlib.style

    with matplotlib.style.context("ggplot"):
        figure = new_figure(figsize=(8, 6), layout="constrained")
        ax = figure.add_subplot()
        for key in HISTORY_CURVES:
            epochs, values = _points(history, key)
            if epochs:
                ax.plot(epochs, values, label=key, marker="o" if len(epochs) < 3 else None)
        ax.set_title(title)
        ax.set_xlabel("Epoch #")
        ax.set_ylabel("Loss/Accuracy")
        if ax.lines:
            ax.legend()
        save_figure(figure, path, dpi=100)
    return figure


def plot_comparison(
    runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike, metric: str = "val_accuracy"
) -> Figure:
    """Save one curve per run (name -> history) of `metric` against epoch, for ablations."""
    import matplotlib.style

    with matplotlib.style.context("ggplot"):
        figure = new_figure(figsize=(8, 6), layout="constrained")
        ax = figure.add_subplot()
        plotted = 0
        for name, history in runs.items():
            epochs, values = _points(history, metric)
            if epochs:
                ax.plot(epochs, values, label=name, marker="o" if len(epochs) < 3 else None)
                plotted += 1
        if not plotted:
            raise ValueError(f"no run has any value for {metric!r}")
        ax.set_title(f"{metric} by epoch")
        ax.set_xlabel("Epoch #")
        ax.set_ylabel(metric)
        ax.legend()
        save_figure(figure, path, dpi=100)
    return figure


def _percent(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.2f}%"


def _loss(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """First column left-aligned, the numbers right-aligned, two spaces between columns."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        numbers = [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        cells = [row[0].ljust(widths[0]), *numbers]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def comparison_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """One line per variant (name -> metrics.json content): rank-1, rank-5 as percentages, and loss; and
    the moving average's rank-1 and rank-5 when any variant kept one ('-' for those that did not)."""
    ema = any("ema_rank1" in m for m in rows.values())
    body = [
        [name, _percent(m.get("rank1")), _percent(m.get("rank5")), _loss(m.get("loss"))]
        + ([_percent(m.get("ema_rank1")), _percent(m.get("ema_rank5"))] if ema else [])
        for name, m in rows.items()
    ]
    return _table(["variant", "rank-1", "rank-5", "loss"] + (["EMA rank-1", "EMA rank-5"] if ema else []), body)


def epoch_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """One line per evaluated checkpoint (dicts with epoch, rank1, rank5, loss), in epoch order."""
    body = [
        [str(m["epoch"]), _percent(m.get("rank1")), _percent(m.get("rank5")), _loss(m.get("loss"))]
        for m in sorted(rows, key=lambda m: m["epoch"])
    ]
    return _table(["epoch", "rank-1", "rank-5", "loss"], body)
