"""train_and_evaluate(config, workdir): train, resume, checkpoint, report — the library's main entry point.

The loop is deliberately plain: per epoch, stream batches through one compiled train step that also
accumulates the metrics on the device, fetch the metrics once, evaluate, write the record, maybe save.
Everything a run leaves goes through `RunFiles`, so only process 0 writes (checkpoints are collective).
SIGTERM/SIGINT finish the current step, save the position inside the epoch and return; the same
command then continues exactly where it stopped.
"""

import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np

from cnn_flax.data.augment_modern import make_mixing
from cnn_flax.errors import UserError
from cnn_flax.evaluation import plot_history, write_evaluation
from cnn_flax.evaluation.mistakes import WorstMistakes, write_mistakes
from cnn_flax.experiment import (
    Experiment,
    build_experiment,
    initial_variables,
    make_optimizer,
    preprocessors,
    setup_parallel,
    steps_per_epoch,
)
from cnn_flax.models import init_variables
from cnn_flax.training.checkpoint import Checkpoints
from cnn_flax.training.history import History, write_json_atomically
from cnn_flax.training.metrics import NEVER, EvalMetrics, TrainMetrics
from cnn_flax.training.reporting import Reporter
from cnn_flax.training.state import TrainState
from cnn_flax.training.step import cross_entropy, make_eval_step, make_predict_step, make_train_step

log = logging.getLogger("cnn_flax")


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """Every path a run writes; `is_writer` is False on all processes but 0."""

    workdir: str

    @property
    def is_writer(self) -> bool:
        return jax.process_index() == 0

    def path(self, name: str) -> str:
        return os.path.join(self.workdir, name)

    @property
    def checkpoints(self) -> str:
        return self.path("checkpoints")

    def write_json(self, name: str, payload: Any) -> None:
        if self.is_writer:
            write_json_atomically(self.path(name), payload)


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


def device_prefetch(batches: Iterator[dict], put: Any, depth: int = 2) -> Iterator[dict]:
    """Keep `depth` batches already transferred, so copying overlaps the running step."""
    queue: deque = deque()
    for batch in batches:
        queue.append(put(batch))
        if len(queue) > depth:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def _meta(exp: Experiment, epoch: int, batch: int, step: int, spe: int) -> dict[str, Any]:
    return dict(epoch=epoch, batch=batch, step=step, steps_per_epoch=spe, batch_size=exp.config.batch_size,
                model=exp.model_config, input_shape=list(exp.input_shape), ema=bool(exp.config.ema_decay))


def _check_same_model(meta: dict[str, Any], exp: Experiment, workdir: str, spe: int) -> None:
    """Refuse another run's checkpoints before reading them: their parameters would not fit this model."""
    if meta["model"] != exp.model_config:
        raise UserError(f"{workdir} holds checkpoints of model {meta['model']}, not {exp.model_config}; "
                        "use another --workdir for this config")
    shape = tuple(meta.get("input_shape", exp.input_shape))  # the input size fixes the first dense layer's shape
    if shape != tuple(exp.input_shape):
        raise UserError(f"{workdir} holds checkpoints of the model for {shape[0]}x{shape[1]} inputs, not "
                        f"{exp.input_shape[0]}x{exp.input_shape[1]}; use another --workdir for this config")
    if meta.get("ema", False) != bool(exp.config.ema_decay):  # the train state has another shape
        raise UserError(f"{workdir} holds checkpoints {'with' if meta.get('ema') else 'without'} a moving average of "
                        "the weights; keep ema_decay as it was (0 or not) or use another --workdir")
    if meta["batch"] and (meta["steps_per_epoch"], meta["batch_size"]) != (spe, exp.config.batch_size):
        raise UserError(f"{workdir} was interrupted mid-epoch with batch_size={meta['batch_size']} and "
                        f"{meta['steps_per_epoch']} steps per epoch; resume with the same values")


class Trainer:
    """One training run: compiled steps, state and the bookkeeping around them."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str) -> None:
        self.config = config
        self.files = RunFiles(workdir)
        self.exp = build_experiment(config)
        self.parallel = setup_parallel(config)
        self.spe = steps_per_epoch(config, self.exp.source)
        self.schedule, self.tx = make_optimizer(config, self.spe)
        preprocess = preprocessors(self.exp)
        axis = self.parallel.axis_name
        self.train_step = self.parallel.compile_step(make_train_step(
            self.exp.model, self.tx, preprocess, seed=config.seed, aux_weight=config.loss.aux_weight,
            l2=config.optimizer.get("l2", 0.0), label_smoothing=config.loss.label_smoothing,
            accum_steps=config.optimizer.accum_steps, ema_decay=config.ema_decay, axis_name=axis,
            mixing=make_mixing(config.data), freeze=config.optimizer.freeze))
        self.eval_step = self.parallel.compile_step(
            make_eval_step(self.exp.model, preprocess, axis_name=axis), donate=(2,))
        self.predict_step = {flip: self.parallel.compile_predict(make_predict_step(self.exp.model, preprocess,
                                                                                   flip=flip))
                             for flip in (False, True)}
        self.batches_kwargs = dict(process_index=jax.process_index(), process_count=jax.process_count())
        self.on_device: dict[str, Any] = {}  # split -> OnDeviceBatches, loaded on first use

    def split_batches(self, split: str, *, shuffle: bool, epoch: int, drop_remainder: bool,
                      start_batch: int = 0) -> Iterator[dict]:
        """Host batches from the data source, or (data.on_device) batches cut on the accelerator.

        Both follow the same example order, so a run may switch between them and get the same batches.
        """
        options = dict(shuffle=shuffle, seed=self.config.seed, epoch=epoch, drop_remainder=drop_remainder,
                       start_batch=start_batch)
        if not self.config.data.get("on_device"):
            return self.exp.source.batches(split, self.config.batch_size, **options, **self.batches_kwargs)
        if split not in self.on_device:
            from cnn_flax.data import OnDeviceBatches

            self.on_device[split] = OnDeviceBatches(*self.exp.source.arrays(split), self.parallel.mesh)
        return self.on_device[split].batches(self.config.batch_size, **options)

    # -- state ---------------------------------------------------------------------------------------
    def template(self) -> dict[str, Any]:
        variables = jax.eval_shape(lambda: init_variables(self.exp.model, jax.random.key(0), self.exp.input_shape))
        state = jax.eval_shape(lambda v: TrainState.create(v, self.tx, ema=bool(self.config.ema_decay)), variables)
        as_numpy = lambda s: np.zeros(s.shape, s.dtype)  # noqa: E731
        return {"state": jax.tree_util.tree_map(as_numpy, state),
                "metrics": jax.tree_util.tree_map(as_numpy, jax.eval_shape(TrainMetrics.empty))}

    def restore_or_init(self, checkpoints: Checkpoints) -> tuple[TrainState, TrainMetrics, dict[str, Any]]:
        resume_epoch = int(self.config.get("resume_epoch", -1))
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
        state = TrainState.create(initial_variables(self.exp), self.tx, ema=bool(self.config.ema_decay))
        return state, TrainMetrics.empty(), dict(epoch=0, batch=0, step=0)

    def host_tree(self, state: TrainState, metrics: TrainMetrics | None = None) -> dict[str, Any]:
        """What a checkpoint holds: the state, and the epoch's running metrics when saved mid-epoch."""
        host_metrics = TrainMetrics.empty() if metrics is None else self.parallel.fetch(metrics)
        return {"state": self.parallel.fetch(state), "metrics": jax.tree_util.tree_map(np.asarray, host_metrics)}

    # -- evaluation ------------------------------------------------------------------------------------
    def evaluate_metrics(self, state: TrainState, split: str) -> dict[str, float]:
        metrics = self.parallel.put_replicated(EvalMetrics.empty())
        for batch in self.eval_batches(split):
            metrics = self.eval_step(state, batch, metrics)
        return {k: float(v) for k, v in self.parallel.fetch(metrics).compute().items()}

    def eval_batches(self, split: str) -> Iterator[dict]:
        limit = int(self.config.get("eval_steps", -1))
        batches = self.split_batches(split, shuffle=False, epoch=0, drop_remainder=False)
        if limit > 0:
            batches = (b for i, b in zip(range(limit), batches, strict=False))
        return device_prefetch(batches, self.parallel.put_batch)

    def predictions(self, state: TrainState, split: str, flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Logits and labels of a whole split on the host, padding rows removed."""
        logits, labels, _ = self.predictions_and_images(state, split, flip)
        return logits, labels

    def predictions_and_images(self, state: TrainState, split: str, flip: bool = False, num_images: int = 0,
                               worst: WorstMistakes | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Logits, labels and the raw uint8 images of the first `num_images` examples, in one pass
        (which also feeds `worst`, the worst mistakes of the split, when given).

        The images come from the evaluated batches themselves, not from the source's arrays: a streamed
        dataset (ImageNet) has none, and this keeps each picture paired with its own prediction.
        """
        logits, labels, images, kept = [], [], [], 0
        for batch in self.eval_batches(split):
            out = self.parallel.fetch_rows(self.predict_step[flip](state, batch))
            mask = self.parallel.fetch_rows(batch["mask"]).astype(bool)
            logits.append(out[mask])
            labels.append(self.parallel.fetch_rows(batch["label"])[mask])
            if worst is not None:  # same decision on every process: scores and labels are gathered
                worst.update(logits[-1], labels[-1],
                             lambda batch=batch, mask=mask: self.parallel.fetch_rows(batch["image"])[mask])
            if kept < num_images:  # every process takes part: fetch_rows gathers across processes
                images.append(self.parallel.fetch_rows(batch["image"])[mask][:num_images - kept])
                kept += len(images[-1])
        first = np.concatenate(images) if images else np.zeros((0, *self.exp.input_shape), np.uint8)
        return np.concatenate(logits), np.concatenate(labels), first

    def final_report(self, state: TrainState, reporter: Reporter | None = None) -> dict[str, Any]:
        """The evaluation files and metrics of eval_split; {} on processes other than 0, which write nothing."""
        split = self.config.get("eval_split", "test")
        results = {}
        variants = [("", False, state)] + ([("tta_", True, state)] if self.config.get("tta") else [])
        variants += [("ema_", False, state.averaged())] if state.ema else []
        for prefix, flip, weights in variants:
            # The first 25 examples of the split, or as many as were evaluated (eval_steps may stop short).
            worst = None if prefix else WorstMistakes()
            logits, labels, images = self.predictions_and_images(weights, split, flip, 0 if prefix else 25, worst)
            loss = float(np.mean(np.asarray(cross_entropy(logits, labels))))
            if self.files.is_writer:
                results[prefix or "plain"] = write_evaluation(
                    self.files.workdir, split=split, scores=logits, labels=labels,
                    class_names=self.exp.class_names, images=None if prefix else images, loss=loss,
                    prefix=prefix)
                if worst is not None:
                    write_mistakes(self.files.workdir, worst, self.exp.class_names, self._file_names(split))
        if "ema_" in results:  # the averaged weights' figures beside the raw ones, in metrics.json too
            results["plain"].update({f"ema_{k}": results["ema_"][k] for k in ("rank1", "rank5", "loss")})
            self.files.write_json("metrics.json", results["plain"])
        if reporter is not None and self.files.is_writer:
            main = results["plain"]
            reporter.summary({f"test_{k}": v for k, v in main.items() if isinstance(v, float)})
            reporter.images({name: self.files.path(f"{name}.png") for name in ("confusion_matrix", "predictions")})
        return results.get("plain", {})

    def _file_names(self, split: str) -> list[str] | None:
        """The file of each example of `split` in order, for sources that know them (folder datasets)."""
        image_paths = getattr(self.exp.source, "image_paths", None)
        return None if image_paths is None else list(image_paths(split))

    # -- training ----------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train (resuming if the workdir holds checkpoints), then evaluate on eval_split and write reports."""
        reporter = Reporter(self.files.workdir, self.config.num_epochs * self.spe, self.config.get("wandb"),
                            self.config.to_dict())
        try:
            state = self.train(reporter)
            if state is None:
                return {"interrupted": True}
            return self.final_report(state, reporter)
        finally:
            reporter.close()

    def train(self, reporter: Reporter) -> TrainState | None:
        """The epochs alone; None when a signal stopped the run (a checkpoint was saved first)."""
        config, files = self.config, self.files
        if files.is_writer:
            os.makedirs(files.workdir, exist_ok=True)
        files.write_json("config.json", config.to_dict())
        checkpoints = Checkpoints(files.checkpoints, int(config.get("keep_checkpoints", 0)) or None,
                                  check=lambda meta: _check_same_model(meta, self.exp, files.workdir, self.spe))
        try:
            state, metrics, meta = self.restore_or_init(checkpoints)
            history = History.load(files.path("history.json")).truncate(meta["epoch"])
            state = self.parallel.put_replicated(state)
            metrics = self.parallel.put_replicated(metrics)
            with StopRequest() as stop:
                return self._epochs(state, metrics, meta, history, checkpoints, reporter, stop)
        finally:
            checkpoints.close()

    def _epochs(self, state, metrics, meta, history, checkpoints, reporter, stop) -> TrainState | None:
        config, spe = self.config, self.spe
        every = max(int(config.get("checkpoint_every_epochs", 5)), 1)
        log_every = max(int(config.get("log_every_steps", 50)), 1)
        start_batch = meta["batch"]
        for epoch in range(meta["epoch"], config.num_epochs):
            started = time.time()
            reporter.start_epoch(epoch + 1, config.num_epochs, spe, start_batch)
            batches = self.split_batches("train", shuffle=True, epoch=epoch, drop_remainder=True,
                                         start_batch=start_batch)
            batches = (b for _, b in zip(range(spe - start_batch), batches, strict=False))
            for i, batch in enumerate(device_prefetch(batches, self.parallel.put_batch), start=start_batch + 1):
                state, metrics = self.train_step(state, batch, metrics)
                step = epoch * spe + i
                shown = self.parallel.fetch(metrics).compute() if i % log_every == 0 else None
                if shown is not None:
                    self._check_finite(shown, checkpoints)
                reporter.step(step, shown)
                if i < spe and (i % log_every == 0 or jax.process_count() == 1) and stop.agreed():
                    checkpoints.save_interrupted(step, self.host_tree(state, metrics),
                                                 _meta(self.exp, epoch, i, step, spe))
                    log.warning("Stopped in epoch %d after batch %d (step %d); checkpoint saved in %s. "
                                "Run the same command to continue.", epoch + 1, i, step, checkpoints.directory)
                    return None
            start_batch = 0
            train = {k: float(v) for k, v in self.parallel.fetch(metrics).compute().items()}
            self._check_finite(train, checkpoints)
            val = self.evaluate_metrics(state, "val")
            if config.ema_decay:
                val.update({f"ema_{k}": v for k, v in self.evaluate_metrics(state.averaged(), "val").items()})
            rate = float(f"{float(self.schedule(epoch * spe)):.7g}")  # 0.001, not float32's 0.0010000000474974513
            record = dict(epoch=epoch + 1, learning_rate=rate,
                          train_loss=train["loss"], train_accuracy=train["accuracy"], val_loss=val["loss"],
                          val_accuracy=val["accuracy"], seconds=round(time.time() - started, 3),
                          **{f"ema_val_{k}": val[f"ema_{k}"] for k in ("loss", "accuracy") if f"ema_{k}" in val})
            history.append(record)
            self._write_epoch(history, reporter, (epoch + 1) * spe, record)
            if (epoch + 1) % every == 0 or epoch + 1 == config.num_epochs or stop.agreed():
                checkpoints.save_epoch(epoch + 1, self.host_tree(state),
                                       _meta(self.exp, epoch + 1, 0, (epoch + 1) * spe, spe))
                checkpoints.clear_interrupted()
            metrics = self.parallel.put_replicated(TrainMetrics.empty())
            if stop.agreed():
                log.warning("Stopped after epoch %d; run the same command to continue.", epoch + 1)
                return None
        return state

    def _write_epoch(self, history: History, reporter: Reporter, step: int, record: dict[str, Any]) -> None:
        log.info("epoch %d: " + " ".join(f"{k}=%s" for k in record if k != "epoch"), record["epoch"],
                 *(f"{v:.6g}" if isinstance(v, float) else v for k, v in record.items() if k != "epoch"))
        reporter.end_epoch(step, record)
        if self.files.is_writer:
            history.save()
            plot_history(history.records, self.files.path("training.png"))

    def _check_finite(self, values: dict[str, Any], checkpoints: Checkpoints) -> None:
        bad = int(values.get("first_nonfinite_step", NEVER))
        if bad != NEVER:
            saved = checkpoints.saved_epochs()
            last = f"the last good checkpoint is epoch {saved[-1]}" if saved else "no checkpoint was saved"
            raise UserError(f"the loss became non-finite at step {bad + 1}; {last}. Lower the learning rate "
                            "(--config.optimizer.learning_rate) and resume with --config.resume_epoch=N")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train `config` in `workdir` (resuming if it holds checkpoints), then evaluate and write reports."""
    from cnn_flax.run_report import write_run_report

    result = Trainer(config, workdir).run()
    if "rank1" in result:  # finished, on process 0
        write_run_report(workdir, "train", config)
    return result
