"""--mode=benchmark prints the line the README documents; the train step compiles once across steps and epochs.

These run the real phases for a fraction of a second each (their logic is tested on made-up durations
in test_benchmark_phases.py); nothing here judges a speed.
"""

import re

import numpy as np
import pytest
from run_configs import tiny_config

from cnn_flax.bench.model import _data_available, benchmark, benchmark_figures, format_line, synthetic_steps
from cnn_flax.data import make_source
from cnn_flax.run.train import Trainer, fit
from cnn_flax.training.progress import Reporter
from cnn_flax.training.workdir import RunFiles

BENCHMARK_LINE = re.compile(r"^benchmark model=(\w+) batch=(\d+) devices=(\d+) step_img_per_s=([\d.]+) "
                       r"loop_img_per_s=([\d.]+) eval_img_per_s=([\d.]+)( input_img_per_s=([\d.]+))? "
                       r"loop_over_step=([\d.]+) ")


def test_benchmark_line_on_real_data_and_one_compile(tmp_path):
    figures = benchmark_figures(tiny_config(), seconds=0.3, input_seconds=0.2)
    line = format_line(figures)
    match = BENCHMARK_LINE.match(line)
    assert match, line
    assert match.groups()[:3] == ("minivgg", "32", "8")
    assert all(float(v) > 0 for v in match.groups()[3:6]) and float(match.group(8)) > 0
    # loop/step is the median of the paired windows' ratios, not the ratio of the medians: close, not equal.
    assert float(match.group(9)) == pytest.approx(figures["loop_over_step"], abs=1e-3) and figures["loop_over_step"] > 0
    # Three timed windows of the loop, each followed by a bare-step window of the same steps.
    assert figures["steps"] == figures["loop_steps"] and figures["loop_steps"] % 3 == 0
    assert line.endswith(f"data=real device=cpu seconds=0.3 steps={figures['steps']} "
                         f"loop_steps={figures['loop_steps']} compiles=1")
    # Bare steps and the timed fit (epochs of 4 steps: it crossed epoch ends) all used one compilation.
    assert figures["compiles"] == 1 and figures["epoch_extra_s"] > 0
    # The ahead-of-time compile behind the memory figures is not one of the step's compilations.
    assert 0 < figures["first_step_s"] and figures["peak_rss_mb"] > 100
    assert 0 < figures["step_argument_mb"] < figures["peak_rss_mb"] and figures["step_temp_mb"] > 0
    assert re.search(r" first_step_s=[\d.]+ step_argument_mb=[\d.]+ step_output_mb=[\d.]+ step_temp_mb=[\d.]+ "
                     r"peak_rss_mb=[\d.]+ data=", line), line


def test_benchmark_falls_back_to_synthetic_data(tmp_path):
    config = tiny_config()
    config.data.name = "cifar10"  # not prepared on this machine
    config.data.image_size = 32
    config.data.dir = str(tmp_path / "no_tfds")
    config.benchmark.seconds = 0.2
    line = benchmark(config, str(tmp_path / "bench"))
    assert BENCHMARK_LINE.match(line), line
    assert " data=synthetic " in line and "input_img_per_s" not in line
    assert not (tmp_path / "bench").exists()


def test_a_train_split_without_one_batch_falls_back_to_synthetic_data():
    """A small folder of photos must not stop the benchmark: its loop then runs on random images. A split
    of a few batches is real data: the timed loop runs through as many of its epochs as it needs."""
    assert _data_available(tiny_config(batch_size=1024))  # 1,347 digits: one batch of 1,024
    assert not _data_available(tiny_config(batch_size=2048))


def test_synthetic_epochs_hold_a_fixed_budget_of_pixels():
    assert synthetic_steps(tiny_config(batch_size=64, **{"data.image_size": 32})) == 16 * 2**20 // (64 * 32 * 32 * 3)
    assert synthetic_steps(tiny_config(batch_size=64, **{"data.image_size": 224})) == 2  # never under two batches


def test_synthetic_source_is_deterministic_and_shaped(tmp_path):
    config = tiny_config().data
    config.update(dict(name="synthetic", image_size=12, num_classes=7, synthetic_sizes=dict(train=40, val=8, test=8)))
    first, second = make_source(config), make_source(config)
    assert first.info.image_shape == (12, 12, 3) and first.info.num_classes == 7
    assert first.info.split_sizes == {"train": 40, "val": 8, "test": 8}
    images, labels = first.arrays("train")
    assert images.dtype == np.uint8 and labels.dtype == np.int32 and set(labels) <= set(range(7))
    np.testing.assert_array_equal(images, second.arrays("train")[0])
    batch = next(iter(first.batches("train", 16, shuffle=True, seed=0, epoch=0, drop_remainder=True)))
    assert batch["image"].shape == (16, 12, 12, 3)


def test_train_step_compiles_once_over_epochs(tmp_path):
    trainer = Trainer(tiny_config(num_epochs=2, steps_per_epoch=3))
    reporter = Reporter(str(tmp_path), None, {})
    fit(trainer, RunFiles(str(tmp_path)), reporter)
    reporter.close()
    assert trainer.compile_count("train") == 1
    assert trainer.compile_count("eval") == 1
