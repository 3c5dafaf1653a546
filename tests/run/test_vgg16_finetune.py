"""The book's transfer learning end to end: a Keras VGG16 weight file, head warm-up, then fine-tuning block5.

Keras writes a random-weight VGG16 (with its top) for 32x32 inputs, the smallest VGG16 takes, so each
phase is a few VGG16 steps on a CPU; configs/vgg16_finetune.py runs unchanged otherwise (caffe
preprocessing, the head sized by the folder's class count, freeze patterns and learning-rate factors).
"""

import json
import os

import numpy as np
import pytest
from folder_images import write_flat
from run_configs import optimized_compiles

from cnn_flax.run import modes
from cnn_flax.run.experiment import build_experiment, initial_variables
from cnn_flax.run.train import train_and_evaluate
from configs import vgg16_finetune

keras = pytest.importorskip("keras")


def run_variables(root: str, data_dir: str, workdir: str) -> dict:
    """The parameters a run's last checkpoint holds (init_from pointed at its workdir)."""
    config = vgg16_finetune.get_config("body")
    config.data.update(dict(root=root, dir=data_dir, image_size=32))
    config.init_from = workdir
    return initial_variables(build_experiment(config))["params"]


def phase(name: str, root: str, data_dir: str, **changes):
    config = vgg16_finetune.get_config(name)
    config.data.update(dict(root=root, dir=data_dir, image_size=32))
    config.data.augment.update(dict(rotation=0.0, zoom=0.0, width_shift=0.0, height_shift=0.0, shear=0.0,
                                    horizontal_flip=False))
    config.update(dict(num_epochs=1, batch_size=8, steps_per_epoch=2, eval_steps=1, checkpoint_every_epochs=1,
                       num_devices=1, **changes))
    return config


def assert_same(params: dict, keras_weights: dict, layers: list[str], same: bool) -> None:
    for layer in layers:
        kernel, bias = keras_weights[layer]
        equal = np.array_equal(params[layer]["kernel"], kernel) and np.array_equal(params[layer]["bias"], bias)
        assert equal == same, f"{layer}: expected {'unchanged' if same else 'trained'} weights"


def test_head_warm_up_then_fine_tuning_from_a_keras_vgg16_file(tmp_path):
    with optimized_compiles():  # VGG16's steps, not their compiles, take the time: 49 s -> 39 s warm
        root, data_dir = str(tmp_path / "photos"), str(tmp_path / "prepared")
        names = write_flat(root, (0, 1, 7), per_class=12, junk=False)
        model = keras.applications.VGG16(weights=None, include_top=True, input_shape=(32, 32, 3), classes=10)
        weights_file = str(tmp_path / "vgg16.weights.h5")
        model.save_weights(weights_file)
        from_keras = {layer.name: [np.asarray(w) for w in layer.get_weights()] for layer in model.layers
                      if layer.get_weights()}
        convs = [name for name in from_keras if name.startswith("block")]
        block5 = [name for name in convs if name.startswith("block5")]

        head_dir = str(tmp_path / "head")
        head = phase("head", root, data_dir, init_from=weights_file)
        train_and_evaluate(head, head_dir)
        params = run_variables(root, data_dir, head_dir)
        assert params["predictions"]["kernel"].shape == (4096, 3)  # sized by the three class folders
        assert_same(params, from_keras, convs, same=True)  # the base stays exactly ImageNet's (here: Keras's)
        assert_same(params, from_keras, ["fc1", "fc2"], same=False)
        assert json.load(open(os.path.join(head_dir, "config.json")))["optimizer"]["freeze"] == "^block"

        body_dir = str(tmp_path / "body")
        train_and_evaluate(phase("body", root, data_dir, init_from=head_dir), body_dir)
        tuned = run_variables(root, data_dir, body_dir)
        assert_same(tuned, from_keras, [c for c in convs if c not in block5], same=True)
        assert_same(tuned, from_keras, block5, same=False)
        assert not np.array_equal(tuned["predictions"]["kernel"], params["predictions"]["kernel"])

        picture = os.path.join(root, names[1], "img000.jpg")
        predicted = modes.predict(phase("body", root, data_dir), body_dir, [picture])
        assert {p["name"] for p in predicted[0]["top5"]} == set(names)
