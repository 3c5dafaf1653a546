"""The hooks of every training run: stop requests, the finite-loss check, early stopping and lower-on-plateau,
history, progress, checkpoints.

`cnn_flax.run.train.fit` calls them in this order, so that at the end of an epoch early stopping and the plateau
have marked the record (and changed the state) before the history is written, the history is written
before the checkpoint that it describes, and a stop request is known before the checkpoint decision.
"""

import contextlib
import logging
import signal
import time
from collections.abc import Sequence
from typing import Any, Protocol

import jax
import numpy as np

from cnn_flax.errors import UserError
from cnn_flax.evaluation import plot_history
from cnn_flax.runtime import release_freed_host_memory
from cnn_flax.training.checkpoint import Checkpoints
from cnn_flax.training.controls import (
    EarlyStopping,
    EarlyStoppingState,
    PlateauState,
    ReduceLROnPlateau,
    early_stopping_step,
    monitored,
    plateau_step,
)
from cnn_flax.training.history import History
from cnn_flax.training.loop import Hook, LoopState
from cnn_flax.training.metrics import NEVER
from cnn_flax.training.progress import Reporter
from cnn_flax.training.workdir import RunFiles


class Saveable(Protocol):
    """What saving a checkpoint needs of a trainer: the state as a host tree, and its description."""

    def host_tree(self, state: Any, metrics: Any = None) -> dict[str, Any]: ...

    def meta(self, epochs_done: int, batch: int) -> dict[str, Any]: ...


class Placement(Protocol):
    """How arrays reach the devices (training.parallel): what the controls need to change the state."""

    def put_replicated(self, tree: Any) -> Any: ...

    def fetch(self, tree: Any) -> Any: ...


log = logging.getLogger("cnn_flax")


class StopRequest:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps (a second Ctrl-C still kills)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt
        log.warning("Received %s: finishing the current step, then saving a checkpoint",
                    signal.Signals(signum).name)
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self) -> bool:
        """True when any process was asked to stop (all processes must stop at the same step)."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray(self.requested))
        return bool(np.any(flags))


class StopOnRequest(Hook):
    """Sets `loop.stop` once a signal arrived, at a step every process checks (collective with several)."""

    def __init__(self, request: StopRequest, log_every: int) -> None:
        self.request, self.log_every = request, max(log_every, 1)

    def on_step(self, loop: LoopState) -> None:
        # With several processes the check is a collective, so only every log_every_steps.
        if loop.mid_epoch and (loop.batch % self.log_every == 0 or jax.process_count() == 1):
            loop.stop = self.request.agreed()

    def on_epoch_end(self, loop: LoopState) -> None:
        loop.stop = self.request.agreed() or loop.stop  # an early stop stands; every process asks all the same


class EarlyStop(Hook):
    """Keras's EarlyStopping at each epoch's end (`controls.early_stopping_step`): ends the run, and with
    restore_best_weights keeps the best epoch's weights in the train state and puts them back when the run
    ends (stopped early or at its last epoch, as Keras's on_train_end does), before the final checkpoint.

    Marks in the record: `stopped_early` on the stopping epoch, `restored_epoch` where weights were put back.
    """

    key = "early_stopping"

    def __init__(self, parallel: Placement, options: EarlyStopping, state: EarlyStoppingState | None = None,
                 history: History | None = None) -> None:
        """`history`: the run's records, whose best epoch's record describes the weights put back."""
        self.parallel, self.options, self.state = parallel, options, state or EarlyStoppingState()
        self.history = history

    def _copy(self, tree: Any) -> Any:
        """Device arrays copied into new buffers placed as the state's (the step donates the state's own)."""
        return self.parallel.put_replicated(self.parallel.fetch(tree))

    def on_epoch_end(self, loop: LoopState) -> None:
        value = monitored(loop.record, self.options.monitor, "early_stopping")
        previous = self.state.snapshot_epoch
        self.state = early_stopping_step(self.options, self.state, loop.epoch, value)
        if self.options.restore_best_weights and self.state.snapshot_epoch != previous:
            loop.state = loop.state.replace(best=self._copy(loop.state.weights()))
        if self.state.stopped_epoch:
            loop.stop = loop.early_stopped = True
            loop.record["stopped_early"] = True
            log.warning("Early stopping after epoch %d: %s did not improve for %d epochs (best %.6g at epoch %d)",
                        loop.epoch, self.options.monitor, self.state.wait, value if self.state.best is None
                        else self.state.best, self.state.best_epoch)
        snapshot = self.state.snapshot_epoch
        if (self.state.stopped_epoch or loop.epoch == loop.num_epochs) and snapshot and snapshot != loop.epoch:
            loop.state = loop.state.with_weights(self._copy(loop.state.best))
            loop.record["restored_epoch"] = snapshot
            if self.history is not None:
                loop.weights_record = next((r for r in self.history.records if r["epoch"] == snapshot), None)
            log.warning("Restored the weights of epoch %d, the best by %s", snapshot, self.options.monitor)


class LowerOnPlateau(Hook):
    """Keras's ReduceLROnPlateau at each epoch's end (`controls.plateau_step`). The rate is lowered by putting
    a new factor into the train state's `lr_scale`, an array the compiled step reads: no new compilation.

    The plateau's rate is Keras's optimizer rate: optimizer.learning_rate times the factor; the step uses the
    schedule's rate times the same factor (identical for the constant schedule Keras's callback needs).
    Marks in the record: `lr_reduced_to` (the new rate) on the epoch after which it was lowered.
    """

    key = "reduce_lr_on_plateau"

    def __init__(self, parallel: Placement, options: ReduceLROnPlateau, base_rate: float,
                 state: PlateauState | None = None) -> None:
        """`base_rate`: optimizer.learning_rate, the rate Keras's callback would see at the start."""
        self.parallel, self.options = parallel, options
        self.base = float(np.float32(base_rate))
        self.state = state or PlateauState(learning_rate=self.base)

    def on_epoch_end(self, loop: LoopState) -> None:
        value = monitored(loop.record, self.options.monitor, "reduce_lr_on_plateau")
        self.state = plateau_step(self.options, self.state, value)
        if self.state.reduced:
            scale = np.asarray(self.state.learning_rate / self.base, np.float32)
            loop.state = loop.state.replace(lr_scale=self.parallel.put_replicated(scale))
            loop.record["lr_reduced_to"] = float(f"{self.state.learning_rate:.7g}")
            log.warning("Epoch %d: %s did not improve for %d epochs; learning rate lowered to %.6g", loop.epoch,
                        self.options.monitor, self.options.patience, self.state.learning_rate)


def control_hooks(config: Any, parallel: Placement, saved: dict[str, Any] | None,
                  history: History | None = None) -> list[EarlyStop | LowerOnPlateau]:
    """The controls `config` enables, continuing from the states `saved` in a checkpoint's meta."""
    saved = saved or {}
    hooks: list[EarlyStop | LowerOnPlateau] = []
    if config.early_stopping.enabled:
        state = saved.get(EarlyStop.key)
        hooks.append(EarlyStop(parallel, EarlyStopping.from_config(config.early_stopping),
                               None if state is None else EarlyStoppingState.from_dict(state), history))
    if config.reduce_lr_on_plateau.enabled:
        state = saved.get(LowerOnPlateau.key)
        hooks.append(LowerOnPlateau(parallel, ReduceLROnPlateau.from_config(config.reduce_lr_on_plateau),
                                    config.optimizer.learning_rate,
                                    None if state is None else PlateauState.from_dict(state)))
    return hooks


class FiniteLossCheck(Hook):
    """Ends the run with a one-line error naming the first step whose loss was NaN or infinite."""

    def __init__(self, checkpoints: Checkpoints) -> None:
        self.checkpoints = checkpoints

    def on_step(self, loop: LoopState) -> None:
        if loop.shown is not None:
            self._check(loop.shown)

    def on_steps_done(self, loop: LoopState) -> None:
        self._check(loop.train)

    def _check(self, values: dict[str, float]) -> None:
        bad = int(values["first_nonfinite_step"])
        if bad != NEVER:
            saved = self.checkpoints.saved_epochs()
            last = f"the last good checkpoint is epoch {saved[-1]}" if saved else "no checkpoint was saved"
            raise UserError(f"the loss became non-finite at step {bad + 1}; {last}. Lower the learning rate "
                            "(--config.optimizer.learning_rate) and resume with --config.resume_epoch=N")


class WriteHistory(Hook):
    """The epoch's log line, history.json and training.png (on process 0).

    history.json is written every epoch. training.png is redrawn at the first epoch's end, then at most once
    every `plot_seconds` and whenever the run ends or stops, so it lags by at most that and one epoch: drawing
    it takes 0.1-0.2 s, as long as a whole epoch of a small network on a CPU.
    """

    def __init__(self, history: History, files: RunFiles, plot_seconds: float = 10.0) -> None:
        self.history, self.files, self.plot_seconds = history, files, plot_seconds
        self.plotted_at: float | None = None  # time.monotonic() of the last drawing
        self.pending = False  # epochs ended since then

    def on_epoch_end(self, loop: LoopState) -> None:
        record = loop.record
        shown = {k: f"{v:.6g}" if isinstance(v, float) else v for k, v in record.items() if k != "epoch"}
        log.info("epoch %d: %s", record["epoch"], " ".join(f"{k}={v}" for k, v in shown.items()))
        self.history.append(record)
        if self.files.is_writer:
            self.history.save()
            self.pending = True
            due = self.plotted_at is None or time.monotonic() - self.plotted_at >= self.plot_seconds
            if due or loop.stop or record["epoch"] >= loop.num_epochs:
                self._plot()

    def on_stop(self, loop: LoopState) -> None:
        if self.files.is_writer and self.pending:
            self._plot()

    def _plot(self) -> None:
        plot_history(self.history.records, self.files.path("training.png"))
        self.plotted_at, self.pending = time.monotonic(), False


class ShowProgress(Hook):
    """The progress bar, TensorBoard scalars and W&B, through the run's `Reporter`."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter

    def on_epoch_start(self, loop: LoopState) -> None:
        self.reporter.start_epoch(loop.epoch, loop.num_epochs, loop.steps_per_epoch, loop.batch)

    def on_step(self, loop: LoopState) -> None:
        self.reporter.step(loop.shown)

    def on_epoch_end(self, loop: LoopState) -> None:
        self.reporter.end_epoch(loop.step, loop.record)


class ReleaseCompileMemory(Hook):
    """After a run's first step, hand the memory its compilation freed back to the kernel (see
    `runtime.release_freed_host_memory`): the allocator settings that keep a step's temporaries would keep
    it for the whole run."""

    def __init__(self) -> None:
        self.done = False

    def on_step(self, loop: LoopState) -> None:
        if not self.done:
            self.done = True
            release_freed_host_memory()


class SaveCheckpoints(Hook):
    """An epoch checkpoint every checkpoint_every_epochs, at the last epoch and when stopping; a mid-epoch
    one (state and running metrics) when a run stops inside an epoch, so the same command continues there."""

    def __init__(self, trainer: Saveable, checkpoints: Checkpoints, every: int,
                 controls: Sequence["EarlyStop | LowerOnPlateau"] = ()) -> None:
        """`controls`: hooks whose state each checkpoint's meta carries, so a resumed run decides as this one."""
        self.trainer, self.checkpoints, self.every = trainer, checkpoints, max(every, 1)
        self.controls = controls

    def _meta(self, epochs_done: int, batch: int, record: dict[str, Any] | None = None) -> dict[str, Any]:
        meta = self.trainer.meta(epochs_done, batch)
        if self.controls:
            meta["controls"] = {hook.key: hook.state.to_dict() for hook in self.controls}
        if record is not None:  # what --checkpoint=best and checkpoint.keep_best rank
            meta["metrics"] = {k: v for k, v in record.items() if isinstance(v, float) and np.isfinite(v)}
        return meta

    def on_epoch_end(self, loop: LoopState) -> None:
        if loop.epoch % self.every == 0 or loop.epoch == loop.num_epochs or loop.stop:
            self.checkpoints.save_epoch(loop.epoch, self.trainer.host_tree(loop.state),
                                        self._meta(loop.epoch, 0, loop.weights_record or loop.record))
            self.checkpoints.clear_interrupted()

    def on_stop(self, loop: LoopState) -> None:
        if loop.early_stopped:
            return
        if not loop.mid_epoch:
            log.warning("Stopped after epoch %d; run the same command to continue.", loop.epoch)
            return
        self.checkpoints.save_interrupted(loop.step, self.trainer.host_tree(loop.state, loop.metrics),
                                          self._meta(loop.epoch - 1, loop.batch))
        log.warning("Stopped in epoch %d after batch %d (step %d); checkpoint saved in %s. "
                    "Run the same command to continue.", loop.epoch, loop.batch, loop.step,
                    self.checkpoints.directory)
