"""Throughput of a config's model on this machine: `--mode=benchmark` prints one line of figures.

step: the bare compiled train step on a batch already on the device (the ceiling); loop: the real
training loop (`train.fit` with every hook of a run: input pipeline, device prefetch, on-device metrics
with their periodic fetch, progress bar, stop checks, and at each epoch's end the epoch's metric fetch
and the next epoch's input start), on the config's data or on synthetic data of the same shape when the
dataset is absent; eval: inference on a device-resident batch; input: the host input pipeline alone,
when the data exists. `loop_over_step` is the loop's rate over the bare step's, both from this process.

Every phase is time-based (`bench.phases.Phase`): after compiling, it warms up until the rate holds
still, then times `benchmark.seconds` in windows of a fixed step count and reports the median window.
The loop is one `fit` timed in windows (`LoopWindows`) of the bare step's length, and after each of its
timed windows a window of bare steps runs on the loop's own state, so the two alternate and
`loop_over_step` (the median of the pairs' ratios) holds on a machine whose load changes. A loop window
stops its clock at an epoch's end and restarts it when the next epoch starts, so what an epoch costs
besides its steps (the validation pass, history, plot, checkpoint when due) is reported on its own as
`epoch_extra_s` (the median over the epoch ends the loop crossed; absent when it crossed none) instead
of being spread over a benchmark's few epochs. `compiles` counts the train step's compilations over it
all: 1 means nothing retraced.

How far from the hardware: XLA's cost analysis of each compiled step gives its operations
(`step_gflop`, `eval_gflop`, per step on all devices), which times each phase's rate is its achieved
GFLOP/s, and `*_of_peak` is that over `peak_gflop_per_s`, a large float32 matrix product timed in this
process after the phases.

Memory, per phase: each phase's peak is the kernel's resident high-water mark (VmHWM) from the phase's
start (`cli.reset_peak`) to its end, so it holds what the phase needs with what is resident already
(interpreter, libraries, runtime), and not a transient of what came before (a probe, another phase); the
bare step's includes compiling it. On a
CPU the eval phase runs in a process of its own (this module, started with the config), on random images
of the config's shape, so its peak is that of a process that only serves the model; afterwards that
process finds out whether the data is here, so the benchmark's own process loads TensorFlow only when the
data needs it (on an accelerator it runs first in the benchmark's process: two processes would each claim
most of the device's memory). The bare step and then the loop run here, one train state at a time: the
bare step's state is dropped before the loop builds its own, and the loop's bare windows run on the loop's
state. Freeing a phase's buffers does not shrink the process (the allocator keeps freed memory,
`runtime.keep_freed_host_memory`), so phases share a process only in the order in which memory grows (the
loop needs all that the step needs); eval needs least but must hold no train state, hence its own process,
while a process per train phase would compile twice and lose the pairing. Where the bytes go:
`rss_imports_mb` (resident when the benchmark starts: the interpreter and the libraries imported),
`rss_runtime_mb` (the JAX runtime starting, when it had not), `rss_trainer_mb` (the trainer: data source,
with TensorFlow when TFDS reads the data, model, optimizer), `rss_first_step_mb` (the state, the compiled
step and its first run), XLA's memory analysis of the train step (`step_argument_mb`, `step_output_mb`,
`step_temp_mb`, `step_code_mb` where the backend reports it) and of inference (`eval_temp_mb`);
`first_step_s` is the time from building the trainer to the first step's result (what a user waits before
training starts).
"""

import contextlib
import io
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import jax
import ml_collections

from cnn_flax.bench import cli
from cnn_flax.bench.phases import WINDOWS, Phase, phase_after_one
from cnn_flax.defaults import base
from cnn_flax.errors import UserError
from cnn_flax.runtime import release_freed_host_memory
from cnn_flax.training.loop import Hook, LoopState

if TYPE_CHECKING:
    from cnn_flax.run.train import Trainer

SYNTHETIC_EPOCH_BYTES = 16 * 2**20  # pixels of a synthetic train split: its epochs are this long at most
LOOP_EPOCHS = 10**6  # the timed fit ends when its windows are done, long before


def data_available(config: ml_collections.ConfigDict) -> bool:
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
        from cnn_flax.data.registry import source_fact

        classes = config.model.get("num_classes", -1)
        if classes in (-1, None):
            classes = source_fact(config.data.name, "classes", 10)
        config.data.name = "synthetic"
        config.data.num_classes = classes
        config.data.synthetic_sizes = dict(train=steps * config.batch_size, val=config.batch_size,
                                           test=config.batch_size)
        config.steps_per_epoch = steps
    config.update(dict(num_epochs=LOOP_EPOCHS, eval_steps=1, init_from="", resume_epoch=-1))
    config.wandb.enabled = False
    return config


class BareSteps:
    """The compiled train step applied again and again to one device-resident batch.

    `release` drops its train state once it is no longer needed, so that the loop's state is the only one
    alive while the loop is timed; `advance` then runs the same bare steps on the loop's own state.
    """

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

    def release(self) -> None:
        """Drop the bare state (the step donates its buffers, so nothing else holds them)."""
        self.state = self.metrics = None

    def advance(self, loop: LoopState, steps: int) -> float:
        """Seconds of `steps` bare steps on the loop's own state and metrics, which they replace: the loop
        goes on from there (a benchmark's weights need not follow its data)."""
        start = time.perf_counter()
        for _ in range(steps):
            loop.state, loop.metrics = self.trainer.train_step(loop.state, self.batch, loop.metrics)
        jax.block_until_ready(loop.metrics)
        return time.perf_counter() - start


class LoopWindows(Hook):
    """Times the running loop in the windows of `phase` and ends the run once its timed windows are done.

    A window's clock runs from an epoch's start to its steps' end (the metric fetch that ends them
    included) and is stopped in between, where `epoch_extras` collects each epoch end's seconds. At the end
    of a window the hook waits for the last step's result (`sync`), a wait the loop itself would make at
    its next metric fetch anyway, then calls `between(loop)` off the clock: the benchmark times a window of
    bare steps there, on the loop's own state, so that loop and bare step alternate and a change in the
    machine's load hits both.
    """

    def __init__(self, phase: Phase, sync: Callable[[Any], Any] = jax.block_until_ready,
                 clock: Callable[[], float] = time.perf_counter,
                 between: Callable[[LoopState], None] = lambda loop: None) -> None:
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
        self.between(loop)
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


def _timed_loop(trainer: "Trainer", scratch: str, phase: Phase,
                between: Callable[[LoopState], None]) -> tuple[LoopWindows, LoopState]:
    """One `fit` in a fresh workdir, timed in `phase`'s windows until they are done, `between` after each."""
    from cnn_flax.run.train import fit
    from cnn_flax.training.progress import Reporter
    from cnn_flax.training.workdir import RunFiles

    files, windows = RunFiles(tempfile.mkdtemp(dir=scratch)), LoopWindows(phase, between=between)
    reporter = Reporter(files.workdir, None, {})
    try:
        with _quiet_fit():
            loop = fit(trainer, files, reporter, hooks=[windows])
    finally:
        reporter.close()
    return windows, loop


def _loop_and_step(trainer: "Trainer", bare: BareSteps, scratch: str, seconds: float) -> tuple[dict[str, Any],
                                                                                               LoopState]:
    """Loop and bare step alternating: the bare step warms up alone (and then lets go of its state), then
    each timed window of the loop is followed by a window of bare steps of the same count on the loop's own
    state; loop/step is the median of these pairs' ratios. Returns the figures and the loop's last state."""
    step = phase_after_one(seconds, bare, warm_up_only=True)
    step_peak = cli.peak_rss_mb()
    bare.release()
    cli.reset_peak()
    loop, paired = Phase(seconds, WINDOWS, steps=step.steps), []

    def bare_window(state: LoopState) -> None:
        if len(loop.timed_seconds) > len(paired):
            paired.append(bare.advance(state, loop.steps))

    windows, last = _timed_loop(trainer, scratch, loop, bare_window)
    figures = dict(step_img_per_s=statistics.median(loop.steps / s for s in paired) * trainer.config.batch_size,
                   loop_img_per_s=loop.steps_per_second * trainer.config.batch_size,
                   loop_over_step=statistics.median(b / s for b, s in zip(paired, loop.timed_seconds, strict=True)),
                   steps=loop.steps * len(paired), loop_steps=loop.timed_steps, step_peak_rss_mb=step_peak,
                   loop_peak_rss_mb=cli.peak_rss_mb())
    if windows.epoch_extras:
        figures["epoch_extra_s"] = statistics.median(windows.epoch_extras)
    return figures, last


def compiled_figures(step: Any, *args: Any, name: str, devices: int) -> dict[str, float]:
    """What XLA says of the compiled `step` for these arguments: its argument, output, temporary and code
    bytes in MB (`{name}_*_mb`, where the backend has a memory analysis) and its GFLOP per call on all
    `devices` it runs on (`{name}_gflop`, where it has a cost analysis).

    The compiled module is one device's program, so its operations count once per device. Lowering and
    compiling ahead of time does not enter the jit's cache, so `compiles` still counts the calls' own.
    """
    compiled = step.lower(*args).compile()
    figures: dict[str, float] = {}
    memory = compiled.memory_analysis()
    if memory is not None:
        for part in ("argument", "output", "temp", "generated_code"):
            size = getattr(memory, f"{part}_size_in_bytes")
            if size or part != "generated_code":  # XLA's CPU backend does not report its code's size
                figures[f"{name}_{part.replace('generated_', '')}_mb"] = size / 2**20
    costs = compiled.cost_analysis()
    costs = costs[0] if isinstance(costs, list | tuple) and costs else costs  # a list of one in older JAX
    if costs and costs.get("flops", 0) > 0:
        figures[f"{name}_gflop"] = costs["flops"] * devices / 1e9
    return figures


def matmul_peak(seconds: float, size: int | None = None, clock: Callable[[], float] = time.perf_counter,
                devices: int | None = None) -> float:
    """GFLOP/s of a large float32 matrix product on `devices` devices (default: all), at JAX's default precision
    as the models' own products run: the best of a phase's timed windows, the machine's practical ceiling.

    2048 on a CPU (16 MB per matrix, tens of GFLOP/s per core), 8192 on an accelerator.
    """
    n = size or (2048 if jax.default_backend() == "cpu" else 8192)
    a = jax.random.normal(jax.random.key(0), (n, n), jax.numpy.float32)
    product = jax.jit(lambda x: x @ x)
    jax.block_until_ready(product(a))

    def window(steps: int) -> float:
        start, out = clock(), None
        for _ in range(steps):
            out = product(a)
        jax.block_until_ready(out)
        return clock() - start

    phase = phase_after_one(seconds, window)
    best = max(phase.steps / elapsed for elapsed in phase.timed_seconds)
    return 2 * n**3 * best * (jax.device_count() if devices is None else devices) / 1e9


def eval_figures(trainer: "Trainer", seconds: float) -> dict[str, Any]:
    """The inference phase: the compiled predict step on a device-resident batch, with fresh weights and no
    train state; then the peak memory while it ran, and what XLA says of the compiled step."""
    from cnn_flax.run.experiment import initial_variables

    cli.reset_peak()
    start, parallel = time.perf_counter(), trainer.parallel
    predict = trainer.evaluator.predict_step[False]
    variables = parallel.put_replicated(initial_variables(trainer.experiment))
    batch = parallel.put_batch(next(iter(trainer.batches("train", shuffle=True, epoch=0, drop_remainder=True))))

    def window(steps: int) -> float:
        begun, out = time.perf_counter(), None
        for _ in range(steps):
            out = predict(variables, batch)
        jax.block_until_ready(out)
        return time.perf_counter() - begun

    window(1)
    figures: dict[str, Any] = dict(eval_first_s=time.perf_counter() - start)
    phase = phase_after_one(seconds, window)
    figures.update(eval_img_per_s=phase.steps_per_second * trainer.config.batch_size, eval_steps=phase.timed_steps,
                   eval_peak_rss_mb=cli.peak_rss_mb())
    figures.update({k: v for k, v in compiled_figures(predict, variables, batch, name="eval",
                                                        devices=parallel.device_count).items()
                    if k in ("eval_temp_mb", "eval_gflop")})
    return figures


EVAL_KEYS = ("eval_img_per_s", "eval_steps", "eval_first_s", "eval_peak_rss_mb", "eval_temp_mb", "eval_gflop", "data")


def _eval_in_child(config: ml_collections.ConfigDict, seconds: float, scratch: str) -> dict[str, Any]:
    """`eval_phase` in a fresh process of this module, on the same config (passed as JSON)."""
    path = os.path.join(scratch, "config.json")
    with open(path, "w") as handle:
        handle.write(config.to_json())
    figures = cli.child_figures([sys.executable, "-m", __name__, "--config-json", path, f"--seconds={seconds!r}"],
                                "benchmark_eval ")
    return {key: int(value) if key == "eval_steps" else value for key, value in figures.items() if key in EVAL_KEYS}


def eval_phase(config: ml_collections.ConfigDict, seconds: float) -> dict[str, Any]:
    """The eval phase on random images of the config's shape, then whether its data is here (`data`).

    Inference on one device-resident batch costs the same whatever its pixels, and a process that serves
    the model holds no dataset: the phase's peak is the model's. The probe comes after it because for
    absent TFDS data it imports TensorFlow, which would stay resident.
    """
    from cnn_flax.run.train import Trainer

    figures = eval_figures(Trainer(benchmark_config(config, synthetic_steps(config), use_data=False)), seconds)
    return dict(figures, data="real" if data_available(config) else "synthetic")


def benchmark_figures(config: ml_collections.ConfigDict, seconds: float | None = None, input_seconds: float = 3.0,
                      eval_apart: bool | None = None) -> dict[str, Any]:
    """The figures of `benchmark` as a dict; each phase times `seconds` (default: config.benchmark.seconds).

    The eval phase runs in a child process (`eval_apart`), which also finds out whether the data is here: a
    probe for absent TFDS data imports TensorFlow (most of a gigabyte), which a run on random images would
    not otherwise load. Without `eval_apart` both happen here first. By default it is apart on a CPU only:
    on an accelerator two processes would each claim most of the device's memory (JAX preallocates), and
    there the host's resident memory is not what limits a model. The step and the loop run here, one train
    state at a time, each phase's peak counted from its start.
    """
    from cnn_flax.run.train import Trainer

    seconds = float(config.benchmark.seconds if seconds is None else seconds)
    if seconds <= 0:
        raise UserError(f"benchmark.seconds={seconds} must be positive (each phase's timed seconds), e.g. 20")
    figures: dict[str, Any] = dict(rss_imports_mb=cli.rss_mb())
    jax.devices()  # the runtime starts: its threads, allocator and device clients
    figures["rss_runtime_mb"] = cli.rss_mb() - figures["rss_imports_mb"]
    eval_apart = jax.default_backend() == "cpu" if eval_apart is None else eval_apart
    with tempfile.TemporaryDirectory() as scratch:
        eval_figures_ = _eval_in_child(config, seconds, scratch) if eval_apart else None
        if eval_figures_ is None:
            has_data = data_available(config)
        else:
            has_data = eval_figures_.pop("data") == "real"
            figures.update(eval_figures_)
        run_config = benchmark_config(config, synthetic_steps(config), has_data)
        batch_size = run_config.batch_size
        start, before = time.perf_counter(), cli.rss_mb()
        trainer = Trainer(run_config)
        devices = trainer.parallel.device_count
        figures.update(model=run_config.model.get("name", "?"), batch=batch_size, devices=devices, seconds=seconds)
        figures["model"] = trainer.experiment.model_config.get("name", figures["model"])
        figures["rss_trainer_mb"] = cli.rss_mb() - before
        if not eval_apart:
            figures.update(eval_figures(trainer, seconds))
            start = time.perf_counter()
        cli.reset_peak()
        before = cli.rss_mb()
        bare = BareSteps(trainer)
        bare(1)
        figures["first_step_s"] = time.perf_counter() - start
        release_freed_host_memory()  # as a run's first step is followed (hooks.ReleaseCompileMemory)
        figures["rss_first_step_mb"] = cli.rss_mb() - before
        timed, last = _loop_and_step(trainer, bare, scratch, seconds)
        figures.update(timed)
        if has_data:
            from cnn_flax.bench.input import measure_input

            figures["input_img_per_s"] = measure_input(trainer.experiment.source, "train", batch_size, input_seconds)
        figures.update(compiled_figures(trainer.train_step, last.state, bare.batch, last.metrics, name="step",
                                        devices=devices))
        figures["compiles"] = trainer.compile_count("train")
    figures["peak_rss_mb"] = max(figures["step_peak_rss_mb"], figures["loop_peak_rss_mb"])
    figures["peak_gflop_per_s"] = matmul_peak(min(seconds, PEAK_SECONDS), devices=figures["devices"])
    for phase, flops in (("step", "step_gflop"), ("loop", "step_gflop"), ("eval", "eval_gflop")):
        if flops in figures:
            achieved = figures[flops] * figures[f"{phase}_img_per_s"] / batch_size
            figures[f"{phase}_gflop_per_s"] = achieved
            figures[f"{phase}_of_peak"] = achieved / figures["peak_gflop_per_s"]
    figures["data"] = "real" if has_data else "synthetic"
    figures["device"] = jax.devices()[0].device_kind.replace(" ", "_")
    return figures


PEAK_SECONDS = 3.0  # the matrix product's timed seconds at most: its rate holds still within a second or two
LINE_KEYS = (
    "model", "batch", "devices", "step_img_per_s", "loop_img_per_s", "eval_img_per_s", "input_img_per_s",
    "loop_over_step", "epoch_extra_s", "first_step_s",
    # distance from the hardware: operations per step, achieved rates and their share of the matrix product's
    "peak_gflop_per_s", "step_gflop", "eval_gflop", "step_gflop_per_s", "loop_gflop_per_s", "eval_gflop_per_s",
    "step_of_peak", "loop_of_peak", "eval_of_peak",
    # where the bytes go: imports, runtime, the trainer (data, model), the first step (state, compiled code,
    # its buffers), XLA's analysis of the compiled steps
    "rss_imports_mb", "rss_runtime_mb", "rss_trainer_mb", "rss_first_step_mb", "step_argument_mb", "step_output_mb",
    "step_temp_mb", "step_code_mb", "eval_temp_mb",
    # the high-water mark of each phase, from its start: eval (its own process), bare step, loop; the train
    # phases' larger
    "eval_peak_rss_mb", "step_peak_rss_mb", "loop_peak_rss_mb", "peak_rss_mb",
    "data", "device", "seconds", "steps", "loop_steps", "compiles")


def format_line(figures: dict[str, Any]) -> str:
    """The figures every machine reports (model, batch, devices, rates, loop/step), then the extras:
    epoch_extra_s when measured, start-up, distance from the peak, memory, data, device, steps, compiles."""
    return cli.format_line("benchmark", figures, LINE_KEYS)


def benchmark(config: ml_collections.ConfigDict, workdir: str) -> str:
    """One line of throughput figures for `config` (nothing is written to `workdir`)."""
    del workdir  # the loop runs in a scratch folder that is removed afterwards
    return format_line(benchmark_figures(config))


def main(argv: list[str] | None = None) -> int:
    """The eval phase alone, in the process a benchmark started for it (`--config-json`)."""
    parser = cli.parser(__doc__, seconds=base("benchmark").benchmark.seconds)
    parser.add_argument("--config-json", required=True, help="the config of the parent benchmark")
    args = parser.parse_args(argv)
    cli.check_positive(seconds=args.seconds)
    cli.tune_runtime()
    with open(args.config_json) as handle:
        config = ml_collections.ConfigDict(json.load(handle))
    print(cli.format_line("benchmark_eval", eval_phase(config, args.seconds), EVAL_KEYS), flush=True)
    return 0


if __name__ == "__main__":
    cli.run(main)
