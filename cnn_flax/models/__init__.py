"""The model zoo: every architecture of the deck, chosen by `model.name` from a config.

`create_model(config.model)` checks the options against the chosen module's fields, so a switch that
does not apply to a model (say `stage4` on MiniVGG) is an error rather than silently ignored; unknown
values fail where the layers use them. Nothing here knows about data or training: the code that runs
a model says how (`bn_axis_name` for `jax.pmap`, `cpu_kernels` for XLA's CPU backend).
"""

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_flax.errors import UserError
from cnn_flax.models.demo import Conv1x1Demo
from cnn_flax.models.googlenet import DeeperGoogLeNet, GoogLeNet, MiniGoogLeNet
from cnn_flax.models.minivgg import MiniVGG
from cnn_flax.models.nin import NiN
from cnn_flax.models.vgg import VGG, VGG_TABLE

MODELS: dict[str, type[nn.Module]] = {
    "minivgg": MiniVGG,
    "minigooglenet": MiniGoogLeNet,
    "deepergooglenet": DeeperGoogLeNet,
    "googlenet": GoogLeNet,
    "vgg": VGG,
    "nin": NiN,
    "conv1x1_demo": Conv1x1Demo,
}
# Keys of config.model that describe the input rather than a module field.
NON_MODULE_KEYS = ("name", "input_shape")
# Fields set by the code that runs a model (create_model's keyword arguments), not by a config.
RUN_FIELDS = ("dtype", "bn_axis_name", "cpu_kernels")
_MODULE_INTERNALS = ("parent", "name", *RUN_FIELDS)

__all__ = ["MODELS", "VGG", "VGG_TABLE", "Conv1x1Demo", "DeeperGoogLeNet", "GoogLeNet", "MiniGoogLeNet",
           "MiniVGG", "NiN", "create_model", "init_traced", "init_variables", "model_options"]


def model_options(name: str) -> tuple[str, ...]:
    """The config keys a model accepts besides name and input_shape."""
    return tuple(f.name for f in dataclasses.fields(MODELS[name]) if f.init and f.name not in _MODULE_INTERNALS)


def create_model(model_config: Mapping[str, Any], dtype: Any = jnp.float32, *, bn_axis_name: str | None = None,
                 cpu_kernels: bool = False) -> nn.Module:
    """Build the module `model_config['name']` with the other keys as its options.

    `bn_axis_name`: under `jax.pmap`, the device axis BatchNorm averages batch statistics over.
    `cpu_kernels`: max pooling, BatchNorm and convolution kernel gradients written for XLA's CPU backend
    (`cpu_kernels.py`). Models without such a field ignore the argument.
    """
    name = model_config.get("name")
    if name not in MODELS:
        raise UserError(f"model.name={name!r} is not known; use one of {', '.join(MODELS)}")
    accepted = model_options(name)
    options = {}
    for key, value in model_config.items():
        if key in NON_MODULE_KEYS:
            continue
        if key not in accepted:
            raise UserError(f"model.{key} does not apply to model {name!r}; its options are {', '.join(accepted)}")
        options[key] = value
    if "pooling" in options and options["pooling"] in ("", "none"):
        options["pooling"] = None
    fields = {f.name for f in dataclasses.fields(MODELS[name])}
    run = {key: value for key, value in (("bn_axis_name", bn_axis_name), ("cpu_kernels", cpu_kernels))
           if key in fields}
    return MODELS[name](dtype=dtype, **options, **run)


def init_variables(model: nn.Module, rng: jax.Array, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Initialise in training mode, so that parameters used only in training (aux heads) exist too.

    Compiled (op by op, initialising an Inception network costs seconds of dispatch) once per (model,
    input shape) in a process, and without XLA's optimisations: they made compiling the initialisation
    cost 3-6x more CPU time (MiniVGG 7.3 s → 1.2 s, DeeperGoogLeNet 26 s → 10 s here) to speed up a
    program that runs once. A cached call does not trace the model again; code that watches the trace
    uses `init_traced`.
    """
    shape = tuple(int(d) for d in input_shape)
    if isinstance(rng, jax.core.Tracer):  # under jax.eval_shape or another transformation: nothing to compile
        return init_traced(model, shape, rng)
    return compiled_init(model, shape, jax.ShapeDtypeStruct(rng.shape, rng.dtype))(rng)


def init_traced(model: nn.Module, input_shape: tuple[int, ...], rng: jax.Array) -> dict[str, Any]:
    """`init_variables` without the jit: every call runs (or, under `jax.eval_shape`, traces) the model."""
    params_rng, dropout_rng = jax.random.split(rng)
    dummy = jnp.zeros((1, *input_shape), jnp.float32)
    return dict(model.init({"params": params_rng, "dropout": dropout_rng}, dummy, train=True))


# XLA CPU's settings under `jax_disable_most_optimizations`, for this one program.
_CHEAP_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@functools.cache
def compiled_init(model: nn.Module, input_shape: tuple[int, ...], rng_type: jax.ShapeDtypeStruct):
    """The compiled initialiser of `model` at `input_shape`, cached: equal models (Linen modules compare by
    their fields) share one compilation, which for VGG16 is most of the time `init_variables` takes."""
    jitted = jax.jit(lambda rng: init_traced(model, input_shape, rng))
    return jitted.lower(rng_type).compile(compiler_options=_CHEAP_COMPILE)
