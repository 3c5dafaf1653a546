"""The pure train, eval and predict step functions; `parallel` decides how they are compiled.

Each is `(state, batch, metrics) -> ...` (evaluation and prediction take the model's variables instead
of the train state, so they serve any weights: a checkpoint's, or a second set kept beside training) with
no Python state, so the same function runs under
`jax.jit` over a device mesh (where the batch axis is sharded and XLA inserts the reductions) and
under `jax.pmap` (where `axis_name` names the device axis for the gradient and metric means; the
model's BatchNorm is told the same axis when the model is created, its `bn_axis_name` field).
Dropout and augmentation keys are folded from the step number: a resumed run draws the same numbers.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from cnn_flax.training.metrics import EvalMetrics, TrainMetrics
from cnn_flax.training.optim import l2_penalty
from cnn_flax.training.param_groups import keep_frozen_stats
from cnn_flax.training.state import TrainState, ema_update, present

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


def soft_targets(targets: jax.Array, num_classes: int, label_smoothing: float = 0.0) -> jax.Array:
    """[B, C] target distributions from integer labels [B] or from distributions already [B, C] (mixed
    images), with label smoothing: (1 − ε)·target + ε/C. Smoothing is linear, so smoothing a mixture
    equals mixing the smoothed labels."""
    if targets.ndim == 1:
        targets = jax.nn.one_hot(targets, num_classes, dtype=jnp.float32)
    targets = targets.astype(jnp.float32)
    if label_smoothing:
        targets = (1.0 - label_smoothing) * targets + label_smoothing / num_classes
    return targets


def training_loss(logits: jax.Array, targets: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example cross-entropy against integer labels or [B, C] target distributions, label-smoothed.

    Integer labels without smoothing keep the integer-label form: the same value, and the same rounding
    as runs made before soft targets existed.
    """
    if label_smoothing:
        targets = soft_targets(targets, logits.shape[-1], label_smoothing)
    return cross_entropy(logits, targets)


def _targets(rows: Any, lam: jax.Array | None, num_classes: int) -> jax.Array:
    """Integer labels as they are, or (mixup/CutMix) the pairs (own label, partner's label) as the [B, C]
    distributions lam·onehot(own) + (1 − lam)·onehot(partner). Pairs rather than distributions travel
    through the micro-batch split, which then needs no class count."""
    if lam is None:
        return rows
    own, partner = rows
    one_hot = lambda x: jax.nn.one_hot(x, num_classes, dtype=jnp.float32)  # noqa: E731
    return lam * one_hot(own) + (1.0 - lam) * one_hot(partner)


def step_keys(seed: int, step: jax.Array, axis_name: str | None) -> tuple[jax.Array, jax.Array]:
    """The (augmentation, dropout) keys of training step `step`: a function of (seed, step, device) alone,
    so a resumed run draws what the uninterrupted one drew from the step it resumes at."""
    key = jax.random.fold_in(jax.random.key(seed), step)
    if axis_name is not None:
        key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
    augment_key, dropout_key = jax.random.split(key)
    return augment_key, dropout_key


def split_micro_batches(x: jax.Array, k: int) -> jax.Array:
    """[B, ...] → [k, B/k, ...] with micro-batch j = rows j, j+k, j+2k, …

    Strided rather than contiguous: each device's block of rows holds rows of every micro-batch, so every
    micro-batch stays spread over all devices (and the split is the same on 1 or 8 devices, jit or pmap).
    """
    return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)


def join_micro_batches(x: jax.Array) -> jax.Array:
    """The inverse of `split_micro_batches`: [k, B/k, ...] → [B, ...] in the original row order."""
    return jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:])


def _metrics_update(metrics_class: type, axis_name: str | None, **outputs: jax.Array):
    """This step's metrics; under pmap gathered from every device (clu's collective form)."""
    if axis_name is None:
        return metrics_class.single_from_model_output(**outputs)
    return metrics_class.gather_from_model_output(axis_name=axis_name, **outputs)


def ema_decay_at(updates_done: jax.Array | int, decay: float) -> jax.Array:
    """The moving average's decay at an update, warmed up as TensorFlow's ExponentialMovingAverage(num_updates)
    and timm do: min(decay, (1 + t)/(10 + t)), t the updates done before it.

    Without it the average of a short run is mostly its initial weights (0.99 over 84 updates keeps 43% of
    them). This warmup was chosen over optax's `debias` because the stored average stays a set of weights
    usable as it is (checkpoints, evaluation, export read it directly); a debiased one starts from zeros and
    is only right after dividing by 1 − decay^t wherever it is read, BatchNorm's variances included.
    """
    t = jnp.asarray(updates_done, jnp.float32)
    return jnp.minimum(jnp.float32(decay), (1.0 + t) / (10.0 + t))


def micro_batches_unrolled(choice: bool | None = None) -> bool:
    """Whether the micro-batches of gradient accumulation run as straight-line code rather than in a loop:
    `choice`, or when None, on the CPU backend only.

    XLA:CPU runs the convolutions in a loop's body far slower than the same code outside one: MiniVGG on
    16x16 images, batch 32 in two micro-batches (2 cores, optimizing compiles), took 11.9 s an epoch in a
    `lax.scan` and 1.2 s unrolled (1.0 s without accumulation); the compile was no slower. On GPU and TPU
    the loop stays: it keeps one micro-batch's activations in memory at a time, which is what accumulation
    is for there.
    """
    return jax.default_backend() == "cpu" if choice is None else choice


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, preprocess: Preprocess, *, seed: int,
                    aux_weight: float = 0.3, l2: float = 0.0, label_smoothing: float = 0.0, accum_steps: int = 1,
                    ema_decay: float = 0.0, ema_warmup: bool = False, axis_name: str | None = None,
                    mixing: Any = None, freeze: str = "",
                    scaled_tx: Callable[[jax.Array], optax.GradientTransformation] | None = None,
                    unroll_micro_batches: bool | None = None):
    """One optimizer update per call.

    `mixing` (data.mixing.Mixing or None) mixes each batch with itself and trains on the mixed targets;
    the accuracy metric stays on the true labels. Under pmap each device mixes within its own shard.
    `freeze` (a regular expression over parameter paths) keeps the BatchNorm statistics of frozen layers.
    With `accum_steps` = k > 1 the batch is cut into k micro-batches (`split_micro_batches`) that run one
    after the other in a `lax.scan`, written out rather than looped where `micro_batches_unrolled` says (the
    CPU backend, unless `unroll_micro_batches` chooses); their gradients are averaged into one update, so a
    model without BatchNorm gets the full batch's gradient. The whole batch is augmented and mixed first, so the
    micro-batches see what the full batch would. BatchNorm normalises each micro-batch with that
    micro-batch's own statistics, and each micro-batch moves the running statistics in turn: k updates of
    the running averages per optimizer step, as k separate forward passes in train mode would. With
    `ema_decay` > 0 the state's moving average of the weights and BatchNorm statistics follows every update;
    with `ema_warmup` its decay is min(ema_decay, (1 + t)/(10 + t)) at the t-th update (`ema_decay_at`).
    A state with an `lr_scale` (ReduceLROnPlateau) updates with `scaled_tx(lr_scale)`: the same update rule
    and optimizer state, its schedule's rate multiplied by the scale inside the compiled step.
    """
    if getattr(model, "bn_axis_name", axis_name) != axis_name:  # each device would normalise its own slice
        raise ValueError(f"the model's bn_axis_name={model.bn_axis_name!r} differs from the step's "
                         f"axis_name={axis_name!r}; create the model with bn_axis_name={axis_name!r}")

    def loss_fn(params, batch_stats, images, rows, lam, dropout_key):
        outputs, updates = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                       train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"])
        logits, aux_logits = _split_outputs(outputs)
        targets = _targets(rows, lam, logits.shape[-1])
        loss = training_loss(logits, targets, label_smoothing).mean()
        for aux in aux_logits:
            loss = loss + aux_weight * training_loss(aux, targets, label_smoothing).mean()
        return loss + l2_penalty(params, l2), (logits, updates.get("batch_stats", {}))

    gradient = jax.value_and_grad(loss_fn, has_aux=True)

    def accumulated(state, images, rows, lam, dropout_key):
        def micro_step(carry, micro):
            grad_sum, batch_stats = carry
            index, micro_images, micro_rows = micro
            (loss, (logits, batch_stats)), grads = gradient(state.params, batch_stats, micro_images, micro_rows, lam,
                                                            jax.random.fold_in(dropout_key, index))
            return (jax.tree_util.tree_map(jnp.add, grad_sum, grads), batch_stats), (loss, logits)

        zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
        split = lambda x: split_micro_batches(x, accum_steps)  # noqa: E731
        micro = (jnp.arange(accum_steps), split(images), jax.tree_util.tree_map(split, rows))
        (grad_sum, batch_stats), (losses, logits) = jax.lax.scan(
            micro_step, (zeros, state.batch_stats), micro, unroll=micro_batches_unrolled(unroll_micro_batches))
        grads = jax.tree_util.tree_map(lambda g: g / accum_steps, grad_sum)
        return (losses.mean(), (join_micro_batches(logits), batch_stats)), grads

    def train_step(state: TrainState, batch: Batch, metrics: TrainMetrics) -> tuple[TrainState, TrainMetrics]:
        augment_key, dropout_key = step_keys(seed, state.step, axis_name)
        images = preprocess(batch["image"], augment_key)
        labels = batch["label"]
        rows, lam = labels, None
        if mixing is not None:
            draw = mixing.draw(augment_key, *images.shape[:3])
            images = mixing.images(images, draw)
            rows, lam = (labels, jnp.take(labels, draw.perm, axis=0)), draw.lam
        if accum_steps > 1:
            (loss, (logits, batch_stats)), grads = accumulated(state, images, rows, lam, dropout_key)
        else:
            (loss, (logits, batch_stats)), grads = gradient(state.params, state.batch_stats, images, rows, lam,
                                                            dropout_key)
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
            loss = jax.lax.pmean(loss, axis_name)
        rule = tx
        if present(state.lr_scale):
            if scaled_tx is None:
                raise ValueError("the state has an lr_scale but the step was made without scaled_tx")
            rule = scaled_tx(state.lr_scale)
        updates, opt_state = rule.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        batch_stats = keep_frozen_stats(freeze, state.params, state.batch_stats, batch_stats)
        ema = state.ema
        if ema_decay:
            decay = ema_decay_at(state.step, ema_decay) if ema_warmup else ema_decay
            ema = ema_update(ema, {"params": params, "batch_stats": batch_stats}, decay)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
                                  ema=ema)
        update = _metrics_update(TrainMetrics, axis_name, loss=loss, logits=logits.astype(jnp.float32),
                                 labels=labels, step=state.step)
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
    def eval_step(variables: dict[str, Any], batch: Batch, metrics: EvalMetrics) -> EvalMetrics:
        logits = predict_logits(model, variables, preprocess(batch["image"], None), flip)
        return metrics.merge(_metrics_update(EvalMetrics, axis_name, loss=cross_entropy(logits, batch["label"]),
                                             logits=logits, labels=batch["label"], mask=batch["mask"]))

    return eval_step


def make_predict_step(model: nn.Module, preprocess: Preprocess, *, flip: bool = False):
    def predict_step(variables: dict[str, Any], batch: Batch) -> jax.Array:
        return predict_logits(model, variables, preprocess(batch["image"], None), flip)

    return predict_step
