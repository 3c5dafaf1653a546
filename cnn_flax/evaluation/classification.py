"""The deck's evaluation artefacts: classification report, confusion matrix and a grid of predictions.

The report has scikit-learn's `classification_report` layout and the confusion matrix the look of its
`ConfusionMatrixDisplay`, so that they read as the deck's (written with Keras + scikit-learn) do; both are
computed and drawn here, because importing scikit-learn cost every run 0.7 s at start-up. Every class is
listed even when it never occurs in the predictions, so reports of different runs line up row by row.
Figures are drawn on bare Agg figures (no pyplot state, no display) and every file is written atomically,
because a user may be looking at the previous version while a new one is written.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnn_flax.errors import UserError
from cnn_flax.evaluation.files import (
    CaptionedGrid,
    new_figure,
    save_captioned_grid,
    save_figure,
    write_json,
    write_text,
)
from cnn_flax.evaluation.metrics import rank_accuracies

# Above this many classes a confusion matrix cell is too small for a number or a class name.
MAX_LABELLED_CLASSES = 30


def _check_predictions(
    labels: Any, predictions: Any, class_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.ndim != 1 or labels.shape != predictions.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape}: need equal-length 1-D")
    if labels.size == 0:
        raise UserError("cannot report on zero examples")
    names = [str(name) for name in class_names]
    for what, values in (("labels", labels), ("predictions", predictions)):
        if not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"{what} must be integer class indices, got dtype {values.dtype}")
        if values.min() < 0 or values.max() >= len(names):
            raise UserError(
                f"{what} range over [{values.min()}, {values.max()}] but there are {len(names)} class names; "
                "does the number of classes match the data?"
            )
    return labels, predictions, names


def confusion_counts(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 [true, predicted] counts."""
    return np.bincount(labels * num_classes + predictions, minlength=num_classes**2).reshape(num_classes, -1)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (a class never predicted or never present)."""
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)


def classification_report_text(labels: Any, predictions: Any, class_names: Sequence[str]) -> str:
    """Per-class precision / recall / f1 / support, accuracy, macro and weighted averages (two decimals),
    laid out as scikit-learn's `classification_report(..., digits=2, zero_division=0)`."""
    labels, predictions, names = _check_predictions(labels, predictions, class_names)
    matrix = confusion_counts(labels, predictions, len(names))
    hits, support, predicted = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
    precision, recall = _ratio(hits, predicted), _ratio(hits, support)
    f1 = _ratio(2 * hits, support + predicted)
    total = int(support.sum())
    width = max(len("weighted avg"), *(len(name) for name in names))
    row = f"{{:>{width}}} " + " {:>9.2f}" * 3 + " {:>9}\n"
    lines = [f"{'':>{width}} " + "".join(f" {h:>9}" for h in ("precision", "recall", "f1-score", "support")), "\n\n"]
    lines += [row.format(name, *values) for name, *values in zip(names, precision, recall, f1, support, strict=True)]
    lines.append("\n")
    lines.append(f"{'accuracy':>{width}} " + " " * 20 + f" {hits.sum() / total:>9.2f} {total:>9}\n")
    averages = {"macro avg": np.ones(len(names)), "weighted avg": support}
    for name, weights in averages.items():
        lines.append(row.format(name, *(np.average(v, weights=weights) for v in (precision, recall, f1)), total))
    return "".join(lines)


def _index_ticks(num_classes: int) -> np.ndarray:
    """Class-index ticks at multiples of 5, ten or so along an axis."""
    step = max(1, math.ceil(num_classes / 50)) * 5
    return np.arange(0, num_classes, step)


def plot_confusion_matrix(
    labels: Any, predictions: Any, class_names: Sequence[str], path: str | os.PathLike
) -> np.ndarray:
    """Save the deck's confusion-matrix figure (rows true, columns predicted) and return the count matrix.

    Up to MAX_LABELLED_CLASSES classes every cell shows its count and both axes show class names; beyond
    that (Tiny ImageNet's 200) the figure is a heat map with class indices on the axes.
    """
    labels, predictions, names = _check_predictions(labels, predictions, class_names)
    num_classes = len(names)
    matrix = confusion_counts(labels, predictions, num_classes)
    labelled = num_classes <= MAX_LABELLED_CLASSES
    side = 6 + 0.25 * num_classes if labelled else 10
    figure = new_figure(figsize=(side, side * 0.9), layout="constrained")
    ax = figure.add_subplot()
    image = ax.imshow(matrix, interpolation="nearest", cmap="Blues")
    figure.colorbar(image, ax=ax)
    if labelled:
        # Each count in the colour that reads on its cell: the map's lightest on the darker half, its darkest
        # on the lighter half.
        darkest, lightest = image.cmap(1.0), image.cmap(0.0)
        middle = (matrix.max() + matrix.min()) / 2
        size = 10 if num_classes <= 15 else 7
        for (row, column), count in np.ndenumerate(matrix):
            ax.text(column, row, str(count), ha="center", va="center", fontsize=size,
                    color=lightest if count > middle else darkest)
        ax.set_xticks(np.arange(num_classes), names, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticks(np.arange(num_classes), names)
    else:  # a heat map: a tick per class would take seconds to lay out for ImageNet's 1000
        ticks = _index_ticks(num_classes)
        ax.set_xticks(ticks, [str(t) for t in ticks], rotation=0)
        ax.set_yticks(ticks, [str(t) for t in ticks])
    ax.set(xlabel="Predicted label", ylabel="True label", title="Confusion Matrix")
    save_figure(figure, path, dpi=100)
    return matrix


def _short_name(name: str, limit: int = 16) -> str:
    """The first synonym of a WordNet-style name ('goldfish, Carassius auratus'), cut at a word to fit."""
    name = name.split(",")[0].strip()
    if len(name) <= limit:
        return name
    cut = name[: limit - 1]
    return (cut[: cut.rfind(" ")] if " " in cut else cut) + "…"


def plot_predictions(
    images: Any,
    labels: Any,
    predictions: Any,
    class_names: Sequence[str],
    path: str | os.PathLike,
    max_images: int = 25,
    notes: Sequence[str] | None = None,
    title: str = "Predictions",
) -> CaptionedGrid:
    """Save a grid of the first `max_images` images titled "pred: X / true: Y", mistakes red, hits green.

    images: uint8 [N, H, W, 3] (or [N, H, W] / [N, H, W, 1] grayscale), the raw pixels, not normalised.
    notes: an optional second title line per image (a file name, a probability).
    """
    images = np.asarray(images)
    labels, predictions, names = _check_predictions(labels, predictions, class_names)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(labels):
        raise ValueError(
            f"images must be uint8 [N, H, W(, C)] with N = {len(labels)}, got {images.dtype} {images.shape}"
        )
    if max_images < 1:
        raise ValueError(f"max_images must be at least 1, got {max_images}")
    count = min(len(images), max_images)
    cols = math.ceil(math.sqrt(count))
    captions = []
    for i in range(count):
        caption = f"pred: {_short_name(names[predictions[i]])} / true: {_short_name(names[labels[i]])}"
        captions.append(caption + (f"\n{notes[i]}" if notes is not None and notes[i] else ""))
    colours = ["green" if predictions[i] == labels[i] else "red" for i in range(count)]
    return save_captioned_grid(images[:count], captions, colours, cols, path, title)


def _optional_float(value: Any) -> float | None:
    """A loss for strict JSON: None when absent or not finite (a diverged run's NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def write_evaluation(
    directory: str | os.PathLike,
    *,
    split: str,
    scores: Any,
    labels: Any,
    class_names: Sequence[str],
    images: Any | None = None,
    loss: float | None = None,
    prefix: str = "",
) -> dict[str, Any]:
    """Write `{prefix}metrics.json`, `report.txt`, `confusion_matrix.png` (and `predictions.png` when
    images are given) into `directory`; return the metrics dict.

    scores: [N, C] logits or probabilities; labels: int [N]. The predicted class is the argmax (first on
    ties), while rank-k uses the tie rule of `metrics.in_top_k`. images, if given, are the raw uint8 pixels
    of the first len(images) examples. A non-finite loss is stored as null.
    """
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [examples, classes], got shape {scores.shape}")
    if scores.shape[1] != len(class_names):
        raise UserError(
            f"the model gives {scores.shape[1]} scores per example but there are {len(class_names)} class "
            "names; does the number of classes match the data?"
        )
    metrics: dict[str, Any] = {
        "split": split,
        "num_examples": int(scores.shape[0]),
        "loss": _optional_float(loss),
        **rank_accuracies(scores, labels, ks=(1, 5)),
    }
    predictions = np.argmax(scores, axis=1)
    out = Path(directory)
    write_json(out / f"{prefix}metrics.json", metrics)
    write_text(out / f"{prefix}report.txt", classification_report_text(labels, predictions, class_names))
    plot_confusion_matrix(labels, predictions, class_names, out / f"{prefix}confusion_matrix.png")
    if images is not None:
        shown = len(images)
        plot_predictions(
            images, labels[:shown], predictions[:shown], class_names, out / f"{prefix}predictions.png"
        )
    return metrics
