"""The worst mistakes of an evaluation: the wrong predictions that gave the true class the least probability.

A split can be far too large to keep its images (ImageNet's 50,000 validation images), and the worst
mistakes can be anywhere in it, so `WorstMistakes` sees the split batch by batch in a single pass and keeps
only the images of the current worst `capacity` mistakes; it asks for a batch's pixels only when a
mistake of that batch enters the pool. Each mistake keeps its position in the split, so a dataset that
knows the file behind each example can name it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnn_flax.evaluation.classification import plot_predictions
from cnn_flax.evaluation.files import write_json


def _probabilities(scores: np.ndarray) -> np.ndarray:
    """Softmax of logits (rows that already sum to one, probabilities, give back nearly the same ranking)."""
    shifted = scores.astype(np.float64) - scores.max(axis=1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


class WorstMistakes:
    def __init__(self, capacity: int = 25) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.seen = 0
        self.index = np.zeros(0, np.int64)
        self.label = np.zeros(0, np.int64)
        self.predicted = np.zeros(0, np.int64)
        self.p_true = np.zeros(0, np.float64)
        self.p_predicted = np.zeros(0, np.float64)
        self.images: np.ndarray | None = None

    def update(self, scores: Any, labels: Any, batch_images: Callable[[], np.ndarray]) -> None:
        """Take one batch (scores [B, C], labels [B]) in split order; `batch_images()` gives its uint8 pixels."""
        scores, labels = np.asarray(scores), np.asarray(labels).astype(np.int64)
        start, self.seen = self.seen, self.seen + len(labels)
        probs = _probabilities(scores)
        predicted = probs.argmax(axis=1)
        wrong = np.flatnonzero(predicted != labels)
        if wrong.size == 0:
            return
        p_true = probs[wrong, labels[wrong]]
        if len(self.index) >= self.capacity and p_true.min() >= self.p_true.max():
            return  # nothing here is worse than the pool's best: its pixels are not needed
        images = np.asarray(batch_images())[wrong]
        pool_images = images if self.images is None else np.concatenate([self.images, images])
        merged = dict(index=np.concatenate([self.index, start + wrong]),
                      label=np.concatenate([self.label, labels[wrong]]),
                      predicted=np.concatenate([self.predicted, predicted[wrong]]),
                      p_true=np.concatenate([self.p_true, p_true]),
                      p_predicted=np.concatenate([self.p_predicted, probs[wrong, predicted[wrong]]]))
        keep = np.lexsort((merged["index"], merged["p_true"]))[: self.capacity]  # worst first, then split order
        for name, values in merged.items():
            setattr(self, name, values[keep])
        self.images = pool_images[keep]

    def rows(self, class_names: Sequence[str], file_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        rows = []
        for i in range(len(self.index)):
            row = dict(index=int(self.index[i]), true=str(class_names[self.label[i]]),
                       predicted=str(class_names[self.predicted[i]]), prob_true=float(f"{self.p_true[i]:.6g}"),
                       prob_predicted=float(f"{self.p_predicted[i]:.6g}"))
            if file_names is not None:
                row["file"] = str(file_names[self.index[i]])
            rows.append(row)
        return rows


def write_mistakes(directory: str | os.PathLike, worst: WorstMistakes, class_names: Sequence[str],
                   file_names: Sequence[str] | None = None, prefix: str = "") -> list[dict[str, Any]]:
    """Write `{prefix}mistakes.json` (worst first) and, when there is a mistake, `{prefix}mistakes.png`.

    file_names: the file of each example of the split, in split order, when the dataset knows them.
    """
    out = Path(directory)
    rows = worst.rows(class_names, file_names)
    write_json(out / f"{prefix}mistakes.json", rows)
    figure = out / f"{prefix}mistakes.png"
    if rows:
        notes = [f"{row.get('file') or '#' + str(row['index'])}  p(true) {row['prob_true']:.3g}" for row in rows]
        plot_predictions(worst.images, worst.label, worst.predicted, class_names, figure, notes=notes,
                         title="Worst mistakes (lowest probability of the true class first)")
    elif figure.exists():
        figure.unlink()  # an earlier evaluation's mistakes would no longer be true
    return rows
