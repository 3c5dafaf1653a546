"""Optimizers and learning-rate schedules chosen by name, with durations given in epochs.

Schedules are written in epochs because the deck's experiments are (Exp 3: epochs 1–40 at 1e-3, 41–60
at 1e-4, 61–70 at 1e-5); `steps_per_epoch` turns them into functions of the optimizer step here and
nowhere else. `learning_rate_plan` prints the same schedule back in epochs, so `--mode=summary` shows
the plan without training. The L2 penalty is Keras's kernel_regularizer: r·Σw² over conv and dense
kernels, added to the loss (so reported losses include it, as in Keras). Decoupled weight decay
(`adamw`, `lars`) is the other kind: it acts on the weights in the update, outside the loss, and like
the penalty it touches kernels only (biases and BatchNorm's scale and offset are left alone).

Warmup (`schedule.warmup_epochs`) multiplies any schedule by min(1, (step+1)/warmup_steps): the first
step already moves the weights, the last warmup step reaches the schedule's own rate, and the
schedule's epochs keep their meaning (a piecewise boundary at epoch 30 stays at epoch 30).
"""

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from cnn_flax.errors import UserError

Schedule = Callable[[jax.Array | int], jax.Array]
SCHEDULES = ("constant", "piecewise", "polynomial", "keras_time_decay", "exponential", "warmup_cosine")
OPTIMIZERS = ("sgd", "adam", "adamw", "lars")


def _epoch(step: jax.Array | int, steps_per_epoch: int) -> jax.Array:
    return jnp.asarray(step) // steps_per_epoch


def warmup_steps(schedule: Mapping[str, Any], steps_per_epoch: int) -> int:
    epochs = float(schedule["warmup_epochs"])
    if epochs < 0:
        raise UserError(f"schedule.warmup_epochs={epochs:g} must be 0 (no warmup) or more")
    return round(epochs * steps_per_epoch)


def build_schedule(optimizer: Mapping[str, Any], schedule: Mapping[str, Any], num_epochs: int,
                   steps_per_epoch: int) -> Schedule:
    """The learning rate as a function of the optimizer step (0-based), warmup included."""
    rate = _base_schedule(optimizer, schedule, num_epochs, steps_per_epoch)
    warmup = warmup_steps(schedule, steps_per_epoch)
    if not warmup:
        return rate
    return lambda step: rate(step) * jnp.minimum(1.0, (jnp.asarray(step, jnp.float32) + 1.0) / warmup)


def _base_schedule(optimizer: Mapping[str, Any], schedule: Mapping[str, Any], num_epochs: int,
                   steps_per_epoch: int) -> Schedule:
    """optax's schedules where their semantics are the deck's; Keras's and the deck's own written out.

    Written here: `piecewise` (the deck's drops: the rates themselves after given epochs, not optax's
    multiplicative scales, so 1e-4 stays exactly the float32 of 1e-4) and `keras_time_decay` (Keras 2's
    `decay` argument, lr / (1 + decay·iterations), which optax has no schedule for).
    """
    name = schedule["name"]
    base = float(optimizer["learning_rate"])
    if name == "constant":
        return optax.constant_schedule(base)
    if name == "piecewise":
        boundaries, values = tuple(schedule["boundaries"]), tuple(float(v) for v in schedule["values"])
        if len(values) != len(boundaries) + 1 or list(boundaries) != sorted(boundaries):
            raise UserError("schedule.values must have one more entry than schedule.boundaries (sorted epochs "
                            f"after which the rate changes); got boundaries={boundaries} values={values}")
        table = jnp.asarray(values, jnp.float32)
        edges = jnp.asarray(boundaries, jnp.int32)
        return lambda step: table[jnp.searchsorted(edges, _epoch(step, steps_per_epoch), side="right")]
    if name == "polynomial":  # per epoch, as the deck's Keras callback sets it: lr·(1 − epoch/num_epochs)^power
        by_epoch = optax.polynomial_schedule(base, 0.0, float(schedule["power"]), num_epochs)
        return lambda step: by_epoch(_epoch(step, steps_per_epoch))
    if name == "keras_time_decay":
        decay = float(schedule["decay"])
        return lambda step: base / (1.0 + decay * jnp.asarray(step, jnp.float32))
    if name == "exponential":
        return _exponential(base, schedule, steps_per_epoch)
    if name == "warmup_cosine":
        return _cosine(base, schedule, num_epochs, steps_per_epoch)
    raise UserError(f"schedule.name={name!r} is not known; use one of {', '.join(SCHEDULES)}")


def _exponential(base: float, schedule: Mapping[str, Any], steps_per_epoch: int) -> Schedule:
    """base · decay_rate^(epochs / decay_epochs); `staircase` counts whole decay periods only."""
    decay_rate, decay_epochs = float(schedule["decay_rate"]), float(schedule["decay_epochs"])
    if not 0.0 < decay_rate <= 1.0 or decay_epochs <= 0:
        raise UserError(f"schedule.decay_rate={decay_rate:g} must be in (0, 1] and schedule.decay_epochs="
                        f"{decay_epochs:g} above 0 (e.g. 0.96 every 8 epochs)")
    return optax.exponential_decay(base, transition_steps=decay_epochs * steps_per_epoch, decay_rate=decay_rate,
                                   staircase=bool(schedule["staircase"]))


def _cosine(base: float, schedule: Mapping[str, Any], num_epochs: int, steps_per_epoch: int) -> Schedule:
    """Half a cosine from `base` (at the end of warmup) to `final_rate` (at the last step), per step."""
    final = float(schedule["final_rate"])
    start = warmup_steps(schedule, steps_per_epoch)
    length = num_epochs * steps_per_epoch - start
    if length <= 0:
        raise UserError(f"schedule.warmup_epochs={schedule['warmup_epochs']:g} leaves no epochs for the cosine "
                        f"of num_epochs={num_epochs}; lower it")
    if base <= 0:
        raise UserError(f"optimizer.learning_rate={base:g}: warmup_cosine needs a positive peak rate")
    cosine = optax.cosine_decay_schedule(base, decay_steps=length, alpha=final / base)
    return optax.join_schedules([optax.constant_schedule(base), cosine], [start])


def check_accum_steps(accum_steps: int, batch_size: int, devices: int) -> None:
    """Each micro-batch must split evenly over the devices, as the whole batch does."""
    if accum_steps < 1 or batch_size % (accum_steps * devices):
        raise UserError(f"optimizer.accum_steps={accum_steps}: batch_size={batch_size} must split into "
                        f"{accum_steps} micro-batches over {devices} device(s); use a batch_size that is a "
                        f"multiple of {max(accum_steps, 1) * devices}, or another accum_steps")


def kernel_mask(params: Any) -> Any:
    """True for conv and dense kernels: the leaves weight decay may shrink (not biases, not BatchNorm)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def build_optimizer(optimizer: Mapping[str, Any], learning_rate: Schedule) -> optax.GradientTransformation:
    """The named update rule, behind gradient clipping by global norm when `clip_global_norm` > 0."""
    tx = _update_rule(optimizer, learning_rate)
    clip = float(optimizer["clip_global_norm"])
    if clip < 0:
        raise UserError(f"optimizer.clip_global_norm={clip:g} must be 0 (off) or a positive norm")
    return optax.chain(optax.clip_by_global_norm(clip), tx) if clip else tx


def _update_rule(optimizer: Mapping[str, Any], learning_rate: Schedule) -> optax.GradientTransformation:
    name = optimizer["name"]
    if optimizer["keras"]:  # Keras's own update rules (training/keras_optim.py says how they differ)
        from cnn_flax.training.keras_optim import build_keras_optimizer

        return build_keras_optimizer(optimizer, learning_rate)
    weight_decay = float(optimizer["weight_decay"])
    if weight_decay and name not in ("adamw", "lars"):
        raise UserError(f"optimizer.weight_decay={weight_decay:g} is decoupled weight decay, used by adamw and "
                        f"lars; with {name} use optimizer.l2 (Keras's penalty in the loss) or set it to 0")
    if name == "sgd":
        return optax.sgd(learning_rate, momentum=optimizer["momentum"] or None,
                         nesterov=bool(optimizer["nesterov"]))
    if name == "adam":  # Keras's defaults, epsilon included, so results transfer
        return optax.adam(learning_rate, b1=optimizer["b1"], b2=optimizer["b2"],
                          eps=optimizer["eps"])
    if name == "adamw":  # w ← w − lr·(adam_direction + weight_decay·w), the decay on kernels only
        return optax.adamw(learning_rate, b1=optimizer["b1"], b2=optimizer["b2"], eps=optimizer["eps"],
                           weight_decay=weight_decay, mask=kernel_mask)
    if name == "lars":  # layer-wise trust ratio for large batches; biases and BatchNorm get plain momentum SGD
        return optax.lars(learning_rate, weight_decay=weight_decay, weight_decay_mask=kernel_mask,
                          trust_coefficient=float(optimizer["trust_coefficient"]), trust_ratio_mask=kernel_mask,
                          momentum=float(optimizer["momentum"]), nesterov=bool(optimizer["nesterov"]))
    raise UserError(f"optimizer.name={name!r} is not known; use one of {', '.join(OPTIMIZERS)}")


def l2_penalty(params: Any, weight: float) -> jax.Array:
    """Keras's l2(weight) on every 'kernel' (conv and dense weights), biases and BN untouched."""
    if not weight:
        return jnp.zeros((), jnp.float32)
    leaves = jax.tree_util.tree_leaves_with_path(params)
    kernels = [leaf for path, leaf in leaves if getattr(path[-1], "key", None) == "kernel"]
    return weight * sum(jnp.sum(jnp.square(k.astype(jnp.float32))) for k in kernels)


def describe_optimizer(optimizer: Mapping[str, Any]) -> str:
    name = optimizer["name"]
    parts = [f"lr {optimizer['learning_rate']:g}"]
    if name in ("sgd", "lars") and optimizer["momentum"]:
        parts.append(f"momentum {optimizer['momentum']:g}" + (", nesterov" if optimizer["nesterov"] else ""))
    if optimizer["l2"]:
        parts.append(f"L2 {optimizer['l2']:g} on kernels")
    if optimizer["weight_decay"]:
        parts.append(f"weight decay {optimizer['weight_decay']:g} on kernels")
    if name == "lars":
        parts.append(f"trust coefficient {optimizer['trust_coefficient']:g}")
    if optimizer["clip_global_norm"]:
        parts.append(f"gradients clipped to global norm {optimizer['clip_global_norm']:g}")
    if optimizer["accum_steps"] > 1:
        parts.append(f"{optimizer['accum_steps']} micro-batches per update")
    return f"{name} ({', '.join(parts)})"


def learning_rate_plan(optimizer: Mapping[str, Any], schedule: Mapping[str, Any], num_epochs: int,
                       steps_per_epoch: int) -> list[str]:
    """Lines 'epochs A-B: lr X' per constant stretch ('epoch A: lr X' for one epoch), epochs 1-based.

    The rate shown is the one in force at the first step of each epoch; an epoch during which the rate
    moves (Keras's time decay, warmup, cosine) therefore gets a line of its own.
    """
    lr = build_schedule(optimizer, schedule, num_epochs, steps_per_epoch)
    rates = [float(lr(epoch * steps_per_epoch)) for epoch in range(num_epochs)]
    moving = [steps_per_epoch > 1 and float(lr((epoch + 1) * steps_per_epoch - 1)) != rates[epoch]
              for epoch in range(num_epochs)]
    lines, start = [], 0
    for epoch in range(1, num_epochs + 1):
        if epoch < num_epochs and rates[epoch] == rates[start] and not (moving[start] or moving[epoch]):
            continue
        span = f"epoch {start + 1}" if epoch == start + 1 else f"epochs {start + 1}-{epoch}"
        lines.append(f"{span}: lr {rates[start]:.6g}")
        start = epoch
    return lines
