"""Keras checkpoints of the deck's networks, as the book's code builds, trains and saves them, in our models.

Each network is built in Keras (tests/support/keras_models.py), trained two steps on real digits so that the
BatchNorm statistics and the optimizer's slots are not trivial, and saved in Keras's formats. Loaded
through the structural mapping, our logits must be Keras's, and one more training step from the
restored optimizer state (optimizer.keras=True) must land where Keras's next step lands. Dropout is
built at rate 0 on the Keras side and switched off on ours for that step, so both compute the same
deterministic function; the weights are the same either way.

That step is taken at a lowered rate, as the book lowers it when it resumes a run. This also keeps
TensorFlow's own float32 error out of the comparison: its kernel gradient of a first conv followed by
BatchNorm is a small difference of large sums, 1e-3 off the exact (float64) one where ours is 1e-6 off;
at the resumed rate that error mostly stays below 1e-5 of the weights' size, while the restored
momentum (0.9 of the old velocity) dominates the step. Conv kernels, whose gradients sum over every pixel
of the batch (TensorFlow's float32 sums lose about 1e-3 there), are allowed 2e-3 of their step on top of
1e-5 of their size: a momentum slot restored into the wrong place would be off by the whole step.
"""

import dataclasses
import os
import re
import shutil
from collections.abc import Callable

import flax.linen as nn
import jax
import numpy as np
import pytest

from cnn_flax.errors import UserError
from cnn_flax.models import create_model, init_variables
from cnn_flax.pretrained import load_keras_weights
from cnn_flax.pretrained.keras_h5 import read_keras_checkpoint
from cnn_flax.training.keras_optim import restore_keras_slots
from cnn_flax.training.metrics import TrainMetrics
from cnn_flax.training.optim import build_optimizer
from cnn_flax.training.state import TrainState
from cnn_flax.training.step import make_train_step
from configs.common import base

keras = pytest.importorskip("keras")
import keras_models  # noqa: E402  (tests/ is on the path; after the Keras skip)
from random_weights import variable_shapes  # noqa: E402

BATCH = 16


@dataclasses.dataclass(frozen=True)
class Case:
    model: dict
    build: Callable  # (keras module, dropout) -> keras.Model
    size: int
    optimizer: dict  # ours (keras=True added); Keras's is made from it
    resume_rate: float  # the rate of the step after loading: the book lowers it when it resumes a run
    formats: tuple[str, ...] = ("hdf5", "keras")


CASES = {
    "minivgg": Case(dict(name="minivgg", num_classes=10),
                    lambda k, d: keras_models.minivgg(k, (16, 16, 3), 10, dropout=d), 16,
                    dict(name="sgd", learning_rate=0.05, momentum=0.9, nesterov=True), 0.001,
                    ("hdf5", "keras", "weights")),
    "minigooglenet": Case(dict(name="minigooglenet", num_classes=10),
                          lambda k, d: keras_models.minigooglenet(k, (32, 32, 3), 10, dropout=d), 32,
                          dict(name="sgd", learning_rate=0.05, momentum=0.9), 0.001),
    "deeper_act_bn_elu": Case(dict(name="deepergooglenet", num_classes=10, stage4=False, bn_order="conv_act_bn",
                                   activation="elu"),
                              lambda k, d: keras_models.deepergooglenet(k, (64, 64, 3), 10, stage4=False,
                                                                        bn_order="conv_act_bn", activation="elu",
                                                                        dropout=d), 64,
                              dict(name="adam", learning_rate=1e-3), 1e-4),
}


def digits(size: int, seed: int, count: int = BATCH) -> tuple[np.ndarray, np.ndarray]:
    """A batch of scikit-learn's digits, blown up to size x size RGB in [-1, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    index = np.random.default_rng(seed).choice(len(data.target), count, replace=False)
    rng = np.random.default_rng(seed)
    grey = np.kron(data.images[index] / 16.0, np.ones((size // 8, size // 8)))
    # A little noise: no two activations exactly equal, so no max-pool window has a tie to break (Keras and
    # XLA may send the gradient of a tie to different positions).
    # Centred, as the deck's mean subtraction does (and so the kernel gradients of the first layer are not
    # small differences of large sums).
    rgb = np.repeat(grey[..., None], 3, axis=-1) * 2.0 - 1.0 + rng.uniform(-0.1, 0.1, (count, size, size, 3))
    return rgb.astype(np.float32), data.target[index].astype(np.int32)


def keras_optimizer(options: dict):
    if options["name"] == "adam":
        return keras.optimizers.Adam(options["learning_rate"])
    return keras.optimizers.SGD(options["learning_rate"], momentum=options["momentum"],
                                nesterov=options.get("nesterov", False))


def keras_logits(model, images: np.ndarray) -> np.ndarray:
    """The model's output before its final softmax (the book ends with Activation('softmax'))."""
    last = model.layers[-1]
    output = model.layers[-2].output if isinstance(last, keras.layers.Activation) else model.outputs[0]
    return np.asarray(keras.Model(model.inputs, output)(images, training=False))


def keras_state(model) -> dict[str, np.ndarray]:
    return {v.path: np.asarray(v) for v in model.weights}


@dataclasses.dataclass
class Saved:
    case: Case
    files: dict[str, str]
    logits: np.ndarray  # Keras's on `images`, as saved
    images: np.ndarray
    next_batch: tuple[np.ndarray, np.ndarray]
    after_step: dict[str, np.ndarray]  # Keras's weights after one more step on next_batch
    head_slots: dict[str, np.ndarray]  # Keras's optimizer slots of the classifier's kernel, as saved
    model: object


@pytest.fixture(scope="module", params=list(CASES))
def saved(request, tmp_path_factory) -> Saved:
    case = CASES[request.param]
    directory = tmp_path_factory.mktemp(request.param)
    keras.utils.set_random_seed(len(request.param))
    model = case.build(keras, False)
    # Eagerly: three steps do not repay tracing the train function (twice: the last batch has another size) and
    # compiling it with XLA, a third of this file's time.
    model.compile(optimizer=keras_optimizer(case.optimizer), loss="sparse_categorical_crossentropy", run_eagerly=True)
    for step in range(2):
        model.train_on_batch(*digits(case.size, seed=step))
    files = {"hdf5": str(directory / "epoch_2.hdf5"), "keras": str(directory / "epoch_2.keras"),
             "weights": str(directory / "epoch_2.weights.h5")}
    model.save(files["hdf5"])
    model.save(files["keras"])
    model.save_weights(files["weights"])
    images, _ = digits(case.size, seed=7)
    logits = keras_logits(model, images)
    optimizer, kernel = model.optimizer, [v for v in model.trainable_variables if len(v.shape) == 2][-1]
    index = optimizer._get_variable_index(kernel)
    slots = (dict(momentum=optimizer.momentums) if case.optimizer["name"] == "sgd"
             else dict(momentum=optimizer._momentums, velocity=optimizer._velocities))
    head_slots = {name: np.asarray(values[index]) for name, values in slots.items()}
    next_batch = digits(case.size, seed=2, count=4)
    model.optimizer.learning_rate = case.resume_rate
    model.train_on_batch(*next_batch)
    return Saved(case, {f: files[f] for f in case.formats}, logits, images, next_batch, keras_state(model),
                 head_slots, model)


def ours(case: Case):
    model = create_model(case.model)
    shape = (case.size, case.size, 3)
    return model, init_variables(model, jax.random.key(0), shape), shape


def assert_close(ours_: np.ndarray, theirs: np.ndarray, rtol: float) -> None:  # relative to the largest
    np.testing.assert_allclose(ours_, theirs, rtol=rtol, atol=rtol * float(np.max(np.abs(theirs))))


def no_dropout(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Dropout) and context.method_name == "__call__":
        return args[0]
    return next_fun(*args, **kwargs)


def test_every_format_gives_keras_logits(saved):
    model, template, shape = ours(saved.case)
    loaded = {fmt: load_keras_weights(path, model, template, shape) for fmt, path in saved.files.items()}
    first, *others = loaded.values()
    for other in others:  # the formats hold the same numbers
        jax.tree_util.tree_map(np.testing.assert_array_equal, first, other)
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    assert_close(np.asarray(forward(first, saved.images)), saved.logits, 1e-4)
    fresh = np.asarray(forward(template, saved.images))  # other weights: far off, so the check means something
    assert np.max(np.abs(fresh - saved.logits)) > 100 * 1e-4 * np.max(np.abs(saved.logits))


def test_one_more_step_from_the_restored_optimizer_is_keras_next_step(saved):
    case = saved.case
    model, template, shape = ours(case)
    checkpoint = read_keras_checkpoint(saved.files["hdf5"], model, template, shape)
    assert checkpoint.optimizer is not None and checkpoint.optimizer.iterations == 2
    options = {**base("keras_checkpoint").optimizer.to_dict(), **case.optimizer, "keras": True}
    tx = build_optimizer(options, lambda step: case.resume_rate)
    state = TrainState.create(checkpoint.variables, tx)
    state = state.replace(opt_state=restore_keras_slots(state.opt_state, checkpoint.optimizer.name, 2,
                                                        checkpoint.optimizer.slots, "file"))
    images, labels = saved.next_batch
    step = make_train_step(model, tx, lambda x, key: x, seed=0)
    with nn.intercept_methods(no_dropout):
        new_state, _ = jax.jit(step)(state, dict(image=images, label=labels), TrainMetrics.empty())
    after = load_keras_weights_from_dict(saved)  # Keras's arrays after its step, in our structure
    moved = 0.0
    ours_after, before = dict(_leaves(new_state.variables)), dict(_leaves(checkpoint.variables))
    for path, leaf in ours_after.items():
        # Within 1e-5 of the layer's weights' scale: a conv bias followed by BatchNorm has no gradient and holds
        # float noise near zero, which is nothing to be relative to.
        scale = max(float(np.max(np.abs(after[p]))) for p in after if p[:-1] == path[:-1])
        atol = 1e-5 * scale
        if path[-1] == "kernel" and leaf.ndim == 4:  # TensorFlow's float32 error (see the docstring)
            atol += 2e-3 * float(np.max(np.abs(after[path] - np.asarray(before[path]))))
        np.testing.assert_allclose(np.asarray(leaf), after[path], rtol=1e-5, atol=atol, err_msg=str(path))
        moved = max(moved, float(np.max(np.abs(after[path] - np.asarray(before[path])))))
    assert moved > 1e-4, "the step should move the weights"


def load_keras_weights_from_dict(saved: Saved) -> dict:
    """Keras's weights after its extra step, read back through a fresh .keras save (same mapping, new values)."""
    path = os.path.join(os.path.dirname(saved.files["hdf5"]), "after.keras")
    saved.model.save(path)
    model, template, shape = ours(saved.case)
    return dict(_leaves(load_keras_weights(path, model, template, shape)))


def _leaves(tree) -> list:
    return [(tuple(str(getattr(k, "key", k)) for k in path), leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def test_branched_weights_file_needs_its_graph(saved, tmp_path):
    case = saved.case
    if case.model["name"] != "minigooglenet":
        pytest.skip("one branched network is enough; a chain loads from a weights-only file (MiniVGG, above)")
    model, template, shape = ours(case)
    path = str(tmp_path / "run.weights.h5")
    shutil.copy(os.path.join(os.path.dirname(saved.files["hdf5"]), "epoch_2.weights.h5"), path)
    with pytest.raises(UserError, match=r"holds weights but no layer graph.*model.to_json\(\) beside the file as "
                                        r".*run.json$"):
        load_keras_weights(path, model, template, shape)
    with open(tmp_path / "run.json", "w") as handle:
        handle.write(saved.model.to_json())
    variables = load_keras_weights(path, model, template, shape)
    jax.tree_util.tree_map(np.testing.assert_array_equal, variables,
                           load_keras_weights(saved.files["keras"], model, template, shape))


def test_wrong_architecture_and_damaged_files_are_one_line_errors(saved, tmp_path):
    case = saved.case
    if case.model["name"] != "minigooglenet":
        pytest.skip("one network is enough for the error messages")
    path = saved.files["hdf5"]
    other = create_model(dict(case.model, num_classes=7))
    shape = (case.size, case.size, 3)
    with pytest.raises(UserError) as error:
        load_keras_weights(path, other, variable_shapes(other, shape), shape)
    assert re.fullmatch(re.escape(f"{path}: layer logits (the file's ") + r"dense(_\d+)?" + re.escape(
        ") has kernel (336, 10) in the file but (336, 7) in the model; the file classifies 10 classes: set "
        "model.num_classes=10 or skip this layer (init_skip=logits)"), str(error.value))
    elu = create_model(dict(case.model, activation="elu"))
    with pytest.raises(UserError, match=r"the file's network uses relu where the model uses elu; set "
                                        r"--config.model.activation=relu$"):
        load_keras_weights(path, elu, variable_shapes(elu, shape), shape)
    deeper = create_model(dict(name="deepergooglenet", num_classes=10, stage4=False))
    with pytest.raises(UserError) as error:
        load_keras_weights(path, deeper, variable_shapes(deeper, (64, 64, 3)), (64, 64, 3))
    assert str(error.value).startswith(f"{path}: layer conv1_5x5/conv (the file's conv2d") and \
        "has kernel (3, 3, 3, 96) in the file but (5, 5, 3, 64) in the model" in str(error.value)
    model, template, _ = ours(case)
    for name in ("hdf5", "keras"):
        source = saved.files[name]
        truncated = str(tmp_path / f"truncated_{os.path.basename(source)}")
        with open(source, "rb") as handle:
            data = handle.read()
        with open(truncated, "wb") as handle:
            handle.write(data[: len(data) // 2])
        with pytest.raises(UserError) as error:
            load_keras_weights(truncated, model, template, shape)
        message = str(error.value)
        assert message.startswith(truncated) and "truncated or damaged" in message and "\n" not in message
        assert "params" not in message


def test_every_format_of_another_network_or_truncated_is_a_one_line_error(saved, tmp_path):
    """.hdf5, .keras and .weights.h5 alike (the MiniVGG case writes all three)."""
    case = saved.case
    if "weights" not in case.formats:
        pytest.skip("the case with every format is enough")
    shape = (case.size, case.size, 3)
    other = create_model(dict(case.model, num_classes=7))
    other_template = variable_shapes(other, shape)
    model, template, _ = ours(case)
    for fmt, path in saved.files.items():
        with pytest.raises(UserError) as error:
            load_keras_weights(path, other, other_template, shape)
        assert re.fullmatch(re.escape(f"{path}: layer predictions (the file's ") + r"dense_\d+" + re.escape(
            ") has kernel (512, 10) in the file but (512, 7) in the model; the file classifies 10 classes: set "
            "model.num_classes=10 or skip this layer (init_skip=predictions)"), str(error.value)), (fmt, error.value)
        truncated = str(tmp_path / f"truncated_{os.path.basename(path)}")
        with open(path, "rb") as source, open(truncated, "wb") as target:
            target.write(source.read()[: os.path.getsize(path) // 2])
        with pytest.raises(UserError) as error:
            load_keras_weights(truncated, model, template, shape)
        message = str(error.value)
        assert message.startswith(truncated) and "truncated or damaged" in message and "\n" not in message, fmt


def test_every_format_with_an_optimizer_restores_keras_slots(saved):
    """The classifier's slots against Keras's own optimizer variables for it, as they were when saved."""
    model, template, shape = ours(saved.case)
    head = [name for name in template["params"] if name in ("logits", "predictions")][0]
    for fmt, path in saved.files.items():
        checkpoint = read_keras_checkpoint(path, model, template, shape)
        assert checkpoint.optimizer is not None, (fmt, checkpoint.optimizer_note)
        assert (checkpoint.optimizer.name, checkpoint.optimizer.iterations) == (saved.case.optimizer["name"], 2)
        for slot, array in saved.head_slots.items():
            np.testing.assert_array_equal(checkpoint.optimizer.slots[slot][head]["kernel"], array)


# The networks without BatchNorm: weights only (their optimizer path is the one tested above), in the two
# formats the book's code writes. Random Keras weights suffice: every kernel and bias is distinct.
PLAIN = {
    "nin": (dict(name="nin", num_classes=10), lambda k: keras_models.nin(k, (32, 32, 3), 10, dropout=False), 32),
    "vgg_a": (dict(name="vgg", variant="A", num_classes=10),
              lambda k: keras_models.vgg(k, "A", (32, 32, 3), 10, dropout=False), 32),
    "googlenet_aux": (dict(name="googlenet", num_classes=10, aux_heads=True),
                      lambda k: keras_models.googlenet(k, 10, aux_heads=True, dropout=False), 224),
    "googlenet": (dict(name="googlenet", num_classes=10, aux_heads=False),
                  lambda k: keras_models.googlenet(k, 10, aux_heads=False, dropout=False), 224),
}


@pytest.mark.parametrize("name", list(PLAIN))
def test_networks_without_batch_norm_load_from_keras_files(name, tmp_path):
    config, build, size = PLAIN[name]
    keras.utils.set_random_seed(3)
    keras_model = build(keras)
    images, _ = digits(size, seed=5, count=2)
    expected = np.asarray(keras_model(images, training=False)[0] if isinstance(keras_model.outputs, list)
                          and len(keras_model.outputs) > 1 else keras_model(images, training=False))
    model = create_model(config)
    shape = (size, size, 3)
    template = variable_shapes(model, shape)  # the file gives every weight
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))
    for suffix in ("h5", "keras"):
        path = str(tmp_path / f"{name}.{suffix}")
        keras_model.save(path)
        variables = load_keras_weights(path, model, template, shape)
        assert_close(np.asarray(logits(variables, images)), expected, 1e-4)


# The deck's remaining structures, weights only: DeeperGoogLeNet with inception 4a-4e in both BatchNorm orders,
# VGG B and C (C's 1x1 convs) without the classifier that A tests. Every weight is made random, BatchNorm's
# statistics included, so a weight in the wrong place shows; the inputs are the smallest the networks take.
MORE = {
    "deeper_4a_4e_conv_bn_act": (dict(name="deepergooglenet", num_classes=10, stage4=True, bn_order="conv_bn_act"),
                                 lambda k: keras_models.deepergooglenet(k, (64, 64, 3), 10, stage4=True,
                                                                        bn_order="conv_bn_act", dropout=False),
                                 64, "keras"),
    "deeper_4a_4e_conv_act_bn": (dict(name="deepergooglenet", num_classes=10, stage4=True, bn_order="conv_act_bn"),
                                 lambda k: keras_models.deepergooglenet(k, (64, 64, 3), 10, stage4=True,
                                                                        bn_order="conv_act_bn", dropout=False),
                                 64, "h5"),
    "vgg_b": (dict(name="vgg", variant="B", include_top=False),
              lambda k: keras_models.vgg(k, "B", (32, 32, 3), include_top=False), 32, "h5"),
    "vgg_c": (dict(name="vgg", variant="C", include_top=False),
              lambda k: keras_models.vgg(k, "C", (32, 32, 3), include_top=False), 32, "keras"),
}
# What each file must not load into: another configuration of the same network, and the one-line error it gives.
MISFITS = {
    "deeper_4a_4e_conv_bn_act": (dict(stage4=False), r"layer logits is a Dense with kernel \(480, 10\) but the file "
                                 r"has a Conv2D \(conv2d(_\d+)?\) with kernel \(1, 1, 480, 192\) at its place; the "
                                 r"file is for another network or configuration \(with inception 4a-4e: set "
                                 r"model.stage4=True\)$"),
    "deeper_4a_4e_conv_act_bn": (dict(bn_order="conv_bn_act"), r"the file's network puts BatchNormalization in the "
                                 r"order conv_act_bn where the model has conv_bn_act; set "
                                 r"--config.model.bn_order=conv_act_bn$"),
    "vgg_b": (dict(variant="A"), r"layer block2_conv1 \(the file's conv2d(_\d+)?\) has kernel \(3, 3, 64, 64\) in the "
              r"file but \(3, 3, 64, 128\) in the model; the file is for another network or configuration"),
    "vgg_c": (dict(variant="D"), r"layer block3_conv3 \(the file's conv2d(_\d+)?\) has kernel \(1, 1, 256, 256\) in "
              r"the file but \(3, 3, 256, 256\) in the model; the file is for another network or "
              r"configuration \(VGG16 is model.variant='D', VGG19 'E'\)$"),
}


def randomized(keras_model, seed: int):
    """Every weight random: He-scaled kernels, small biases, BatchNorm gamma/beta/mean/variance around 1/0/0/1."""
    rng = np.random.default_rng(seed)
    for layer in keras_model.layers:
        weights = layer.get_weights()
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = weights[0].shape
            layer.set_weights([rng.uniform(0.8, 1.2, shape), rng.normal(0, 0.1, shape), rng.normal(0, 0.1, shape),
                               rng.uniform(0.5, 1.5, shape)])
        elif weights:
            kernel, bias = weights
            fan_in = int(np.prod(kernel.shape[:-1]))
            layer.set_weights([rng.standard_normal(kernel.shape) * np.sqrt(2.0 / fan_in),
                               rng.normal(0, 0.05, bias.shape)])
    return keras_model


@pytest.mark.parametrize("name", list(MORE))
def test_deeper_googlenet_4a_4e_and_vgg_b_c_load_from_keras_files(name, tmp_path):
    config, build, size, suffix = MORE[name]
    keras.utils.set_random_seed(4)
    keras_model = randomized(build(keras), seed=len(name))
    images, _ = digits(size, seed=6, count=2)
    expected = keras_logits(keras_model, images)
    path = str(tmp_path / f"{name}.{suffix}")
    keras_model.save(path)
    model = create_model(config)
    shape = (size, size, 3)
    template = variable_shapes(model, shape)
    variables = load_keras_weights(path, model, template, shape)
    assert_close(np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)), expected, 1e-4)
    changes, message = MISFITS[name]
    other = create_model(dict(config, **changes))
    with pytest.raises(UserError) as error:
        load_keras_weights(path, other, variable_shapes(other, shape), shape)
    assert str(error.value).startswith(path) and "\n" not in str(error.value)
    assert re.search(message, str(error.value)), str(error.value)
