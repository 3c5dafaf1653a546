"""Keras 2 checkpoints: a file tf.keras 2 wrote, and the optimizer layouts older Keras 2 versions wrote.

tests/fixtures/tf_keras2/epoch_10.hdf5 is the book's MiniVGG (4x4 digits) trained ten epochs and saved by
tf.keras 2.21 (`tf_keras`, TF >= 2.11 optimizer), with what tf.keras computed from it in expected.npz;
tests/fixtures/make_tf_keras_checkpoint.py made both and says how. Nothing here needs Keras or TensorFlow:
the file goes through `init_from` as a user's would, into the logits, one more training step from the
restored optimizer, `--mode=evaluate` and `--mode=predict`, each against tf.keras's own numbers.

The older layouts are that same file with its optimizer_weights group rewritten as each Keras version wrote
it: same arrays, their names and order from the sources of keras-team/keras at tags 2.0.8, 2.1.2, 2.1.3,
2.2.4 and 2.3.1 (keras/optimizers.py and the saving code), and from tf.keras's OptimizerV2 (today
tf_keras.optimizers.legacy), whose files were inspected as tf_keras 2.21 writes them. Restored, each must
give the state the original file gives.
"""

import json
import os
import re
import shutil

import flax.linen as nn
import h5py
import jax
import numpy as np
import pytest
from PIL import Image
from repo_paths import FIXTURES
from run_configs import with_overrides

from cnn_flax.errors import UserError
from cnn_flax.models import create_model, init_variables
from cnn_flax.pretrained import load_keras_weights
from cnn_flax.pretrained.keras_h5 import read_keras_checkpoint
from cnn_flax.run import modes
from cnn_flax.run.experiment import build_experiment, initial_state, initial_variables, make_optimizer
from cnn_flax.training.metrics import TrainMetrics
from cnn_flax.training.state import TrainState
from cnn_flax.training.step import make_train_step

DATA = os.path.join(FIXTURES, "tf_keras2")
FILE = os.path.join(DATA, "epoch_10.hdf5")
SHAPE = (4, 4, 3)


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    with np.load(os.path.join(DATA, "expected.npz")) as data:
        return dict(data)


def config(init_from: str = FILE, **overrides):
    """The quickstart at the file's 4x4, continuing with tf.keras's optimizer at the rate the generator resumed."""
    from configs import quickstart

    result = quickstart.get_config()
    result.data.image_size = SHAPE[0]
    result.init_from = init_from
    result.optimizer.update(dict(keras=True, name="sgd", learning_rate=0.005, momentum=0.9, nesterov=True))
    result.schedule.name = "constant"
    result.model.bn_momentum = 0.99  # the file's Keras BatchNorm (the quickstart itself trains with 0.9)
    result.num_devices = 1
    return with_overrides(result, overrides)


def minivgg():
    model = create_model(dict(name="minivgg", num_classes=10))
    return model, init_variables(model, jax.random.key(0), SHAPE)


def assert_close(ours: np.ndarray, theirs: np.ndarray, rtol: float) -> None:  # relative to the largest
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * float(np.max(np.abs(theirs))))


def no_dropout(next_fun, args, kwargs, context):  # the file's Dropout layers have rate 0
    if isinstance(context.module, nn.Dropout) and context.method_name == "__call__":
        return args[0]
    return next_fun(*args, **kwargs)


def leaves(tree) -> dict[tuple[str, ...], np.ndarray]:
    return {tuple(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def test_tf_keras2_file_through_init_from_gives_keras_logits(expected):
    experiment = build_experiment(config(), need_data=False)
    variables = initial_variables(experiment)
    logits = np.asarray(jax.jit(lambda v, x: experiment.model.apply(v, x, train=False))(variables, expected["images"]))
    assert_close(logits, expected["logits"], 1e-4)
    probabilities = np.asarray(jax.nn.softmax(logits))
    np.testing.assert_allclose(probabilities, expected["probabilities"], atol=1e-5)
    fresh_variables = init_variables(experiment.model, jax.random.key(0), SHAPE)
    fresh = np.asarray(experiment.model.apply(fresh_variables, expected["images"]))
    assert np.max(np.abs(fresh - expected["logits"])) > 0.1 * np.max(np.abs(expected["logits"]))


def keras_weights_after_step(expected: dict, directory) -> dict:
    """tf.keras's weights after its extra step, in our structure: written into a copy of the file and loaded."""
    path = str(directory / "after.hdf5")
    shutil.copy(FILE, path)
    with h5py.File(path, "r+") as handle:
        for key, array in expected.items():
            if key.startswith("after:"):
                handle[key.removeprefix("after:")][...] = array
    model, template = minivgg()
    return leaves(load_keras_weights(path, model, template, SHAPE))


# Values each conv's BatchNorm normalises over in the extra step: 8 images at 4x4, then 2x2.
FUSED_BATCH_NORM_COUNTS = {"block1_conv1": 128, "block1_conv2": 128, "block2_conv1": 32, "block2_conv2": 32}


def unbiased_moving_variance(ours: np.ndarray, before: np.ndarray, count: int, momentum: float = 0.99) -> np.ndarray:
    """Our moving variance after a step, as tf.keras 2 updates it after a conv: TensorFlow's fused batch norm
    (4-D inputs) feeds the unbiased batch variance (times n/(n-1)) into the moving average, where Keras 3,
    cnn_flax and tf.keras's own BatchNorm of a dense layer feed the biased one."""
    batch_variance = (ours.astype(np.float64) - momentum * before) / (1 - momentum)
    return momentum * before + (1 - momentum) * batch_variance * count / (count - 1)


def test_one_step_from_the_tf_keras2_optimizer_is_keras_next_step(expected, tmp_path):
    rate = float(expected["resume_rate"])
    experiment = build_experiment(config(**{"optimizer.learning_rate": rate}), need_data=False)
    steps_per_epoch = 42  # the digits train split in batches of 32, remainder dropped (Keras's fit ran 43 a epoch)
    _, tx = make_optimizer(experiment.config, steps_per_epoch)
    state, epochs_done = initial_state(experiment, lambda variables: TrainState.create(variables, tx), steps_per_epoch)
    assert epochs_done == 10  # epoch_10.hdf5
    keras_state = [leaf for leaf in jax.tree_util.tree_leaves(state.opt_state, is_leaf=lambda n: hasattr(n, "momentum"))
                   if hasattr(leaf, "momentum")][0]
    assert int(keras_state.iterations) == int(expected["iterations"]) == 430
    step = make_train_step(experiment.model, tx, lambda x, key: x, seed=0)
    batch = dict(image=expected["next_images"], label=expected["next_labels"].astype(np.int32))
    with nn.intercept_methods(no_dropout):
        new_state, _ = jax.jit(step)(state, batch, TrainMetrics.empty())
    before, ours, theirs = leaves(state.variables), leaves(new_state.variables), keras_weights_after_step(expected,
                                                                                                        tmp_path)
    assert set(ours) == set(theirs)
    moved = 0.0
    for path, leaf in ours.items():
        if path[0] == "batch_stats" and path[-1] == "var" and path[1] in FUSED_BATCH_NORM_COUNTS:
            leaf = unbiased_moving_variance(leaf, before[path], FUSED_BATCH_NORM_COUNTS[path[1]])
        # 1e-5 of the layer's weights' size: a conv bias before BatchNorm has no gradient and holds float noise.
        scale = max(float(np.max(np.abs(theirs[p]))) for p in theirs if p[:-1] == path[:-1])
        np.testing.assert_allclose(leaf, theirs[path], rtol=1e-5, atol=1e-5 * scale, err_msg=str(path))
        moved = max(moved, float(np.max(np.abs(theirs[path] - before[path]))))
    assert moved > 1e-4, "the step should move the weights"


def test_evaluate_and_predict_on_the_tf_keras2_file_answer_as_keras(expected, tmp_path, capsys):
    results = modes.evaluate(config(), str(tmp_path / "evaluate"))
    tested = len(expected["test_argmax"])
    assert round(results["rank1"] * tested) == round(float(expected["test_accuracy"]) * tested)
    assert results["loss"] == pytest.approx(float(expected["test_loss"]), rel=1e-4)
    assert "rank-1" in capsys.readouterr().out

    from cnn_flax.data.sources.digits import load_digits_splits

    _, splits = load_digits_splits(SHAPE[0], 0.25, 42)
    paths = []
    for index, image in enumerate(splits["test"][0][:12]):
        paths.append(str(tmp_path / f"digit{index}.png"))
        Image.fromarray(image).save(paths[-1])
    predicted = modes.predict(config(), str(tmp_path / "predict"), paths)
    assert [entry["image"] for entry in predicted] == paths
    assert [int(entry["top5"][0]["name"]) for entry in predicted] == list(expected["test_argmax"][:12])


# ------------------------------------------------------------------------- older Keras 2 optimizer layouts
def file_momentum() -> list[tuple[str, np.ndarray]]:
    """(model variable name, momentum) in the order the file lists them: model.trainable_weights order."""
    with h5py.File(FILE, "r") as handle:
        group = handle["optimizer_weights"]
        names = [name.decode() if isinstance(name, bytes) else name for name in group.attrs["weight_names"]]
        return [(re.fullmatch(r"SGD/m/(.+):0", name).group(1), group[name][()]) for name in names
                if name != "iteration:0"]


def keras2_layout(version: str, optimizer: str) -> tuple[list[tuple[str, np.ndarray]], dict]:
    """The optimizer_weights entries and optimizer_config that `version` wrote, from the file's arrays.

    Adam's arrays are made from the momenta (m = momentum, v = momentum² + 1) so each slot is distinct.
    """
    momentum, steps = file_momentum(), 430
    lists = [[array for _, array in momentum]]
    if optimizer == "Adam":
        lists = [lists[0], [array * array + 1 for array in lists[0]]]
    settings = dict(lr=0.05, momentum=0.9, decay=0.0, nesterov=True) if optimizer == "SGD" else \
        dict(lr=0.001, beta_1=0.9, beta_2=0.999, decay=0.0, epsilon=1e-7, amsgrad=False)
    if version == "tf.keras 2.0-2.10":  # OptimizerV2: '<scope>/<variable>/<slot>:0', every m then every v
        slot_names = ("momentum",) if optimizer == "SGD" else ("m", "v")
        entries = [(f"{optimizer}/iter:0", np.int64(steps))]
        for slot, arrays in zip(slot_names, lists, strict=True):
            entries += [(f"{optimizer}/{var}/{slot}:0", array) for (var, _), array in zip(momentum, arrays,
                                                                                         strict=True)]
        return entries, dict(class_name=optimizer, config=dict(name=optimizer, **settings))
    if optimizer == "Adam" and version != "Keras 2.0-2.1.2":  # then vhats: one-element zeros without amsgrad
        lists.append([np.zeros(1, np.float32) for _ in lists[0]])
    arrays = [array for group in lists for array in group]
    if version != "Keras 2.3":  # K.zeros without a name in the 'training/<Optimizer>' scope
        names = [f"training/{optimizer}/Variable{'' if i == 0 else f'_{i}'}:0" for i in range(len(arrays))]
    else:  # Keras 2.3 named them
        prefixes = ("moment",) if optimizer == "SGD" else ("m", "v", "vhat")
        names = [f"training/{optimizer}/{prefix}_{i}:0" for prefix in prefixes for i in range(len(lists[0]))]
    entries = [(f"{optimizer}/iterations:0", np.int64(steps)), *zip(names, arrays, strict=True)]
    return entries, dict(class_name=optimizer, config=settings)


def write_layout(path: str, entries: list[tuple[str, np.ndarray]], optimizer_config: dict,
                 bare_sequential: bool = False) -> None:
    """A copy of the tf.keras 2 file with its optimizer written as `entries`; `bare_sequential`: the model
    config as Keras 2.0-2.1 wrote a Sequential (its layers as a bare list)."""
    shutil.copy(FILE, path)
    with h5py.File(path, "r+") as handle:
        del handle["optimizer_weights"]
        group = handle.create_group("optimizer_weights")
        group.attrs["weight_names"] = [name.encode() for name, _ in entries]
        for name, array in entries:
            group[name] = array
        training = json.loads(handle.attrs["training_config"])
        training["optimizer_config"] = optimizer_config
        handle.attrs["training_config"] = json.dumps(training).encode()
        if bare_sequential:
            model_config = json.loads(handle.attrs["model_config"])
            model_config["config"] = [entry for entry in model_config["config"]["layers"]
                                      if entry["class_name"] != "InputLayer"]
            handle.attrs["model_config"] = json.dumps(model_config).encode()


@pytest.fixture(scope="module")
def reference() -> dict:
    """The momentum the original (tf.keras 2.11+ layout) file restores, in our structure."""
    model, template = minivgg()
    checkpoint = read_keras_checkpoint(FILE, model, template, SHAPE)
    assert (checkpoint.optimizer.name, checkpoint.optimizer.iterations) == ("sgd", 430)
    return checkpoint.optimizer.slots["momentum"]


@pytest.mark.parametrize("version, optimizer", [
    ("tf.keras 2.0-2.10", "SGD"), ("tf.keras 2.0-2.10", "Adam"), ("Keras 2.0-2.2", "SGD"), ("Keras 2.0-2.1.2", "Adam"),
    ("Keras 2.1.3-2.2", "Adam"), ("Keras 2.3", "SGD"), ("Keras 2.3", "Adam")])
def test_older_keras2_optimizer_layouts_restore_the_same_state(version, optimizer, reference, tmp_path):
    path = str(tmp_path / "epoch_10.hdf5")
    entries, optimizer_config = keras2_layout(version, optimizer)
    write_layout(path, entries, optimizer_config, bare_sequential=version == "Keras 2.0-2.1.2")
    model, template = minivgg()
    checkpoint = read_keras_checkpoint(path, model, template, SHAPE)
    assert checkpoint.optimizer is not None, checkpoint.optimizer_note
    assert (checkpoint.optimizer.name, checkpoint.optimizer.iterations) == (optimizer.lower(), 430)
    expected = {"momentum": reference}
    if optimizer == "Adam":
        expected["velocity"] = jax.tree_util.tree_map(lambda m: m * m + 1, reference)
    assert set(checkpoint.optimizer.slots) == set(expected)
    for slot, tree in expected.items():
        jax.tree_util.tree_map(np.testing.assert_array_equal, checkpoint.optimizer.slots[slot], tree)
    jax.tree_util.tree_map(np.testing.assert_array_equal, checkpoint.variables,
                           load_keras_weights(FILE, model, template, SHAPE))


def test_tf_keras2_file_saved_without_its_optimizer_loads_its_weights(tmp_path):
    path = str(tmp_path / "epoch_10.hdf5")
    shutil.copy(FILE, path)
    with h5py.File(path, "r+") as handle:  # what model.save(path, include_optimizer=False) leaves out
        del handle["optimizer_weights"]
        del handle.attrs["training_config"]
    model, template = minivgg()
    checkpoint = read_keras_checkpoint(path, model, template, SHAPE)
    assert (checkpoint.optimizer, checkpoint.optimizer_note) == (None, "")
    jax.tree_util.tree_map(np.testing.assert_array_equal, checkpoint.variables,
                           load_keras_weights(FILE, model, template, SHAPE))


def test_keras2_sgd_without_momentum_restores_no_slots(tmp_path):
    """Keras 2.0-2.3 kept moments even at momentum 0; they never enter its update, so none are restored."""
    path = str(tmp_path / "epoch_10.hdf5")
    entries, optimizer_config = keras2_layout("Keras 2.3", "SGD")
    optimizer_config["config"]["momentum"] = 0.0
    write_layout(path, entries, optimizer_config)
    model, template = minivgg()
    checkpoint = read_keras_checkpoint(path, model, template, SHAPE)
    assert (checkpoint.optimizer.iterations, checkpoint.optimizer.slots) == (430, {})


# ------------------------------------------------------------------------------------------------ errors
def one_line_error(path: str, model, template, shape=SHAPE) -> str:
    with pytest.raises(UserError) as error:
        read_keras_checkpoint(path, model, template, shape)
    message = str(error.value)
    assert message.startswith(path) and "\n" not in message
    return message


def test_tf_keras2_file_into_another_network_or_damaged_is_a_one_line_error(tmp_path):
    other = create_model(dict(name="minivgg", num_classes=10))
    message = one_line_error(FILE, other, init_variables(other, jax.random.key(0), (8, 8, 3)), (8, 8, 3))
    assert message == (f"{FILE}: layer fc1 (the file's dense) has kernel (64, 512) in the file but (256, 512) in "
                       "the model; the file's network reads 4x4 images: set data.image_size=4")
    model, template = minivgg()
    truncated = str(tmp_path / "epoch_10.hdf5")
    with open(FILE, "rb") as source, open(truncated, "wb") as target:
        target.write(source.read()[: os.path.getsize(FILE) // 2])
    assert "the file is truncated or damaged" in one_line_error(truncated, model, template)


def test_older_keras2_layout_of_another_network_is_a_one_line_error(tmp_path):
    model, template = minivgg()
    path = str(tmp_path / "epoch_10.hdf5")
    entries, optimizer_config = keras2_layout("Keras 2.0-2.2", "SGD")
    write_layout(path, entries[:-1], optimizer_config)  # one moment short
    assert one_line_error(path, model, template) == (
        f"{path}: the file's sgd optimizer holds 21 slot variables (SGD/iterations:0, training/SGD/Variable:0, "
        "training/SGD/Variable_1:0, …), not 22 for the model's 22 trainable weights; it was saved from another "
        "network")
    entries[1], entries[2] = entries[2], entries[1]  # the first kernel's and bias's moments swapped
    write_layout(path, entries, optimizer_config)
    assert one_line_error(path, model, template) == (
        f"{path}: the optimizer's momentum for block1_conv1/conv/kernel has shape (32,) but the weight has "
        "(3, 3, 3, 32); the optimizer was saved from another network")
    entries, optimizer_config = keras2_layout("tf.keras 2.0-2.10", "Adam")
    write_layout(path, [entry for entry in entries if entry[0] != "Adam/dense/kernel/v:0"], optimizer_config)
    assert one_line_error(path, model, template) == (
        f"{path}: the file's optimizer has no velocity for fc1/kernel; it was saved from another network")
