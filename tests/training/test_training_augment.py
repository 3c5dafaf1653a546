"""The train step with every on-device augmentation on: mixed-label loss, true-label accuracy, 1 vs 8 devices."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_flax.data.augment.preprocess import make_preprocess
from cnn_flax.data.augment.recipes import make_mixing
from cnn_flax.data.dataset import DatasetInfo
from cnn_flax.models.layers import ConvModule
from cnn_flax.training.metrics import TrainMetrics
from cnn_flax.training.parallel import JitParallel, PmapParallel
from cnn_flax.training.state import TrainState
from cnn_flax.training.step import make_train_step, step_keys
from configs.common import base

CLASSES, SIZE, BATCH = 4, 8, 16


class TinyNet(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = ConvModule(4, 3, name="conv")(x, train)
        return nn.Dense(CLASSES, name="head")(x.mean(axis=(1, 2)))


def data_config():
    config = base("augment").data
    config.augment.update(dict(random_resized_crop=True, rrc_scale=(0.3, 1.0), trivial_augment=True,
                               random_erasing=0.5, mixup_alpha=0.4, cutmix_alpha=1.0, rotation=10.0,
                               horizontal_flip=True))
    return config


def batch():
    rng = np.random.default_rng(0)
    return {"image": rng.integers(0, 256, (BATCH, SIZE, SIZE, 3), dtype=np.uint8),
            "label": rng.integers(0, CLASSES, BATCH).astype(np.int32)}


@pytest.fixture(scope="module")
def pieces():
    info = DatasetInfo("t", CLASSES, tuple("abcd"), (SIZE, SIZE, 3), {}, np.full(3, 127.0, np.float32), None)
    preprocess = make_preprocess(data_config(), info)
    model, tx = TinyNet(), optax.sgd(0.1, momentum=0.9)
    variables = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)), train=True)
    return preprocess, make_mixing(data_config()), model, tx, variables


def run(pieces, parallel, devices=None, steps=1):
    preprocess, mixing, model, tx, variables = pieces
    if devices is not None:
        parallel.mesh = jax.sharding.Mesh(np.asarray(devices), ("data",))
        parallel.replicated = jax.sharding.NamedSharding(parallel.mesh, jax.sharding.PartitionSpec())
        parallel.sharded = jax.sharding.NamedSharding(parallel.mesh, jax.sharding.PartitionSpec("data"))
    step = make_train_step(model, tx, preprocess, seed=3, axis_name=parallel.axis_name, mixing=mixing)
    train = parallel.compile_step(step)
    state = parallel.put_replicated(TrainState.create(variables, tx))
    metrics = parallel.put_replicated(TrainMetrics.empty())
    for _ in range(steps):
        state, metrics = train(state, parallel.put_batch(batch()), metrics)
    return parallel.fetch(state), parallel.fetch(metrics).compute()


@pytest.fixture(scope="module")
def one_device(pieces):
    return run(pieces, JitParallel(), devices=jax.devices()[:1])


def test_every_augmentation_gives_the_same_step_on_one_and_eight_devices(pieces, one_device):
    eight = run(pieces, JitParallel())
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)  # noqa: E731
    jax.tree_util.tree_map(close, one_device[0].params, eight[0].params)
    jax.tree_util.tree_map(close, one_device[0].batch_stats, eight[0].batch_stats)
    jax.tree_util.tree_map(close, one_device[1], eight[1])
    pmapped = run(pieces, PmapParallel())  # each device draws and mixes within its own shard
    assert int(pmapped[0].step) == 1 and np.isfinite(pmapped[1]["loss"])
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(pmapped[0].params))


def test_loss_is_on_mixed_targets_and_accuracy_on_true_labels(pieces, one_device):
    preprocess, mixing, model, tx, variables = pieces

    @jax.jit
    def written_out(images):  # the first step by hand: its key, augmentation, mixing draw and logits
        augment_key, _ = step_keys(3, jnp.asarray(0), None)
        images = preprocess(images, augment_key)
        draw = mixing.draw(augment_key, BATCH, SIZE, SIZE)
        logits, _ = model.apply(variables, mixing.images(images, draw), train=True, mutable=["batch_stats"])
        return logits, draw

    logits, draw = written_out(batch()["image"])
    labels, perm, lam = batch()["label"], np.asarray(draw.perm), float(draw.lam)
    assert lam < 1 and (labels[perm] != labels).any()
    targets = lam * np.eye(CLASSES)[labels] + (1 - lam) * np.eye(CLASSES)[labels[perm]]
    log_probs = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32)), np.float64)
    values = one_device[1]
    assert values["loss"] == pytest.approx(-(targets * log_probs).sum(1).mean(), rel=1e-5)
    assert values["accuracy"] == pytest.approx((log_probs.argmax(1) == labels).mean())
