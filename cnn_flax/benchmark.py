"""Throughput of a config's model on this machine: `--mode=benchmark` prints one line of figures.

step: the bare compiled train step on a batch already on the device (the ceiling); loop: the real
training loop (`train.fit` with every hook of a run: input pipeline, device prefetch, on-device metrics
with their periodic fetch, progress bar, stop checks) from the start of an epoch until its metrics are on
the host, timed by a hook of its own (`EpochTimer`), on the config's data or on synthetic data of the same
shape when the dataset is absent; eval: inference on a device-resident batch; input: the host input
pipeline alone, when the data exists.

What an epoch costs besides its steps (fresh weights, the validation pass, history, plot, checkpoint)
does not depend on the number of steps, so it is reported on its own as `epoch_extra_s` instead of
being spread over a short benchmark epoch. Compilation is excluded (every phase runs once before it is
timed), each figure is the median of several repetitions (shared machines are noisy), and `compiles`
counts the train step's compilations over all of it: 1 means nothing retraced.

What is not excluded is reported beside it: `first_step_s`, from building the trainer to the first
step's result (initialisation, compilation and one step: what a user waits before training starts),
and the memory: the compiled train step's argument, output and temporary buffers from XLA's memory
analysis (`step_*_mb`) and the process's peak resident memory (`peak_rss_mb`).
"""

import contextlib
import io
import logging
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import ml_collections

from cnn_flax.errors import UserError
from cnn_flax.loop import Hook, LoopState

if TYPE_CHECKING:
    from cnn_flax.train import Trainer

REPEATS = 3
STEPS = 10  # per timed repetition, and the length of the timed loop's epoch


def _median_rate(run: Callable[[], tuple[int, float]], repeats: int) -> float:
    """Median images/s of `run`, which returns (images, seconds)."""
    rates = []
    for _ in range(repeats):
        images, seconds = run()
        rates.append(images / seconds)
    return statistics.median(rates)


def _timed(run: Callable[[], int]) -> Callable[[], tuple[int, float]]:
    def timed() -> tuple[int, float]:
        start = time.perf_counter()
        images = run()
        return images, time.perf_counter() - start
    return timed


def _data_available(config: ml_collections.ConfigDict, steps: int) -> bool:
    """True when the config's data is here and its train split gives the loop's `steps` batches."""
    from cnn_flax.data import make_source

    try:
        source = make_source(config.data)
        source.info  # noqa: B018 - reading the facts is the check
    except UserError:
        return False
    available = source.num_batches("train", config.batch_size, drop_remainder=True)
    if available < steps:
        logging.getLogger("cnn_flax").warning(
            "the train split gives %d batches of %d, fewer than the %d the timed loop needs: timing on random "
            "images of the same shape instead", available, config.batch_size, steps)
        return False
    return True


def benchmark_config(config: ml_collections.ConfigDict, steps: int, use_data: bool) -> ml_collections.ConfigDict:
    """The config cut to one epoch of `steps` steps; on random images of the same shape when `use_data` is False."""
    config = ml_collections.ConfigDict(config.to_dict())
    if not use_data:
        from cnn_flax.experiment import NOMINAL_CLASSES

        classes = config.model.get("num_classes", -1)
        classes = NOMINAL_CLASSES.get(config.data.name, 10) if classes in (-1, None) else classes
        config.data.name = "synthetic"
        config.data.num_classes = classes
        config.data.synthetic_sizes = dict(train=steps * config.batch_size, val=config.batch_size,
                                           test=config.batch_size)
    config.update(dict(num_epochs=1, steps_per_epoch=steps, eval_steps=1, checkpoint_every_epochs=1,
                       init_from="", resume_epoch=-1))
    config.wandb.enabled = False
    return config


class _BareSteps:
    """The compiled train step applied again and again to one device-resident batch."""

    def __init__(self, trainer: "Trainer") -> None:
        from cnn_flax.experiment import initial_variables
        from cnn_flax.training.metrics import TrainMetrics

        self.trainer = trainer
        parallel = trainer.parallel
        first = next(iter(trainer.batches("train", shuffle=True, epoch=0, drop_remainder=True)))
        self.batch = parallel.put_batch(first)
        self.state = parallel.put_replicated(trainer.new_state(initial_variables(trainer.exp)))
        self.metrics = parallel.put_replicated(TrainMetrics.empty())

    def __call__(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self.state, self.metrics = self.trainer.train_step(self.state, self.batch, self.metrics)
        jax.block_until_ready(self.metrics)
        return time.perf_counter() - start

    def infer(self, steps: int) -> int:
        """The compiled inference step `steps` times on the same batch; the number of images it saw."""
        predict, out = self.trainer.evaluator.predict_step[False], None
        for _ in range(steps):
            out = predict(self.state.variables, self.batch)
        jax.block_until_ready(out)
        return steps * len(jax.tree.leaves(self.batch)[0])


class EpochTimer(Hook):
    """Marks when an epoch starts and when its steps are done (its train metrics are on the host by then)."""

    def __init__(self) -> None:
        self.started = self.steps_done = 0.0

    def on_epoch_start(self, loop: LoopState) -> None:
        self.started = time.perf_counter()

    def on_steps_done(self, loop: LoopState) -> None:
        self.steps_done = time.perf_counter()

    @property
    def steps_seconds(self) -> float:
        return self.steps_done - self.started


def _timed_epoch(trainer: "Trainer", scratch: str) -> tuple[float, float]:
    """One whole `fit` of one epoch in a fresh workdir: (seconds of its steps, seconds of everything else)."""
    from cnn_flax.engine import RunFiles
    from cnn_flax.train import fit
    from cnn_flax.training.reporting import Reporter

    files, timer = RunFiles(tempfile.mkdtemp(dir=scratch)), EpochTimer()
    reporter = Reporter(files.workdir, None, {})
    start = time.perf_counter()
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # keep progress bars out of the figures' output
            fit(trainer, files, reporter, hooks=[timer])
    finally:
        reporter.close()
    total = time.perf_counter() - start
    return timer.steps_seconds, total - timer.steps_seconds


def benchmark_figures(config: ml_collections.ConfigDict, steps: int = STEPS, repeats: int = REPEATS,
                      input_seconds: float = 3.0) -> dict[str, Any]:
    """The figures of `benchmark` as a dict."""
    from cnn_flax.train import Trainer

    has_data = _data_available(config, steps)
    run_config = benchmark_config(config, steps, has_data)
    batch_size = run_config.batch_size
    figures: dict[str, Any] = dict(model=run_config.model.get("name", "?"), batch=batch_size,
                                   devices=jax.device_count(), steps=steps)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        trainer = Trainer(run_config)
        figures["model"] = trainer.exp.model_config.get("name", figures["model"])
        bare = _BareSteps(trainer)
        bare(1)
        figures["first_step_s"] = time.perf_counter() - start
        figures.update(step_memory(trainer.train_step, bare.state, bare.batch, bare.metrics))
        figures["step_img_per_s"] = _median_rate(lambda: (steps * batch_size, bare(steps)), repeats)
        bare.infer(steps)
        figures["eval_img_per_s"] = _median_rate(_timed(lambda: bare.infer(steps)), repeats)

        _timed_epoch(trainer, scratch)
        runs = [_timed_epoch(trainer, scratch) for _ in range(repeats)]
        figures["loop_img_per_s"] = statistics.median(steps * batch_size / inside for inside, _ in runs)
        figures["epoch_extra_s"] = statistics.median(outside for _, outside in runs)
        if has_data:
            from cnn_flax.data.bench import measure_input

            figures["input_img_per_s"] = measure_input(trainer.exp.source, "train", batch_size, input_seconds)
        figures["compiles"] = trainer.compile_count("train")
    figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    figures["data"] = "real" if has_data else "synthetic"
    figures["device"] = jax.devices()[0].device_kind.replace(" ", "_")
    return figures


def step_memory(step: Any, *args: Any) -> dict[str, float]:
    """What XLA's memory analysis of the compiled `step` says it needs, in MB (nothing on backends without one).

    Lowering and compiling ahead of time does not enter the jit's cache, so `compiles` still counts
    the calls' compilations only.
    """
    analysis = step.lower(*args).compile().memory_analysis()
    if analysis is None:
        return {}
    return {f"step_{name}_mb": getattr(analysis, f"{name}_size_in_bytes") / 2**20
            for name in ("argument", "output", "temp")}


def _memory_fields(figures: dict[str, Any]) -> str:
    keys = ["first_step_s", "step_argument_mb", "step_output_mb", "step_temp_mb", "peak_rss_mb"]
    return " ".join(f"{key}={figures[key]:.1f}" for key in keys if key in figures)


def format_line(figures: dict[str, Any]) -> str:
    """The figures every machine reports (model, batch, devices, rates), then the extras (epoch_extra_s,
    start-up and memory, data, device, steps, compiles)."""
    keys = ["step_img_per_s", "loop_img_per_s", "eval_img_per_s"]
    keys += ["input_img_per_s"] if "input_img_per_s" in figures else []
    rates = " ".join(f"{key}={figures[key]:.1f}" for key in keys)
    return (f"benchmark model={figures['model']} batch={figures['batch']} devices={figures['devices']} {rates} "
            f"epoch_extra_s={figures['epoch_extra_s']:.2f} {_memory_fields(figures)} "
            f"data={figures['data']} device={figures['device']} "
            f"steps={figures['steps']} compiles={figures['compiles']}")


def benchmark(config: ml_collections.ConfigDict, workdir: str, steps: int = STEPS, repeats: int = REPEATS) -> str:
    """One line of throughput figures for `config` (nothing is written to `workdir`)."""
    del workdir  # every run of the loop goes to a scratch folder that is removed afterwards
    return format_line(benchmark_figures(config, steps, repeats))
