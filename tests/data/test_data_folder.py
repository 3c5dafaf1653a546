"""Folder datasets: both layouts prepared from real image files of every format, skipped files, EXIF, reuse, errors."""

import os

import h5py
import numpy as np
import pytest
from folder_images import FORMATS, HIDDEN, JUNK, digit_images, write_class, write_flat, write_split_layout
from PIL import Image

from cnn_flax.data import make_source
from cnn_flax.data.sources.folder import build_folder
from cnn_flax.data.sources.folder_scan import image_files
from cnn_flax.data.sources.images import ImageProblem, load_square
from cnn_flax.errors import UserError
from cnn_flax.run import modes
from configs import folder as folder_config

PIXELS = 16
LABELS = (0, 1, 7)
PER_CLASS = 20


def folder_data(root: str, data_dir: str, **data):
    config = folder_config.get_config()
    config.data.update(dict(root=root, dir=data_dir, image_size=PIXELS, **data))
    return config


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    base = tmp_path_factory.mktemp("flat")
    root, data_dir = str(base / "photos"), str(base / "prepared")
    names = write_flat(root, LABELS, PER_CLASS)
    written = build_folder(root, data_dir, image_size=PIXELS)
    return root, data_dir, names, written


def test_flat_layout_prepares_stratified_splits_of_every_format(flat):
    root, data_dir, names, written = flat
    assert [os.path.basename(p) for p in written] == ["train.hdf5", "val.hdf5", "test.hdf5"]
    source = make_source(folder_data(root, data_dir).data)
    info = source.info
    assert info.class_names == tuple(names) == ("digit_0", "digit_1", "digit_7")
    # digit_0 holds 20 digits and 3 files named like images that are not (broken, empty, cut): 23 carved
    # 2/2/19 and the 3 dropped wherever they fell; the other classes 20 → 2/2/16.
    assert sum(info.split_sizes.values()) == 3 * PER_CLASS
    expected = {name: digit_images((int(name[-1]),), PER_CLASS)[int(name[-1])] for name in names}
    for split in ("train", "val", "test"):
        images, labels = source.arrays(split)
        assert set(labels.tolist()) == {0, 1, 2}, f"{split} lost a class"
        paths = source.image_paths(split)
        assert len(paths) == len(labels)
        for image, label, rel in zip(images, labels, paths, strict=True):
            assert rel.split(os.sep)[0] == names[label]
            assert not os.path.isabs(rel) and os.path.isfile(os.path.join(root, rel))
            k = int(os.path.basename(rel)[3:6])
            grey = np.asarray(Image.fromarray(expected[names[label]][k]).resize((PIXELS, PIXELS),
                                                                                 Image.Resampling.BILINEAR))
            difference = np.abs(image.astype(np.int16) - grey[..., None]).mean()
            assert difference < 6, f"{rel} ({FORMATS[k % len(FORMATS)]}) decoded wrongly: mean error {difference}"
        counts = np.bincount(labels)
        carved = split != "train"
        assert counts[1:].tolist() == ([2, 2] if carved else [16, 16]), split
        assert counts[0] <= (2 if carved else 19)  # digit_0's share may have drawn its unreadable files


def test_skipped_files_are_listed_with_reasons_and_hidden_ones_are_not(flat):
    root, data_dir, names, _ = flat
    lines = open(os.path.join(data_dir, "skipped.txt"), encoding="utf-8").read().splitlines()
    listed = dict(line.split("\t") for line in lines)
    assert sorted(listed) == sorted(os.path.join(names[0], name) for name in JUNK)
    for name, reason in JUNK.items():
        assert listed[os.path.join(names[0], name)].startswith(reason)
    assert not any(hidden.split("/")[-1] in "\n".join(lines) for hidden in HIDDEN)
    with h5py.File(os.path.join(data_dir, "train.hdf5")) as f:
        assert f.attrs["root"] == os.path.abspath(root) and f.attrs["resize"] == "aspect"
        np.testing.assert_allclose(f.attrs["mean_rgb"], f["images"][()].reshape(-1, 3).mean(axis=0), rtol=1e-5)


def test_second_prepare_reuses_finished_files_and_rebuilds_only_missing_ones(flat, tmp_path):
    root, data_dir, _, written = flat
    before = {p: os.stat(p).st_mtime_ns for p in written}
    build_folder(root, data_dir, image_size=PIXELS)
    assert {p: os.stat(p).st_mtime_ns for p in written} == before
    copy = str(tmp_path / "copy")
    os.makedirs(copy)
    for p in written:
        os.link(p, os.path.join(copy, os.path.basename(p)))
    test_file = os.path.join(copy, "test.hdf5")
    original = h5py.File(test_file)["images"][()]
    os.remove(test_file)
    build_folder(root, copy, image_size=PIXELS)
    assert os.stat(os.path.join(copy, "train.hdf5")).st_ino == os.stat(written[0]).st_ino  # train untouched
    np.testing.assert_array_equal(h5py.File(test_file)["images"][()], original)  # same seed, same files
    with pytest.raises(UserError, match="prepared with image_size=16 .this config: 24.; use another data.dir"):
        build_folder(root, copy, image_size=24)


def test_split_layout_keeps_val_folder_and_carves_test_per_class(tmp_path):
    root = str(tmp_path / "layout")
    write_split_layout(root, labels=(3, 4), per_class=16, val=4)
    odd = os.path.join(os.fsencode(root), b"train", b"d3", b"caf\xe9.png")  # a Latin-1 name: not UTF-8
    with open(odd, "wb") as handle:
        handle.write(open(os.path.join(root, "train", "d3", "img001.PNG"), "rb").read())
    source = make_source(folder_data(root, str(tmp_path / "prepared"), test_fraction=0.125).data)
    assert source.info.class_names == ("d3", "d4")
    assert source.info.split_sizes == {"train": 29, "val": 8, "test": 4}
    everything = source.image_paths("train") + source.image_paths("test")
    assert os.path.join("train", "d3", os.fsdecode(b"caf\xe9.png")) in everything
    assert np.bincount(source.arrays("test")[1]).tolist() == [2, 2]
    assert all(p.startswith("val" + os.sep) for p in source.image_paths("val"))
    assert all(p.startswith("train" + os.sep) for p in source.image_paths("test"))


def test_exif_orientation_stands_photos_upright(tmp_path):
    stored = np.zeros((16, 32, 3), np.uint8)  # 32 wide, 16 tall: left half black, right half white
    stored[:, 16:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: the left (black) half ends up on top
    path = str(tmp_path / "phone.jpg")
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=95)
    upright = load_square(path, 16, "stretch")
    assert upright[:6].mean() < 30 and upright[-6:].mean() > 225
    assert abs(upright[:, :6].mean() - upright[:, -6:].mean()) < 10  # no left-right split left
    cropped = load_square(path, 16, "aspect")  # 16x32 upright: the centre square straddles the edge
    assert cropped[0].mean() < 30 and cropped[-1].mean() > 225


def test_aspect_crops_the_centre_and_stretch_keeps_everything(tmp_path):
    wide = np.zeros((10, 30, 3), np.uint8)
    wide[:, :10] = 255  # a white band on the left third only
    path = str(tmp_path / "wide.png")
    Image.fromarray(wide).save(path)
    assert load_square(path, 10, "aspect").max() == 0  # the centre square holds none of the band
    assert load_square(path, 10, "stretch")[:, :2].min() > 200
    with pytest.raises(ImageProblem, match="empty file"):
        open(tmp_path / "empty.jpg", "wb").close()
        load_square(str(tmp_path / "empty.jpg"), 10)


def test_image_files_expands_folders_recursively_without_hidden_or_other_files(flat):
    root, _, names, _ = flat
    files = image_files([os.path.join(root, names[1]), os.path.join(root, names[0], "notes.txt")])
    assert len(files) == PER_CLASS + 1 and files[-1].endswith("notes.txt")
    assert any(os.sep + "more" + os.sep in f for f in files)
    hidden = image_files([os.path.join(root, names[0])])
    assert not any(os.path.basename(f).startswith(".") or ".thumbs" in f for f in hidden)


def _one_line_error(call, match: str) -> None:
    with pytest.raises(UserError, match=match) as caught:
        call()
    assert "\n" not in str(caught.value)


def test_bad_folders_are_one_line_errors_and_write_nothing(tmp_path):
    out = str(tmp_path / "out")

    def prepare(root: str, **kw):
        return lambda: build_folder(root, out, image_size=PIXELS, **kw)

    _one_line_error(prepare(str(tmp_path / "nowhere")), "nowhere: folder not found")
    (tmp_path / "file.jpg").write_bytes(b"x")
    _one_line_error(prepare(str(tmp_path / "file.jpg")), "file.jpg is a file, not a folder")
    (tmp_path / "empty").mkdir()
    _one_line_error(prepare(str(tmp_path / "empty")), "empty holds no class folders")
    one = tmp_path / "one"
    write_class(str(one / "cats"), digit_images((1,), 4)[1])
    _one_line_error(prepare(str(one)), r"one holds one class folder \(cats\)")
    (one / "dogs").mkdir()
    (one / "dogs" / "readme.txt").write_text("no pictures")
    _one_line_error(prepare(str(one)), "dogs holds no image files")
    _one_line_error(prepare(str(one), resize="squash"), "data.resize='squash' is unknown")
    junk = tmp_path / "junk"
    for name in ("a", "b"):
        (junk / name).mkdir(parents=True)
        for k in range(4):
            (junk / name / f"{k}.jpg").write_bytes(os.urandom(100))
    _one_line_error(prepare(str(junk)), "none of its images could be read")
    write_class(str(junk / "c"), digit_images((2,), 4)[2])
    _one_line_error(prepare(str(junk)), "class folder a in .* has no readable image")
    small = tmp_path / "small"
    write_class(str(small / "x"), digit_images((1,), 6)[1])
    write_class(str(small / "y"), digit_images((2,), 2)[2])
    _one_line_error(prepare(str(small)), r"small/y has 2 images, too few to carve 1 for val, 1 for test")
    _one_line_error(prepare(str(small), val_fraction=1.5), "data.val_fraction=1.5 must be between 0 and 1")
    assert not os.path.exists(out) or os.listdir(out) == []
    config = folder_data(str(junk), out)
    config.model.num_classes = 5
    _one_line_error(lambda: modes.prepare(config), f"model.num_classes=5 but {junk} has 3 class folders")
    assert not os.path.exists(out) or os.listdir(out) == []


def test_summary_sizes_the_head_by_the_class_folders_without_reading_images(tmp_path):
    from cnn_flax.run.experiment import build_experiment

    for name in ("roses", "tulips", "daisy"):
        (tmp_path / "photos" / "train" / name).mkdir(parents=True)
    config = folder_config.get_config()
    config.data.root = str(tmp_path / "photos")
    assert build_experiment(config, need_data=False).model_config["num_classes"] == 3


def test_the_decoding_workers_import_neither_jax_nor_the_rest_of_the_data_package():
    """prepare's spawned workers import only the decoding module; the package's names still resolve."""
    import subprocess
    import sys

    import cnn_flax.data

    code = ("import sys, cnn_flax.data.sources.images; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'cnn_flax')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["['cnn_flax',", "'cnn_flax.data',", "'cnn_flax.data.sources',",
                                   "'cnn_flax.data.sources.images',", "'cnn_flax.lazy']"]
    assert set(cnn_flax.data.__all__) == set(cnn_flax.data._LAZY) <= set(dir(cnn_flax.data))
    assert all(getattr(cnn_flax.data, name) is not None for name in cnn_flax.data.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        cnn_flax.data.nothing  # noqa: B018
