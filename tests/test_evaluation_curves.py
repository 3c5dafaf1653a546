"""Training curves, comparison plots and tables, and the atomic replacement of files a user may be viewing."""

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from cnn_flax.evaluation._files import save_figure, write_json
from cnn_flax.evaluation.curves import (
    comparison_table,
    epoch_table,
    history_title,
    plot_comparison,
    plot_history,
)


def _entry(epoch, val=True):
    return {
        "epoch": epoch,
        "learning_rate": 1e-3,
        "train_loss": 2.0 / epoch,
        "train_accuracy": 0.2 * epoch,
        "val_loss": 2.5 / epoch if val else None,
        "val_accuracy": 0.15 * epoch if val else None,
        "seconds": 1.5,
    }


def _lines(figure):
    return {line.get_label(): line for line in figure.axes[0].get_lines()}


def test_history_figure_has_the_decks_title_axes_and_curves(tmp_path):
    history = [_entry(1), _entry(2, val=False), _entry(3)]
    path = tmp_path / "training.png"
    figure = plot_history(history, path)
    ax = figure.axes[0]
    assert history_title(history) == "Training Loss and Accuracy [Epoch 3]"
    assert ax.get_title() == "Training Loss and Accuracy [Epoch 3]"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("Epoch #", "Loss/Accuracy")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "train_loss",
        "val_loss",
        "train_accuracy",
        "val_accuracy",
    ]
    lines = _lines(figure)
    np.testing.assert_allclose(lines["train_loss"].get_xydata(), [[1, 2.0], [2, 1.0], [3, 2 / 3]])
    # Epoch 2 had no validation: the curve joins epochs 1 and 3 rather than dropping to zero.
    np.testing.assert_allclose(lines["val_accuracy"].get_xydata(), [[1, 0.15], [3, 0.45]])
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (800, 600)


def test_history_without_validation_and_with_custom_title(tmp_path):
    history = [{"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5}]
    figure = plot_history(history, tmp_path / "t.png", title="MiniVGG")
    assert figure.axes[0].get_title() == "MiniVGG"
    assert sorted(_lines(figure)) == ["train_accuracy", "train_loss"]


def test_history_redraw_replaces_the_file_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "training.png"
    plot_history([_entry(1)], path)
    first = path.read_bytes()
    plot_history([_entry(1), _entry(2)], path)
    assert path.read_bytes() != first
    assert [p.name for p in tmp_path.iterdir()] == ["training.png"]


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "training.png"
    path.write_bytes(b"previous")

    class Broken(Figure):
        def savefig(self, fname, **kwargs):
            fname.write(b"partial")
            raise RuntimeError("renderer failed")

    with pytest.raises(RuntimeError):
        save_figure(Broken(), path)
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["training.png"]


def test_json_is_strict(tmp_path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "m.json", {"loss": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_empty_history_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plot_history([], tmp_path / "t.png")


def test_comparison_plot_has_one_curve_per_run(tmp_path):
    runs = {"conv_bn_act": [_entry(1), _entry(2)], "elu": [_entry(1, val=False), _entry(2)]}
    figure = plot_comparison(runs, tmp_path / "compare.png")
    lines = _lines(figure)
    assert sorted(lines) == ["conv_bn_act", "elu"]
    np.testing.assert_allclose(lines["conv_bn_act"].get_xydata(), [[1, 0.15], [2, 0.3]])
    np.testing.assert_allclose(lines["elu"].get_xydata(), [[2, 0.3]])
    assert (tmp_path / "compare.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="no run has any value"):
        plot_comparison(runs, tmp_path / "x.png", metric="top5")


def test_comparison_table_formats_percentages_and_loss():
    table = comparison_table(
        {
            "baseline": {"rank1": 0.3023, "rank5": 0.5434, "loss": 3.14159},
            "conv_act_bn": {"rank1": 0.55, "rank5": 0.8012, "loss": None},
        }
    )
    assert table == (
        "variant      rank-1  rank-5    loss\n"
        "baseline     30.23%  54.34%  3.1416\n"
        "conv_act_bn  55.00%  80.12%       -\n"
    )
    with_average = comparison_table({"deck": {"rank1": 0.5, "rank5": 0.75, "loss": 1.0},
                                     "modern": {"rank1": 0.6, "rank5": 0.8, "loss": 0.9, "ema_rank1": 0.625,
                                                "ema_rank5": 0.875}})
    assert with_average == (
        "variant  rank-1  rank-5    loss  EMA rank-1  EMA rank-5\n"
        "deck     50.00%  75.00%  1.0000           -           -\n"
        "modern   60.00%  80.00%  0.9000      62.50%      87.50%\n"
    )


def test_epoch_table_lists_checkpoints_in_epoch_order():
    rows = [
        {"epoch": 10, "rank1": 0.2512, "rank5": 0.4987, "loss": 3.5},
        {"epoch": 5, "rank1": 0.1, "rank5": 0.3, "loss": 4.25},
        {"epoch": 40, "rank1": 0.3023, "rank5": 0.5434, "loss": 3.0},
    ]
    assert epoch_table(rows) == (
        "epoch  rank-1  rank-5    loss\n"
        "5      10.00%  30.00%  4.2500\n"
        "10     25.12%  49.87%  3.5000\n"
        "40     30.23%  54.34%  3.0000\n"
    )
