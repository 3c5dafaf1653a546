"""The zoo against the deck: exact parameter counts, stage shapes, switches, and bad options."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_flax.errors import UserError
from cnn_flax.models import create_model, init_variables
from cnn_flax.models.layers import ConvModule, Downsample, Inception, SmallInception
from cnn_flax.models.summary import count_params, layer_rows, summary_text

# (config.model, input shape, Total, Trainable, Non-trainable) as Keras's model.summary() counts them.
KERAS_COUNTS = [
    (dict(name="minivgg", num_classes=10), (32, 32, 3), 2_171_178, 2_169_770, 1_408),
    (dict(name="minigooglenet", num_classes=10), (32, 32, 3), 1_656_250, 1_652_826, 3_424),
    (dict(name="deepergooglenet", num_classes=200), (64, 64, 3), 3_667_976, 3_657_992, 9_984),
    (dict(name="deepergooglenet", num_classes=200, stage4=False), (64, 64, 3), 773_752, 771_096, 2_656),
    (dict(name="googlenet", num_classes=1000), (224, 224, 3), 13_378_280, 13_378_280, 0),
    (dict(name="googlenet", num_classes=1000, aux_heads=False), (224, 224, 3), 6_998_552, 6_998_552, 0),
    (dict(name="vgg", variant="A"), (224, 224, 3), 132_863_336, 132_863_336, 0),
    (dict(name="vgg", variant="A-LRN"), (224, 224, 3), 132_863_336, 132_863_336, 0),
    (dict(name="vgg", variant="B"), (224, 224, 3), 133_047_848, 133_047_848, 0),
    (dict(name="vgg", variant="C"), (224, 224, 3), 133_638_952, 133_638_952, 0),
    (dict(name="vgg", variant="D"), (224, 224, 3), 138_357_544, 138_357_544, 0),
    (dict(name="vgg", variant="E"), (224, 224, 3), 143_667_240, 143_667_240, 0),
    (dict(name="nin", num_classes=10), (32, 32, 3), 966_986, 966_986, 0),
    (dict(name="conv1x1_demo", variant="direct"), (28, 28, 192), 153_632, 153_632, 0),
    (dict(name="conv1x1_demo", variant="bottleneck"), (28, 28, 192), 15_920, 15_920, 0),
]


@pytest.mark.parametrize("config,shape,total,trainable,non_trainable", KERAS_COUNTS,
                         ids=lambda v: v.get("name", "") + v.get("variant", "") if isinstance(v, dict) else None)
def test_parameter_counts_equal_keras(config, shape, total, trainable, non_trainable):
    _, counts = layer_rows(create_model(config), shape)
    assert (counts.total, counts.trainable, counts.non_trainable) == (total, trainable, non_trainable)


def _shapes(config, input_shape):
    rows, _ = layer_rows(create_model(config), input_shape)
    return {row.name: row.output_shape for row in rows}


def test_deeper_googlenet_stage_sizes_follow_the_deck_table():
    shapes = _shapes(dict(name="deepergooglenet", num_classes=200), (64, 64, 3))
    assert shapes["conv1_5x5"] == (1, 64, 64, 64)
    assert shapes["pool1"] == (1, 32, 32, 64)
    assert shapes["conv2_3x3"] == (1, 32, 32, 192)
    assert shapes["pool2"] == (1, 16, 16, 192)
    assert shapes["inception_3a"] == (1, 16, 16, 256)
    assert shapes["inception_3b"] == (1, 16, 16, 480)
    assert shapes["pool3"] == (1, 8, 8, 480)
    assert [shapes[f"inception_4{c}"][-1] for c in "abcde"] == [512, 512, 512, 528, 832]
    assert shapes["pool4"] == (1, 4, 4, 832)
    assert shapes["avg_pool"] == (1, 1, 1, 832)
    assert shapes["logits"] == (1, 200)


def test_mini_googlenet_downsamples_32_15_7():
    shapes = _shapes(dict(name="minigooglenet", num_classes=10), (32, 32, 3))
    assert shapes["conv1"] == (1, 32, 32, 96)
    assert shapes["inception2"] == (1, 32, 32, 80)
    assert shapes["downsample1"] == (1, 15, 15, 160)
    assert shapes["inception6"] == (1, 15, 15, 144)
    assert shapes["downsample2"] == (1, 7, 7, 240)
    assert shapes["inception8"] == (1, 7, 7, 336)
    assert shapes["avg_pool"] == (1, 1, 1, 336)


def test_googlenet_stage_sizes_follow_the_paper_table():
    shapes = _shapes(dict(name="googlenet", num_classes=1000), (224, 224, 3))
    assert shapes["conv1_7x7"] == (1, 112, 112, 64)
    assert shapes["pool1"] == (1, 56, 56, 64)
    assert shapes["conv2_3x3"] == (1, 56, 56, 192)
    assert shapes["pool2"] == (1, 28, 28, 192)
    assert shapes["inception_3b"] == (1, 28, 28, 480)
    assert shapes["pool3"] == (1, 14, 14, 480)
    assert shapes["inception_4e"] == (1, 14, 14, 832)
    assert shapes["pool4"] == (1, 7, 7, 832)
    assert shapes["inception_5b"] == (1, 7, 7, 1024)
    assert shapes["avg_pool"] == (1, 1, 1, 1024)


def test_vgg16_layer_names_and_shapes_match_keras_applications():
    rows, _ = layer_rows(create_model(dict(name="vgg", variant="D")), (224, 224, 3))
    names = [row.name for row in rows if "dropout" not in row.name]
    assert names[:4] == ["block1_conv1", "block1_conv2", "block1_pool", "block2_conv1"]
    assert names[-4:] == ["flatten", "fc1", "fc2", "predictions"]
    params = {row.name: row.params for row in rows}
    assert params["block1_conv1"] == 1_792 and params["block3_conv1"] == 295_168
    assert params["fc1"] == 102_764_544 and params["predictions"] == 4_097_000


def test_googlenet_returns_aux_logits_only_in_training():
    model = create_model(dict(name="googlenet", num_classes=7))
    variables = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), (224, 224, 3)))
    images = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    train_out = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, rngs={"dropout": jax.random.key(1)}),
                               variables, images)
    eval_out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
    assert isinstance(train_out, tuple) and [o.shape for o in train_out] == [(2, 7)] * 3
    assert eval_out.shape == (2, 7)


def _conv_module_output(bn_order, activation):
    module = ConvModule(4, 3, bn_order=bn_order, activation=activation)
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 3))
    variables = module.init(jax.random.key(1), x)
    params = jax.tree_util.tree_map(lambda p: p, variables["params"])
    params["bn"]["bias"] = jnp.full((4,), -0.5)
    params["bn"]["scale"] = jnp.full((4,), 2.0)
    out = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=False)
    conv = jax.lax.conv_general_dilated(x, params["conv"]["kernel"], (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC")) + params["conv"]["bias"]
    return np.asarray(out), np.asarray(conv)


@pytest.mark.parametrize("activation", ["relu", "elu"])
def test_conv_module_order_and_activation_switches(activation):
    act = {"relu": jax.nn.relu, "elu": jax.nn.elu}[activation]

    def bn(v):
        return (v - 0.0) / np.sqrt(1.0 + 1e-3) * 2.0 - 0.5  # fresh statistics: mean 0, variance 1

    out, conv = _conv_module_output("conv_bn_act", activation)
    np.testing.assert_allclose(out, act(bn(conv)), rtol=1e-5, atol=1e-5)
    out, conv = _conv_module_output("conv_act_bn", activation)
    np.testing.assert_allclose(out, bn(act(conv)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["minivgg", "minigooglenet", "deepergooglenet"])
def test_switches_keep_the_parameter_count(name):
    shape = (64, 64, 3) if name == "deepergooglenet" else (32, 32, 3)
    base = layer_rows(create_model(dict(name=name)), shape)[1]
    for switches in (dict(bn_order="conv_act_bn"), dict(bn_order="conv_bn_act"), dict(activation="elu")):
        assert layer_rows(create_model(dict(name=name, **switches)), shape)[1] == base


@pytest.mark.parametrize("config,shape", [
    (dict(name="minivgg", num_classes=10), (32, 32, 3)),
    (dict(name="minigooglenet", num_classes=10, activation="elu"), (32, 32, 3)),
    (dict(name="nin", num_classes=10), (32, 32, 3)),
    (dict(name="deepergooglenet", num_classes=5, stage4=False, bn_order="conv_act_bn"), (64, 64, 3)),
])
def test_forward_and_backward_pass(config, shape):
    model = create_model(config)
    variables = init_variables(model, jax.random.key(0), shape)
    images = jax.random.uniform(jax.random.key(1), (4, *shape))
    labels = jnp.arange(4) % config["num_classes"]

    def loss_fn(params):
        logits, updates = model.apply({**variables, "params": params}, images, train=True,
                                      rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates

    (loss, updates), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"])
    assert np.isfinite(float(loss))
    grad_norm = optax.global_norm(grads)
    assert float(grad_norm) > 0
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(variables["params"])
    if "batch_stats" in variables:
        moved = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), updates["batch_stats"],
                                       variables["batch_stats"])
        assert any(jax.tree_util.tree_leaves(moved))
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    assert logits.shape == (4, config["num_classes"])


def test_vgg_without_top_gives_features_for_small_inputs():
    for pooling, expected in [(None, (2, 1, 1, 512)), ("avg", (2, 512)), ("max", (2, 512))]:
        model = create_model(dict(name="vgg", variant="D", include_top=False, pooling=pooling))
        variables = jax.eval_shape(lambda m=model: init_variables(m, jax.random.key(0), (32, 32, 3)))
        out = jax.eval_shape(lambda v, m=model: m.apply(v, jnp.zeros((2, 32, 32, 3))), variables)
        assert out.shape == expected
    assert count_params(variables).total == 14_714_688  # keras.applications.VGG16(include_top=False)


def test_summary_prints_keras_totals():
    text = summary_text(create_model(dict(name="minivgg", num_classes=10)), (32, 32, 3))
    assert text.splitlines()[-4:-1] == ["Total params: 2,171,178", "Trainable params: 2,169,770",
                                        "Non-trainable params: 1,408"]
    assert "block1_conv1 (ConvModule)" in text and "(None, 16, 16, 32)" in text


@pytest.mark.parametrize("config,shape,message", [
    (dict(name="resnet"), (32, 32, 3), r"model.name='resnet' is not known; use one of minivgg"),
    (dict(name="minigooglenet"), (8, 8, 3), r"avg_pool: a 1x1 feature map is smaller than its 7x7 window"),
    (dict(name="minivgg", bn_order="bn_first"), (32, 32, 3), r"model.bn_order='bn_first' .* conv_bn_act"),
    (dict(name="minivgg", activation="gelu"), (32, 32, 3), r"model.activation='gelu' .* relu, elu"),
    (dict(name="minivgg", stage4=False), (32, 32, 3), r"model.stage4 does not apply to model 'minivgg'"),
    (dict(name="vgg", variant="F"), (224, 224, 3), r"model.variant='F' is not a VGG configuration"),
    (dict(name="vgg", include_top=False), (16, 16, 3), r"block5_pool: a 1x1 feature map"),
])
def test_bad_options_name_the_key_and_the_choices(config, shape, message):
    with pytest.raises(UserError, match=message):
        layer_rows(create_model(config), shape)


def test_half_precision_computes_in_bfloat16_with_float32_parameters():
    model = create_model(dict(name="minivgg", num_classes=10), dtype=jnp.bfloat16)
    variables = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), (32, 32, 3)))
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}
    logits = jax.eval_shape(lambda v: model.apply(v, jnp.ones((2, 32, 32, 3)), train=False), variables)
    assert logits.dtype == jnp.bfloat16
    assert isinstance(model, nn.Module)


class InceptionBlocks(nn.Module):
    """GoogLeNet's and MiniGoogLeNet's blocks with one momentum: every BatchNorm-carrying block of the zoo."""

    bn_momentum: float

    @nn.compact
    def __call__(self, x, train=False):
        options = dict(bn_momentum=self.bn_momentum, cpu_kernels=True)
        x = Inception((2, 2, 2, 2, 2, 2), name="inception", **options)(x, train)
        x = SmallInception(2, 2, name="small", **options)(x, train)
        return Downsample(2, name="down", **options)(x, train)


@pytest.mark.parametrize("name", ["minivgg", "blocks"])
def test_bn_momentum_sets_how_far_every_running_statistic_moves(name):
    """From the initial statistics (mean 0, variance 1), one training pass moves each running mean to
    (1 - m)·batch mean: 0.1 of it with m = 0.9, 0.01 with Keras's 0.99, the same batch in both."""
    images = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3) if name == "minivgg" else (2, 8, 8, 3))
    moved = {}
    for momentum in (0.9, 0.99):
        if name == "minivgg":  # through the config's keys, as a run builds it
            model = create_model(dict(name=name, num_classes=10, bn_momentum=momentum))
        else:
            model = InceptionBlocks(momentum)
        variables = init_variables(model, jax.random.key(0), images.shape[1:])
        _, updates = model.apply(variables, images, train=True, mutable=["batch_stats"],
                                 rngs={"dropout": jax.random.key(2)})
        moved[momentum] = updates["batch_stats"]
    means = [(fast["mean"], slow["mean"]) for fast, slow in zip(
        *(jax.tree_util.tree_leaves(moved[m], is_leaf=lambda t: "mean" in t) for m in (0.9, 0.99)), strict=True)]
    assert len(means) == (5 if name == "minivgg" else 6 + 2 + 1)  # every BatchNorm
    for fast, slow in means:
        np.testing.assert_allclose(fast, 10 * slow, rtol=1e-4, atol=1e-7)
