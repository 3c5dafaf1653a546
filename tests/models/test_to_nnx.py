"""NNX interop: every zoo model with its weights as an NNX module gives `apply`'s outputs, and one NNX training
step (nnx.Optimizer, BatchNorm statistics updated in place, dropout) equals our Linen train step.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.nnx import bridge

from cnn_flax.models import create_model, init_traced
from cnn_flax.models.to_nnx import from_nnx, to_nnx
from cnn_flax.training import step as step_module
from cnn_flax.training.metrics import TrainMetrics
from cnn_flax.training.state import TrainState

# Each architecture of the zoo at the smallest input it takes (VGG: the LRN column, which has every VGG layer kind).
ZOO = {
    "minivgg": (dict(name="minivgg", num_classes=10), (32, 32, 3)),
    "minigooglenet": (dict(name="minigooglenet", num_classes=10), (32, 32, 3)),
    "deepergooglenet": (dict(name="deepergooglenet", num_classes=20, stage4=True), (64, 64, 3)),
    "googlenet": (dict(name="googlenet", num_classes=10, aux_heads=True), (224, 224, 3)),
    "vgg": (dict(name="vgg", variant="A-LRN", num_classes=10), (32, 32, 3)),
    "nin": (dict(name="nin", num_classes=10), (32, 32, 3)),
    "conv1x1_demo": (dict(name="conv1x1_demo", variant="bottleneck"), (28, 28, 192)),
}


def loaded_variables(model, shape, seed):
    """Weights that are not the initialiser's (as a checkpoint's would be), BatchNorm statistics included."""
    shapes = jax.eval_shape(lambda: init_traced(model, shape, jax.random.key(0)))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "var":
            return jnp.asarray(rng.uniform(0.5, 2.0, leaf.shape), leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
        return jnp.asarray(rng.standard_normal(leaf.shape) / np.sqrt(fan_in), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_model_through_nnx_gives_applys_outputs(name):
    options, shape = ZOO[name]
    model = create_model(options)
    variables = loaded_variables(model, shape, seed=len(name))
    images = jnp.asarray(np.random.default_rng(0).standard_normal((2, *shape)), jnp.float32)
    expected = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    nnx_model = to_nnx(model, variables)
    got = nnx.jit(lambda m, x: m(x, train=False))(nnx_model, images)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    # the same NNX state as the bridge's own lazy initialisation builds (in training mode, so with GoogLeNet's
    # auxiliary heads), and the variables come back unchanged
    reference = nnx.eval_shape(lambda: bridge.ToNNX(model, rngs=nnx.Rngs(0, dropout=1)).lazy_init(images, train=True))
    for kind in (nnx.Param, nnx.BatchStat):
        assert (jax.tree_util.tree_structure(nnx.state(reference, kind))
                == jax.tree_util.tree_structure(nnx.state(nnx_model, kind)))
    back = from_nnx(nnx_model)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(variables)
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, variables)


def test_one_nnx_optimizer_step_equals_our_linen_train_step(monkeypatch):
    """MiniVGG (BatchNorm and dropout), Nesterov SGD: parameters, statistics and loss after one step.

    NNX draws dropout keys from an `nnx.Rngs` stream (fold_in(key, count)); our step derives them from the seed and
    step number. The Linen side is given the key the NNX stream yields, so both drop the same units; everything
    else is our train step as training runs it.
    """
    model = create_model(dict(name="minivgg", num_classes=10))
    variables = loaded_variables(model, (16, 16, 3), seed=3)
    rng = np.random.default_rng(1)
    batch = {"image": jnp.asarray(rng.integers(0, 256, (8, 16, 16, 3)), jnp.uint8),
             "label": jnp.asarray(rng.integers(0, 10, 8), jnp.int32)}
    tx = optax.sgd(0.05, momentum=0.9, nesterov=True)
    preprocess = lambda images, key: images.astype(jnp.float32) / 255.0  # noqa: E731
    stream_key = jax.random.key(42)
    dropout_key = jax.random.fold_in(stream_key, 0)  # what nnx.Rngs(dropout=stream_key) yields first

    monkeypatch.setattr(step_module, "step_keys", lambda seed, step, axis_name: (jax.random.key(0), dropout_key))
    train_step = step_module.make_train_step(model, tx, preprocess, seed=0)
    state, _ = jax.jit(train_step)(TrainState.create(variables, tx), batch, TrainMetrics.empty())

    nnx_model = to_nnx(model, variables)
    optimizer = nnx.Optimizer(nnx_model, tx, wrt=nnx.Param)

    @nnx.jit
    def nnx_step(nnx_model, optimizer, images, labels):
        def loss_fn(nnx_model):
            logits = nnx_model(preprocess(images, None), train=True, rngs=nnx.Rngs(dropout=stream_key),
                               mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(nnx_model)
        optimizer.update(nnx_model, grads)
        return loss

    loss = nnx_step(nnx_model, optimizer, batch["image"], batch["label"])
    after = from_nnx(nnx_model)
    assert int(optimizer.step[...]) == int(state.step) == 1
    for collection, ours in (("params", state.params), ("batch_stats", state.batch_stats)):
        changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), ours, variables[collection])
        assert all(jax.tree_util.tree_leaves(changed)), collection  # the step moved every array
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                               after[collection], ours)
    logits = model.apply(variables, preprocess(batch["image"], None), train=True, rngs={"dropout": dropout_key},
                         mutable=["batch_stats"])[0]
    expected_loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    np.testing.assert_allclose(float(loss), float(expected_loss), rtol=1e-6)
