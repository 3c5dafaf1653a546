"""The hooks of every training run: stop requests, the finite-loss check, history, progress, checkpoints.

`cnn_flax.run.train.fit` calls them in this order, so that at the end of an epoch the history is written
before the checkpoint that it describes, and a stop request is known before the checkpoint decision.
"""

import contextlib
import logging
import signal
from typing import Any, Protocol

import jax
import numpy as np

from cnn_flax.errors import UserError
from cnn_flax.evaluation import plot_history
from cnn_flax.training.checkpoint import Checkpoints
from cnn_flax.training.history import History
from cnn_flax.training.loop import Hook, LoopState
from cnn_flax.training.metrics import NEVER
from cnn_flax.training.progress import Reporter
from cnn_flax.training.workdir import RunFiles


class Saveable(Protocol):
    """What saving a checkpoint needs of a trainer: the state as a host tree, and its description."""

    def host_tree(self, state: Any, metrics: Any = None) -> dict[str, Any]: ...

    def meta(self, epochs_done: int, batch: int) -> dict[str, Any]: ...

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
        loop.stop = self.request.agreed()


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
    """The epoch's log line, history.json and training.png (on process 0)."""

    def __init__(self, history: History, files: RunFiles) -> None:
        self.history, self.files = history, files

    def on_epoch_end(self, loop: LoopState) -> None:
        record = loop.record
        shown = {k: f"{v:.6g}" if isinstance(v, float) else v for k, v in record.items() if k != "epoch"}
        log.info("epoch %d: %s", record["epoch"], " ".join(f"{k}={v}" for k, v in shown.items()))
        self.history.append(record)
        if self.files.is_writer:
            self.history.save()
            plot_history(self.history.records, self.files.path("training.png"))


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


class SaveCheckpoints(Hook):
    """An epoch checkpoint every checkpoint_every_epochs, at the last epoch and when stopping; a mid-epoch
    one (state and running metrics) when a run stops inside an epoch, so the same command continues there."""

    def __init__(self, trainer: Saveable, checkpoints: Checkpoints, every: int) -> None:
        self.trainer, self.checkpoints, self.every = trainer, checkpoints, max(every, 1)

    def on_epoch_end(self, loop: LoopState) -> None:
        if loop.epoch % self.every == 0 or loop.epoch == loop.num_epochs or loop.stop:
            self.checkpoints.save_epoch(loop.epoch, self.trainer.host_tree(loop.state),
                                        self.trainer.meta(loop.epoch, 0))
            self.checkpoints.clear_interrupted()

    def on_stop(self, loop: LoopState) -> None:
        if not loop.mid_epoch:
            log.warning("Stopped after epoch %d; run the same command to continue.", loop.epoch)
            return
        self.checkpoints.save_interrupted(loop.step, self.trainer.host_tree(loop.state, loop.metrics),
                                          self.trainer.meta(loop.epoch - 1, loop.batch))
        log.warning("Stopped in epoch %d after batch %d (step %d); checkpoint saved in %s. "
                    "Run the same command to continue.", loop.epoch, loop.batch, loop.step,
                    self.checkpoints.directory)
