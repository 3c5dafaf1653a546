"""The worst mistakes of a split, found in one pass over batches, and the terminal's epoch line."""

import json

import numpy as np
import pytest
from PIL import Image

from cnn_flax.evaluation.mistakes import WorstMistakes, write_mistakes
from cnn_flax.training.progress import epoch_line, format_duration


def _split(seed=0, n=203, classes=6):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, classes)).astype(np.float32)
    labels = rng.integers(0, classes, n)
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    return logits, labels, images


def test_one_pass_over_batches_keeps_the_worst_mistakes_of_the_whole_split():
    logits, labels, images = _split()
    worst, asked = WorstMistakes(capacity=7), []
    for start in range(0, len(labels), 16):
        rows = slice(start, start + 16)
        worst.update(logits[rows], labels[rows], lambda rows=rows: asked.append(rows.start) or images[rows])
    # Independently: the softmax probability of the true class of every wrong prediction, lowest first.
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    wrong = np.flatnonzero(probs.argmax(1) != labels)
    expected = wrong[np.argsort(probs[wrong, labels[wrong]], kind="stable")][:7]
    np.testing.assert_array_equal(worst.index, expected)
    np.testing.assert_array_equal(worst.images, images[expected])
    np.testing.assert_allclose(worst.p_true, probs[expected, labels[expected]], rtol=1e-6)
    assert len(asked) < len(range(0, len(labels), 16))  # batches with nothing worse were never fetched


def test_mistakes_files_name_the_files_when_the_dataset_knows_them(tmp_path):
    logits, labels, images = _split(1, n=40, classes=3)
    worst = WorstMistakes(capacity=5)
    worst.update(logits, labels, lambda: images)
    names = ["cat", "dog", "fox"]
    files = [f"val/{names[label]}/img_{i:03d}.jpg" for i, label in enumerate(labels)]
    rows = write_mistakes(tmp_path, worst, names, files)
    assert json.loads((tmp_path / "mistakes.json").read_text()) == rows
    assert [r["file"] for r in rows] == [files[i] for i in worst.index]
    assert all(r["true"] == names[labels[r["index"]]] and r["predicted"] != r["true"] for r in rows)
    assert [r["prob_true"] for r in rows] == sorted(r["prob_true"] for r in rows)
    with Image.open(tmp_path / "mistakes.png") as figure:
        assert figure.format == "PNG"


def test_no_mistakes_leaves_an_empty_list_and_no_stale_figure(tmp_path):
    (tmp_path / "mistakes.png").write_bytes(b"an earlier evaluation's")
    worst = WorstMistakes()
    worst.update(np.eye(3, dtype=np.float32) * 5, np.arange(3), lambda: pytest.fail("no pixels needed"))
    assert write_mistakes(tmp_path, worst, ["a", "b", "c"]) == []
    assert not (tmp_path / "mistakes.png").exists()


def test_epoch_line_and_durations():
    record = dict(epoch=3, learning_rate=0.00995025, train_loss=0.51234, train_accuracy=0.834, val_loss=0.43,
                  val_accuracy=0.86125, seconds=12.3)
    assert epoch_line(record, 10, 12.3, 86.4) == ("epoch 3/10  lr 0.00995025  loss 0.5123 (val 0.4300)  "
                                                  "accuracy 0.8340 (val 0.8612)  12s  ETA 1m26s")
    no_val = dict(record, val_loss=None, val_accuracy=None)
    assert epoch_line(no_val, 3, 5, None) == "epoch 3/3  lr 0.00995025  loss 0.5123  accuracy 0.8340  5s"
    assert [format_duration(s) for s in (0.4, 59.6, 61, 3600 * 2 + 7 * 60 + 30)] == ["0s", "1m00s", "1m01s", "2h07m"]
