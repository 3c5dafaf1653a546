"""train_and_evaluate(config, workdir): train, resume, checkpoint, report — the library's main entry point.

The pieces, each in its own module:
  engine.Engine         the experiment on the devices: data, model, parallel setup, batches, step compiler;
  train.Trainer         an Engine with the optimizer and the compiled train step, and the state it starts from;
  evaluator.Evaluator   validation and the final report from a set of variables (no optimizer needed);
  loop.run_epochs       the epoch loop, calling `loop.Hook`s at fixed points;
  hooks                 what every run does around the loop: progress and metric writers, history and plot,
                        checkpoints, stop requests, the finite-loss check.
`fit` wires them for one run; research code may pass its own hooks (the benchmark times the loop with one).
Everything a run leaves goes through `RunFiles`, so only process 0 writes (checkpoints are collective).
SIGTERM/SIGINT finish the current step, save the position inside the epoch and return; the same
command then continues exactly where it stopped.
"""

import dataclasses
import logging
import os
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from cnn_flax.atomic import atomic_file
from cnn_flax.data.augment.recipes import make_mixing
from cnn_flax.data.dataset import INFO_FILE, MEAN_IMAGE_FILE, DatasetInfo, info_record
from cnn_flax.errors import UserError
from cnn_flax.models import init_variables
from cnn_flax.run.engine import Engine
from cnn_flax.run.evaluator import Evaluator
from cnn_flax.run.experiment import initial_state, make_optimizer, train_steps_per_epoch
from cnn_flax.run.report_page import write_run_report
from cnn_flax.training.checkpoint import Checkpoints
from cnn_flax.training.history import History
from cnn_flax.training.hooks import (
    FiniteLossCheck,
    SaveCheckpoints,
    ShowProgress,
    StopOnRequest,
    StopRequest,
    WriteHistory,
)
from cnn_flax.training.loop import Hook, LoopState, run_epochs
from cnn_flax.training.metrics import TrainMetrics
from cnn_flax.training.progress import Reporter
from cnn_flax.training.state import TrainState
from cnn_flax.training.step import make_train_step
from cnn_flax.training.workdir import RunFiles

log = logging.getLogger("cnn_flax")


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a training run ended with."""

    workdir: str
    interrupted: bool  # a signal stopped it; a checkpoint was saved and the same command continues
    is_writer: bool  # process 0, the one that writes the reports
    metrics: dict[str, Any] | None = None  # eval_split's metrics (rank1, rank5, loss, …) on process 0 when finished


# Model keys that steer training rather than the network: a run may resume with another value (as with a
# learning rate), and checkpoints saved before such a key existed still belong to the run.
TRAINING_ONLY_MODEL_KEYS = ("bn_momentum",)


def _architecture(model_config: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in model_config.items() if key not in TRAINING_ONLY_MODEL_KEYS}


class Trainer(Engine):
    """An Engine with the optimizer, the compiled train step and the evaluator of its validation."""

    def __init__(self, config: ml_collections.ConfigDict) -> None:
        super().__init__(config)
        self.steps_per_epoch = train_steps_per_epoch(config, self.experiment.source)
        self.schedule, self.tx = make_optimizer(config, self.steps_per_epoch)
        self.train_step = self.compile("train", make_train_step(
            self.experiment.model, self.tx, self.preprocess, seed=config.seed, aux_weight=config.loss.aux_weight,
            l2=config.optimizer.l2, label_smoothing=config.loss.label_smoothing,
            accum_steps=config.optimizer.accum_steps, ema_decay=config.ema_decay, axis_name=self.parallel.axis_name,
            mixing=make_mixing(config.data), freeze=config.optimizer.freeze))
        self.evaluator = Evaluator(self)
        self.log_every_steps = int(config.log_every_steps)

    def template(self) -> dict[str, Any]:
        """Zeros shaped like a checkpoint's tree, to restore into."""
        experiment = self.experiment
        variables = jax.eval_shape(lambda: init_variables(experiment.model, jax.random.key(0), experiment.input_shape))
        state = jax.eval_shape(lambda v: self.new_state(v), variables)
        as_numpy = lambda s: np.zeros(s.shape, s.dtype)  # noqa: E731
        return {"state": jax.tree_util.tree_map(as_numpy, state),
                "metrics": jax.tree_util.tree_map(as_numpy, jax.eval_shape(TrainMetrics.empty))}

    def new_state(self, variables: dict[str, Any]) -> TrainState:
        """A fresh train state; it keeps a moving average of the weights when ema_decay > 0."""
        return TrainState.create(variables, self.tx, ema=bool(self.config.ema_decay))

    def host_tree(self, state: TrainState, metrics: TrainMetrics | None = None) -> dict[str, Any]:
        """What a checkpoint holds: the state, and the epoch's running metrics when saved mid-epoch."""
        host_metrics = TrainMetrics.empty() if metrics is None else self.parallel.fetch(metrics)
        return {"state": self.parallel.fetch(state), "metrics": jax.tree_util.tree_map(np.asarray, host_metrics)}

    def meta(self, epochs_done: int, batch: int) -> dict[str, Any]:
        """A checkpoint's description: its position in the data order and the model it belongs to."""
        return dict(epoch=epochs_done, batch=batch, step=epochs_done * self.steps_per_epoch + batch,
                    steps_per_epoch=self.steps_per_epoch,
                    batch_size=self.config.batch_size, model=self.experiment.model_config,
                    input_shape=list(self.experiment.input_shape), ema=bool(self.config.ema_decay))

    def check_same_run(self, meta: dict[str, Any], workdir: str) -> None:
        """Refuse another run's checkpoints before reading them: their parameters would not fit this model."""
        experiment, config = self.experiment, self.config
        if _architecture(meta["model"]) != _architecture(experiment.model_config):
            raise UserError(f"{workdir} holds checkpoints of model {meta['model']}, not {experiment.model_config}; "
                            "use another --workdir for this config")
        shape = tuple(meta.get("input_shape", experiment.input_shape))  # older checkpoints lack it
        if shape != tuple(experiment.input_shape):  # the input size fixes the first dense layer's shape
            raise UserError(f"{workdir} holds checkpoints of the model for {shape[0]}x{shape[1]} inputs, not "
                            f"{experiment.input_shape[0]}x{experiment.input_shape[1]}; use another --workdir for this "
                            "config")
        if meta.get("ema", False) != bool(config.ema_decay):  # the train state has another shape
            raise UserError(f"{workdir} holds checkpoints {'with' if meta.get('ema') else 'without'} a moving average "
                            "of the weights; keep ema_decay as it was (0 or not) or use another --workdir")
        if meta["batch"] and (meta["steps_per_epoch"], meta["batch_size"]) != (self.steps_per_epoch, config.batch_size):
            raise UserError(f"{workdir} was interrupted mid-epoch with batch_size={meta['batch_size']} and "
                            f"{meta['steps_per_epoch']} steps per epoch; resume with the same values")

    def restore_or_init(self, checkpoints: Checkpoints) -> tuple[TrainState, TrainMetrics, dict[str, Any]]:
        """The newest checkpoint (or the one of resume_epoch), else fresh or init_from weights."""
        resume_epoch = self.config.resume_epoch
        if resume_epoch >= 0:  # every process: process 0 moves the later checkpoints while the others wait
            for moved in checkpoints.set_aside_after(resume_epoch):
                log.warning("resume_epoch=%d: moved the later checkpoint to %s", resume_epoch, moved)
        restored = checkpoints.restore_latest(self.template(), None if resume_epoch < 0 else resume_epoch)
        if restored is not None:
            tree, meta = restored
            where = f"epoch {meta['epoch']}" + (f", batch {meta['batch']}" if meta["batch"] else "")
            log.info("Resuming from the checkpoint after %s (step %d) in %s", where, meta["step"],
                     checkpoints.directory)
            return tree["state"], tree["metrics"], meta
        if resume_epoch > 0:
            raise UserError(f"resume_epoch={resume_epoch}: no checkpoint at or before that epoch in "
                            f"{checkpoints.directory}")
        # a Keras file may continue a run
        state, epochs_done = initial_state(self.experiment, self.new_state, self.steps_per_epoch)
        return state, TrainMetrics.empty(), self.meta(epochs_done, 0)


def fit(trainer: Trainer, files: RunFiles, reporter: Reporter, hooks: Sequence[Hook] = ()) -> LoopState:
    """The epochs of a run in `files.workdir`, resuming from its checkpoints; `hooks` run after the run's own.

    The returned state has `stop` set when a signal ended the run early (a checkpoint was saved first).
    """
    config = trainer.config
    if files.is_writer:
        os.makedirs(files.workdir, exist_ok=True)
    files.write_json("config.json", config.to_dict())
    write_dataset_facts(files, trainer.experiment.info)
    checkpoints = Checkpoints(files.checkpoints, config.keep_checkpoints or None,
                              check=lambda meta: trainer.check_same_run(meta, files.workdir))
    try:
        state, metrics, meta = trainer.restore_or_init(checkpoints)
        history = History.load(files.path("history.json")).truncate(meta["epoch"])
        loop = LoopState(epoch=meta["epoch"] + 1, batch=meta["batch"], num_epochs=config.num_epochs,
                         steps_per_epoch=trainer.steps_per_epoch, state=trainer.parallel.put_replicated(state),
                         metrics=trainer.parallel.put_replicated(metrics))
        with StopRequest() as request:
            own = [FiniteLossCheck(checkpoints), WriteHistory(history, files), ShowProgress(reporter),
                   StopOnRequest(request, config.log_every_steps),
                   SaveCheckpoints(trainer, checkpoints, config.checkpoint_every_epochs)]
            return run_epochs(trainer, loop, [*own, *hooks])
    finally:
        checkpoints.close()


def write_dataset_facts(files: RunFiles, info: DatasetInfo | None) -> None:
    """dataset.json and mean_image.npy: what prediction needs of the data, for a workdir without it (load_run)."""
    if info is None or not files.is_writer:
        return
    files.write_json(INFO_FILE, info_record(info))
    with atomic_file(files.path(MEAN_IMAGE_FILE), binary=True) as handle:
        np.save(handle, np.asarray(info.mean_image, np.float32), allow_pickle=False)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainResult:
    """Train `config` in `workdir` (resuming if it holds checkpoints), then evaluate and write reports."""
    trainer, files = Trainer(config), RunFiles(workdir)
    reporter = Reporter(workdir, config.wandb, config.to_dict())
    try:
        loop = fit(trainer, files, reporter)
        if loop.stop:
            return TrainResult(workdir, interrupted=True, is_writer=files.is_writer)
        averaged = loop.state.averaged().variables if loop.state.ema else None
        metrics = trainer.evaluator.report(loop.state.variables, files, averaged)
        if files.is_writer:
            reporter.summary({f"test_{k}": v for k, v in metrics.items() if isinstance(v, float)})
            reporter.images({name: files.path(f"{name}.png") for name in ("confusion_matrix", "predictions")})
            write_run_report(workdir, "train", config)
        return TrainResult(workdir, interrupted=False, is_writer=files.is_writer,
                           metrics=metrics if files.is_writer else None)
    finally:
        reporter.close()
