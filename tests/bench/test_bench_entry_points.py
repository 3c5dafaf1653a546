"""The input and prepare benchmarks through their command lines: the shared flags, one parseable line per figure."""

import os

import pytest

from cnn_flax.bench import cli, input, prepare
from cnn_flax.errors import UserError


def _lines(capsys, prefix):
    return [cli.parse_line(line, prefix) for line in capsys.readouterr().out.splitlines() if line.startswith(prefix)]


def test_each_augmentation_gets_a_line_with_its_rate_over_off(capsys):
    assert input.main(["--augmentations", "--size", "8", "--batch", "4", "--seconds", "0.02"]) == 0
    lines = _lines(capsys, "augment ")
    assert [line["name"] for line in lines] == [input.slug(name) for name in input.AUGMENTATIONS]
    assert lines[0]["name"] == "off_normalise_only" and lines[0]["rate_over_off"] == 1.0
    for line in lines:
        assert line["batch"] == 4 and line["size"] == 8 and line["img_per_s"] > 0
        ratio = line["img_per_s"] / lines[0]["img_per_s"]  # from the rates as printed, rounded
        assert line["rate_over_off"] == pytest.approx(ratio, rel=0.02, abs=1e-3)


def test_the_hdf5_reader_and_the_deck_augmentation(tmp_path, capsys):
    path = tmp_path / "bench" / "train.hdf5"
    assert input.main(["--file", str(path), "--rows", "96", "--batch", "8", "--seconds", "0.02"]) == 0
    (reader,) = _lines(capsys, "input ")
    assert (reader["reader"], reader["rows"], reader["batch"]) == ("mapped", 96, 8) and reader["img_per_s"] > 0
    assert path.is_file() and (tmp_path / "bench" / "val.hdf5").is_symlink()


def test_prepare_times_a_folder_of_photos(tmp_path, capsys):
    assert prepare.main(["--dir", str(tmp_path), "--images", "16", "--photo", "40x30", "--image_size", "16"]) == 0
    (line,) = _lines(capsys, "prepare ")
    assert (line["images"], line["photo"], line["image_size"], line["cores"]) == (16, "40x30", 16, os.cpu_count())
    assert line["img_per_s"] == pytest.approx(16 / line["prepare_s"], rel=0.05, abs=0.05)  # both rounded
    assert os.listdir(tmp_path / "prepared")


def test_bad_flags_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="--photo 500by375: give WIDTHxHEIGHT"):
        prepare.main(["--dir", str(tmp_path), "--photo", "500by375"])
    with pytest.raises(UserError, match="--seconds 0: must be positive"):
        input.main(["--augmentations", "--seconds", "0"])
