"""Turns a config into the pieces of a run: data source, model, schedule, optimizer, parallelism.

This is where the packages meet (with train.py and modes.py): epochs become steps here, the number of
classes and the input shape are reconciled between config and data here, and initial weights are
chosen here (fresh, a Keras .h5 file, or an Orbax checkpoint of another run).
"""

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cnn_flax.data import DatasetInfo, DataSource, make_preprocess, make_source
from cnn_flax.data.registry import source_fact
from cnn_flax.errors import UserError
from cnn_flax.models import create_model, init_variables
from cnn_flax.training.checkpoint import load_variables
from cnn_flax.training.optim import (
    build_optimizer,
    build_schedule,
    check_accum_steps,
    describe_optimizer,
    learning_rate_plan,
)
from cnn_flax.training.parallel import batch_norm_axis, check_batch_size, make_parallel
from cnn_flax.training.param_groups import with_param_groups

log = logging.getLogger("cnn_flax")
# Class counts of the datasets, for `--mode=summary` when the data is not on this machine.


@dataclasses.dataclass
class Experiment:
    config: ml_collections.ConfigDict
    model: nn.Module
    model_config: dict[str, Any]
    input_shape: tuple[int, int, int]
    source: DataSource | None = None
    info: DatasetInfo | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        """The data's names for the classes; their numbers when the data is not at hand (--mode=summary)."""
        if self.info is not None:
            return self.info.class_names
        return tuple(str(i) for i in range(self.model_config.get("num_classes", 0)))


def input_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    shape = config.model.input_shape
    if shape:
        return tuple(int(v) for v in shape)
    size = int(config.data.image_size)
    return (size, size, 3)


def resolve_model_config(config: ml_collections.ConfigDict, info: DatasetInfo | None) -> dict[str, Any]:
    """config.model with num_classes taken from the data when it is -1 (never hard-coded for real data)."""
    model = config.model.to_dict()
    model.pop("input_shape", None)
    if "num_classes" not in model:
        return model
    if info is not None:
        if model["num_classes"] in (-1, None):
            model["num_classes"] = info.num_classes
        elif model["num_classes"] != info.num_classes:
            raise UserError(f"model.num_classes={model['num_classes']} but the {info.name} data has "
                            f"{info.num_classes} classes; set --config.model.num_classes=-1 to take it from the data")
    elif model["num_classes"] in (-1, None):
        model["num_classes"] = nominal_classes(config.data)
    return model


def nominal_classes(data_config: ml_collections.ConfigDict) -> int:
    """The class count without reading the data: the dataset's, or a photo folder's class subfolders."""
    if data_config.name == "folder" and data_config.root and os.path.isdir(data_config.root):
        from cnn_flax.data.sources.folder_scan import class_folders

        return len(class_folders(os.path.abspath(os.path.expanduser(data_config.root)))) or 1000
    return source_fact(data_config.name, "classes", 1000)


def data_info(source: DataSource) -> DatasetInfo:
    """The data's facts; with several processes, process 0 alone builds missing files while the others wait.

    Every process reading `info` would otherwise start writing the same HDF5 files into the shared folder.
    """
    if jax.process_count() == 1:
        return source.info
    from jax.experimental import multihost_utils

    error = None
    if jax.process_index() == 0:
        try:
            _ = source.info
        except Exception as caught:  # noqa: BLE001 - re-raised below, after the others are told
            error = caught
    failed = bool(multihost_utils.broadcast_one_to_all(np.asarray(error is not None)))  # also the barrier
    if error is not None:
        raise error
    if failed:
        raise UserError("process 0 could not read or prepare the data (its error says why); fix that and start "
                        "every process again")
    return source.info


def build_experiment(config: ml_collections.ConfigDict, need_data: bool = True) -> Experiment:
    source = info = None
    if need_data:
        source = make_source(config.data)
        info = data_info(source)
    shape = input_shape(config)
    if info is not None and tuple(info.image_shape) != shape:
        raise UserError(f"data gives {info.image_shape} images but the model is built for {shape}; "
                        "set data.image_size to match")
    model_config = resolve_model_config(config, info)
    dtype = jnp.bfloat16 if config.half_precision else jnp.float32
    model = create_model(model_config, dtype=dtype, bn_axis_name=batch_norm_axis(config.parallel),
                         cpu_kernels=jax.default_backend() == "cpu")
    return Experiment(config, model, model_config, shape, source, info)


def train_steps_per_epoch(config: ml_collections.ConfigDict, source: DataSource) -> int:
    available = source.num_batches("train", config.batch_size, drop_remainder=True)
    wanted = int(config.steps_per_epoch)
    if available == 0:
        raise UserError(f"the train split has fewer examples than batch_size={config.batch_size}; "
                        "lower --config.batch_size")
    if wanted > available:
        raise UserError(f"steps_per_epoch={wanted} but the train split gives only {available} batches of "
                        f"{config.batch_size}; set --config.steps_per_epoch=-1 (whole split) or lower it")
    return wanted if wanted > 0 else available


def optimizer_plan(config: ml_collections.ConfigDict) -> list[str]:
    """The optimizer and the learning rate by epoch, as --mode=summary and report.html show them."""
    steps_per_epoch = int(config.steps_per_epoch)
    if steps_per_epoch <= 0:
        steps_per_epoch = max(source_fact(config.data.name, "train_size", config.batch_size) // config.batch_size, 1)
    lines = [f"Optimizer: {describe_optimizer(config.optimizer)}; batch {config.batch_size}; "
             f"{config.num_epochs} epochs of {steps_per_epoch} steps", "Learning rate plan:"]
    lines += [f"  {line}" for line in learning_rate_plan(config.optimizer, config.schedule, config.num_epochs,
                                                         steps_per_epoch)]
    return lines + _controls_plan(config)


def _controls_plan(config: ml_collections.ConfigDict) -> list[str]:
    """The training controls a config enables, in one line each (older config.json files have none)."""
    lines = []
    stop = config.get("early_stopping")
    if stop is not None and stop.enabled:
        lines.append(f"Early stopping: {stop.monitor} (mode {stop.mode}), patience {stop.patience}, min_delta "
                     f"{stop.min_delta:g}" + (f", baseline {stop.baseline:g}" if stop.baseline is not None else "")
                     + (f", from epoch {stop.start_from_epoch + 1}" if stop.start_from_epoch else "")
                     + (", best weights restored at the end" if stop.restore_best_weights else ""))
    plateau = config.get("reduce_lr_on_plateau")
    if plateau is not None and plateau.enabled:
        lines.append(f"Rate lowered on plateau: x{plateau.factor:g} after {plateau.patience} epochs without "
                     f"{plateau.monitor} improving by {plateau.min_delta:g} (mode {plateau.mode}), cooldown "
                     f"{plateau.cooldown}, min_lr {plateau.min_lr:g}; the plan above is before any lowering")
    best = config.get("checkpoint")
    if best is not None and best.keep_best:
        lines.append(f"Checkpoints: the {best.keep_best} best by {best.monitor} kept beside the newest")
    return lines


def make_optimizer(config: ml_collections.ConfigDict,
                   steps_per_epoch: int) -> tuple[Callable, optax.GradientTransformation]:
    schedule = build_schedule(config.optimizer, config.schedule, config.num_epochs, steps_per_epoch)
    return schedule, with_param_groups(config.optimizer, build_optimizer(config.optimizer, schedule))


def make_scaled_optimizer(config: ml_collections.ConfigDict,
                          steps_per_epoch: int) -> Callable[[Any], optax.GradientTransformation]:
    """`scale -> the optimizer with its schedule's rate times scale`, for ReduceLROnPlateau.

    Called inside the compiled step with the train state's scale: the rate enters each update rule where its
    learning rate does (inside Keras SGD's velocity, before LARS's momentum), which multiplying the finished
    update would not; the optimizer state has the same structure whatever the scale.
    """
    schedule = build_schedule(config.optimizer, config.schedule, config.num_epochs, steps_per_epoch)
    return lambda scale: with_param_groups(
        config.optimizer, build_optimizer(config.optimizer, lambda step: schedule(step) * scale))


def preprocessors(experiment: Experiment) -> Callable:
    assert experiment.info is not None
    return make_preprocess(experiment.config.data, experiment.info)


def setup_parallel(config: ml_collections.ConfigDict):
    parallel = make_parallel(config.parallel, config.num_devices)
    check_batch_size(config.batch_size, parallel.device_count)
    check_accum_steps(config.optimizer.accum_steps, config.batch_size, parallel.device_count)
    if config.data.on_device and config.parallel != "jit":
        raise UserError("data.on_device=True needs parallel='jit'; set --config.parallel=jit")
    return parallel


def initial_variables(experiment: Experiment) -> dict[str, Any]:
    """Fresh weights from config.seed, or the weights named by config.init_from (a weight file of Keras,
    torchvision or our own safetensors, a Hub repository, or an Orbax checkpoint of another run)."""
    variables = init_variables(experiment.model, jax.random.key(experiment.config.seed), experiment.input_shape)
    source = experiment.config.init_from
    if not source:
        return variables
    from cnn_flax.pretrained.weight_files import is_weight_file, load_weight_file

    if is_weight_file(source):
        log.info("Initialising from the weights of %s", source)
        return load_weight_file(source, experiment.model, variables, experiment.input_shape,
                                skip=_init_skip(experiment.config))
    if not os.path.exists(source):
        raise UserError(f"init_from={source!r} does not exist; give a weight file (.h5, .pth, .safetensors), "
                        "hf://user/name, or an Orbax checkpoint folder")
    try:
        return load_variables(source, variables)
    except UserError as error:
        raise UserError(f"init_from: {error}") from error


def is_keras_file(source: str) -> bool:
    return source.endswith((".h5", ".hdf5", ".keras"))


def _init_skip(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    return tuple(s for s in config.init_skip.split(",") if s)


def initial_state(experiment: Experiment, new_state: Callable[[dict[str, Any]], Any],
                  steps_per_epoch: int) -> tuple[Any, int]:
    """The state a new run starts from (`new_state(variables)` makes it), and the epochs already done.

    0 epochs, except from a Keras file, which continues where its run stopped: after `init_epoch`
    (default: the N of epoch_N.hdf5), and with optimizer.keras=True with the file's optimizer slots and
    iteration count in the optax state.
    """
    source = experiment.config.init_from
    if not (source and is_keras_file(source) and os.path.exists(source)):
        return new_state(initial_variables(experiment)), 0
    from cnn_flax.pretrained.keras_h5 import epoch_from_name, read_keras_checkpoint
    from cnn_flax.training.keras_optim import restore_keras_slots

    template = init_variables(experiment.model, jax.random.key(experiment.config.seed), experiment.input_shape)
    checkpoint = read_keras_checkpoint(source, experiment.model, template, experiment.input_shape,
                                       skip=_init_skip(experiment.config))
    state = new_state(checkpoint.variables)
    epoch = int(experiment.config.init_epoch)
    if epoch < 0:
        epoch = epoch_from_name(source) or 0
    saved = checkpoint.optimizer
    if saved is not None and experiment.config.optimizer.keras:
        opt_state = restore_keras_slots(state.opt_state, saved.name, saved.iterations, saved.slots, source)
        state = state.replace(opt_state=opt_state)
        if saved.iterations != epoch * steps_per_epoch:
            log.warning("%s: its optimizer made %d steps but epoch %d of %d steps ends at step %d; the learning "
                        "rate schedule follows the optimizer's count", source, saved.iterations, epoch, steps_per_epoch,
                        epoch * steps_per_epoch)
    elif saved is not None:
        log.warning("%s holds the Keras %s optimizer's state; optimizer.keras=False starts a fresh optax state "
                    "(set --config.optimizer.keras=True to continue the Keras run exactly)", source, saved.name)
    elif checkpoint.optimizer_note:
        log.warning("%s: %s; the optimizer starts afresh", source, checkpoint.optimizer_note)
    log.info("Continuing from Keras checkpoint %s after epoch %d", source, epoch)
    return state.replace(step=jnp.asarray(epoch * steps_per_epoch, state.step.dtype)), epoch
