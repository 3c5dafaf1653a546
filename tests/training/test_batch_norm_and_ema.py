"""Precise BN against a cumulative average computed another way, and the moving average's warmup."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from run_configs import tiny_config

from cnn_flax.models import create_model
from cnn_flax.run.train import Trainer
from cnn_flax.training.metrics import TrainMetrics
from cnn_flax.training.parallel import device_prefetch
from cnn_flax.training.step import ema_decay_at, split_micro_batches


def _cumulative_average(trainer, variables, num_batches, accum_steps):
    """BatchNorm statistics averaged over micro-batches by the model itself: the k-th update with momentum
    (k − 1)/k leaves the running values at the mean of the first k micro-batches' statistics."""
    config = trainer.experiment.model_config
    stats, k = variables["batch_stats"], 0
    for _, batch in zip(range(num_batches), trainer.batches("train", shuffle=True, epoch=0, drop_remainder=True),
                        strict=False):
        images = trainer.preprocess(jnp.asarray(batch["image"]), None)
        for part in split_micro_batches(images, accum_steps):
            k += 1
            model = create_model(dict(config, bn_momentum=(k - 1) / k), cpu_kernels=True)
            _, updates = model.apply({"params": variables["params"], "batch_stats": stats}, part, train=True,
                                     mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
            stats = updates["batch_stats"]
    return stats


@pytest.mark.parametrize("accum_steps", [1, 2])
def test_precise_bn_is_the_mean_of_the_batches_statistics(accum_steps):
    trainer = Trainer(tiny_config(**{"optimizer.accum_steps": accum_steps, "precise_bn_batches": 3}))
    state = trainer.new_state(trainer.experiment.model.init(jax.random.key(1), jnp.zeros((1, 16, 16, 3)), train=False))
    host = {"params": state.params, "batch_stats": state.batch_stats}
    recomputed = trainer.parallel.fetch(trainer.precise_batch_stats(trainer.parallel.put_replicated(host)))
    expected = _cumulative_average(trainer, host, 3, accum_steps)
    leaves = jax.tree_util.tree_leaves_with_path(expected)
    assert len(leaves) >= 8  # every BatchNorm layer's mean and variance
    for path, value in leaves:
        got = recomputed["batch_stats"]
        for key in path:
            got = got[key.key]
        np.testing.assert_allclose(got, value, rtol=2e-4, atol=2e-5, err_msg=jax.tree_util.keystr(path))
        assert not np.allclose(value, 0.0 if "mean" in jax.tree_util.keystr(path) else 1.0)  # moved from the init
    jax.tree_util.tree_map(np.testing.assert_array_equal, recomputed["params"], host["params"])
    unchanged = trainer.precise_batch_stats(host, num_batches=0)
    assert unchanged is host


def test_the_moving_average_warms_up_as_tensorflow_and_timm():
    assert [float(ema_decay_at(t, 0.99)) for t in (0, 1, 8, 890, 10_000)] == pytest.approx(
        [1 / 10, 2 / 11, 9 / 18, 0.99, 0.99])
    trainer = Trainer(tiny_config(ema_decay=0.99))
    state = trainer.parallel.put_replicated(trainer.new_state(trainer.experiment.model.init(
        jax.random.key(1), jnp.zeros((1, 16, 16, 3)), train=False)))
    start = trainer.parallel.fetch(state.params)
    metrics = trainer.parallel.put_replicated(TrainMetrics.empty())
    batches = trainer.batches("train", shuffle=True, epoch=0, drop_remainder=True)
    for _, batch in zip(range(2), device_prefetch(batches, trainer.parallel.put_batch), strict=False):
        before = trainer.parallel.fetch(state.ema["params"])
        step = int(trainer.parallel.fetch(state.step))
        state, metrics = trainer.train_step(state, batch, metrics)
        after, weights = trainer.parallel.fetch(state.ema["params"]), trainer.parallel.fetch(state.params)
        decay = (1 + step) / (10 + step)  # 0.1, then 2/11: the first updates mostly take the new weights
        for a, b, w in zip(*(jax.tree_util.tree_leaves(t) for t in (after, before, weights)), strict=True):
            np.testing.assert_allclose(a, decay * b + (1 - decay) * w, rtol=1e-5, atol=1e-7)
    assert not np.allclose(jax.tree_util.tree_leaves(after)[0], jax.tree_util.tree_leaves(start)[0])
