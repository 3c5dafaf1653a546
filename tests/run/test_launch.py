"""launch.py as users run it: summaries of every config, one-line errors, and the quickstart learning."""

import json
import os
import subprocess
import sys

import pytest
from killing import env
from ml_collections import config_flags  # noqa: F401 - the launcher's config loader, imported as it would be
from repo_paths import ROOT  # noqa: E402

from cnn_flax.run import modes

# (config file[:arg], Total, Trainable, Non-trainable) as Keras's model.summary() counts them.
SUMMARIES = [
    ("quickstart", 2_171_178, 2_169_770, 1_408),
    ("minivgg_cifar10", 2_171_178, 2_169_770, 1_408),
    ("minigooglenet_cifar10", 1_656_250, 1_652_826, 3_424),
    ("minigooglenet_cifar10_modern", 1_656_250, 1_652_826, 3_424),
    ("nin_cifar10", 966_986, 966_986, 0),
    ("deeper_sgd_baseline", 3_667_976, 3_657_992, 9_984),
    ("deeper_exp1_sgd", 773_752, 771_096, 2_656),
    ("deeper_exp2_adam", 773_752, 771_096, 2_656),
    ("deeper_adam", 3_667_976, 3_657_992, 9_984),
    ("deeper_tiny_imagenet_modern", 3_667_976, 3_657_992, 9_984),
    ("googlenet_imagenet", 13_378_280, 13_378_280, 0),
    ("vgg16_imagenet", 138_357_544, 138_357_544, 0),
    ("vgg_imagenet:A", 132_863_336, 132_863_336, 0),
    ("vgg_imagenet:A-LRN", 132_863_336, 132_863_336, 0),
    ("vgg_imagenet:B", 133_047_848, 133_047_848, 0),
    ("vgg_imagenet:C", 133_638_952, 133_638_952, 0),
    ("vgg_imagenet:D", 138_357_544, 138_357_544, 0),
    ("vgg_imagenet:E", 143_667_240, 143_667_240, 0),
    ("conv1x1_demo:direct", 153_632, 153_632, 0),
    ("conv1x1_demo:bottleneck", 15_920, 15_920, 0),
]


def load_config(spec: str):
    import importlib

    name, _, arg = spec.partition(":")
    module = importlib.import_module(f"configs.{name}")
    return module.get_config(arg) if arg else module.get_config()


def launch(*args, timeout=600, optimize=False):
    """launch.py in a process of its own, on one device as a user's laptop (`optimize`: see killing.env)."""
    return subprocess.run([sys.executable, "launch.py", *args], cwd=ROOT, env=env(optimize=optimize),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("spec,total,trainable,non_trainable", SUMMARIES, ids=[s[0] for s in SUMMARIES])
def test_summary_of_every_config_prints_the_keras_totals(spec, total, trainable, non_trainable):
    lines = modes.summary(load_config(spec)).splitlines()
    assert f"Total params: {total:,}" in lines
    assert f"Trainable params: {trainable:,}" in lines
    assert f"Non-trainable params: {non_trainable:,}" in lines


def test_summary_through_the_command_line_shows_plan():
    result = launch("--config", "configs/deeper_adam.py", "--mode=summary")
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out.count("Total params: 3,667,976") == 1 and "Non-trainable params: 9,984" in out
    assert [line.strip() for line in out[-3:]] == ["epochs 1-40: lr 0.001", "epochs 41-60: lr 0.0001",
                                                   "epochs 61-70: lr 1e-05"]
    assert "inception_4e (Inception)" in result.stdout and "(None, 4, 4, 832)" in result.stdout


@pytest.mark.parametrize("args,message", [
    (["--config", "configs/quickstart.py", "--config.nope=1"], "config.nope: unknown config key 'nope'"),
    (["--config", "configs/nothere.py"], "config file configs/nothere.py not found; use one of common.py"),
    (["--config", "configs/quickstart.py", "--config.model.name=resnet", "--mode=summary"],
     "model.name='resnet' is not known; use one of minivgg"),
    (["--config", "configs/quickstart.py", "--config.model.activation=gelu", "--mode=summary"],
     "model.activation='gelu' is not known; use one of relu, elu"),
    (["--config", "configs/quickstart.py", "--mode=lr_find", "--config.lr_find.steps=1"],
     "lr_find.steps=1 must be at least 2"),
    (["--mode=predict", "--export_dir=runs/none/export", "--images=a.png", "--gradcam"],
     "--gradcam needs the model's layers: predict with --config"),
])
def test_bad_input_gives_one_line_and_non_zero_exit(args, message):
    result = launch(*args)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_quickstart_learns_and_leaves_its_files(tmp_path):
    workdir = str(tmp_path / "quickstart")
    result = launch("--config", "configs/quickstart.py", "--workdir", workdir, "--config.num_epochs=3", optimize=True)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(os.path.join(workdir, "metrics.json")))
    assert metrics["num_examples"] == 450  # the stratified 25% of scikit-learn's 1,797 digits
    assert metrics["rank1"] > 0.6, metrics  # ten classes: chance is 0.1
    for name in ("config.json", "history.json", "training.png", "report.txt", "confusion_matrix.png",
                 "predictions.png", "checkpoints/epoch_3"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert "Done: rank-1" in result.stdout
