"""Training curves, comparison plots and tables, and the atomic replacement of files a user may be viewing."""

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from cnn_flax.evaluation.curves import (
    comparison_table,
    epoch_table,
    history_title,
    plot_comparison,
    plot_history,
    rate_drops,
)
from cnn_flax.evaluation.files import save_figure, write_json


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
    return {line.get_label(): line for ax in figure.axes for line in ax.get_lines() if line.get_label()[0] != "_"}


def test_history_figure_has_the_decks_title_and_loss_and_accuracy_panels(tmp_path):
    history = [_entry(1), _entry(2, val=False), _entry(3)]
    path = tmp_path / "training.png"
    figure = plot_history(history, path)
    loss_ax, accuracy_ax = figure.axes
    assert history_title(history) == "Training Loss and Accuracy [Epoch 3]"
    assert figure.get_suptitle() == "Training Loss and Accuracy [Epoch 3]"
    assert (loss_ax.get_xlabel(), loss_ax.get_ylabel()) == ("Epoch #", "Loss")
    assert (accuracy_ax.get_xlabel(), accuracy_ax.get_ylabel()) == ("Epoch #", "Accuracy")
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ["train_loss", "val_loss"]
    assert [t.get_text() for t in accuracy_ax.get_legend().get_texts()] == ["train_accuracy", "val_accuracy"]
    lines = _lines(figure)
    np.testing.assert_allclose(lines["train_loss"].get_xydata(), [[1, 2.0], [2, 1.0], [3, 2 / 3]])
    # Epoch 2 had no validation: the curve joins epochs 1 and 3 rather than dropping to zero.
    np.testing.assert_allclose(lines["val_accuracy"].get_xydata(), [[1, 0.15], [3, 0.45]])
    assert loss_ax.get_yscale() == "linear"  # losses within a factor of 20
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (1100, 500)


def test_a_huge_first_loss_turns_the_loss_axis_logarithmic_and_leaves_accuracy_alone(tmp_path):
    history = [dict(_entry(e), val_loss=21.9 if e == 1 else 0.3) for e in (1, 2, 3)]
    loss_ax, accuracy_ax = plot_history(history, tmp_path / "t.png").axes
    assert loss_ax.get_yscale() == "log"
    assert accuracy_ax.get_ylim()[1] < 1  # the accuracy panel spans the accuracies only


def test_stepwise_rate_drops_are_marked_and_smooth_decay_is_not(tmp_path):
    rates = [0.01] * 4 + [0.001] * 4 + [0.0001] * 2
    history = [dict(_entry(e + 1), learning_rate=r) for e, r in enumerate(rates)]
    assert rate_drops(history) == [(5, 0.01, 0.001), (9, 0.001, 0.0001)]
    loss_ax, accuracy_ax = plot_history(history, tmp_path / "t.png").axes
    for ax in (loss_ax, accuracy_ax):
        assert [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"] == [5, 9]
    assert [t.get_text() for t in loss_ax.texts] == ["lr 0.01→0.001", "lr 0.001→0.0001"]
    decaying = [dict(_entry(e + 1), learning_rate=0.01 / (1 + 0.1 * e)) for e in range(10)]
    assert rate_drops(decaying) == []


def test_history_without_validation_and_with_custom_title(tmp_path):
    history = [{"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5}]
    figure = plot_history(history, tmp_path / "t.png", title="MiniVGG")
    assert figure.get_suptitle() == "MiniVGG"
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
