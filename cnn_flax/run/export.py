"""`--mode=export`: a run's checkpoint (or the weights of init_from) into WORKDIR/export/.

This is where a config meets the export: which weights (a saved epoch or init_from), which class
names (the data's, or Keras's ImageNet words for the 'caffe' configs), which normalisation constants
(the training data's means), and what export.json records about the source.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from cnn_flax.data.augment.preprocess import IMAGENET_NORMALIZATIONS
from cnn_flax.errors import UserError
from cnn_flax.export.function import build_inference_function
from cnn_flax.export.write import check_destination, write_export
from cnn_flax.models import create_model
from cnn_flax.pretrained.hub import is_hub_source
from cnn_flax.run.experiment import build_experiment
from cnn_flax.run.load import run_variables
from cnn_flax.run.predict import image_decoding
from cnn_flax.training.workdir import RunFiles

EXPORT_FOLDER = "export"


def export_run(config: ml_collections.ConfigDict, workdir: str, checkpoint: str = "latest",
               overwrite: bool = False) -> dict[str, Any]:
    """Write WORKDIR/export from `checkpoint` ('latest' or an epoch number); returns the export.json content."""
    if jax.process_count() > 1:
        raise UserError("--mode=export writes one folder from one process; run it without --num_processes")
    directory = os.path.join(workdir, EXPORT_FOLDER)
    check_destination(directory, overwrite)  # before the slow part
    if "num_classes" not in config.model:
        raise UserError(f"model {config.model.name!r} gives feature maps, not class probabilities; there is "
                        "nothing to export")
    method = config.data.normalize
    caffe = method in IMAGENET_NORMALIZATIONS
    experiment = build_experiment(config, need_data=not caffe or config.data.name == "folder")
    # float32 (see function.py), and without the CPU training kernels: XLA's own pooling, which every
    # runtime and converter knows.
    model = create_model(experiment.model_config, dtype=jnp.float32, cpu_kernels=False)
    variables, source = _weights(config, workdir, experiment, checkpoint)
    function = build_inference_function(model, variables, experiment.input_shape, method, experiment.info)
    if caffe and experiment.info is None and experiment.model_config["num_classes"] == 1000:
        from cnn_flax.pretrained import imagenet_class_names

        class_names = imagenet_class_names()
    else:
        class_names = experiment.class_names
    normalization: dict[str, Any] = {"method": method}
    if method == "mean_rgb":
        normalization["mean_rgb"] = [float(v) for v in experiment.info.mean_rgb]
    elif method == "mean_image":
        normalization["mean_image_shape"] = list(experiment.info.mean_image.shape)
    facts = {"config": config.name, "model": experiment.model_config, "normalization": normalization,
             "image_decoding": image_decoding(config.data), "source": source,
             "trained_dtype": "bfloat16" if config.half_precision else "float32",
             "dataset": config.data.name, "metrics": _run_file(workdir, "metrics.json"),
             "command": _training_command(workdir)}
    return write_export(function, directory, class_names, facts, onnx=config.export.onnx,
                        tflite=bool(config.export.tflite), overwrite=overwrite, variables=variables)


def _run_file(workdir: str, name: str) -> Any:
    """A JSON file the run left, or None (not evaluated yet, or a workdir holding only init_from)."""
    try:
        with open(os.path.join(workdir, name), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _training_command(workdir: str) -> str | None:
    """The last launch.py command that trained this workdir, as run_info.json recorded it."""
    info = _run_file(workdir, "run_info.json") or {}
    commands = [c.get("command") for c in info.get("commands", []) if isinstance(c, dict) and c.get("mode") == "train"]
    return next((c for c in reversed(commands) if c), None)


def _weights(config: ml_collections.ConfigDict, workdir: str, experiment,
             checkpoint: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The variables to export (run_variables, as prediction reads them) and where they came from, for export.json."""
    variables, epoch = run_variables(config, workdir, experiment, checkpoint, config.ema_eval)
    if epoch is None:
        source = config.init_from
        return variables, {"init_from": source if is_hub_source(source) else os.path.abspath(source)}
    path = os.path.join(RunFiles(workdir).checkpoints, f"epoch_{epoch}")
    source = {"checkpoint": os.path.abspath(path), "epoch": epoch}
    if config.ema_eval:  # --ema: the moving average of the weights the run kept
        source["weights"] = "moving average"
    return variables, source
