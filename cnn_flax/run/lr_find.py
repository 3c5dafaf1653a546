"""--mode=lr_find: the learning-rate range test on the config's own model, optimizer and data.

The sweep trains a fresh model (or the weights of init_from) with the config's optimizer, loss and
augmentation through the same compiled train step as training; only the learning-rate schedule is replaced,
by the geometric sweep of lr_find.{min_lr,max_lr,steps} (a function of the optimizer's own step count, so
momentum, Adam's moments, clipping, weight decay, freezing and lr_multipliers all act as they will in the
run). It stops when the smoothed loss diverges. What it leaves in the workdir: lr_find.json (every rate and
loss, and the suggestions), lr_find.png, and a section of report.html. The run's checkpoints are untouched.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cnn_flax.data.augment.recipes import make_mixing
from cnn_flax.evaluation.lr_find import check_sweep, diverged, plot_lr_find, smooth, suggestions, sweep_rates
from cnn_flax.run.engine import Engine
from cnn_flax.run.experiment import initial_variables, train_steps_per_epoch
from cnn_flax.run.report_page import write_run_report
from cnn_flax.training.metrics import TrainMetrics
from cnn_flax.training.optim import build_optimizer, describe_optimizer
from cnn_flax.training.parallel import device_prefetch
from cnn_flax.training.param_groups import with_param_groups
from cnn_flax.training.state import TrainState
from cnn_flax.training.step import make_train_step
from cnn_flax.training.workdir import RunFiles

log = logging.getLogger("cnn_flax")


def _sweep_schedule(min_lr: float, max_lr: float, steps: int):
    """The sweep as an optax schedule: the rate of optimizer step i (held at max_lr after the last step)."""
    ratio = max_lr / min_lr

    def rate(step: jax.Array | int) -> jax.Array:
        fraction = jnp.minimum(jnp.asarray(step, jnp.float32) / (steps - 1), 1.0)
        return jnp.float32(min_lr) * jnp.power(jnp.float32(ratio), fraction)
    return rate


def sweep_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The config's optimizer (update rule, clipping, parameter groups) driven by the sweep's rates."""
    settings = config.lr_find
    schedule = _sweep_schedule(float(settings.min_lr), float(settings.max_lr), int(settings.steps))
    return with_param_groups(config.optimizer, build_optimizer(config.optimizer, schedule))


def lr_find(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Run the range test of `config` and write its files into `workdir`; returns what lr_find.json holds."""
    settings = config.lr_find
    min_lr, max_lr, steps = float(settings.min_lr), float(settings.max_lr), int(settings.steps)
    smoothing, factor = float(settings.smoothing), float(settings.diverge_factor)
    check_sweep(min_lr, max_lr, steps, smoothing, factor)
    engine, files = Engine(config), RunFiles(workdir)
    experiment, parallel = engine.experiment, engine.parallel
    tx = sweep_optimizer(config)
    train_step = engine.compile("lr_find", make_train_step(
        experiment.model, tx, engine.preprocess, seed=config.seed, aux_weight=config.loss.aux_weight,
        l2=config.optimizer.l2, label_smoothing=config.loss.label_smoothing, accum_steps=config.optimizer.accum_steps,
        axis_name=parallel.axis_name, mixing=make_mixing(config.data), freeze=config.optimizer.freeze))
    state = parallel.put_replicated(TrainState.create(initial_variables(experiment), tx))
    empty = TrainMetrics.empty()
    steps_per_epoch = train_steps_per_epoch(config, experiment.source)
    rates = sweep_rates(min_lr, max_lr, steps)
    losses: list[float] = []
    diverging, epoch = False, 0
    log.info("lr_find: %d steps from %g to %g with %s", steps, min_lr, max_lr, _update_rule(config.optimizer))
    while len(losses) < steps and not diverging:  # as many epochs of the train split as the steps need
        batches = engine.batches("train", shuffle=True, epoch=epoch, drop_remainder=True)
        batches = (b for _, b in zip(range(min(steps_per_epoch, steps - len(losses))), batches, strict=False))
        for batch in device_prefetch(batches, parallel.put_batch):
            state, metrics = train_step(state, batch, parallel.put_replicated(empty))
            losses.append(float(parallel.fetch(metrics).compute()["loss"]))
            diverging = diverged(smooth(losses, smoothing), factor)
            if diverging:
                break
        epoch += 1
    stopped = f"diverged at step {len(losses)}" if diverging else f"completed {steps} steps"
    smoothed = smooth(losses, smoothing)
    found = suggestions(rates[:len(losses)], smoothed)
    result = {"rates": [float(r) for r in rates[:len(losses)]], "losses": [_json_float(v) for v in losses],
              "smoothed": [_json_float(v) for v in smoothed], "suggestions": found,
              "suggested": found["minimum_over_10"], "stopped": stopped,
              "settings": dict(min_lr=min_lr, max_lr=max_lr, steps=steps, smoothing=smoothing, diverge_factor=factor),
              "optimizer": _update_rule(config.optimizer), "batch_size": int(config.batch_size)}
    if files.is_writer:
        os.makedirs(workdir, exist_ok=True)
        files.write_json("lr_find.json", result)
        plot_lr_find(result, files.path("lr_find.png"))
        write_run_report(workdir, "lr_find", config)
    return result


def _update_rule(optimizer: ml_collections.ConfigDict) -> str:
    """The optimizer as --mode=summary describes it, less the configured rate, which the sweep replaces."""
    name, _, inner = describe_optimizer(optimizer).partition(" (")
    parts = [part for part in inner.rstrip(")").split(", ") if part and not part.startswith("lr ")]
    return f"{name} ({', '.join(parts)})" if parts else name


def _json_float(value: float) -> float | None:
    """A loss for strict JSON: null where it was not finite (the step that diverged)."""
    return float(value) if np.isfinite(value) else None


def describe_result(result: dict[str, Any]) -> str:
    """What the terminal shows: how the sweep ended and the suggested rates."""
    found = result["suggestions"]
    lines = [f"lr_find: {len(result['rates'])} steps up to lr {result['rates'][-1]:.3g}; {result['stopped']}"]
    for key, label in (("steepest", "steepest descent"), ("minimum", "lowest smoothed loss"),
                       ("minimum_over_10", "lowest / 10 (suggested)")):
        if found[key] is not None:
            lines.append(f"  {label:<26} lr {found[key]:.3g}")
    if result["suggested"] is not None:
        lines.append(f"Train with --config.optimizer.learning_rate={result['suggested']:.2g}")
    return "\n".join(lines)
