"""The pure train, eval and predict step functions; `parallel` decides how they are compiled.

Each is `(state, batch, metrics) -> ...` with no Python state, so the same function runs under
`jax.jit` over a device mesh (where the batch axis is sharded and XLA inserts the reductions) and
under `jax.pmap` (where `axis_name` names the device axis for gradient, BatchNorm and metric means).
Dropout and augmentation keys are folded from the step number: a resumed run draws the same numbers.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from cnn_flax.models.layers import batch_norm_axis
from cnn_flax.training.metrics import EvalMetrics, TrainMetrics
from cnn_flax.training.optim import l2_penalty
from cnn_flax.training.param_groups import keep_frozen_stats
from cnn_flax.training.state import TrainState

Preprocess = Callable[[jax.Array, jax.Array | None], jax.Array]
Batch = dict[str, jax.Array]


def _split_outputs(outputs: Any) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """Models with auxiliary heads (GoogLeNet) return (logits, *aux_logits) in training."""
    if isinstance(outputs, tuple):
        return outputs[0], tuple(outputs[1:])
    return outputs, ()


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example loss against integer labels [B] or soft targets [B, C] (mixup/CutMix)."""
    if labels.ndim == logits.ndim:
        return optax.softmax_cross_entropy(logits.astype(jnp.float32), labels)
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def _step_keys(seed: int, step: jax.Array, axis_name: str | None) -> tuple[jax.Array, jax.Array]:
    key = jax.random.fold_in(jax.random.key(seed), step)
    if axis_name is not None:
        key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
    augment_key, dropout_key = jax.random.split(key)
    return augment_key, dropout_key


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, preprocess: Preprocess, *, seed: int,
                    aux_weight: float = 0.3, l2: float = 0.0, axis_name: str | None = None, mixing: Any = None,
                    freeze: str = ""):
    """`mixing` (data.mixing.Mixing or None) mixes each batch with itself and trains on the mixed targets;
    the accuracy metric stays on the true labels. Under pmap each device mixes within its own shard."""

    def train_step(state: TrainState, batch: Batch, metrics: TrainMetrics) -> tuple[TrainState, TrainMetrics]:
        augment_key, dropout_key = _step_keys(seed, state.step, axis_name)
        images = preprocess(batch["image"], augment_key)
        labels = batch["label"]
        if mixing is not None:
            draw = mixing.draw(augment_key, *images.shape[:3])
            images = mixing.images(images, draw)

        def loss_fn(params):
            with batch_norm_axis(axis_name):
                outputs, updates = model.apply({"params": params, "batch_stats": state.batch_stats}, images,
                                               train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"])
            logits, aux_logits = _split_outputs(outputs)
            goal = labels if mixing is None else mixing.targets(labels, draw, logits.shape[-1])
            loss = cross_entropy(logits, goal).mean()
            for aux in aux_logits:
                loss = loss + aux_weight * cross_entropy(aux, goal).mean()
            return loss + l2_penalty(params, l2), (logits, updates.get("batch_stats", {}))

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
            loss = jax.lax.pmean(loss, axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                                  batch_stats=keep_frozen_stats(freeze, state.params, state.batch_stats, batch_stats),
                                  opt_state=opt_state)
        outputs = dict(loss=loss, logits=logits.astype(jnp.float32), labels=labels, step=state.step)
        if axis_name is None:
            update = TrainMetrics.single_from_model_output(**outputs)
        else:
            update = TrainMetrics.gather_from_model_output(axis_name=axis_name, **outputs)
        return new_state, metrics.merge(update)

    return train_step


def predict_logits(model: nn.Module, variables: dict[str, Any], images: jax.Array, flip: bool = False) -> jax.Array:
    """Inference logits; with `flip`, the log of the mean softmax over the image and its mirror (TTA)."""
    logits = model.apply(variables, images, train=False).astype(jnp.float32)
    if not flip:
        return logits
    mirrored = model.apply(variables, images[:, :, ::-1], train=False).astype(jnp.float32)
    return jnp.log((jax.nn.softmax(logits) + jax.nn.softmax(mirrored)) / 2 + 1e-12)


def make_eval_step(model: nn.Module, preprocess: Preprocess, *, flip: bool = False, axis_name: str | None = None):
    def eval_step(state: TrainState, batch: Batch, metrics: EvalMetrics) -> EvalMetrics:
        logits = predict_logits(model, state.variables, preprocess(batch["image"], None), flip)
        outputs = dict(loss=cross_entropy(logits, batch["label"]), logits=logits, labels=batch["label"],
                       mask=batch["mask"])
        if axis_name is None:
            return metrics.merge(EvalMetrics.single_from_model_output(**outputs))
        return metrics.merge(EvalMetrics.gather_from_model_output(axis_name=axis_name, **outputs))

    return eval_step


def make_predict_step(model: nn.Module, preprocess: Preprocess, *, flip: bool = False):
    def predict_step(state: TrainState, batch: Batch) -> jax.Array:
        return predict_logits(model, state.variables, preprocess(batch["image"], None), flip)

    return predict_step
