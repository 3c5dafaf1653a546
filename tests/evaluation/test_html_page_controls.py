"""report.html names the best epoch and what early stopping and the plateau did, from history.json's marks."""

import json
import re

from cnn_flax.evaluation.html_page import build_report

HISTORY = [
    {"epoch": 1, "learning_rate": 0.02, "val_loss": 0.9, "val_accuracy": 0.70},
    {"epoch": 2, "learning_rate": 0.02, "val_loss": 0.6, "val_accuracy": 0.80, "lr_reduced_to": 0.01},
    {"epoch": 3, "learning_rate": 0.01, "val_loss": 0.6, "val_accuracy": 0.85},
    {"epoch": 4, "learning_rate": 0.01, "val_loss": 0.7, "val_accuracy": 0.85, "lr_reduced_to": 0.005,
     "stopped_early": True, "restored_epoch": 2},
]


def _text(workdir, checkpoint=None):
    (workdir / "history.json").write_text(json.dumps(HISTORY))
    config = {"name": "tiny"} if checkpoint is None else {"name": "tiny", "checkpoint": checkpoint}
    (workdir / "config.json").write_text(json.dumps(config))
    page = open(build_report(workdir), encoding="utf-8").read()
    return re.sub(r"<[^>]+>", "", page)


def test_the_page_says_which_epoch_is_best_and_marks_reductions_and_the_stop(tmp_path):
    text = _text(tmp_path)
    assert "Best epoch by val_loss: 2 (0.6)" in text  # the first of the tied best, as Keras keeps it
    assert "Learning rate lowered on plateau: after epoch 2 to 0.01, after epoch 4 to 0.005." in text
    assert "Early stopping ended the run after epoch 4." in text
    assert "The final weights are those of epoch 2" in text
    assert "rate lowered to 0.01" in text and "early stop; weights of epoch 2 restored" in text
    text = _text(tmp_path, {"monitor": "val_accuracy", "mode": "auto", "keep_best": 1})
    assert "Best epoch by val_accuracy: 3 (0.85)" in text
    text = _text(tmp_path, {"monitor": "val_accuracy", "mode": "min", "keep_best": 1})
    assert "Best epoch by val_accuracy: 1 (0.7)" in text
