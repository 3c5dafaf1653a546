"""The launcher's modes besides training: summary, prepare, evaluate (one or every checkpoint), predict.

Each is one function of (config, workdir, …) so research code can call them as well as launch.py.
"""

import logging
import os
from typing import Any

import jax
import ml_collections

from cnn_flax.data.registry import source_entry
from cnn_flax.errors import UserError
from cnn_flax.evaluation import epoch_table, write_evaluation
from cnn_flax.models import init_variables
from cnn_flax.models.summary import summary_text
from cnn_flax.run.evaluator import Evaluator
from cnn_flax.run.experiment import build_experiment, optimizer_plan
from cnn_flax.run.load import open_run, run_variables
from cnn_flax.run.report_page import write_run_report
from cnn_flax.training.checkpoint import Checkpoints
from cnn_flax.training.workdir import RunFiles

log = logging.getLogger("cnn_flax")
def summary(config: ml_collections.ConfigDict) -> str:
    """Model table and totals, then the optimizer and the learning rate by epoch. Needs no data."""
    experiment = build_experiment(config, need_data=False)
    lines = [summary_text(experiment.model, experiment.input_shape, title=config.name)]
    if "num_classes" not in experiment.model_config:
        return lines[0]
    return "\n".join([*lines, "", *optimizer_plan(config)])


def prepare(config: ml_collections.ConfigDict, overwrite: bool = False) -> list[str]:
    from cnn_flax.data import make_source

    entry = source_entry(config.data.name)
    if entry is None or not entry.preparable:
        raise UserError(f"data.name={config.data.name!r} has nothing to prepare here")
    if config.data.name == "folder":  # a model sized for another class count: say so before decoding anything
        from cnn_flax.data.sources.folder import check_class_count

        check_class_count(config.data.root, config.model.get("num_classes"))
    if jax.process_count() == 1:
        return make_source(config.data).prepare(overwrite=overwrite)
    from jax.experimental import multihost_utils  # several processes: process 0 writes, the others wait

    written = make_source(config.data).prepare(overwrite=overwrite) if jax.process_index() == 0 else []
    multihost_utils.sync_global_devices("cnn_flax: data prepared")
    return written


def evaluate(config: ml_collections.ConfigDict, workdir: str, checkpoint: str = "latest") -> dict[str, Any]:
    """Evaluate the latest checkpoint, a given epoch, or every saved epoch ('all') on `eval_split`.

    Only the weights are read from the checkpoints, so no optimizer is built and any optimizer's run works;
    with `ema_eval`, the moving average of the weights that the run kept.
    """
    if config.ema_eval and not config.ema_decay:
        raise UserError("ema_eval (--ema) needs the run's ema_decay: set --config.ema_decay to the value it was "
                        "trained with")
    evaluator, files = Evaluator.from_config(config), RunFiles(workdir)
    experiment = evaluator.engine.experiment
    if checkpoint == "all":
        template = jax.eval_shape(lambda: init_variables(experiment.model, jax.random.key(0),
                                                         experiment.input_shape))
        checkpoints = Checkpoints(files.checkpoints)
        try:
            rows = _evaluate_every_epoch(evaluator, checkpoints, template, files)
        finally:
            checkpoints.close()
        write_run_report(workdir, "evaluate", config)
        return rows
    variables, _ = run_variables(config, workdir, experiment, checkpoint, config.ema_eval)
    results = evaluator.report(evaluator.on_devices(variables), files)
    if files.is_writer:
        print(f"{config.eval_split}: rank-1 {results['rank1']:.4f}  rank-5 {results['rank5']:.4f}  "
              f"loss {results['loss']:.4f}")
    write_run_report(workdir, "evaluate", config)
    return results


def _evaluate_every_epoch(evaluator: Evaluator, checkpoints: Checkpoints, template: dict[str, Any],
                          files: RunFiles) -> dict[str, Any]:
    """One row per saved epoch, as a table on the terminal and in checkpoints_evaluation.{json,txt}."""
    epochs = checkpoints.saved_epochs()
    if not epochs:
        raise UserError(f"no epoch checkpoints in {checkpoints.directory}; train first")
    rows = []
    for epoch in epochs:
        variables = evaluator.on_devices(checkpoints.restore_variables(epoch, template,
                                                                       evaluator.engine.config.ema_eval))
        values = evaluator.scores(variables, evaluator.engine.config.eval_split)
        rows.append(dict(epoch=epoch, **values))
        log.info("epoch %d: rank-1 %.4f rank-5 %.4f loss %.4f", epoch, values["rank1"], values["rank5"],
                 values["loss"])
    table = epoch_table(rows)
    print(table)
    files.write_json("checkpoints_evaluation.json", rows)
    files.write_text("checkpoints_evaluation.txt", table + "\n")
    return {"epochs": rows}


def predict(config: ml_collections.ConfigDict, workdir: str, paths: list[str],
            gradcam: bool = False) -> list[dict[str, Any]]:
    """Top-5 classes of image files and of every image under folders, into predictions.json and .csv.

    Keras's 'caffe' (or torchvision's) preprocessing and ImageNet's class names for ImageNet configs; a folder
    dataset's class names (and the decoding its prepare used) for folder configs. With `gradcam`, also an overlay
    per image of the Grad-CAM map of its predicted class, in WORKDIR/gradcam/<image stem>_cam.png (gradcam.json
    lists them).
    """
    from cnn_flax.run.predict import image_decoding, image_files, image_loader, predict_files

    files = image_files(paths)
    run = open_run(config, workdir, ema=config.ema_eval)
    load = image_loader(image_decoding(config.data), run.input_shape[:2])
    if gradcam:  # a layer that does not exist is reported before any image is classified
        from cnn_flax.run.gradcam import GradCam

        cam = GradCam(run.model, run.variables, run.preprocess, run.input_shape, config.gradcam.layer,
                      batch_size=min(config.batch_size, 32))
    results = predict_files(run.probabilities(), files, load, run.class_names,
                            workdir, batch_size=config.batch_size, write=RunFiles(workdir).is_writer)
    if gradcam and RunFiles(workdir).is_writer:
        from cnn_flax.run.gradcam import write_overlays

        written = write_overlays(cam, load, [row["image"] for row in results],
                                 [row["top5"][0]["index"] for row in results], os.path.join(workdir, "gradcam"),
                                 run.class_names)
        log.info("Grad-CAM maps (layer %s) of %d images in %s", cam.layer, len(written),
                 os.path.join(workdir, "gradcam"))
    return results


__all__ = ["evaluate", "predict", "prepare", "summary", "write_evaluation"]
