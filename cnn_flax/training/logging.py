"""What a run reports while it trains: a Keras-like progress bar, clu metric writers, optional W&B.

Only process 0 writes files or prints the bar; other processes log to their own stderr. Losses shown
in the bar are fetched from the device every `log_every_steps` steps, never every step, so the
progress bar does not stall the accelerator.
"""

import logging
import sys
from typing import Any

import jax
from tqdm import tqdm

log = logging.getLogger("cnn_flax")


class Reporter:
    def __init__(self, workdir: str, total_steps: int, wandb_config: Any | None, run_config: dict[str, Any]) -> None:
        from clu import metric_writers, periodic_actions  # imports TensorFlow (seconds): only when a run starts

        self.is_writer = jax.process_index() == 0
        self.writer = metric_writers.create_default_writer(workdir, just_logging=not self.is_writer,
                                                           asynchronous=False)
        self.progress_hook = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=self.writer,
                                                             every_secs=60)
        self.bar: tqdm | None = None
        self.wandb = None
        if self.is_writer and wandb_config is not None and wandb_config.get("enabled"):
            import wandb  # optional dependency: `pip install cnn_flax[wandb]`

            self.wandb = wandb.init(project=wandb_config.get("project") or "cnn_flax",
                                    name=wandb_config.get("name") or None, config=run_config, dir=workdir,
                                    mode=wandb_config.get("mode") or None, reinit=True)

    def start_epoch(self, epoch: int, num_epochs: int, steps: int, done: int) -> None:
        if self.is_writer:
            self.bar = tqdm(total=steps, initial=done, desc=f"Epoch {epoch}/{num_epochs}", unit="step",
                            file=sys.stderr, dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30)

    def step(self, step: int, metrics: dict[str, float] | None = None) -> None:
        self.progress_hook(step)
        if self.bar is not None:
            self.bar.update(1)
            if metrics:
                self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", accuracy=f"{metrics['accuracy']:.4f}")

    def end_epoch(self, step: int, record: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        scalars = {k: v for k, v in record.items() if k != "epoch" and v is not None}
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
        self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()
