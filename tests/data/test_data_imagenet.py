"""ImageNet through TFDS on a real but tiny prepare: fake manual-download tars of 24 + 10 JPEGs.

`tfds.testing.mock_data` is not used: it returns the same examples for every (sub)split and ignores
shuffling, so it could not show that process shards are disjoint or that the order follows (seed, epoch).
Preparing these tars with TFDS's own imagenet2012 builder takes about a second and exercises the real
files, split slicing and reading path.
"""

import hashlib
import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image
from run_configs import tiny_config

from cnn_flax.data import make_source
from cnn_flax.data.sources.imagenet import MANUAL_FILES
from cnn_flax.errors import UserError
from cnn_flax.run import modes
from cnn_flax.run.train import train_and_evaluate

SIZE = 32  # crops of 32 from images rescaled to shorter side 37: small images, the same code as 224 from 256
TRAIN_CLASSES, PER_CLASS, NUM_VAL = 3, 8, 10


def _jpeg(rng: np.random.Generator, height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_manual_tars(folder: str) -> None:
    """ILSVRC2012_img_train.tar (one inner tar per WordNet id) and ILSVRC2012_img_val.tar, like the real ones."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    wnids = ["n01440764", "n01443537", "n01484850"][:TRAIN_CLASSES]  # TFDS labels 0, 1, 2
    with tarfile.open(os.path.join(folder, MANUAL_FILES[0]), "w") as outer:
        for wnid in wnids:
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as tar:
                for i in range(PER_CLASS):
                    _add(tar, f"{wnid}_{i}.JPEG", _jpeg(rng, 40 + i, 50 + 3 * i))
            _add(outer, f"{wnid}.tar", inner.getvalue())
    with tarfile.open(os.path.join(folder, MANUAL_FILES[1]), "w") as tar:
        for i in range(NUM_VAL):
            _add(tar, f"ILSVRC2012_val_{i + 1:08d}.JPEG", _jpeg(rng, 60 - i, 44))


def imagenet_config(data_dir: str, **overrides):
    """tiny_config's MiniVGG on imagenet2012 at 32x32 with Keras's 'caffe' normalisation, 2 steps of 8."""
    config = tiny_config(num_epochs=1, batch_size=8, steps_per_epoch=2, eval_steps=1, log_every_steps=1)
    config.data.update(dict(name="imagenet2012", dir=data_dir, image_size=SIZE, normalize="caffe"))
    config.data.augment.update(dict(rotation=0.0, zoom=0.0, width_shift=0.0, height_shift=0.0))
    for key, value in overrides.items():
        config.data[key] = value
    return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("tfds"))
    write_manual_tars(os.path.join(folder, "downloads", "manual"))  # TFDS's default manual_dir
    assert modes.prepare(imagenet_config(folder)) == [os.path.join(folder, "imagenet2012", "5.1.0")]
    return folder


@pytest.fixture(scope="module")
def source(data_dir):
    return make_source(imagenet_config(data_dir).data)


def _epoch(source, split, batch, **kw):
    options = dict(shuffle=split == "train", seed=0, epoch=0, drop_remainder=split == "train") | kw
    return list(source.batches(split, batch, **options))


def _hashes(batches) -> list[str]:
    return [hashlib.sha1(image.tobytes()).hexdigest()
            for b in batches for image in b["image"][b.get("mask", np.ones(len(b["label"]), bool))]]


def test_batches_are_uint8_crops_with_int32_labels(source):
    info = source.info
    assert info.split_sizes == {"train": 24, "val": NUM_VAL, "test": NUM_VAL}  # test is the validation set
    assert info.num_classes == len(info.class_names) == 1000 and info.class_names[0] == "tench"  # n01440764
    assert info.image_shape == (SIZE, SIZE, 3)
    assert source.num_batches("train", 8, drop_remainder=True) == 3
    for split, batch in (("train", 8), ("val", 4)):
        batches = _epoch(source, split, batch)
        assert len(batches) == source.num_batches(split, batch, drop_remainder=split == "train")
        for b in batches:
            assert b["image"].shape == (batch, SIZE, SIZE, 3) and b["image"].dtype == np.uint8
            assert b["label"].dtype == np.int32 and 0 <= b["label"].min() and b["label"].max() < 1000
    train_labels = np.concatenate([b["label"] for b in _epoch(source, "train", 8)])
    assert np.bincount(train_labels).tolist() == [PER_CLASS] * TRAIN_CLASSES
    assert [int(b["mask"].sum()) for b in _epoch(source, "val", 4)] == [4, 4, 2]

    import tensorflow as tf

    assert tf.config.get_visible_devices("GPU") == []


def test_order_follows_seed_and_epoch_and_evaluation_is_fixed(source):
    first = _epoch(source, "train", 8)
    again = _epoch(source, "train", 8)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    labels = lambda batches: np.concatenate([b["label"] for b in batches])  # noqa: E731
    for other in (dict(epoch=1), dict(seed=1)):
        changed = labels(_epoch(source, "train", 8, **other))
        assert not np.array_equal(changed, labels(first)) and sorted(changed) == sorted(labels(first))
    assert _hashes(_epoch(source, "val", 4)) == _hashes(_epoch(source, "val", 4))


def test_start_batch_skips_exactly_those_batches(source):
    full = _epoch(source, "train", 8, epoch=3)
    resumed = _epoch(source, "train", 8, epoch=3, start_batch=1)
    assert len(resumed) == len(full) - 1
    for a, b in zip(full[1:], resumed, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])  # the same random crops, not just the same rows
        np.testing.assert_array_equal(a["label"], b["label"])
    assert _hashes(_epoch(source, "val", 2, start_batch=2)) == _hashes(_epoch(source, "val", 2))[4:]


@pytest.mark.parametrize("split,batch,count", [("train", 6, 2), ("val", 3, 3)])
def test_process_shards_are_disjoint_and_cover_the_split(source, split, batch, count):
    whole = _hashes(_epoch(source, split, batch, shuffle=False, drop_remainder=False))
    parts = [_epoch(source, split, batch, shuffle=False, drop_remainder=False, process_index=i, process_count=count)
             for i in range(count)]
    assert len({len(p) for p in parts}) == 1  # the same number of steps everywhere; short parts are padded
    shards = [set(_hashes(p)) for p in parts]
    assert sum(len(s) for s in shards) == len(whole) == len(set(whole))
    assert set().union(*shards) == set(whole)
    steps = [len(_epoch(source, "train", 8, process_index=i, process_count=2)) for i in range(2)]
    assert steps == [source.num_batches("train", 8, drop_remainder=True)] * 2


def test_crops_match_an_independent_computation():
    import tensorflow as tf

    from cnn_flax.data.sources.imagenet_crops import eval_crop, resize_shorter_side, train_crop

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (74, 90, 3), dtype=np.uint8)
    # Already at the shorter side: no resampling, so the centre crop is exact slicing.
    small = image[:37, :45]
    np.testing.assert_array_equal(eval_crop(tf.constant(small), SIZE, 37).numpy(), small[2:34, 6:38])
    # Halved: PIL's bilinear (antialiased when shrinking) to the same 37x45, then the same centre.
    expected = np.asarray(Image.fromarray(image).resize((45, 37), Image.BILINEAR))[2:34, 6:38]
    got = eval_crop(tf.constant(image), SIZE, 37).numpy()
    assert got.dtype == np.uint8 and np.abs(got.astype(int) - expected).max() <= 1
    # A training crop is a window of the resized image, mirrored or not, and a function of its seed.
    resized = np.round(resize_shorter_side(tf.constant(image), 37).numpy()).astype(np.uint8)
    windows = {resized[t : t + SIZE, left : left + SIZE][:, ::step].tobytes()
               for t in range(6) for left in range(14) for step in (1, -1)}
    crops = [train_crop(tf.constant(image), SIZE, 37, tf.constant([7, i], tf.int64)).numpy() for i in range(8)]
    assert all(c.tobytes() in windows for c in crops) and len({c.tobytes() for c in crops}) > 1
    again = train_crop(tf.constant(image), SIZE, 37, tf.constant([7, 0], tf.int64)).numpy()
    np.testing.assert_array_equal(again, crops[0])


def test_missing_tars_absent_data_and_arrays_are_one_line_errors(tmp_path):
    empty = str(tmp_path / "empty")
    source = make_source(imagenet_config(str(tmp_path), manual_dir=empty).data)
    with pytest.raises(UserError) as caught:
        source.prepare()
    message = str(caught.value)
    assert "\n" not in message and f"data.manual_dir={empty}" in message and "image-net.org" in message
    assert all(name in message for name in MANUAL_FILES)
    default = make_source(imagenet_config(str(tmp_path)).data)
    with pytest.raises(UserError, match=f"data.manual_dir={tmp_path}/downloads/manual "):
        default.prepare()
    with pytest.raises(UserError, match=f"not found in data.dir={tmp_path}; put .* --mode=prepare"):
        _ = default.info
    with pytest.raises(UserError, match=r"cannot be held whole in memory; set --config.data.on_device=False$"):
        default.arrays("train")


def test_a_trainer_runs_on_imagenet(data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    result = train_and_evaluate(imagenet_config(data_dir, image_size=16), workdir)  # any size, not only 224
    history = json.load(open(os.path.join(workdir, "history.json")))
    assert [r["epoch"] for r in history] == [1] and np.isfinite(history[0]["train_loss"])
    metrics = json.load(open(os.path.join(workdir, "metrics.json")))
    assert metrics["split"] == "test" and metrics["num_examples"] == 8  # eval_steps=1 of batch 8
    assert result.metrics["rank1"] == metrics["rank1"]
    assert os.path.getsize(os.path.join(workdir, "predictions.png")) > 0
    assert "tench" in open(os.path.join(workdir, "report.txt")).read()  # Keras's words, not WordNet ids
