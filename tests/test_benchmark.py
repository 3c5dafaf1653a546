"""--mode=benchmark runs and prints SPEC.md's line; the train step compiles once across steps and epochs."""

import re

from test_train import tiny_config

from cnn_flax.benchmark import benchmark
from cnn_flax.train import Trainer
from cnn_flax.training.logging import Reporter

LINE = re.compile(r"benchmark model=minivgg batch=32 devices=8 step_img_per_s=[\d.]+ loop_img_per_s=[\d.]+ "
                  r"eval_img_per_s=[\d.]+ input_img_per_s=[\d.]+ data=real device=\S+$")


def test_benchmark_line_on_real_data(tmp_path):
    line = benchmark(tiny_config(), str(tmp_path / "bench"), steps=3)
    assert LINE.match(line), line
    rates = dict(kv.split("=") for kv in line.split()[1:])
    assert all(float(rates[k]) > 0 for k in ("step_img_per_s", "loop_img_per_s", "eval_img_per_s"))


def test_benchmark_falls_back_to_synthetic_data(tmp_path):
    config = tiny_config()
    config.data.name = "cifar10"  # not prepared on this machine
    config.data.image_size = 32
    config.data.dir = str(tmp_path / "no_tfds")
    line = benchmark(config, str(tmp_path / "bench"), steps=2)
    assert " data=synthetic " in line and "input_img_per_s" not in line


def test_train_step_compiles_once_over_epochs(tmp_path):
    trainer = Trainer(tiny_config(num_epochs=2), str(tmp_path))
    reporter = Reporter(str(tmp_path), 2 * trainer.spe, None, {})
    trainer.train(reporter)
    reporter.close()
    assert trainer.train_step._cache_size() == 1
    assert trainer.eval_step._cache_size() == 1
