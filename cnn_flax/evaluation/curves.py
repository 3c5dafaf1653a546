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

from cnn_flax.evaluation.files import new_figure, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _points(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[Any], list[float]]:
    """(epochs, values) for the epochs that have a value for `key` (missing or None are skipped)."""
    present = [entry for entry in history if entry.get(key) is not None]
    return [entry["epoch"] for entry in present], [float(entry[key]) for entry in present]


def history_title(history: Sequence[Mapping[str, Any]]) -> str:
    """The deck's title, naming the last epoch in the history."""
    if not history:
        raise ValueError("history is empty: nothing to plot")
    return f"Training Loss and Accuracy [Epoch {history[-1]['epoch']}]"


def rate_drops(history: Sequence[Mapping[str, Any]]) -> list[tuple[Any, float, float]]:
    """(epoch, old rate, new rate) where a stepwise schedule lowers the learning rate.

    A schedule that changes the rate almost every epoch (Keras's time decay, cosine) has no drops worth a
    line each; only rates that stay constant between most changes are marked.
    """
    epochs, rates = _points(history, "learning_rate")
    changes = [i for i in range(1, len(rates)) if rates[i] != rates[i - 1]]
    if len(changes) > max(3, len(rates) // 3):
        return []
    return [(epochs[i], rates[i - 1], rates[i]) for i in changes if rates[i] < rates[i - 1]]


def _mark_drops(ax: Any, drops: Sequence[tuple[Any, float, float]], label: bool) -> None:
    for epoch, old, new in drops:
        ax.axvline(epoch, color="#555555", linestyle="--", linewidth=1)
        if label:
            ax.annotate(f"lr {old:.3g}→{new:.3g}", xy=(epoch, 1), xycoords=("data", "axes fraction"),
                        xytext=(3, -12), textcoords="offset points", fontsize=8, color="#333333")


def plot_history(
    history: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str | None = None
) -> Figure:
    """Save the deck's curves, loss (left) and accuracy (right) in two panels, and return the figure.

    Two panels, because a loss can be many times larger than 1 in the first epochs and would otherwise
    flatten the accuracy curves to the floor; the loss axis turns logarithmic when the losses span more
    than a factor of 20. Dashed lines mark the epochs where a stepwise schedule lowered the rate.
    Curves that have no value at any epoch (e.g. val_* when there is no validation set) are left out.
    """
    title = history_title(history) if title is None else title
    drops = rate_drops(history)
    import matplotlib.style

    with matplotlib.style.context("ggplot"):
        figure = new_figure(figsize=(11, 5))  # redrawn after every epoch: fixed margins, no layout engine
        figure.subplots_adjust(left=0.07, right=0.985, bottom=0.11, top=0.87, wspace=0.2)
        loss_ax, accuracy_ax = figure.subplots(1, 2)
        for ax, kind in ((loss_ax, "loss"), (accuracy_ax, "accuracy")):
            for key in (f"train_{kind}", f"val_{kind}"):
                epochs, values = _points(history, key)
                if epochs:
                    ax.plot(epochs, values, label=key, marker="o" if len(epochs) < 3 else None)
            ax.set_xlabel("Epoch #")
            ax.set_ylabel(kind.capitalize())
            if ax.lines:
                ax.legend()
            _mark_drops(ax, drops, label=ax is loss_ax)
        losses = [y for key in ("train_loss", "val_loss") for y in _points(history, key)[1] if y > 0]
        if losses and max(losses) > 20 * min(losses):
            loss_ax.set_yscale("log")
        figure.suptitle(title)
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
