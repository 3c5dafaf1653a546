"""The deck's Tiny ImageNet path end to end: a raw folder → prepare → DeeperGoogLeNet trains and reports."""

import json
import os

from tiny_imagenet_files import TINY_IMAGENET_NAMES, write_tiny_imagenet_root

from cnn_flax.run import modes
from cnn_flax.run.train import train_and_evaluate
from configs import deeper_exp2_adam


def test_prepare_then_train_deeper_googlenet_on_a_small_tiny_imagenet(tmp_path):
    root, data_dir = str(tmp_path / "tiny-imagenet-200"), str(tmp_path / "hdf5")
    write_tiny_imagenet_root(root)
    config = deeper_exp2_adam.get_config()
    config.data.update(dict(root=root, dir=data_dir, test_per_class=2))
    config.update(dict(num_epochs=1, batch_size=8, steps_per_epoch=2, checkpoint_every_epochs=1, num_devices=1))
    written = modes.prepare(config)
    assert sorted(os.path.basename(p) for p in written) == ["test.hdf5", "train.hdf5", "val.hdf5"]
    summary = modes.summary(config)  # the class count comes from wnids.txt only when the data is read
    assert "Total params: 773,752" in summary
    workdir = str(tmp_path / "run")
    result = train_and_evaluate(config, workdir)
    metrics = json.load(open(os.path.join(workdir, "metrics.json")))
    assert metrics["num_examples"] == 6  # 2 carved per class from train, 3 classes
    assert result.metrics["rank5"] == 1.0  # three classes: every label is within the top five
    saved = json.load(open(os.path.join(workdir, "config.json")))
    assert saved["model"]["num_classes"] == -1
    report = open(os.path.join(workdir, "report.txt")).read()
    assert all(name in report for name in TINY_IMAGENET_NAMES)
    history = json.load(open(os.path.join(workdir, "history.json")))
    assert history[0]["learning_rate"] == 1e-3
