"""optimizer.freeze and optimizer.lr_multipliers: exact zeros, exact factors, BatchNorm statistics kept."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from cnn_flax.data.sources.digits import load_digits_splits
from cnn_flax.errors import UserError
from cnn_flax.models import create_model, init_variables
from cnn_flax.training.metrics import TrainMetrics
from cnn_flax.training.optim import build_optimizer, build_schedule
from cnn_flax.training.param_groups import param_paths, with_param_groups
from cnn_flax.training.state import TrainState
from cnn_flax.training.step import make_train_step
from configs.common import base


def optimizer(**options) -> ConfigDict:
    """base()'s optimizer section (every key the builders read) with these values."""
    return ConfigDict(base("test").optimizer.to_dict()
                      | dict(name="sgd", learning_rate=0.1, momentum=0.9, nesterov=False) | options)


def transform(config: ConfigDict):
    schedule = build_schedule(config, base("test").schedule, 1, 1)
    return with_param_groups(config, build_optimizer(config, schedule))


def tree():
    rng = np.random.default_rng(0)
    shape = {"block1_conv1": {"kernel": (3, 3, 1, 2), "bias": (2,)}, "block5_conv1": {"kernel": (3, 3, 2, 2)},
             "predictions": {"kernel": (4, 3), "bias": (3,)}}
    return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shape,
                                  is_leaf=lambda x: isinstance(x, tuple))


def test_lr_multipliers_scale_each_update_exactly_and_freeze_gives_exact_zeros():
    params, grads = tree(), jax.tree_util.tree_map(lambda x: x * 0.5 + 1.0, tree())
    plain, grouped = transform(optimizer()), transform(optimizer(lr_multipliers={"^block5_": 0.25, "bias$": 3.0},
                                                                 freeze="^block1_"))
    state_plain, state_grouped = plain.init(params), grouped.init(params)
    for _ in range(3):  # momentum carries over steps: the factors must hold for every step, not the first
        base, state_plain = plain.update(grads, state_plain, params)
        scaled, state_grouped = grouped.update(grads, state_grouped, params)
        np.testing.assert_array_equal(scaled["block5_conv1"]["kernel"], base["block5_conv1"]["kernel"] * 0.25)
        np.testing.assert_array_equal(scaled["predictions"]["bias"], base["predictions"]["bias"] * 3.0)
        np.testing.assert_array_equal(scaled["predictions"]["kernel"], base["predictions"]["kernel"])
        for leaf in jax.tree_util.tree_leaves(scaled["block1_conv1"]):
            assert not np.any(np.asarray(leaf)) and np.all(np.signbit(leaf) == 0)
    assert param_paths(params)[0] == "block1_conv1/bias"


def test_bad_patterns_are_one_line_errors():
    params = tree()
    for options, match in [(dict(freeze="^fc9"), "matches no parameter; paths look like 'block1_conv1/bias'"),
                           (dict(freeze="."), "freezes every parameter"),
                           (dict(freeze="(block"), "is not a regular expression"),
                           (dict(lr_multipliers={"block": -1.0}), "must be a number >= 0")]:
        with pytest.raises(UserError, match=match) as caught:
            transform(optimizer(**options)).init(params)
        assert "\n" not in str(caught.value)


def test_frozen_layers_and_their_batchnorm_statistics_stay_bit_identical_while_the_rest_trains():
    """MiniVGG (BatchNorm after every conv) on digits: five real train steps with block1 frozen."""
    _, splits = load_digits_splits(16, 0.25, 0)
    images, labels = splits["train"]
    model = create_model(dict(name="minivgg", num_classes=10, bn_order="conv_act_bn", activation="relu"))
    variables = init_variables(model, jax.random.key(0), (16, 16, 3))
    config = optimizer(freeze="^block1_", lr_multipliers={"^fc1": 0.5})
    tx = transform(config)
    step = jax.jit(make_train_step(model, tx, lambda x, rng: x.astype(jnp.float32) / 255.0, seed=0,
                                   freeze=config.freeze))
    state, metrics = TrainState.create(variables, tx), TrainMetrics.empty()
    for i in range(5):
        batch = {"image": jnp.asarray(images[i * 32:(i + 1) * 32]), "label": jnp.asarray(labels[i * 32:(i + 1) * 32])}
        state, metrics = step(state, batch, metrics)
    for collection, before in (("params", variables["params"]), ("batch_stats", variables["batch_stats"])):
        after = getattr(state, collection)
        for name in before:
            same = [np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(before[name]),
                                                           jax.tree_util.tree_leaves(after[name]), strict=True)]
            if name.startswith("block1_"):
                assert all(same), f"{collection}/{name} changed although frozen"
            else:
                assert not any(same), f"{collection}/{name} did not train"
    assert "block1_conv1" in variables["batch_stats"]
