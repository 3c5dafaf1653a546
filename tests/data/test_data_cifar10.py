"""CIFAR-10 through TFDS, end to end on mocked data, and the error when the data is absent offline."""

import socket

import numpy as np
import pytest
import tensorflow_datasets as tfds
from ml_collections import ConfigDict

from cnn_flax.data import make_source
from cnn_flax.errors import UserError


def test_cifar10_end_to_end_on_mock_data(tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args: [])  # mock_data makes the download a no-op
    source = make_source(ConfigDict({"name": "cifar10", "dir": str(tmp_path), "image_size": 32}))
    with tfds.testing.mock_data(num_examples=20):
        info = source.info
        assert source.prepare() and info.split_sizes == {"train": 20, "val": 20, "test": 20}
    assert info.num_classes == 10 and len(info.class_names) == 10 and info.image_shape == (32, 32, 3)
    images, labels = source.arrays("train")
    assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8 and labels.dtype == np.int32
    assert labels.min() >= 0 and labels.max() < 10
    assert np.allclose(info.mean_rgb, images.reshape(-1, 3).mean(0), atol=1e-3)
    assert source.arrays("val")[0] is source.arrays("test")[0]
    batches = list(source.batches("train", 8, shuffle=True, seed=0, epoch=1, drop_remainder=False))
    assert [len(b["label"]) for b in batches] == [8, 8, 8] and batches[-1]["mask"].sum() == 4
    got = np.concatenate([b["image"][b["mask"]] for b in batches])
    assert sorted(map(bytes, got)) == sorted(map(bytes, images))

    import tensorflow as tf

    assert tf.config.get_visible_devices("GPU") == []


def test_cifar10_absent_offline_says_how_to_prepare(tmp_path, monkeypatch):
    source = make_source(ConfigDict({"name": "cifar10", "dir": str(tmp_path)}))
    with pytest.raises(UserError, match=f"not found in data.dir={tmp_path}; run `python launch.py .*--mode=prepare"):
        _ = source.info

    def offline(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    with pytest.raises(UserError, match=f"cannot reach .* to download cifar10 into data.dir={tmp_path}; run"):
        source.prepare()
