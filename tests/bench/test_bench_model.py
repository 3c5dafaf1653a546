"""--mode=benchmark prints the line docs/performance.md documents; the train step compiles once across steps and
epochs; its operation counts, peak and per-phase memory are what they claim.

These run the real phases for a fraction of a second each (their logic is tested on made-up durations
in test_bench_phases.py); nothing here judges a speed.
"""

import gc
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from run_configs import tiny_config

from cnn_flax.bench import model as bench_model
from cnn_flax.bench.model import benchmark_figures, compiled_figures, data_available, format_line, synthetic_steps
from cnn_flax.data import make_source
from cnn_flax.run.train import Trainer, fit
from cnn_flax.training import hooks
from cnn_flax.training.progress import Reporter
from cnn_flax.training.workdir import RunFiles

BENCHMARK_LINE = re.compile(r"^benchmark model=(\w+) batch=(\d+) devices=(\d+) step_img_per_s=([\d.]+) "
                       r"loop_img_per_s=([\d.]+) eval_img_per_s=([\d.]+)( input_img_per_s=([\d.]+))? "
                       r"loop_over_step=([\d.]+) ")


def _forward_macs_per_image(params, size: int) -> int:
    """Multiply-adds of the tiny MiniVGG's convolutions and dense layers for one image, from its kernels.

    A 3x3 'same' convolution (16x16, then 8x8 after a pool) multiplies each of its Cin·Cout filters' taps
    only where they fall inside the image: XLA counts no product with the zero padding.
    """
    def taps(side: int, kernel: int = 3) -> int:  # kernel taps inside the image, summed over one axis
        reach = kernel // 2
        return sum(0 <= o + d < side for o in range(side) for d in range(-reach, reach + 1))

    macs = 0
    for block, side in (("block1", size), ("block2", size // 2)):
        for conv in ("conv1", "conv2"):
            _, _, inputs, outputs = params[f"{block}_{conv}"]["conv"]["kernel"].shape
            macs += inputs * outputs * taps(side) ** 2
    return macs + params["fc1"]["kernel"].size + params["predictions"]["kernel"].size


def test_benchmark_line_on_real_data_and_one_compile():
    figures = benchmark_figures(tiny_config(), seconds=0.3, input_seconds=0.2)
    line = format_line(figures)
    match = BENCHMARK_LINE.match(line)
    assert match, line
    assert match.groups()[:3] == ("minivgg", "32", "1")  # tiny_config runs on one device
    assert all(float(v) > 0 for v in match.groups()[3:6]) and float(match.group(8)) > 0
    # loop/step is the median of the paired windows' ratios, not the ratio of the medians: close, not equal.
    assert float(match.group(9)) == pytest.approx(figures["loop_over_step"], abs=1e-3) and figures["loop_over_step"] > 0
    # Three timed windows of the loop, each followed by a bare-step window of the same steps.
    assert figures["steps"] == figures["loop_steps"] and figures["loop_steps"] % 3 == 0
    assert line.endswith(f"data=real device=cpu seconds=0.3 steps={figures['steps']} "
                         f"loop_steps={figures['loop_steps']} compiles=1")
    # Bare steps and the timed fit (epochs of 4 steps: it crossed epoch ends) all used one compilation.
    assert figures["compiles"] == 1 and figures["epoch_extra_s"] > 0
    # The eval phase ran in a process of its own; the step and the loop here, each peak holding what was resident.
    assert 100 < figures["eval_peak_rss_mb"] and figures["eval_steps"] % 3 == 0
    resident = figures["rss_imports_mb"] + figures["rss_trainer_mb"] + figures["rss_first_step_mb"]
    assert resident * 0.9 < figures["step_peak_rss_mb"] and resident * 0.9 < figures["loop_peak_rss_mb"]
    assert figures["peak_rss_mb"] == max(figures["step_peak_rss_mb"], figures["loop_peak_rss_mb"])
    # The first step's growth may be negative: the memory its compilation freed goes back to the system after it.
    assert figures["rss_imports_mb"] > 50 and np.isfinite(figures["rss_first_step_mb"]) and 0 < figures["first_step_s"]
    assert 0 < figures["step_argument_mb"] < figures["peak_rss_mb"] and figures["step_temp_mb"] > 0
    assert 0 < figures["eval_temp_mb"] < figures["step_temp_mb"]
    # XLA's operation count of inference is the model's forward pass on the 32 images of all 8 devices (plus
    # BatchNorm, ReLU, pooling and normalisation: a few per cent); a train step also runs the backward pass.
    params = Trainer(tiny_config()).template()["state"].params
    forward = 2 * _forward_macs_per_image(params, 16) * 32 / 1e9
    assert forward <= figures["eval_gflop"] < 1.15 * forward
    assert 2.5 * figures["eval_gflop"] < figures["step_gflop"] < 4 * figures["eval_gflop"]
    for phase, flops in (("step", "step_gflop"), ("loop", "step_gflop"), ("eval", "eval_gflop")):
        achieved = figures[flops] * figures[f"{phase}_img_per_s"] / 32
        assert figures[f"{phase}_gflop_per_s"] == pytest.approx(achieved)
        assert figures[f"{phase}_of_peak"] == pytest.approx(achieved / figures["peak_gflop_per_s"])
    assert re.search(r" first_step_s=[\d.]+ peak_gflop_per_s=[\d.]+ step_gflop=[\d.e-]+ eval_gflop=[\d.e-]+ "
                     r"step_gflop_per_s=[\d.]+ loop_gflop_per_s=[\d.]+ eval_gflop_per_s=[\d.]+ step_of_peak=[\d.]+ "
                     r"loop_of_peak=[\d.]+ eval_of_peak=[\d.]+ rss_imports_mb=[\d.]+ rss_runtime_mb=-?[\d.]+ "
                     r"rss_trainer_mb=-?[\d.]+ rss_first_step_mb=-?[\d.]+ step_argument_mb=[\d.]+ "
                     r"step_output_mb=[\d.]+ step_temp_mb=[\d.]+ (step_code_mb=[\d.]+ )?eval_temp_mb=[\d.]+ "
                     r"eval_peak_rss_mb=[\d.]+ step_peak_rss_mb=[\d.]+ loop_peak_rss_mb=[\d.]+ peak_rss_mb=[\d.]+ "
                     r"data=", line), line


def test_benchmark_falls_back_to_synthetic_data_with_one_train_state_alive(tmp_path, monkeypatch):
    """On absent data the loop runs on random images; with the eval phase in this process too. While the
    loop is timed, the bare step's state is gone: every array shaped like the first kernel belongs to the
    loop's one state (its weights and their momentum)."""
    config = tiny_config()
    config.data.name = "cifar10"  # not prepared on this machine
    config.data.image_size = 32
    config.data.dir = str(tmp_path / "no_tfds")
    config.benchmark.seconds = 0.2
    alive, advance = [], bench_model.BareSteps.advance
    # Arrays other tests of this worker process still hold (module fixtures) are not the benchmark's.
    gc.collect()
    earlier = {id(a) for a in jax.live_arrays()}

    def counted(self, loop, steps):
        kernel = loop.state.params["block1_conv1"]["conv"]["kernel"].shape
        in_state = sum(leaf.shape == kernel for leaf in jax.tree_util.tree_leaves(loop.state))
        gc.collect()
        alive.append((sum(a.shape == kernel and id(a) not in earlier for a in jax.live_arrays()), in_state))
        return advance(self, loop, steps)

    monkeypatch.setattr(bench_model.BareSteps, "advance", counted)
    released = []  # after the bare step's first step, and once in the loop, as every run does (its hook)
    monkeypatch.setattr(bench_model, "release_freed_host_memory", lambda: released.append("bare"))
    monkeypatch.setattr(hooks, "release_freed_host_memory", lambda: released.append("loop"))
    figures = benchmark_figures(config, eval_apart=False)
    assert released == ["bare", "loop"]
    line = format_line(figures)
    assert BENCHMARK_LINE.match(line), line
    assert " data=synthetic " in line and "input_img_per_s" not in line
    assert len(alive) == 3 and all(live == own == 2 for live, own in alive), alive  # SGD momentum: 2 per state
    # In this process the eval phase came first: its peak is below the train phases'.
    assert 0 < figures["eval_peak_rss_mb"] <= figures["step_peak_rss_mb"] and figures["eval_gflop"] > 0


def test_compiled_figures_count_a_matrix_product_exactly():
    n = 96
    a = jnp.ones((n, n), jnp.float32)
    figures = compiled_figures(jax.jit(lambda x, y: x @ y), a, a, name="mm", devices=1)
    assert figures["mm_gflop"] == pytest.approx(2 * n**3 / 1e9)
    assert figures["mm_argument_mb"] == pytest.approx(2 * n * n * 4 / 2**20)
    assert figures["mm_output_mb"] == pytest.approx(n * n * 4 / 2**20)
    # Four devices running the same program do four times the operations.
    assert compiled_figures(jax.jit(lambda x, y: x @ y), a, a, name="mm", devices=4)["mm_gflop"] == pytest.approx(
        4 * figures["mm_gflop"])


def test_matmul_peak_is_the_best_window_of_the_product():
    """2·n³ operations per product over the fastest timed window, times the devices (8 in the tests)."""
    windows = [1.0, 0.5, 0.5, 0.4, 0.25, 0.5]  # seconds of each window of products
    times = iter(np.cumsum([x for seconds in windows for x in (0.0, seconds)]))  # each window's start and end
    peak = bench_model.matmul_peak(1.0, size=64, clock=lambda: float(next(times)))
    # The first window (one product, 1 s) sizes the next to one product; warm-up ends when two agree (0.5,
    # 0.5); the timed windows take 0.4, 0.25, 0.5 s for one product each: the best is 4 products a second.
    assert peak == pytest.approx(2 * 64**3 * 4 * 8 / 1e9)


def test_a_train_split_without_one_batch_falls_back_to_synthetic_data():
    """A small folder of photos must not stop the benchmark: its loop then runs on random images. A split
    of a few batches is real data: the timed loop runs through as many of its epochs as it needs."""
    assert data_available(tiny_config(batch_size=1024))  # 1,347 digits: one batch of 1,024
    assert not data_available(tiny_config(batch_size=2048))


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
