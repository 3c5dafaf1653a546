"""Tiny ImageNet: prepare from a small tiny-imagenet-200 folder, the HDF5 reader, and every bad input."""

import hashlib
import os
import shutil

import h5py
import numpy as np
import pytest
from ml_collections import ConfigDict
from PIL import Image
from tiny_imagenet_files import TEST_PER_CLASS, TINY_IMAGENET_NAMES, VAL_PER_CLASS, WNIDS, write_tiny_imagenet_root

from cnn_flax.data import make_source
from cnn_flax.data.sources.hdf5 import HDF5Source
from cnn_flax.data.sources.hdf5_reader import MappedReader
from cnn_flax.data.sources.in_memory import ArraySource
from cnn_flax.errors import UserError


def decoded(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def digest(image: np.ndarray) -> str:
    return hashlib.sha1(image.tobytes()).hexdigest()


def config(root: str, data_dir: str, **kw) -> ConfigDict:
    return ConfigDict({"name": "tiny_imagenet", "image_size": 64, "root": root, "dir": data_dir,
                       "test_per_class": TEST_PER_CLASS} | kw)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("raw") / "tiny-imagenet-200")
    write_tiny_imagenet_root(path)
    return path


@pytest.fixture(scope="module")
def prepared(root, tmp_path_factory) -> str:
    data_dir = str(tmp_path_factory.mktemp("hdf5"))
    make_source(config(root, data_dir)).prepare()
    return data_dir


def test_prepare_gives_counts_labels_names_and_means(root, prepared):
    source = make_source(config("", prepared))
    info = source.info
    assert info.num_classes == 3 and info.class_names == tuple(TINY_IMAGENET_NAMES) and info.image_shape == (64, 64, 3)
    assert info.split_sizes == {"train": 30, "val": 6, "test": 6}
    truth = {}  # image digest -> label, from the folder itself
    for c, wnid in enumerate(WNIDS):
        folder = os.path.join(root, "train", wnid, "images")
        truth.update({digest(decoded(os.path.join(folder, f))): c for f in os.listdir(folder)})
    train_x, train_y = source.arrays("train")
    test_x, test_y = source.arrays("test")
    assert train_x.dtype == np.uint8 and train_y.dtype == np.int32
    assert [truth[digest(x)] for x in train_x] == train_y.tolist()
    assert [truth[digest(x)] for x in test_x] == test_y.tolist()
    assert len({digest(x) for x in np.concatenate([train_x, test_x])}) == 36
    assert np.bincount(test_y).tolist() == [TEST_PER_CLASS] * 3
    val_x, val_y = source.arrays("val")
    for x, y in zip(val_x, val_y, strict=True):
        name = next(
            f
            for f in os.listdir(os.path.join(root, "val", "images"))
            if digest(decoded(os.path.join(root, "val", "images", f))) == digest(x)
        )
        assert y == int(name[4:-5]) // VAL_PER_CLASS
    grey = decoded(os.path.join(root, "train", WNIDS[1], "images", f"{WNIDS[1]}_3.JPEG"))
    row = next(x for x in np.concatenate([train_x, test_x]) if digest(x) == digest(grey))
    assert (row == row[..., :1]).all()
    assert np.allclose(info.mean_image, train_x.astype(np.float64).mean(0), atol=1e-3)
    assert np.allclose(info.mean_rgb, train_x.reshape(-1, 3).astype(np.float64).mean(0), atol=1e-3)
    with h5py.File(os.path.join(prepared, "train.hdf5")) as f:
        assert list(f.attrs["wnids"]) == WNIDS and f["images"].chunks[1:] == (64, 64, 3)


def test_test_split_depends_on_split_seed(root, tmp_path):
    make_source(config(root, str(tmp_path / "a"), split_seed=1)).prepare()
    make_source(config(root, str(tmp_path / "b"), split_seed=1)).prepare()
    make_source(config(root, str(tmp_path / "c"), split_seed=2)).prepare()
    a, b, c = (make_source(config("", str(tmp_path / d))).arrays("test")[0] for d in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("mapped", [True, False])
def test_hdf5_reader_equals_the_in_memory_batcher(prepared, mapped):
    # 0.05 MB windows hold 4 rows: every epoch spans many windows.
    disk = HDF5Source(prepared, (64, 64, 3), window_mb=0.05, mapped=mapped)
    arrays = {s: disk.arrays(s) for s in ("train", "val", "test")}
    memory = ArraySource(lambda: (disk.info, arrays))
    cases = [(0, 1, True, True), (1, 2, False, True), (0, 2, True, True), (0, 1, False, False)]
    for e, (p, count, drop, shuffle) in enumerate(cases):
        kw = dict(shuffle=shuffle, seed=5, epoch=e, drop_remainder=drop, process_index=p, process_count=count)
        got = list(disk.batches("train", 4, **kw))
        want = list(memory.batches("train", 4, **kw))
        assert len(got) == len(want) > 0
        for a, b in zip(got, want, strict=True):
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in b)


def test_reader_falls_back_to_blocks_for_compressed_files(prepared, tmp_path):
    for split in ("train", "val", "test"):
        with (
            h5py.File(os.path.join(prepared, f"{split}.hdf5")) as src,
            h5py.File(tmp_path / f"{split}.hdf5", "w") as dst,
        ):
            for key in src:
                dst.create_dataset(key, data=src[key][()], compression="gzip" if key == "images" else None)
            dst.attrs.update(src.attrs)
        with (
            h5py.File(tmp_path / f"{split}.hdf5") as f,
            h5py.File(os.path.join(prepared, f"{split}.hdf5")) as g,
        ):
            assert MappedReader.open(f, f["images"]) is None and MappedReader.open(g, g["images"]) is not None
    packed, plain = HDF5Source(str(tmp_path), (64, 64, 3), window_mb=0.1), HDF5Source(prepared, (64, 64, 3))
    kw = dict(shuffle=True, seed=1, epoch=0, drop_remainder=False)
    for a, b in zip(packed.batches("val", 4, **kw), plain.batches("val", 4, **kw), strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in b)


def test_training_builds_missing_files_from_root(root, tmp_path):
    source = make_source(config(root, str(tmp_path / "fresh")))
    batch = next(iter(source.batches("train", 8, shuffle=True, seed=0, epoch=0, drop_remainder=True)))
    assert batch["image"].shape == (8, 64, 64, 3) and sorted(os.listdir(tmp_path / "fresh")) == [
        "test.hdf5",
        "train.hdf5",
        "val.hdf5",
    ]


def test_prepare_keeps_finished_files_and_never_leaves_partial_ones(root, tmp_path):
    raw = str(tmp_path / "raw")
    shutil.copytree(root, raw)
    bad = os.path.join(raw, "val", "images", "val_3.JPEG")
    with open(bad, "wb") as f:
        f.write(b"not a jpeg")
    out = str(tmp_path / "out")
    with pytest.raises(UserError, match=f"{bad}: unreadable image .*prepare stopped here"):
        make_source(config(raw, out)).prepare()
    assert os.listdir(out) == ["train.hdf5"]
    train_inode = os.stat(os.path.join(out, "train.hdf5")).st_ino
    shutil.copy(os.path.join(root, "val", "images", "val_3.JPEG"), bad)
    paths = make_source(config(raw, out)).prepare()
    assert sorted(os.listdir(out)) == ["test.hdf5", "train.hdf5", "val.hdf5"] and len(paths) == 3
    assert os.stat(os.path.join(out, "train.hdf5")).st_ino == train_inode
    make_source(config(raw, out)).prepare(overwrite=True)
    assert os.stat(os.path.join(out, "train.hdf5")).st_ino != train_inode


def test_missing_inputs_name_the_path(root, tmp_path):
    with pytest.raises(UserError, match="data.root=.*nowhere: folder not found"):
        _ = make_source(config(str(tmp_path / "nowhere"), str(tmp_path / "o1"))).info
    with pytest.raises(UserError, match="not found and data.root is empty; set data.root"):
        _ = make_source(config("", str(tmp_path / "o2"))).info
    for missing in ("wnids.txt", os.path.join("val", "val_annotations.txt")):
        raw = str(tmp_path / f"raw_{len(missing)}")
        shutil.copytree(root, raw)
        os.remove(os.path.join(raw, missing))
        with pytest.raises(UserError, match=f"{os.path.join(raw, missing)} not found"):
            make_source(config(raw, str(tmp_path / f"o_{len(missing)}"))).prepare()


def copy_prepared(prepared: str, tmp_path) -> str:
    out = str(tmp_path / "copy")
    shutil.copytree(prepared, out)
    return out


def test_corrupt_or_truncated_files_say_to_rebuild(prepared, tmp_path):
    out = copy_prepared(prepared, tmp_path)
    path = os.path.join(out, "val.hdf5")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(UserError, match=r"val.hdf5: corrupt or truncated HDF5 .*--mode=prepare --overwrite"):
        _ = make_source(config("", out)).info
    with open(path, "wb") as f:
        f.write(b"\0" * 4096)
    with pytest.raises(UserError, match=r"val.hdf5: corrupt or truncated HDF5"):
        _ = make_source(config("", out)).info


def test_bad_labels_and_shapes_say_to_rebuild(prepared, tmp_path):
    out = copy_prepared(prepared, tmp_path)
    with h5py.File(os.path.join(out, "test.hdf5"), "r+") as f:
        f["labels"][0] = 3
    with pytest.raises(UserError, match=r"test.hdf5: labels span \[0, 3\], outside \[0, 3\); re-run"):
        _ = make_source(config("", out)).info
    with h5py.File(os.path.join(out, "test.hdf5"), "r+") as f:
        f["labels"][0] = 0
        del f["images"]
        f.create_dataset("images", data=np.zeros((6, 32, 32, 3), np.uint8))
    with pytest.raises(UserError, match=r"test.hdf5: images are uint8 \(6, 32, 32, 3\), expected"):
        _ = make_source(config("", out)).info


def test_wrong_image_size_is_refused():
    with pytest.raises(UserError, match="data.image_size=32 but tiny_imagenet images are 64x64"):
        make_source(ConfigDict({"name": "tiny_imagenet", "image_size": 32, "dir": "x"}))
