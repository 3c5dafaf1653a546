"""The epoch loop, and the hooks through which everything around it happens.

The loop itself only streams batches through the compiled train step (which accumulates the metrics on
the devices), fetches the metrics every `log_every_steps` and at the end of an epoch, evaluates the
validation split and builds the epoch's record. Everything else (progress bar and metric writers,
history and plot, checkpoints, stop requests, timing in the benchmark) is a `Hook`, called at fixed
points with the loop's `LoopState`, in the spirit of clu's periodic actions. A hook ends the run early by
setting `loop.stop`; the loop then calls every hook's `on_stop` and returns.
"""

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from cnn_flax.training.metrics import TrainMetrics
from cnn_flax.training.parallel import device_prefetch
from cnn_flax.training.state import TrainState


class Trainable(Protocol):
    """What the loop needs of a trainer: its batches, its compiled step, its validation and its schedule.

    `cnn_flax.run.train.Trainer` is one; research code can drive the loop with anything that has these.
    """

    parallel: Any  # put_batch, put_replicated, fetch (training.parallel)
    evaluator: Any  # metrics(variables, split) -> {"loss", "accuracy"}
    schedule: Callable[[int], Any]
    log_every_steps: int

    def batches(self, split: str, *, shuffle: bool, epoch: int, drop_remainder: bool,
                start_batch: int = 0) -> Iterator[dict]: ...

    def train_step(self, state: TrainState, batch: dict, metrics: TrainMetrics) -> tuple[TrainState, TrainMetrics]: ...


@dataclasses.dataclass
class LoopState:
    """Where the loop stands; hooks read it and may set `stop`."""

    epoch: int  # the running epoch, from 1
    batch: int  # its batches done so far (a resumed epoch starts where it was interrupted)
    num_epochs: int
    steps_per_epoch: int
    state: TrainState  # on the devices
    metrics: TrainMetrics  # the epoch's running train metrics, on the devices
    shown: dict[str, float] | None = None  # the running metrics on the host, at steps where they were fetched
    train: dict[str, float] | None = None  # the epoch's train metrics on the host, once its steps are done
    record: dict[str, Any] | None = None  # the epoch's history record, at its end
    stop: bool = False  # set by a hook: end the run after this step or epoch

    @property
    def step(self) -> int:
        """Optimizer steps done in the whole run."""
        return (self.epoch - 1) * self.steps_per_epoch + self.batch

    @property
    def mid_epoch(self) -> bool:
        return self.batch < self.steps_per_epoch


class Hook:
    """Something done at fixed points of the loop; override the methods needed (the others do nothing).

    on_epoch_start: before the epoch's first batch is read;
    on_step:        after each train step (`loop.shown` holds host metrics every log_every_steps, else None);
    on_steps_done:  the epoch's steps are done and `loop.train` holds its metrics, before validation;
    on_epoch_end:   `loop.record` holds the epoch's record (train and validation metrics, rate, seconds);
    on_stop:        a hook set `loop.stop`; the loop returns after this.
    """

    def on_epoch_start(self, loop: LoopState) -> None:
        pass

    def on_step(self, loop: LoopState) -> None:
        pass

    def on_steps_done(self, loop: LoopState) -> None:
        pass

    def on_epoch_end(self, loop: LoopState) -> None:
        pass

    def on_stop(self, loop: LoopState) -> None:
        pass


def run_epochs(trainer: Trainable, loop: LoopState, hooks: Sequence[Hook]) -> LoopState:
    """Train from `loop`'s position to the end of its last epoch, or until a hook sets `loop.stop`."""
    parallel, steps_per_epoch = trainer.parallel, loop.steps_per_epoch
    log_every = max(trainer.log_every_steps, 1)
    while loop.epoch <= loop.num_epochs:
        started = time.time()
        _call(hooks, "on_epoch_start", loop)
        batches = trainer.batches("train", shuffle=True, epoch=loop.epoch - 1, drop_remainder=True,
                                  start_batch=loop.batch)
        batches = (b for _, b in zip(range(steps_per_epoch - loop.batch), batches, strict=False))
        for batch in device_prefetch(batches, parallel.put_batch):
            loop.state, loop.metrics = trainer.train_step(loop.state, batch, loop.metrics)
            loop.batch += 1
            loop.shown = _host(parallel, loop.metrics) if loop.batch % log_every == 0 else None
            _call(hooks, "on_step", loop)
            if loop.stop:
                _call(hooks, "on_stop", loop)
                return loop
        loop.train = _host(parallel, loop.metrics)
        _call(hooks, "on_steps_done", loop)
        val = trainer.evaluator.metrics(loop.state.variables, "val")
        if loop.state.ema:  # the moving average of the weights, scored beside them
            averaged = trainer.evaluator.metrics(loop.state.averaged().variables, "val")
            val.update({f"ema_{k}": v for k, v in averaged.items()})
        rate = float(trainer.schedule((loop.epoch - 1) * steps_per_epoch))
        loop.record = dict(epoch=loop.epoch, learning_rate=float(f"{rate:.7g}"),  # 0.001, not 0.0010000000474974513
                           train_loss=loop.train["loss"], train_accuracy=loop.train["accuracy"],
                           val_loss=val["loss"], val_accuracy=val["accuracy"], seconds=round(time.time() - started, 3),
                           **{f"ema_val_{k}": val[f"ema_{k}"] for k in ("loss", "accuracy") if f"ema_{k}" in val})
        _call(hooks, "on_epoch_end", loop)
        if loop.stop:
            _call(hooks, "on_stop", loop)
            return loop
        loop.epoch, loop.batch = loop.epoch + 1, 0
        loop.metrics = parallel.put_replicated(TrainMetrics.empty())
        loop.shown = loop.train = loop.record = None
    return loop


def _host(parallel: Any, metrics: TrainMetrics) -> dict[str, float]:
    return {k: float(v) for k, v in parallel.fetch(metrics).compute().items()}


def _call(hooks: Sequence[Hook], event: str, loop: LoopState) -> None:
    for hook in hooks:
        getattr(hook, event)(loop)
