"""Optimizers and learning-rate schedules chosen by name, with durations given in epochs.

Schedules are written in epochs because the deck's experiments are (Exp 3: epochs 1–40 at 1e-3, 41–60
at 1e-4, 61–70 at 1e-5); `steps_per_epoch` turns them into functions of the optimizer step here and
nowhere else. `learning_rate_plan` prints the same schedule back in epochs, so `--mode=summary` shows
the plan without training. The L2 penalty is Keras's kernel_regularizer: r·Σw² over conv and dense
kernels, added to the loss (so reported losses include it, as in Keras).
"""

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from cnn_flax.errors import UserError

Schedule = Callable[[jax.Array | int], jax.Array]
SCHEDULES = ("constant", "piecewise", "polynomial", "keras_time_decay")
OPTIMIZERS = ("sgd", "adam")


def _epoch(step: jax.Array | int, steps_per_epoch: int) -> jax.Array:
    return jnp.asarray(step) // steps_per_epoch


def build_schedule(optimizer: Mapping[str, Any], schedule: Mapping[str, Any], num_epochs: int,
                   steps_per_epoch: int) -> Schedule:
    """The learning rate as a function of the optimizer step (0-based)."""
    name = schedule.get("name", "constant")
    base = float(optimizer["learning_rate"])
    if name == "constant":
        return lambda step: jnp.full((), base, jnp.float32)
    if name == "piecewise":
        boundaries, values = tuple(schedule["boundaries"]), tuple(float(v) for v in schedule["values"])
        if len(values) != len(boundaries) + 1 or list(boundaries) != sorted(boundaries):
            raise UserError("schedule.values must have one more entry than schedule.boundaries (sorted epochs "
                            f"after which the rate changes); got boundaries={boundaries} values={values}")
        table = jnp.asarray(values, jnp.float32)
        edges = jnp.asarray(boundaries, jnp.int32)
        return lambda step: table[jnp.searchsorted(edges, _epoch(step, steps_per_epoch), side="right")]
    if name == "polynomial":
        power = float(schedule.get("power", 1.0))
        return lambda step: base * (1.0 - _epoch(step, steps_per_epoch) / num_epochs) ** power
    if name == "keras_time_decay":
        decay = float(schedule["decay"])
        return lambda step: base / (1.0 + decay * jnp.asarray(step, jnp.float32))
    raise UserError(f"schedule.name={name!r} is not known; use one of {', '.join(SCHEDULES)}")


def build_optimizer(optimizer: Mapping[str, Any], learning_rate: Schedule) -> optax.GradientTransformation:
    name = optimizer.get("name", "sgd")
    if optimizer.get("keras"):  # Keras's own update rules (training/keras_optim.py says how they differ)
        from cnn_flax.training.keras_optim import build_keras_optimizer

        return build_keras_optimizer(optimizer, learning_rate)
    if name == "sgd":
        return optax.sgd(learning_rate, momentum=optimizer.get("momentum", 0.0) or None,
                         nesterov=bool(optimizer.get("nesterov", False)))
    if name == "adam":  # Keras's defaults, epsilon included, so results transfer
        return optax.adam(learning_rate, b1=optimizer.get("b1", 0.9), b2=optimizer.get("b2", 0.999),
                          eps=optimizer.get("eps", 1e-7))
    raise UserError(f"optimizer.name={name!r} is not known; use one of {', '.join(OPTIMIZERS)}")


def l2_penalty(params: Any, weight: float) -> jax.Array:
    """Keras's l2(weight) on every 'kernel' (conv and dense weights), biases and BN untouched."""
    if not weight:
        return jnp.zeros((), jnp.float32)
    leaves = jax.tree_util.tree_leaves_with_path(params)
    kernels = [leaf for path, leaf in leaves if getattr(path[-1], "key", None) == "kernel"]
    return weight * sum(jnp.sum(jnp.square(k.astype(jnp.float32))) for k in kernels)


def describe_optimizer(optimizer: Mapping[str, Any]) -> str:
    name = optimizer.get("name", "sgd")
    parts = [f"lr {optimizer['learning_rate']:g}"]
    if name == "sgd" and optimizer.get("momentum"):
        parts.append(f"momentum {optimizer['momentum']:g}" + (", nesterov" if optimizer.get("nesterov") else ""))
    if optimizer.get("l2"):
        parts.append(f"L2 {optimizer['l2']:g} on kernels")
    return f"{name} ({', '.join(parts)})"


def learning_rate_plan(optimizer: Mapping[str, Any], schedule: Mapping[str, Any], num_epochs: int,
                       steps_per_epoch: int) -> list[str]:
    """Lines 'epochs A-B: lr X' per constant stretch ('epoch A: lr X' for one epoch), epochs 1-based.

    The rate shown is the one in force at the first step of each epoch; a schedule that changes within
    epochs (Keras's time decay) therefore gets one line per epoch.
    """
    lr = build_schedule(optimizer, schedule, num_epochs, steps_per_epoch)
    rates = [float(lr(epoch * steps_per_epoch)) for epoch in range(num_epochs)]
    within_epoch_changes = steps_per_epoch > 1 and float(lr(steps_per_epoch - 1)) != rates[0]
    lines, start = [], 0
    for epoch in range(1, num_epochs + 1):
        if epoch < num_epochs and rates[epoch] == rates[start] and not within_epoch_changes:
            continue
        span = f"epoch {start + 1}" if epoch == start + 1 else f"epochs {start + 1}-{epoch}"
        lines.append(f"{span}: lr {rates[start]:.6g}")
        start = epoch
    return lines
