"""What a run reports while it trains: a progress bar, one line per epoch, TensorBoard scalars, optional W&B.

Only process 0 writes files or prints; other processes write nothing to the terminal. On a terminal each
epoch has a tqdm bar that stays on screen when the epoch ends, with the epoch's one-line summary under it.
Where the output is not a terminal (CI logs, a file, nohup) there are no bars at all — carriage returns
make such logs unreadable — only the summary lines. Both go to stderr, which keeps stdout for results
(the final metrics, tables) that a user may pipe on. Losses shown in the bar are fetched from the device
every `log_every_steps` steps, never every step, so the bar does not stall the accelerator.
"""

import logging
import sys
import time
from typing import Any, TextIO

import jax
from tqdm import tqdm

from cnn_flax.training.tensorboard import ScalarWriter

log = logging.getLogger("cnn_flax")


def format_duration(seconds: float) -> str:
    """Short human durations: 42s, 3m05s, 2h07m."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _pair(record: dict[str, Any], what: str) -> str:
    train, val = record.get(f"train_{what}"), record.get(f"val_{what}")
    text = "-" if train is None else f"{train:.4f}"
    return text if val is None else f"{text} (val {val:.4f})"


def epoch_line(record: dict[str, Any], num_epochs: int, seconds: float, eta_seconds: float | None) -> str:
    """The summary of one finished epoch, e.g.
    'epoch 3/10  lr 0.00995  loss 0.5120 (val 0.4301)  accuracy 0.8340 (val 0.8612)  12s  ETA 1m26s'."""
    parts = [f"epoch {record['epoch']}/{num_epochs}"]
    if record.get("learning_rate") is not None:
        parts.append(f"lr {record['learning_rate']:.6g}")
    parts += [f"loss {_pair(record, 'loss')}", f"accuracy {_pair(record, 'accuracy')}", format_duration(seconds)]
    if eta_seconds is not None:
        parts.append(f"ETA {format_duration(eta_seconds)}")
    return "  ".join(parts)


class Reporter:
    """The terminal, TensorBoard and W&B side of a training run.

    `stream` (default: whatever sys.stderr is when an epoch starts, so a caller may redirect it) receives
    bars and epoch lines; `interactive` (default: whether that stream is a terminal) decides on bars.
    """

    def __init__(self, workdir: str, wandb_config: Any | None, run_config: dict[str, Any],
                 stream: TextIO | None = None, interactive: bool | None = None) -> None:
        self.is_writer = jax.process_index() == 0
        self._stream, self._interactive = stream, interactive
        self.writer = ScalarWriter(workdir) if self.is_writer else None
        self.bar: tqdm | None = None
        self.num_epochs = self.epoch = self.epoch_steps = self.epoch_done = 0
        self.epoch_started = 0.0
        self.epoch_seconds: list[float] = []  # epochs run by this process, for the ETA
        self.wandb = None
        if self.is_writer and wandb_config is not None and wandb_config.enabled:
            import wandb  # optional dependency: `pip install cnn_flax[wandb]`

            self.wandb = wandb.init(project=wandb_config.project, name=wandb_config.name or None,
                                    config=run_config, dir=workdir, mode=wandb_config.mode or None, reinit=True)

    @property
    def stream(self) -> TextIO:
        return sys.stderr if self._stream is None else self._stream

    @property
    def interactive(self) -> bool:
        return _is_terminal(self.stream) if self._interactive is None else self._interactive

    def start_epoch(self, epoch: int, num_epochs: int, steps: int, done: int) -> None:
        self.num_epochs, self.epoch, self.epoch_steps, self.epoch_done = num_epochs, epoch, steps, done
        self.epoch_started = time.monotonic()
        if self.is_writer and self.interactive:
            self.bar = tqdm(total=steps, initial=done, desc=f"Epoch {epoch}/{num_epochs}", unit="step",
                            file=self.stream, dynamic_ncols=True, mininterval=0.5, leave=True)

    def step(self, metrics: dict[str, float] | None = None) -> None:
        """One finished step; `metrics` (the epoch's running loss and accuracy) every log_every_steps."""
        self.epoch_done += 1
        if metrics:  # the log file's progress, for runs without a terminal (tail -f WORKDIR/log.txt)
            log.info("epoch %d step %d/%d: loss %.4f accuracy %.4f", self.epoch, self.epoch_done, self.epoch_steps,
                     metrics["loss"], metrics["accuracy"])
        if self.bar is not None:
            self.bar.update(1)
            if metrics:
                self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", accuracy=f"{metrics['accuracy']:.4f}")

    def end_epoch(self, step: int, record: dict[str, Any]) -> None:
        """Close the bar, print the epoch's line under it, and write the epoch's scalars."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        seconds = time.monotonic() - self.epoch_started if self.epoch_started else float(record.get("seconds", 0))
        self.epoch_seconds.append(seconds)
        if self.is_writer:
            left = max(self.num_epochs - int(record["epoch"]), 0)
            eta = left * sum(self.epoch_seconds) / len(self.epoch_seconds) if self.num_epochs else None
            print(epoch_line(record, self.num_epochs or int(record["epoch"]), seconds, eta), file=self.stream,
                  flush=True)
        scalars = {k: v for k, v in record.items() if k != "epoch" and v is not None}
        if self.writer is not None:
            self.writer.write_scalars(step, scalars)
            self.writer.flush()
        if self.wandb is not None:
            self.wandb.log({**scalars, "epoch": record["epoch"]}, step=step)

    def images(self, paths: dict[str, str]) -> None:
        if self.wandb is not None:
            import wandb

            self.wandb.log({name: wandb.Image(path) for name, path in paths.items()})

    def summary(self, values: dict[str, Any]) -> None:
        if self.wandb is not None:
            self.wandb.summary.update(values)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream without a terminal behind it
        return False
