"""report.html from hand-written workdir files: every section from its file, nothing from anywhere else."""

import json
import re

import numpy as np
from PIL import Image

from cnn_flax.evaluation import classification_report_text
from cnn_flax.evaluation.html_page import build_report

NAMES = ["goldfish, Carassius auratus", "tabby cat", "fox"]


def _png(path, shade):
    Image.fromarray(np.full((6, 9, 3), shade, np.uint8)).save(path)


def _write(path, payload):
    path.write_text(json.dumps(payload))


def _run_workdir(root):
    root.mkdir()
    _write(root / "config.json", {"name": "tiny", "optimizer": {"name": "sgd", "learning_rate": 0.01}})
    _write(root / "metrics.json", {"split": "test", "num_examples": 6, "loss": 0.75, "rank1": 0.5, "rank5": 1.0})
    _write(root / "history.json", [{"epoch": 1, "learning_rate": 0.01, "train_loss": 1.2, "val_loss": 0.9}])
    labels, predictions = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 2, 2, 2])
    (root / "report.txt").write_text(classification_report_text(labels, predictions, NAMES))
    _write(root / "mistakes.json", [{"index": 3, "true": "tabby cat", "predicted": "fox", "prob_true": 0.01,
                                     "prob_predicted": 0.9, "file": "test/tabby cat/003.jpg"}])
    _write(root / "run_info.json", {"environment": {"python": "3.11.7", "jax": "0.10.2", "devices": ["cpu (cpu:0)"]},
                                    "commands": [{"mode": "train", "command": "python launch.py --config c.py",
                                                  "time": "2026-12-01 05:00:00"}]})
    for shade, name in enumerate(("training", "confusion_matrix", "mistakes", "predictions")):
        _png(root / f"{name}.png", 40 * shade)


def _page(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def test_a_run_page_shows_each_file_and_embeds_every_figure(tmp_path):
    root = tmp_path / "run"
    _run_workdir(root)
    page = _page(build_report(root, ["Optimizer: sgd (lr 0.01)", "Learning rate plan:", "  epoch 1: lr 0.01"]))
    assert re.findall(r'<section id="([^"]+)"', page) == ["results", "curves", "per-class", "confusion-matrix",
                                                          "predictions", "learning-rate", "config", "environment"]
    assert "rank-1 50.00%" in page and "rank-5 100.00%" in page and "loss 0.7500" in page
    # Per-class rows parsed out of scikit-learn's text, names with commas and spaces included.
    assert "<td>goldfish, Carassius auratus</td><td>1.00</td><td>0.50</td><td>0.67</td><td>2</td>" in page
    assert "<td>macro avg</td>" in page and "<td>accuracy</td>" in page
    assert "<td>test/tabby cat/003.jpg</td><td>tabby cat</td><td>fox</td>" in page
    assert "epoch 1: lr 0.01" in page and "python launch.py --config c.py" in page and "0.10.2" in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 4 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "checkpoints" not in re.findall(r'<section id="([^"]+)"', page)  # --checkpoint=all never ran
    _write(root / "checkpoints_evaluation.json", [{"epoch": 2, "rank1": 0.6, "rank5": 1.0, "loss": 0.5},
                                                  {"epoch": 1, "rank1": 0.5, "rank5": 1.0, "loss": 0.7}])
    page = _page(build_report(root))
    rows = re.search(r'<section id="checkpoints">.*?</section>', page).group(0)
    assert re.findall(r"<tr><td>(\d)</td><td>([\d.]+%)</td>", rows) == [("1", "50.00%"), ("2", "60.00%")]
    assert "Not written yet: config.json" in page  # no plan given: the plan section says what is missing


def test_an_empty_workdir_page_says_what_is_missing(tmp_path):
    page = _page(build_report(tmp_path))
    assert "Not written yet: metrics.json" in page and "Not written yet: report.txt" in page
    assert "<img" not in page


def test_an_ablation_page_compares_the_variants_and_links_their_pages(tmp_path):
    (tmp_path / "ablation.txt").write_text("variant  rank-1\n")
    _png(tmp_path / "ablation.png", 90)
    for name, rank1, activation in (("baseline", 0.8, "relu"), ("elu", 0.85, "elu")):
        variant = tmp_path / name
        variant.mkdir()
        _write(variant / "metrics.json", {"rank1": rank1, "rank5": 0.99, "loss": 0.4})
        _write(variant / "config.json", {"model": {"name": "minivgg", "activation": activation}})
        (variant / "report.html").write_text("<html></html>")
    page = _page(build_report(tmp_path))
    assert re.findall(r'<section id="([^"]+)"', page) == ["ablation", "config", "environment"]
    assert '<td><a href="baseline/report.html">baseline</a></td><td>80.00%</td>' in page
    assert '<td><a href="elu/report.html">elu</a></td><td>85.00%</td>' in page and "activation=elu" in page
    assert page.count("data:image/png;base64,") == 1


def test_the_lr_find_sweep_and_the_grad_cam_maps_get_their_places(tmp_path):
    root = tmp_path / "run"
    _run_workdir(root)
    _png(root / "mistakes_gradcam.png", 200)
    _png(root / "lr_find.png", 220)
    _write(root / "lr_find.json", {"rates": [1e-7, 1e-4, 0.1], "losses": [2.3, 2.0, None], "smoothed": [2.3, 2.1, 9.9],
                                   "suggestions": {"steepest": 1.26e-4, "minimum": 0.0316, "minimum_over_10": 0.00316},
                                   "suggested": 0.00316, "stopped": "diverged at step 3",
                                   "settings": {"min_lr": 1e-7, "max_lr": 10.0}, "optimizer": "sgd (lr 0.01)",
                                   "batch_size": 32})
    page = _page(build_report(root))
    assert re.findall(r'<section id="([^"]+)"', page) == ["results", "curves", "per-class", "confusion-matrix",
                                                          "predictions", "lr-find", "learning-rate", "config",
                                                          "environment"]
    section = re.search(r'<section id="lr-find">.*?</section>', page).group(0)
    assert "3 steps of sgd (lr 0.01), batch 32, the rate growing geometrically from 1e-07 to 10; diverged at " \
           "step 3" in section
    assert re.findall(r"<tr><td>([^<]+)</td><td>([^<]+)</td></tr>", section) == [
        ("steepest descent of the smoothed loss", "0.000126"), ("lowest smoothed loss", "0.0316"),
        ("lowest / 10 (suggested)", "0.00316")]
    assert 'alt="smoothed loss against the learning rate"' in section
    predictions = re.search(r'<section id="predictions">.*?</section>', page).group(0)
    # The maps follow the worst mistakes' figure and table.
    assert predictions.index('alt="worst mistakes"') < predictions.index('id="gradcam"') < predictions.index(
        'alt="Grad-CAM maps of the worst mistakes"')
