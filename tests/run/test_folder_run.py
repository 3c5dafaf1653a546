"""Your own images end to end: configs/folder.py trains and learns on a folder of digits, then evaluate and predict."""

import csv
import json
import os

import pytest
from folder_images import write_flat

from cnn_flax.errors import UserError
from cnn_flax.run import modes
from cnn_flax.run.train import train_and_evaluate
from configs import folder as folder_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("folder_run")
    root = str(base / "photos")
    names = write_flat(root, (0, 1, 7), per_class=60)
    config = folder_config.get_config()
    config.data.update(dict(root=root, dir=str(base / "prepared"), image_size=8))
    config.data.augment.update(dict(rotation=0.0, zoom=0.0, width_shift=0.0, height_shift=0.0, shear=0.0,
                                    horizontal_flip=False))
    # 8x8 (the digits' own size) keeps steps cheap; BatchNorm's running statistics (momentum 0.99) need a
    # few hundred steps before evaluation, which uses them, agrees with training.
    config.update(dict(num_epochs=24, batch_size=16, checkpoint_every_epochs=24, log_every_steps=100, num_devices=1))
    config.optimizer.update(dict(learning_rate=0.01, momentum=0.9))
    workdir = str(base / "run")
    result = train_and_evaluate(config, workdir)  # prepares the folder first: no files yet
    return config, workdir, root, names, result


def test_training_prepares_the_folder_and_learns(trained):
    config, workdir, root, names, result = trained
    assert os.path.isfile(os.path.join(config.data.dir, "skipped.txt"))
    for row in json.load(open(os.path.join(workdir, "mistakes.json"))):  # named by file, in its class folder
        assert os.path.isfile(os.path.join(root, row["file"])) and row["file"].split(os.sep)[0] == row["true"]
    assert result.metrics["rank1"] >= 0.9, result
    report = open(os.path.join(workdir, "report.txt")).read()
    assert all(name in report for name in names)
    history = json.load(open(os.path.join(workdir, "history.json")))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    evaluated = modes.evaluate(config, workdir)
    assert evaluated["rank1"] == result.metrics["rank1"]


def test_predict_takes_files_and_folders_and_writes_json_and_csv(trained, capsys):
    config, workdir, root, names, _ = trained
    folder = os.path.join(root, names[2])  # digit_7, with a subfolder
    single = os.path.join(root, names[1], "img000.jpg")
    junk = os.path.join(root, names[0], "broken.jpg")
    results = modes.predict(config, workdir, [folder, single, junk])
    assert len(results) == 61  # 60 sevens and one 1; broken.jpg skipped with a warning
    assert [r["image"] for r in results][-1] == single
    sevens = [r["top5"][0]["name"] for r in results[:60]]
    assert sevens.count(names[2]) >= 54
    assert [p["name"] for p in results[0]["top5"]] and len(results[0]["top5"]) == 3  # three classes
    saved = json.load(open(os.path.join(workdir, "predictions.json")))
    assert saved == results
    rows = list(csv.reader(open(os.path.join(workdir, "predictions.csv"))))
    assert rows[0] == ["path", "class", "probability", "top5"]
    assert len(rows) == 62 and rows[-1][0] == single
    assert rows[1][1] == results[0]["top5"][0]["name"]
    assert abs(float(rows[1][2]) - results[0]["top5"][0]["prob"]) < 1e-6
    assert rows[1][3].split(";") == [p["name"] for p in results[0]["top5"]]
    assert "61 images classified (1 unreadable)" in capsys.readouterr().out
    with pytest.raises(UserError, match="nowhere.jpg not found"):
        modes.predict(config, workdir, [os.path.join(root, "nowhere.jpg")])
