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
from cnn_flax.run.experiment import build_experiment, initial_variables, optimizer_plan
from cnn_flax.run.report_page import write_run_report
from cnn_flax.training.checkpoint import Checkpoints, load_variables
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
    template = jax.eval_shape(lambda: init_variables(experiment.model, jax.random.key(0), experiment.input_shape))
    checkpoints = Checkpoints(files.checkpoints)
    try:
        epochs = checkpoints.saved_epochs()
        if checkpoint == "all":
            rows = _evaluate_every_epoch(evaluator, checkpoints, template, files)
            write_run_report(workdir, "evaluate", config)
            return rows
        if checkpoint == "latest":
            if epochs:
                variables = checkpoints.restore_variables(epochs[-1], template, config.ema_eval)
            elif config.init_from:
                if config.ema_eval:
                    raise UserError("ema_eval (--ema): init_from weights carry no moving average; evaluate a "
                                    "checkpoint of this workdir or drop --ema")
                variables = initial_variables(experiment)
            else:
                raise UserError(f"no checkpoint in {checkpoints.directory} and no init_from; train first or set "
                                "--config.init_from")
        elif checkpoint.isdigit():
            variables = checkpoints.restore_variables(int(checkpoint), template, config.ema_eval)
        else:
            raise UserError(f"--checkpoint={checkpoint!r}: use latest, all or an epoch number")
    finally:
        checkpoints.close()
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


def _inference_variables(config: ml_collections.ConfigDict, workdir: str, experiment) -> dict[str, Any]:
    """The latest checkpoint of the workdir if there is one, else the weights of init_from."""
    directory = RunFiles(workdir).checkpoints
    if os.path.isdir(directory) and Checkpoints(directory).saved_epochs():
        template = jax.eval_shape(lambda: init_variables(experiment.model, jax.random.key(0), experiment.input_shape))
        return load_variables(workdir, template, ema=config.ema_eval)
    if config.init_from:
        if config.ema_eval:
            raise UserError("ema_eval (--ema): init_from weights carry no moving average; drop --ema")
        return initial_variables(experiment)
    raise UserError(f"no checkpoint in {directory} and no init_from; train first or set --config.init_from")


def predict(config: ml_collections.ConfigDict, workdir: str, paths: list[str]) -> list[dict[str, Any]]:
    """Top-5 classes of image files and of every image under folders, into predictions.json and .csv.

    Keras's 'caffe' preprocessing and ImageNet's class names for ImageNet configs; a folder dataset's class
    names (and the decoding its prepare used) for folder configs.
    """
    from cnn_flax.data import make_preprocess
    from cnn_flax.run.predict import image_decoding, image_files, image_loader, model_probabilities, predict_files

    files = image_files(paths)
    caffe = config.data.normalize == "caffe"
    experiment = build_experiment(config, need_data=not caffe or config.data.name == "folder")
    variables = _inference_variables(config, workdir, experiment)
    if caffe and experiment.info is None:
        from cnn_flax.pretrained import caffe_preprocess, imagenet_class_names

        preprocess = caffe_preprocess
        names = imagenet_class_names() if experiment.model_config.get("num_classes") == 1000 else experiment.class_names
    else:
        data_preprocess = make_preprocess(config.data, experiment.info)
        preprocess = lambda images: data_preprocess(images, None)  # noqa: E731
        names = experiment.class_names
    load = image_loader(image_decoding(config.data), experiment.input_shape[:2])
    return predict_files(model_probabilities(experiment.model, variables, preprocess), files, load, names,
                         workdir, batch_size=config.batch_size, write=RunFiles(workdir).is_writer)


__all__ = ["evaluate", "predict", "prepare", "summary", "write_evaluation"]
