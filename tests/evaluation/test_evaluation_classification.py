"""Classification report, confusion matrix, prediction grid and write_evaluation on hand-checked cases."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from cnn_flax.errors import UserError
from cnn_flax.evaluation.classification import (
    classification_report_text,
    confusion_counts,
    plot_confusion_matrix,
    plot_predictions,
    write_evaluation,
)

NAMES = ["cat", "dog", "bird"]
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
PREDICTIONS = np.array([0, 0, 1, 2, 1, 1, 0, 2, 2, 1])
# rows: true class, columns: predicted class, counted by hand from the two lists above.
CONFUSION = np.array([[2, 1, 1], [1, 2, 0], [0, 1, 2]])


def _row(text: str, name: str) -> list[str]:
    """The numbers on the report line that starts with `name`."""
    for line in text.splitlines():
        if line.strip().startswith(name + " "):
            return line.strip()[len(name) :].split()
    raise AssertionError(f"no line for {name!r} in\n{text}")


def test_classification_report_numbers_match_hand_computation():
    text = classification_report_text(LABELS, PREDICTIONS, NAMES)
    # cat: predicted 3 times, 2 right -> P 2/3; 4 true, 2 found -> R 1/2; F1 = 2PR/(P+R) = 4/7.
    assert _row(text, "cat") == ["0.67", "0.50", "0.57", "4"]
    # dog: predicted 4 times, 2 right -> P 1/2; R 2/3; F1 4/7.
    assert _row(text, "dog") == ["0.50", "0.67", "0.57", "3"]
    # bird: predicted 3 times, 2 right; 3 true -> P = R = F1 = 2/3.
    assert _row(text, "bird") == ["0.67", "0.67", "0.67", "3"]
    assert _row(text, "accuracy") == ["0.60", "10"]
    # macro: P (2/3+1/2+2/3)/3 = .611, R the same, F1 (4/7+4/7+2/3)/3 = .603.
    assert _row(text, "macro avg") == ["0.61", "0.61", "0.60", "10"]
    # weighted by support 4,3,3: P (8/3+3/2+2)/10 = .617, R = accuracy, F1 (16/7+12/7+2)/10 = .600.
    assert _row(text, "weighted avg") == ["0.62", "0.60", "0.60", "10"]


def test_classification_report_lists_classes_never_seen():
    names = [*NAMES, "goldfish"]
    text = classification_report_text(LABELS, PREDICTIONS, names)
    assert _row(text, "goldfish") == ["0.00", "0.00", "0.00", "0"]
    # The absent class counts as zero in the macro average: P (2/3+1/2+2/3+0)/4 = .458.
    assert _row(text, "macro avg")[0] == "0.46"
    assert _row(text, "accuracy") == ["0.60", "10"]


@pytest.mark.parametrize("seed", range(4))
def test_classification_report_is_scikit_learns_text(seed):
    """Character for character scikit-learn's report, on random cases with classes never predicted or never
    present and names longer than 'weighted avg'."""
    from sklearn.metrics import classification_report, confusion_matrix

    rng = np.random.default_rng(seed)
    num_classes = int(rng.integers(2, 14))
    names = [f"class {i}" if i % 5 else f"a much longer class name {i}" for i in range(num_classes)]
    labels = rng.integers(0, max(1, num_classes - seed), 60)  # seed > 0: the last classes never true
    predictions = np.where(rng.random(60) < 0.6, labels, rng.integers(0, num_classes, 60))
    expected = classification_report(labels, predictions, labels=np.arange(num_classes), target_names=names,
                                     digits=2, zero_division=0)
    assert classification_report_text(labels, predictions, names) == expected
    np.testing.assert_array_equal(confusion_counts(labels, predictions, num_classes),
                                  confusion_matrix(labels, predictions, labels=np.arange(num_classes)))


def test_report_rejects_labels_beyond_the_class_names():
    with pytest.raises(UserError, match="2 class names"):
        classification_report_text(LABELS, PREDICTIONS, NAMES[:2])


def _assert_png(path, min_side=300):
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert min(image.size) >= min_side
        image.verify()


def test_confusion_matrix_counts_and_labels(tmp_path, captured_figures):
    path = tmp_path / "confusion_matrix.png"
    matrix = plot_confusion_matrix(LABELS, PREDICTIONS, NAMES, path)
    np.testing.assert_array_equal(matrix, CONFUSION)
    _assert_png(path)
    ax = captured_figures[0].axes[0]
    assert ax.get_title() == "Confusion Matrix"
    assert ax.get_ylabel() == "True label"
    assert ax.get_xlabel() == "Predicted label"
    assert [t.get_text() for t in ax.get_xticklabels()] == NAMES
    assert [t.get_text() for t in ax.get_yticklabels()] == NAMES
    assert all(t.get_rotation() != 0 for t in ax.get_xticklabels())
    assert sorted(t.get_text() for t in ax.texts) == sorted(str(v) for v in CONFUSION.ravel())
    colour = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_color() for t in ax.texts}
    assert colour[0, 0] == colour[2, 2] and colour[0, 0] != colour[0, 1]  # the darkest cells' text stands out
    assert len(captured_figures[0].axes) == 2  # the matrix and its colorbar


def test_confusion_matrix_for_many_classes_drops_cell_numbers_and_names(tmp_path, captured_figures):
    num_classes = 200
    labels = np.arange(1000) % num_classes
    predictions = labels.copy()
    predictions[::2] = (labels[::2] + 1) % num_classes  # every even example predicted as the next class
    names = [f"class number {i}" for i in range(num_classes)]
    path = tmp_path / "cm.png"
    matrix = plot_confusion_matrix(labels, predictions, names, path)
    assert matrix.shape == (200, 200)
    assert matrix.sum() == 1000
    # Class c's 5 examples sit at positions c, c+200, ... which share c's parity: even classes are all
    # predicted as c+1, odd classes all right.
    assert matrix[0, 0] == 0 and matrix[0, 1] == 5
    assert matrix[1, 1] == 5 and matrix[198, 199] == 5 and matrix[199, 199] == 5
    assert np.trace(matrix) == 100 * 5
    _assert_png(path)
    ax = captured_figures[0].axes[0]
    assert len(ax.texts) == 0
    assert not any(t.get_text().startswith("class") for t in ax.get_xticklabels())
    assert len(ax.get_xticks()) <= 20


def test_prediction_grid(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 16, 16, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1])
    predictions = np.array([0, 2, 2, 1, 1])
    path = tmp_path / "predictions.png"
    grid = plot_predictions(images, labels, predictions, NAMES, path)
    _assert_png(path, min_side=200)
    assert grid.title == "Predictions"
    assert grid.captions == [
        "pred: cat / true: cat",
        "pred: bird / true: dog",
        "pred: bird / true: bird",
        "pred: dog / true: cat",
        "pred: dog / true: dog",
    ]
    assert grid.colours == ["green", "red", "green", "red", "green"]
    with Image.open(path) as saved:
        np.testing.assert_array_equal(np.asarray(saved.convert("RGB")), grid.image)  # the PNG is what was drawn
    # 3 columns (ceil of sqrt 5), 2 rows: each tile enlarged by whole pixels (nearest), one cell left white
    side = 16 * grid.scale
    assert grid.scale == 15
    assert len({top for top, _ in grid.corners}) == 2 and len({left for _, left in grid.corners}) == 3
    for (top, left), image in zip(grid.corners, images, strict=True):
        np.testing.assert_array_equal(grid.image[top:top + side, left:left + side],
                                      np.repeat(np.repeat(image, 15, 0), 15, 1))
    (_, first_left), (bottom, _) = grid.corners[0], grid.corners[-1]
    third_left = grid.corners[2][1]
    assert (grid.image[bottom:bottom + side, third_left:third_left + side] == 255).all()
    # the captions are drawn above their tiles, in their colour: red above the first mistake
    caption = grid.image[grid.corners[1][0] - 14:grid.corners[1][0], grid.corners[1][1]:grid.corners[1][1] + side]
    assert ((caption[..., 0] > 200) & (caption[..., 1] < 80)).any()
    above_hit = grid.image[grid.corners[0][0] - 14:grid.corners[0][0], first_left:first_left + side]
    assert not ((above_hit[..., 0] > 200) & (above_hit[..., 1] < 80)).any()


def test_prediction_grid_limits_images_and_shortens_long_names(tmp_path):
    images = np.zeros((30, 8, 8, 1), dtype=np.uint8)
    names = ["goldfish, Carassius auratus", "European fire salamander, Salamandra salamandra"]
    labels = np.ones(30, dtype=int)
    grid = plot_predictions(images, labels, np.zeros(30, dtype=int), names, tmp_path / "p.png", max_images=4)
    assert grid.captions == ["pred: goldfish / true: European fire…"] * 4
    assert grid.image.shape[2] == 3 and len(grid.corners) == 4  # grayscale drawn as RGB


def test_grid_captions_fall_back_to_pillows_font_without_matplotlibs(tmp_path, monkeypatch):
    import importlib.util

    from cnn_flax.evaluation import files

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "matplotlib"
                        else real(name, *args))
    # Sizes no grid has used yet, so the fonts are looked up now (each size's font is kept once found).
    monkeypatch.setattr(files, "CAPTION_PIXELS", files.CAPTION_PIXELS + 1)
    monkeypatch.setattr(files, "TITLE_PIXELS", files.TITLE_PIXELS + 1)
    grid = plot_predictions(np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 1]), np.array([1, 1]), NAMES,
                            tmp_path / "p.png")
    _assert_png(tmp_path / "p.png", min_side=200)
    top, left = grid.corners[0]  # a mistake: its caption drawn in red above it
    caption = grid.image[top - 16:top, left:left + 8 * grid.scale]
    assert ((caption[..., 0] > 200) & (caption[..., 1] < 80)).any()


def test_write_evaluation_writes_every_file(tmp_path):
    # 6 classes; the label's score is, by hand: 1st, 3rd, 6th (last), 1st -> rank-1 2/4, rank-5 3/4.
    scores = np.array(
        [
            [9.0, 1, 2, 3, 4, 5],
            [5.0, 1, 4, 3, 2, 0],
            [5.0, 1, 0, 3, 2, 4],
            [0.0, 1, 2, 9, 4, 5],
        ]
    )
    labels = np.array([0, 4, 2, 3])
    names = [f"c{i}" for i in range(6)]
    images = np.full((4, 8, 8, 3), 128, dtype=np.uint8)
    metrics = write_evaluation(
        tmp_path, split="test", scores=scores, labels=labels, class_names=names, images=images, loss=1.25
    )
    expected = {"split": "test", "num_examples": 4, "loss": 1.25, "rank1": 0.5, "rank5": 0.75}
    assert metrics == expected
    assert json.loads((tmp_path / "metrics.json").read_text()) == expected
    assert list(json.loads((tmp_path / "metrics.json").read_text())) == list(expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "confusion_matrix.png",
        "metrics.json",
        "predictions.png",
        "report.txt",
    ]
    report_text = (tmp_path / "report.txt").read_text()
    assert report_text.strip() == classification_report_text(labels, scores.argmax(1), names).strip()
    assert re.search(r"accuracy\s+0\.50\s+4", report_text)
    _assert_png(tmp_path / "predictions.png", min_side=200)


def test_write_evaluation_with_prefix_and_without_images_or_finite_loss(tmp_path):
    scores = np.eye(3)[[0, 1, 1]]
    metrics = write_evaluation(
        tmp_path,
        split="val",
        scores=scores,
        labels=np.array([0, 1, 2]),
        class_names=NAMES,
        loss=float("nan"),
        prefix="tta_",
    )
    assert metrics == {"split": "val", "num_examples": 3, "loss": None, "rank1": 2 / 3, "rank5": 1.0}
    assert json.loads((tmp_path / "tta_metrics.json").read_text())["loss"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "tta_confusion_matrix.png",
        "tta_metrics.json",
        "tta_report.txt",
    ]


def test_write_evaluation_rejects_class_count_mismatch(tmp_path):
    with pytest.raises(UserError, match="3 scores per example but there are 2 class names"):
        write_evaluation(tmp_path, split="test", scores=np.eye(3), labels=np.arange(3), class_names=NAMES[:2])
