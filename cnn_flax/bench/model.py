"""Throughput of a config's model on this machine: `--mode=benchmark` prints one line of figures.

step: the bare compiled train step on a batch already on the device (the ceiling); loop: the real
training loop (`train.fit` with every hook of a run: input pipeline, device prefetch, on-device metrics
with their periodic fetch, progress bar, stop checks, and at each epoch's end the epoch's metric fetch
and the next epoch's input start), on the config's data or on synthetic data of the same shape when the
dataset is absent; eval: inference on a device-resident batch; input: the host input pipeline alone,
when the data exists. `loop_over_step` is the loop's rate over the bare step's, both from this process.

Every phase is time-based (`bench_phases.Phase`): after compiling, it warms up until the rate holds
still, then times `benchmark.seconds` in windows of a fixed step count and reports the median window.
The loop is one `fit` timed in windows (`LoopWindows`) of the bare step's length, and after each of its
timed windows a window of bare steps runs, so the two alternate and `loop_over_step` (the median of the
pairs' ratios) holds on a machine whose load changes. A loop window stops
its clock at an epoch's end and restarts it when the next epoch starts, so what an epoch costs besides
its steps (the validation pass, history, plot, checkpoint when due) is reported on its own as
`epoch_extra_s` (the median over the epoch ends the loop crossed; absent when it crossed none) instead
of being spread over a benchmark's few epochs. `compiles` counts the train step's compilations over it
all: 1 means nothing retraced.

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
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import jax
import ml_collections

from cnn_flax.bench.phases import Phase, run_phase
from cnn_flax.errors import UserError
from cnn_flax.training.loop import Hook, LoopState

if TYPE_CHECKING:
    from cnn_flax.run.train import Trainer

WINDOWS = 3  # timed windows per phase; each figure is their median
SYNTHETIC_EPOCH_BYTES = 16 * 2**20  # pixels of a synthetic train split: its epochs are this long at most
LOOP_EPOCHS = 10**6  # the timed fit ends when its windows are done, long before


def _data_available(config: ml_collections.ConfigDict) -> bool:
    """True when the config's data is here and its train split gives at least one batch."""
    from cnn_flax.data import make_source

    try:
        source = make_source(config.data)
        source.info  # noqa: B018 - reading the facts is the check
    except UserError:
        return False
    if source.num_batches("train", config.batch_size, drop_remainder=True) < 1:
        logging.getLogger("cnn_flax").warning(
            "the train split has fewer than %d images, one batch: timing on random images of the same shape "
            "instead", config.batch_size)
        return False
    return True


def synthetic_steps(config: ml_collections.ConfigDict) -> int:
    """Batches of the synthetic train split: SYNTHETIC_EPOCH_BYTES of pixels, at least two batches."""
    side = int(config.data.image_size)
    return max(2, SYNTHETIC_EPOCH_BYTES // (config.batch_size * side * side * 3))


def benchmark_config(config: ml_collections.ConfigDict, steps: int, use_data: bool) -> ml_collections.ConfigDict:
    """The config of the benchmark's run: as many epochs as its windows need (the timed fit stops itself),
    a one-batch validation, and, when `use_data` is False, random images of the same shape in epochs of
    `steps` steps; the config's own data and epoch length otherwise."""
    config = ml_collections.ConfigDict(config.to_dict())
    if not use_data:
        from cnn_flax.data.registry import source_entry

        classes = config.model.get("num_classes", -1)
        if classes in (-1, None):
            entry = source_entry(config.data.name)
            classes = entry.classes if entry is not None and entry.classes else 10
        config.data.name = "synthetic"
        config.data.num_classes = classes
        config.data.synthetic_sizes = dict(train=steps * config.batch_size, val=config.batch_size,
                                           test=config.batch_size)
        config.steps_per_epoch = steps
    config.update(dict(num_epochs=LOOP_EPOCHS, eval_steps=1, init_from="", resume_epoch=-1))
    config.wandb.enabled = False
    return config


class _BareSteps:
    """The compiled train step applied again and again to one device-resident batch."""

    def __init__(self, trainer: "Trainer") -> None:
        from cnn_flax.run.experiment import initial_variables
        from cnn_flax.training.metrics import TrainMetrics

        self.trainer = trainer
        parallel = trainer.parallel
        first = next(iter(trainer.batches("train", shuffle=True, epoch=0, drop_remainder=True)))
        self.batch = parallel.put_batch(first)
        self.state = parallel.put_replicated(trainer.new_state(initial_variables(trainer.experiment)))
        self.metrics = parallel.put_replicated(TrainMetrics.empty())

    def __call__(self, steps: int) -> float:
        """Seconds of `steps` train steps, until their results are ready."""
        start = time.perf_counter()
        for _ in range(steps):
            self.state, self.metrics = self.trainer.train_step(self.state, self.batch, self.metrics)
        jax.block_until_ready(self.metrics)
        return time.perf_counter() - start

    def infer(self, steps: int) -> float:
        """Seconds of the compiled inference step `steps` times on the same batch."""
        predict, out = self.trainer.evaluator.predict_step[False], None
        start = time.perf_counter()
        for _ in range(steps):
            out = predict(self.state.variables, self.batch)
        jax.block_until_ready(out)
        return time.perf_counter() - start


class LoopWindows(Hook):
    """Times the running loop in the windows of `phase` and ends the run once its timed windows are done.

    A window's clock runs from an epoch's start to its steps' end (the metric fetch that ends them
    included) and is stopped in between, where `epoch_extras` collects each epoch end's seconds. At the end
    of a window the hook waits for the last step's result (`sync`), a wait the loop itself would make at
    its next metric fetch anyway, then calls `between` off the clock: the benchmark times a window of bare
    steps there, so that loop and bare step alternate and a change in the machine's load hits both.
    """

    def __init__(self, phase: Phase, sync: Callable[[Any], Any] = jax.block_until_ready,
                 clock: Callable[[], float] = time.perf_counter, between: Callable[[], None] = lambda: None) -> None:
        self.phase, self.sync, self.clock, self.between = phase, sync, clock, between
        self.steps = 0  # in the running window
        self.counted = 0.0  # the running window's seconds in epochs already ended
        self.since: float | None = None  # when the clock last started
        self.ended: float | None = None  # when the last epoch's steps ended, until the next epoch starts
        self.epoch_extras: list[float] = []  # seconds from an epoch's steps' end to the next epoch's start

    def on_epoch_start(self, loop: LoopState) -> None:
        self.since = self.clock()
        if self.ended is not None:
            self.epoch_extras.append(self.since - self.ended)
            self.ended = None

    def on_step(self, loop: LoopState) -> None:
        self.steps += 1
        if self.steps < self.phase.steps:
            return
        self.sync(loop.state)
        now = self.clock()
        self.phase.record(self.counted + now - self.since)
        self.between()
        self.steps, self.counted, self.since = 0, 0.0, self.clock()
        loop.stop = self.phase.done

    def on_steps_done(self, loop: LoopState) -> None:
        self.ended = self.clock()
        self.counted += self.ended - self.since


@contextlib.contextmanager
def _quiet_fit() -> Iterator[None]:
    """Keep a benchmark fit's progress bar and messages (a stop checkpoint's "run the same command") out of
    the figures' output."""
    logger = logging.getLogger("cnn_flax")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def _timed_loop(trainer: "Trainer", scratch: str, phase: Phase, between: Callable[[], None]) -> LoopWindows:
    """One `fit` in a fresh workdir, timed in `phase`'s windows until they are done, `between` after each."""
    from cnn_flax.run.train import fit
    from cnn_flax.training.progress import Reporter
    from cnn_flax.training.workdir import RunFiles

    files, windows = RunFiles(tempfile.mkdtemp(dir=scratch)), LoopWindows(phase, between=between)
    reporter = Reporter(files.workdir, None, {})
    try:
        with _quiet_fit():
            fit(trainer, files, reporter, hooks=[windows])
    finally:
        reporter.close()
    return windows


def _phase_after_one(seconds: float, window: Callable[[int], float], warm_up_only: bool = False) -> Phase:
    """A phase whose first window is sized from one timed step (the compiling one ran before), run until
    done, or only until its warm-up is over."""
    phase = Phase(seconds, WINDOWS)
    phase.start(window(1))
    return run_phase(phase, window, warm_up_only)


def _loop_and_step(trainer: "Trainer", bare: _BareSteps, scratch: str, seconds: float) -> dict[str, Any]:
    """Loop and bare step alternating: the bare step warms up alone, then each timed window of the loop is
    followed by a window of bare steps of the same count; loop/step is the median of these pairs' ratios."""
    step = _phase_after_one(seconds, bare, warm_up_only=True)
    loop, paired = Phase(seconds, WINDOWS, steps=step.steps), []

    def bare_window() -> None:
        if len(loop.timed_seconds) > len(paired):
            paired.append(bare(loop.steps))

    windows = _timed_loop(trainer, scratch, loop, bare_window)
    figures = dict(step_img_per_s=statistics.median(loop.steps / s for s in paired) * trainer.config.batch_size,
                   loop_img_per_s=loop.steps_per_second * trainer.config.batch_size,
                   loop_over_step=statistics.median(b / s for b, s in zip(paired, loop.timed_seconds, strict=True)),
                   steps=loop.steps * len(paired), loop_steps=loop.timed_steps)
    if windows.epoch_extras:
        figures["epoch_extra_s"] = statistics.median(windows.epoch_extras)
    return figures


def benchmark_figures(config: ml_collections.ConfigDict, seconds: float | None = None,
                      input_seconds: float = 3.0) -> dict[str, Any]:
    """The figures of `benchmark` as a dict; each phase times `seconds` (default: config.benchmark.seconds)."""
    from cnn_flax.run.train import Trainer

    seconds = float(config.benchmark.seconds if seconds is None else seconds)
    if seconds <= 0:
        raise UserError(f"benchmark.seconds={seconds} must be positive (each phase's timed seconds), e.g. 20")
    has_data = _data_available(config)
    run_config = benchmark_config(config, synthetic_steps(config), has_data)
    batch_size = run_config.batch_size
    figures: dict[str, Any] = dict(model=run_config.model.get("name", "?"), batch=batch_size,
                                   devices=jax.device_count(), seconds=seconds)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        trainer = Trainer(run_config)
        figures["model"] = trainer.experiment.model_config.get("name", figures["model"])
        bare = _BareSteps(trainer)
        bare(1)
        figures["first_step_s"] = time.perf_counter() - start
        figures.update(step_memory(trainer.train_step, bare.state, bare.batch, bare.metrics))
        bare.infer(1)
        figures["eval_img_per_s"] = _phase_after_one(seconds, bare.infer).steps_per_second * batch_size
        figures.update(_loop_and_step(trainer, bare, scratch, seconds))
        if has_data:
            from cnn_flax.bench.input import measure_input

            figures["input_img_per_s"] = measure_input(trainer.experiment.source, "train", batch_size, input_seconds)
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
    """The figures every machine reports (model, batch, devices, rates, loop/step), then the extras
    (epoch_extra_s when measured, start-up and memory, data, device, phase length and steps, compiles)."""
    keys = ["step_img_per_s", "loop_img_per_s", "eval_img_per_s"]
    keys += ["input_img_per_s"] if "input_img_per_s" in figures else []
    rates = " ".join(f"{key}={figures[key]:.1f}" for key in keys)
    extra = f"epoch_extra_s={figures['epoch_extra_s']:.2f} " if "epoch_extra_s" in figures else ""
    return (f"benchmark model={figures['model']} batch={figures['batch']} devices={figures['devices']} {rates} "
            f"loop_over_step={figures['loop_over_step']:.3f} {extra}{_memory_fields(figures)} "
            f"data={figures['data']} device={figures['device']} seconds={figures['seconds']:g} "
            f"steps={figures['steps']} loop_steps={figures['loop_steps']} compiles={figures['compiles']}")


def benchmark(config: ml_collections.ConfigDict, workdir: str) -> str:
    """One line of throughput figures for `config` (nothing is written to `workdir`)."""
    del workdir  # the loop runs in a scratch folder that is removed afterwards
    return format_line(benchmark_figures(config))
