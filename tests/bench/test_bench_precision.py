"""bfloat16 compute (`half_precision`): evaluation agrees with float32 on the same weights, and the train step
moves BatchNorm's running statistics by the batch's own statistics, as float32 does.

These guard the two places a half-precision evaluation could go wrong without training noticing: the
inference path (BatchNorm with its running statistics, the logits) and the statistics the train step
accumulates for it. Tiny MiniVGG on digits, 16x16. Also the line of `python -m cnn_flax.bench.precision`.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from run_configs import tiny_config

from cnn_flax.bench.precision import format_line, precision_figures
from cnn_flax.errors import UserError
from cnn_flax.run.experiment import build_experiment, initial_variables, preprocessors
from cnn_flax.run.train import Trainer
from cnn_flax.training.metrics import TrainMetrics
from cnn_flax.training.step import predict_logits

NO_AUGMENT = {f"data.augment.{key}": 0.0 for key in ("rotation", "zoom", "width_shift", "height_shift")}


def _with_statistics(variables, seed=1):
    """Running statistics far from the initial zeros and ones, so that evaluation really uses them."""
    rng = np.random.default_rng(seed)
    stats = jax.tree_util.tree_map_with_path(
        lambda path, a: (rng.uniform(0.0, 1.0, a.shape) if "mean" in jax.tree_util.keystr(path)
                         else rng.uniform(0.5, 2.0, a.shape)).astype(np.float32), variables["batch_stats"])
    return {**variables, "batch_stats": stats}


def test_bfloat16_evaluation_agrees_with_float32_on_the_same_weights():
    f32 = build_experiment(tiny_config())
    bf16 = build_experiment(tiny_config(half_precision=True))
    variables = _with_statistics(initial_variables(f32))
    images, _ = f32.source.arrays("test")
    x = preprocessors(f32)(jnp.asarray(images[:64]), None)
    exact = np.asarray(predict_logits(f32.model, variables, x))
    half = np.asarray(predict_logits(bf16.model, variables, x))
    assert half.dtype == np.float32  # logits leave the model as float32 in both
    # bfloat16 keeps 8 bits of mantissa: a few per cent of the logits' spread, never a different network.
    assert np.abs(half - exact).max() < 0.05 * exact.std()
    assert (half.argmax(1) == exact.argmax(1)).mean() >= 0.95


def test_bfloat16_train_step_moves_running_statistics_by_the_batch_statistics():
    keras_momentum = {"model.bn_momentum": 0.99}  # the quickstart trains with 0.9; Keras's update is checked
    trainer = Trainer(tiny_config(half_precision=True, **NO_AUGMENT, **keras_momentum))
    variables = _with_statistics(initial_variables(trainer.experiment))
    batch = next(iter(trainer.batches("train", shuffle=True, epoch=0, drop_remainder=True)))
    parallel = trainer.parallel
    state, _ = trainer.train_step(parallel.put_replicated(trainer.new_state(variables)), parallel.put_batch(batch),
                                  parallel.put_replicated(TrainMetrics.empty()))
    stepped = jax.device_get(state.batch_stats)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(stepped)} == {np.dtype(np.float32)}

    # The first BatchNorm's input is the first convolution of the normalised batch: its statistics, computed
    # here in float32 from the same weights, are what Keras's update (momentum 0.99) averages in.
    f32 = build_experiment(tiny_config(**NO_AUGMENT, **keras_momentum))
    x = preprocessors(f32)(jnp.asarray(batch["image"]), None)
    _, inner = f32.model.apply(variables, x, train=False, capture_intermediates=True, mutable=["intermediates"])
    conv = np.asarray(inner["intermediates"]["block1_conv1"]["conv"]["__call__"][0])
    activated = np.maximum(conv, 0.0)  # the quickstart's order: convolution, ReLU, BatchNorm
    old = variables["batch_stats"]["block1_conv1"]["bn"]
    for name, batch_value in (("mean", activated.mean((0, 1, 2))), ("var", activated.var((0, 1, 2)))):
        expected = 0.99 * old[name] + 0.01 * batch_value
        moved = stepped["block1_conv1"]["bn"][name] - 0.99 * old[name]
        np.testing.assert_allclose(moved, 0.01 * batch_value, rtol=0.03, atol=1e-4)
        np.testing.assert_allclose(stepped["block1_conv1"]["bn"][name], expected, rtol=1e-3)


def test_precision_line_alternates_both_precisions_in_one_process():
    """The bf16/f32 comparison's line, from a run of a fraction of a second per phase (no speed is judged)."""
    figures = precision_figures(tiny_config(), seconds=0.1)
    line = format_line(figures)
    assert re.fullmatch(r"precision model=minivgg batch=32 (step|eval)_f32_img_per_s=[\d.]+ .*compiles=1", line), line
    for kind in ("step", "eval"):
        assert figures[f"{kind}_f32_img_per_s"] > 0 and figures[f"{kind}_bf16_img_per_s"] > 0
        assert figures[f"{kind}_bf16_over_f32"] > 0
    with pytest.raises(UserError, match="--seconds 0: give the positive"):
        precision_figures(tiny_config(), seconds=0)
