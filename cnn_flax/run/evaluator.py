"""Evaluating weights on a split, and the final report: usable without any training machinery.

An `Evaluator` needs an `Engine` (data, model, devices) and a set of variables (`{"params", "batch_stats"}`),
never an optimizer or a train state, so the same code scores the weights of a training run at each epoch,
a checkpoint read back by `--mode=evaluate`, Keras weights given as `init_from`, or any second set of
weights kept beside training.
"""

import logging
import os
from typing import Any

import ml_collections
import numpy as np

from cnn_flax.errors import UserError
from cnn_flax.evaluation import rank_accuracies, write_evaluation
from cnn_flax.evaluation.mistakes import WorstMistakes, write_mistakes
from cnn_flax.run.engine import Engine
from cnn_flax.training.metrics import EvalMetrics
from cnn_flax.training.step import cross_entropy, make_eval_step, make_predict_step
from cnn_flax.training.workdir import RunFiles

log = logging.getLogger("cnn_flax")
Variables = dict[str, Any]
SHOWN_IMAGES = 25  # the grid of predictions.png


class Evaluator:
    """Compiled evaluation steps of an engine's model. Every method takes variables already on the devices
    (`on_devices`; a train state's `.variables` are)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        model, preprocess = engine.experiment.model, engine.preprocess
        self.eval_step = engine.compile(
            "eval", make_eval_step(model, preprocess, axis_name=engine.parallel.axis_name), donate=(2,))
        self.predict_step = {flip: engine.compile_predict("predict_flip" if flip else "predict",
                                                          make_predict_step(model, preprocess, flip=flip))
                             for flip in (False, True)}

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "Evaluator":
        return cls(Engine(config))

    def on_devices(self, variables: Variables) -> Variables:
        """Host variables (a checkpoint's, init_from's) replicated as the parallel setup wants them."""
        return self.engine.parallel.put_replicated(variables)

    def metrics(self, variables: Variables, split: str) -> dict[str, float]:
        """Loss, accuracy and rank-5 of `split` accumulated on the devices (the per-epoch validation)."""
        parallel = self.engine.parallel
        metrics = parallel.put_replicated(EvalMetrics.empty())
        for batch in self.engine.eval_batches(split):
            metrics = self.eval_step(variables, batch, metrics)
        return {k: float(v) for k, v in parallel.fetch(metrics).compute().items()}

    def predictions(self, variables: Variables, split: str, flip: bool = False, num_images: int = 0,
                    worst: WorstMistakes | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Logits, labels and the raw uint8 images of the first `num_images` examples, in one pass
        (which also feeds `worst`, the worst mistakes of the split, when given).

        The images come from the evaluated batches themselves, not from the source's arrays: a streamed
        dataset (ImageNet) has none, and this keeps each picture paired with its own prediction.
        """
        parallel = self.engine.parallel
        logits, labels, images, kept = [], [], [], 0
        for batch in self.engine.eval_batches(split):
            out = parallel.fetch_rows(self.predict_step[flip](variables, batch))
            mask = parallel.fetch_rows(batch["mask"]).astype(bool)
            logits.append(out[mask])
            labels.append(parallel.fetch_rows(batch["label"])[mask])
            if worst is not None:  # same decision on every process: scores and labels are gathered
                worst.update(logits[-1], labels[-1],
                             lambda batch=batch, mask=mask: parallel.fetch_rows(batch["image"])[mask])
            if kept < num_images:  # every process takes part: fetch_rows gathers across processes
                images.append(parallel.fetch_rows(batch["image"])[mask][:num_images - kept])
                kept += len(images[-1])
        first = np.concatenate(images) if images else np.zeros((0, *self.engine.experiment.input_shape), np.uint8)
        return np.concatenate(logits), np.concatenate(labels), first

    def scores(self, variables: Variables, split: str) -> dict[str, float]:
        """Loss and rank-1/rank-5 accuracy of `split`, computed on the host from every example's logits."""
        logits, labels, _ = self.predictions(variables, split)
        return split_scores(logits, labels)

    def report(self, variables: Variables, files: RunFiles, averaged: Variables | None = None) -> dict[str, Any]:
        """The evaluation files of eval_split and their metrics: of `variables`, with config.tta also of their
        flip test-time augmentation (tta_*), and of a moving average of them when given (ema_*, whose
        rank-1/rank-5/loss join metrics.json as ema_rank1, …).

        {} on processes other than 0, which take part in the evaluation but write nothing.
        """
        config, experiment = self.engine.config, self.engine.experiment
        split = config.eval_split
        results = {}
        variants = [("", False, variables)] + ([("tta_", True, variables)] if config.tta else [])
        variants += [("ema_", False, averaged)] if averaged is not None else []
        for prefix, flip, weights in variants:
            # The first examples of the split, or as many as were evaluated (eval_steps may stop short).
            worst = None if prefix else WorstMistakes()
            logits, labels, images = self.predictions(weights, split, flip, 0 if prefix else SHOWN_IMAGES, worst)
            if files.is_writer:
                results[prefix or "plain"] = write_evaluation(
                    files.workdir, split=split, scores=logits, labels=labels, class_names=experiment.class_names,
                    images=None if prefix else images, loss=_mean_loss(logits, labels), prefix=prefix)
                if worst is not None:
                    write_mistakes(files.workdir, worst, experiment.class_names, self._file_names(split))
                    self._mistake_maps(weights, worst, files)
        if "ema_" in results:
            results["plain"].update({f"ema_{k}": results["ema_"][k] for k in ("rank1", "rank5", "loss")})
            files.write_json("metrics.json", results["plain"])
        return results.get("plain", {})

    def _mistake_maps(self, variables: Variables, worst: WorstMistakes, files: RunFiles) -> None:
        """mistakes_gradcam.png: the worst mistakes with the Grad-CAM maps of their true and predicted class.

        Computed on process 0 alone from a host copy of the weights; a model Grad-CAM cannot explain (no
        convolution, no class scores) leaves a note in the log instead of failing the run.
        """
        from cnn_flax.run.gradcam import GradCam, write_mistake_maps

        config, experiment = self.engine.config, self.engine.experiment
        path = files.path("mistakes_gradcam.png")
        count = int(config.gradcam.mistakes)
        if count <= 0 or not len(worst.index):
            if os.path.exists(path):
                os.remove(path)  # an earlier evaluation's maps would no longer be true
            return
        try:
            cam = GradCam(experiment.model, self.engine.parallel.fetch(variables),
                          lambda images: self.engine.preprocess(images, None), experiment.input_shape,
                          config.gradcam.layer, batch_size=max(1, min(count, 32)))
        except UserError as error:
            log.warning("report.html: no Grad-CAM maps of the worst mistakes (%s)", error)
            return
        write_mistake_maps(cam, worst, experiment.class_names, path, count)

    def _file_names(self, split: str) -> list[str] | None:
        """The file of each example of `split` in order, for sources that know them (folder datasets)."""
        image_paths = getattr(self.engine.experiment.source, "image_paths", None)
        return None if image_paths is None else list(image_paths(split))


def split_scores(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Loss and rank-1/rank-5 accuracy from every example's logits, as metrics.json states them."""
    return dict(loss=_mean_loss(logits, labels), **rank_accuracies(logits, labels))


def _mean_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(cross_entropy(logits, labels))))
