"""`--mode=export`: a run's checkpoint (or the weights of init_from) into WORKDIR/export/.

This is where a config meets the export: which weights (a saved epoch or init_from), which class
names (the data's, or Keras's ImageNet words for the 'caffe' configs), which normalisation constants
(the training data's means), and what export.json records about the source.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from cnn_flax.errors import UserError
from cnn_flax.export.function import build_inference_function
from cnn_flax.export.write import check_destination, write_export
from cnn_flax.models import create_model, init_traced
from cnn_flax.run.experiment import build_experiment, initial_variables
from cnn_flax.run.predict import image_decoding
from cnn_flax.training.checkpoint import Checkpoints, load_variables

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
    caffe = method == "caffe"
    experiment = build_experiment(config, need_data=not caffe or config.data.name == "folder")
    # float32 (see function.py), and without the CPU training kernels: XLA's own pooling, which every
    # runtime and converter knows.
    model = create_model(experiment.model_config, dtype=jnp.float32, cpu_kernels=False)
    variables, source = _weights(config, workdir, experiment, model, checkpoint)
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
             "trained_dtype": "bfloat16" if config.half_precision else "float32"}
    return write_export(function, directory, class_names, facts, onnx=config.export.onnx,
                        tflite=bool(config.export.tflite), overwrite=overwrite)


def _weights(config: ml_collections.ConfigDict, workdir: str, experiment, model,
             checkpoint: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The variables to export and a description of where they came from, for export.json."""
    directory = os.path.join(workdir, "checkpoints")
    epochs = Checkpoints(directory).saved_epochs() if os.path.isdir(directory) else []
    if checkpoint == "latest":
        if not epochs:
            if config.init_from and config.ema_eval:
                raise UserError("ema_eval (--ema): init_from weights carry no moving average; drop --ema")
            if config.init_from:
                return initial_variables(experiment), {"init_from": os.path.abspath(config.init_from)}
            raise UserError(f"no checkpoint in {directory} and no init_from; train first or set "
                            "--config.init_from=FILE.h5")
        epoch = epochs[-1]
    else:
        try:
            epoch = int(checkpoint)
        except ValueError:
            raise UserError(f"--checkpoint={checkpoint!r}: --mode=export takes latest or an epoch number") from None
        if epoch not in epochs:
            raise UserError(f"--checkpoint={epoch}: no such epoch in {directory} (saved: "
                            f"{', '.join(map(str, epochs)) or 'none'})")
    path = os.path.join(directory, f"epoch_{epoch}")
    template = jax.eval_shape(lambda: init_traced(model, experiment.input_shape, jax.random.key(0)))
    source = {"checkpoint": os.path.abspath(path), "epoch": epoch}
    if config.ema_eval:  # --ema: the moving average of the weights the run kept
        source["weights"] = "moving average"
    return load_variables(path, template, ema=config.ema_eval), source
