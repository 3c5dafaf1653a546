"""A finished run back in Python: `load_run(workdir)` -> `Run`, and `load_model(name)` for a fresh zoo model.

    import cnn_flax
    run = cnn_flax.load_run("runs/quickstart")              # latest checkpoint; "best", or an epoch number
    probs = run.predict(["seven.png"])                       # [N, C], as --mode=predict computes them
    run.top_k(images, k=3)                                   # uint8 [N, H, W, 3] or file paths
    maps = run.features(images, layer="block2_conv2")        # any layer --mode=summary lists
    run.evaluate("test")                                     # {loss, rank1, rank5, num_examples}
    nnx_model = run.to_nnx()

This is the one path from a workdir (or a config and its init_from weights) to weights, preprocessing and
class names: `--mode=predict` and `--mode=evaluate` go through it too. A workdir copied to another machine
is enough for everything but `evaluate`: the run's config.json, its checkpoints, and dataset.json /
mean_image.npy (class names and the normalisation's means, written when the run trained). Workdirs older
than those files read the facts from the data when it is present.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnn_flax.data.augment.preprocess import IMAGENET_NORMALIZATIONS, make_preprocess, normalize
from cnn_flax.data.dataset import INFO_FILE, MEAN_IMAGE_FILE, DatasetInfo, info_from_record
from cnn_flax.errors import UserError
from cnn_flax.models import MODELS, create_model, init_variables
from cnn_flax.run.experiment import Experiment, build_experiment, initial_variables
from cnn_flax.run.predict import image_decoding, image_loader, model_probabilities, top_k_predictions
from cnn_flax.training.checkpoint import Checkpoints
from cnn_flax.training.workdir import RunFiles

Images = np.ndarray | Sequence[str | os.PathLike]
# The input each model is built for when load_model is not told (the deck's sizes).
DEFAULT_INPUT_SHAPES = {"minivgg": (32, 32, 3), "minigooglenet": (32, 32, 3), "deepergooglenet": (64, 64, 3),
                        "googlenet": (224, 224, 3), "vgg": (224, 224, 3), "nin": (32, 32, 3),
                        "conv1x1_demo": (28, 28, 192)}


@dataclasses.dataclass
class Model:
    """A zoo model with its variables: logits, any layer's activations, NNX, a safetensors file."""

    model: nn.Module
    variables: dict[str, Any]
    input_shape: tuple[int, ...]

    @property
    def layer_names(self) -> list[str]:
        """The layers `features` takes, as --mode=summary names them, in call order."""
        from cnn_flax.models.summary import layer_rows

        cache = self.__dict__.setdefault("_functions", {})
        if "layer_names" not in cache:  # traced once (shapes only) per object
            cache["layer_names"] = [row.name for row in layer_rows(self.model, self.input_shape)[0]]
        return list(cache["layer_names"])

    def logits(self, inputs: Any) -> np.ndarray:
        """The model's output (inference mode) for inputs as the model takes them (normalised floats)."""
        return np.asarray(self._compiled("apply")(self.variables, self._inputs(inputs)))

    def layer_output(self, inputs: Any, layer: str) -> np.ndarray:
        """The activation of `layer` (a name from `layer_names`, or a nested path 'a/b') for model inputs."""
        names = self.layer_names
        if layer not in names and "/" not in layer:
            raise UserError(f"layer={layer!r} is not a layer of {type(self.model).__name__}; its layers are "
                            f"{', '.join(names)}")
        captured = self._compiled(layer)(self.variables, self._inputs(inputs))
        if captured is None:
            raise UserError(f"layer={layer!r} is not called in inference mode (an auxiliary head?); its layers are "
                            f"{', '.join(names)}")
        return np.asarray(captured)

    def to_nnx(self):
        """The model and its variables as a Flax NNX module (`cnn_flax.models.to_nnx`)."""
        from cnn_flax.models.to_nnx import to_nnx

        return to_nnx(self.model, self.variables)

    def save(self, path: str | os.PathLike) -> None:
        """Every variable into a safetensors file, which init_from (and load_model(weights=...)) read back."""
        from cnn_flax.pretrained.safetensors_io import save_variables

        save_variables(path, self.variables)

    def _compiled(self, what: str):
        """One compiled function per purpose ('apply', or a layer to capture), kept with this object."""
        cache = self.__dict__.setdefault("_functions", {})
        if what not in cache:
            model = self.model
            cache[what] = (jax.jit(lambda variables, x: model.apply(variables, x, train=False)) if what == "apply"
                           else _capture_function(model, what))
        return cache[what]

    def _inputs(self, inputs: Any) -> jax.Array:
        x = jnp.asarray(inputs, jnp.float32)
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.input_shape):
            raise UserError(f"inputs of shape {tuple(x.shape)}; the model takes [N, "
                            f"{', '.join(map(str, self.input_shape))}]")
        return x


@dataclasses.dataclass
class Run(Model):
    """A trained run: its config, weights, class names and history, and what to do with images.

    Images are uint8 RGB `[N, H, W, 3]` at the run's input size, or image files (decoded and resized as
    --mode=predict decodes them).
    """

    workdir: str = ""
    config: ml_collections.ConfigDict | None = None
    class_names: tuple[str, ...] = ()
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    epoch: int | None = None  # the checkpoint's epoch; None for init_from weights
    info: DatasetInfo | None = None  # the data's facts the normalisation needs (None for ImageNet weights)

    def images(self, images: Images) -> np.ndarray:
        """uint8 [N, H, W, 3]: arrays checked, files decoded as --mode=predict decodes them."""
        if isinstance(images, str | os.PathLike):
            images = [images]
        if isinstance(images, Sequence) and not isinstance(images, np.ndarray) and all(
                isinstance(p, str | os.PathLike) for p in images):
            missing = [os.fspath(p) for p in images if not os.path.isfile(p)]
            if missing:
                raise UserError(f"{missing[0]}: no such image file")
            load = image_loader(image_decoding(self.config.data), self.input_shape[:2])
            return np.stack([load(os.fspath(p)) for p in images]) if images else np.zeros((0, *self.input_shape),
                                                                                          np.uint8)
        array = np.asarray(images)
        if array.dtype != np.uint8:
            raise UserError(f"images are {array.dtype}; give uint8 RGB images [N, H, W, 3] (0-255) or file paths")
        if array.ndim != 4 or tuple(array.shape[1:]) != tuple(self.input_shape):
            raise UserError(f"images of shape {tuple(array.shape)}; this run takes [N, "
                            f"{', '.join(map(str, self.input_shape))}] (or file paths, resized on reading)")
        return array

    def preprocess(self, images: jax.Array) -> jax.Array:
        """uint8 images -> the model's inputs, exactly as the run's evaluation normalises them."""
        method = self.config.data.normalize
        if self.info is None and method in IMAGENET_NORMALIZATIONS:
            return normalize(images, method, None)
        data_preprocess = make_preprocess(self.config.data, self.info)
        return data_preprocess(images, None)

    def predict(self, images: Images) -> np.ndarray:
        """Class probabilities [N, C] float32: the numbers --mode=predict ranks."""
        return self.probabilities()(self.images(images))

    def probabilities(self):
        """The compiled `uint8 batch -> probabilities` function (what --mode=predict runs on each batch)."""
        cache = self.__dict__.setdefault("_functions", {})
        if "probabilities" not in cache:
            cache["probabilities"] = model_probabilities(self.model, self.variables, self.preprocess)
        return cache["probabilities"]

    def top_k(self, images: Images, k: int = 5) -> list[list[dict[str, Any]]]:
        """Per image, its k most probable classes as {index, name, prob}, most probable first."""
        return top_k_predictions(self.predict(images), self.class_names, k)

    def features(self, images: Images, layer: str) -> np.ndarray:
        """The activation of `layer` (a name --mode=summary prints; `layer_names`) for these images."""
        return self.layer_output(self.preprocess(jnp.asarray(self.images(images))), layer)

    def evaluate(self, split: str = "test") -> dict[str, Any]:
        """loss, rank1, rank5 and num_examples of `split`: --mode=evaluate's numbers. Needs the run's data."""
        from cnn_flax.run.evaluator import Evaluator, split_scores

        evaluator = Evaluator.from_config(self.config)
        logits, labels, _ = evaluator.predictions(evaluator.on_devices(self.variables), split)
        return {"split": split, "num_examples": int(len(labels)), **split_scores(logits, labels)}


def load_run(workdir: str | os.PathLike, checkpoint: str | int = "latest", ema: bool = False) -> Run:
    """The run in `workdir`: its config.json, the weights of `checkpoint` ('latest', 'best' by the history's
    val_loss, or an epoch number), with `ema` their moving average."""
    workdir = os.fspath(workdir)
    if not os.path.isdir(workdir):
        raise UserError(f"{workdir}: no such workdir; give the folder a run trained into (runs/<config name>)")
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise UserError(f"{workdir} holds no config.json; is it the workdir of a run?")
    try:
        with open(path, encoding="utf-8") as handle:
            config = ml_collections.ConfigDict(json.load(handle))
    except ValueError as error:
        raise UserError(f"{path} is not valid JSON ({error}); train again to rewrite it") from None
    return open_run(config, workdir, checkpoint, ema)


def open_run(config: ml_collections.ConfigDict, workdir: str, checkpoint: str | int = "latest",
             ema: bool = False) -> Run:
    """`load_run` for a config at hand (launch.py's): weights of the workdir's checkpoint, else of init_from."""
    if ema and not config.get("ema_decay"):
        raise UserError("ema=True (--ema) needs a run trained with ema_decay > 0; this one kept no moving average")
    experiment = _experiment(config, workdir)
    variables, epoch = run_variables(config, workdir, experiment, checkpoint, ema)
    class_names = experiment.class_names
    if config.data.normalize in IMAGENET_NORMALIZATIONS and experiment.info is None \
            and experiment.model_config.get("num_classes") == 1000:
        from cnn_flax.pretrained import imagenet_class_names

        class_names = tuple(imagenet_class_names())
    return Run(model=experiment.model, variables=variables, input_shape=tuple(experiment.input_shape),
               workdir=workdir, config=config, class_names=tuple(class_names), history=_history(workdir),
               epoch=epoch, info=experiment.info)


def _experiment(config: ml_collections.ConfigDict, workdir: str) -> Experiment:
    """The model and the data's facts: from dataset.json when the run wrote it, else from the data (if any is
    needed: the ImageNet normalisations need none)."""
    record_path = os.path.join(workdir, INFO_FILE)
    if os.path.isfile(record_path):
        with open(record_path, encoding="utf-8") as handle:
            try:
                record = json.load(handle)
            except ValueError:
                raise UserError(f"{record_path} is not valid JSON; train again or delete it") from None
        mean_path = os.path.join(workdir, MEAN_IMAGE_FILE)
        mean_image = np.load(mean_path, allow_pickle=False) if os.path.isfile(mean_path) else None
        info = info_from_record(record, mean_image, record_path)
        experiment = build_experiment(config, need_data=False)
        return _with_info(experiment, info)
    needs_data = config.data.normalize not in IMAGENET_NORMALIZATIONS or config.data.name == "folder"
    return build_experiment(config, need_data=needs_data)


def _with_info(experiment: Experiment, info: DatasetInfo) -> Experiment:
    from cnn_flax.run.experiment import resolve_model_config

    if tuple(info.image_shape) != tuple(experiment.input_shape):
        raise UserError(f"dataset.json records {tuple(info.image_shape)} images but the config builds the model for "
                        f"{tuple(experiment.input_shape)}; the workdir's files do not belong together")
    model_config = resolve_model_config(experiment.config, info)
    model = experiment.model
    if model_config != experiment.model_config:  # a class count only the data knew (a photo folder's)
        model = create_model(model_config, dtype=model.dtype, bn_axis_name=getattr(model, "bn_axis_name", None),
                             cpu_kernels=getattr(model, "cpu_kernels", False))
    return dataclasses.replace(experiment, model=model, model_config=model_config, info=info)


def run_variables(config: ml_collections.ConfigDict, workdir: str, experiment: Experiment,
                  checkpoint: str | int = "latest", ema: bool = False) -> tuple[dict[str, Any], int | None]:
    """The weights a run's inference uses and their epoch: a saved epoch of the workdir, else (for 'latest',
    with no checkpoint saved) the weights of init_from with epoch None."""
    directory = RunFiles(workdir).checkpoints
    epochs = Checkpoints(directory).saved_epochs() if os.path.isdir(directory) else []
    choice = str(checkpoint)
    if choice == "latest" and not epochs:
        if config.init_from:
            if ema:
                raise UserError("ema_eval (--ema): init_from weights carry no moving average; drop --ema")
            return initial_variables(experiment), None
        raise UserError(f"no checkpoint in {directory} and no init_from; train first or set --config.init_from")
    if not epochs:
        raise UserError(f"--checkpoint={choice}: no checkpoint in {directory}; train first")
    if choice == "latest":
        epoch = epochs[-1]
    elif choice == "best":
        epoch = best_epoch(workdir, epochs, config)
    elif choice.isdigit():
        epoch = int(choice)
        if epoch not in epochs:
            raise UserError(f"--checkpoint={epoch}: no such epoch in {directory} (saved: "
                            f"{', '.join(map(str, epochs))})")
    else:
        raise UserError(f"--checkpoint={choice!r}: use latest, best or an epoch number")
    template = jax.eval_shape(lambda: init_variables(experiment.model, jax.random.key(0), experiment.input_shape))
    checkpoints = Checkpoints(directory)
    try:
        return checkpoints.restore_variables(epoch, template, ema), epoch
    finally:
        checkpoints.close()


def best_epoch(workdir: str, epochs: Sequence[int], config: ml_collections.ConfigDict) -> int:
    """The saved epoch with the best monitored value in history.json (config.checkpoint.monitor if the config
    has it, else val_loss as Keras's ModelCheckpoint; lower is better for losses, higher for the others)."""
    monitor = str(config.get("checkpoint", {}).get("monitor", "val_loss") or "val_loss")
    records = {int(r["epoch"]): r for r in _history(workdir) if isinstance(r, Mapping) and "epoch" in r}
    scored = [(records[e][monitor], e) for e in epochs if e in records and records[e].get(monitor) is not None]
    if not scored:
        raise UserError(f"--checkpoint=best: history.json of {workdir} has no {monitor} for the saved epochs "
                        f"({', '.join(map(str, epochs))}); give an epoch number")
    if monitor.endswith("loss"):  # ties: the earliest epoch, the one Keras's save_best_only keeps
        return min(scored, key=lambda pair: (pair[0], pair[1]))[1]
    return max(scored, key=lambda pair: (pair[0], -pair[1]))[1]


def _history(workdir: str) -> list[dict[str, Any]]:
    try:
        with open(os.path.join(workdir, "history.json"), encoding="utf-8") as handle:
            records = json.load(handle)
    except (OSError, ValueError):
        return []
    return records if isinstance(records, list) else []


def load_model(name: str, *, input_shape: Sequence[int] | None = None, seed: int = 0, weights: str | None = None,
               **options: Any) -> Model:
    """A zoo model (`name` as model.name in configs, options as its config keys) with fresh variables from
    `seed`, or with `weights` (anything init_from takes: .h5, .pth, .safetensors, hf://user/name)."""
    if name not in MODELS:
        raise UserError(f"model {name!r} is not in the zoo; use one of {', '.join(MODELS)}")
    shape = tuple(int(v) for v in (input_shape or DEFAULT_INPUT_SHAPES[name]))
    model = create_model({"name": name, **options}, cpu_kernels=jax.default_backend() == "cpu")
    variables = init_variables(model, jax.random.key(seed), shape)
    if weights:
        from cnn_flax.pretrained.weight_files import load_weight_file

        variables = load_weight_file(weights, model, variables, shape)
    return Model(model=model, variables=variables, input_shape=shape)


def _capture_function(model: nn.Module, layer: str):
    """`(variables, inputs) -> the activation of layer` (None when inference never calls it), compiled."""
    def capture(variables, x):
        def wanted(module: nn.Module, method: str) -> bool:
            return method == "__call__" and "/".join(module.scope.path) == layer

        _, state = model.apply(variables, x, train=False, capture_intermediates=wanted, mutable=["intermediates"])
        node = state.get("intermediates", {})
        for part in layer.split("/"):
            node = node.get(part, {}) if isinstance(node, Mapping) else {}
        values = node.get("__call__") if isinstance(node, Mapping) else None
        return None if not values else values[0]

    return jax.jit(capture)


__all__ = ["Model", "Run", "best_epoch", "load_model", "load_run", "open_run", "run_variables"]
