"""The public research calls: load_run on a trained quickstart (also copied elsewhere, without its data) and
load_model, each against the launcher's own modes or an independent computation."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from PIL import Image
from repo_paths import ROOT
from run_configs import tiny_config

import cnn_flax
from cnn_flax.errors import UserError
from cnn_flax.models.summary import layer_rows
from cnn_flax.run import experiment as experiment_module
from cnn_flax.run import modes
from cnn_flax.run.train import train_and_evaluate


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two epochs of the tiny quickstart (a checkpoint each), three PNG files of its input size."""
    workdir = str(tmp_path_factory.mktemp("quickstart"))
    config = tiny_config(num_epochs=2)
    train_and_evaluate(config, workdir)
    images = np.random.default_rng(3).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    paths = []
    for i, image in enumerate(images):
        paths.append(os.path.join(workdir, f"photo_{i}.png"))
        Image.fromarray(image).save(paths[-1])
    return config, workdir, images, paths


def test_predict_equals_mode_predict_and_the_run_knows_itself(trained, capsys):
    config, workdir, images, paths = trained
    run = cnn_flax.load_run(workdir)
    assert run.epoch == 2 and run.input_shape == (16, 16, 3) and run.class_names == tuple(str(i) for i in range(10))
    with open(os.path.join(workdir, "history.json")) as handle:
        assert run.history == json.load(handle) and [r["epoch"] for r in run.history] == [1, 2]
    assert run.config.to_dict() == json.loads(json.dumps(config.to_dict()))
    from_mode = modes.predict(config, workdir, paths)
    probs = run.predict(paths)
    assert probs.shape == (3, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    for row, entry in zip(probs, from_mode, strict=True):
        assert [p["index"] for p in entry["top5"]] == list(np.argsort(-row, kind="stable")[:5])
        np.testing.assert_allclose([p["prob"] for p in entry["top5"]], np.sort(row)[::-1][:5], rtol=1e-6)
    np.testing.assert_array_equal(run.predict(images), probs)  # the PNGs hold these pixels exactly
    top = run.top_k(images, k=3)
    assert [t["index"] for t in top[0]] == list(np.argsort(-probs[0], kind="stable")[:3])
    assert top[0][0]["name"] == run.class_names[top[0][0]["index"]]


def test_features_by_summary_names(trained):
    _, workdir, images, _ = trained
    run = cnn_flax.load_run(workdir)
    rows = {row.name: row.output_shape for row in layer_rows(run.model, run.input_shape)[0]}
    assert run.layer_names == list(rows)
    for layer in ("block1_conv1", "block2_pool", "fc1"):
        maps = run.features(images, layer=layer)
        assert maps.shape == (3, *rows[layer][1:]), layer
    # the last layer's activation is the logits: its softmax is predict's probabilities
    logits = run.features(images, layer="predictions")
    np.testing.assert_allclose(np.asarray(jax.nn.softmax(logits)), run.predict(images), rtol=1e-5, atol=1e-7)
    with pytest.raises(UserError, match="layer='block9' is not a layer of MiniVGG; its layers are block1_conv1"):
        run.features(images, layer="block9")


def test_evaluate_gives_mode_evaluates_numbers(trained, capsys):
    config, workdir, _, _ = trained
    run = cnn_flax.load_run(workdir)
    ours = run.evaluate("test")
    theirs = modes.evaluate(config, workdir)
    assert ours["num_examples"] == theirs["num_examples"] and ours["split"] == "test"
    for key in ("rank1", "rank5", "loss"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-6), key


def test_checkpoints_by_epoch_and_best_and_the_errors(trained):
    _, workdir, images, _ = trained
    first = cnn_flax.load_run(workdir, checkpoint=1)
    latest = cnn_flax.load_run(workdir)
    assert first.epoch == 1 and not np.array_equal(first.predict(images), latest.predict(images))
    best = cnn_flax.load_run(workdir, checkpoint="best")
    losses = {r["epoch"]: r["val_loss"] for r in latest.history}
    assert best.epoch == min(losses, key=losses.get)
    with pytest.raises(UserError, match=r"--checkpoint=7: no such epoch in .*checkpoints \(saved: 1, 2\)"):
        cnn_flax.load_run(workdir, checkpoint=7)
    with pytest.raises(UserError, match="use latest, best or an epoch number"):
        cnn_flax.load_run(workdir, checkpoint="newest")
    with pytest.raises(UserError, match="nowhere: no such workdir"):
        cnn_flax.load_run(os.path.join(workdir, "nowhere"))
    with pytest.raises(UserError, match="ema=True .* kept no moving average"):
        cnn_flax.load_run(workdir, ema=True)
    with pytest.raises(UserError, match=r"images are float32; give uint8 RGB images \[N, H, W, 3\]"):
        latest.predict(images.astype(np.float32))
    with pytest.raises(UserError, match=r"images of shape \(3, 8, 8, 3\); this run takes \[N, 16, 16, 3\]"):
        latest.predict(images[:, :8, :8])
    with pytest.raises(UserError, match="nothing.png: no such image file"):
        latest.predict([os.path.join(workdir, "nothing.png")])


def test_a_copied_workdir_predicts_without_its_data(trained, tmp_path, monkeypatch):
    _, workdir, images, paths = trained
    expected = cnn_flax.load_run(workdir).predict(images)
    copy = str(tmp_path / "elsewhere")
    shutil.copytree(workdir, copy)
    assert os.path.isfile(os.path.join(copy, "dataset.json")) and os.path.isfile(os.path.join(copy, "mean_image.npy"))

    def no_data(data_config):
        raise AssertionError("the data was read")

    monkeypatch.setattr(experiment_module, "make_source", no_data)
    run = cnn_flax.load_run(copy)
    np.testing.assert_array_equal(run.predict(images), expected)
    assert run.features(images, layer="block1_conv1").shape[0] == 3


def test_to_nnx_and_load_model(trained, tmp_path):
    _, workdir, images, _ = trained
    run = cnn_flax.load_run(workdir)
    nnx_model = run.to_nnx()
    inputs = run.preprocess(images)
    # eager NNX against the compiled apply: the same computation, rounded in another order
    np.testing.assert_allclose(np.asarray(nnx_model(inputs, train=False)), run.logits(inputs), rtol=1e-5, atol=1e-5)
    run.save(tmp_path / "quickstart.safetensors")
    model = cnn_flax.load_model("minivgg", num_classes=10, input_shape=(16, 16, 3),
                                weights=str(tmp_path / "quickstart.safetensors"))
    np.testing.assert_array_equal(model.logits(inputs), run.logits(inputs))
    fresh = cnn_flax.load_model("minivgg", num_classes=10, input_shape=(16, 16, 3), seed=1)
    assert fresh.logits(inputs).shape == (3, 10) and not np.array_equal(fresh.logits(inputs), run.logits(inputs))
    assert cnn_flax.load_model("nin").input_shape == (32, 32, 3)
    with pytest.raises(UserError, match="model 'resnet' is not in the zoo"):
        cnn_flax.load_model("resnet")
    with pytest.raises(UserError, match=r"inputs of shape \(3, 8, 8, 3\); the model takes \[N, 16, 16, 3\]"):
        model.logits(np.zeros((3, 8, 8, 3), np.float32))


def test_the_readme_research_snippet_runs_on_a_trained_run(trained, monkeypatch):
    """The README's Python block, as written, on a trained workdir: every public call it shows works."""
    _, workdir, _, _ = trained
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text[text.index("## In research code"):]
    start = section.index("```python\n") + len("```python\n")
    code = section[start:section.index("\n```", start)]
    assert "runs/quickstart" in code and "load_run" in code and "load_model" in code
    monkeypatch.chdir(ROOT)  # the snippet's image paths are the repository's samples
    namespace: dict = {}
    exec(compile(code.replace("runs/quickstart", workdir), "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["probs"].shape == (1, 10) and abs(float(namespace["probs"].sum()) - 1) < 1e-5
    assert [entry["index"] for entry in namespace["top"][0]] == list(np.argsort(
        -namespace["run"].predict(["docs/samples/digit_8.png"])[0], kind="stable")[:3])
    assert namespace["maps"].shape[0] == 1
    assert set(namespace["metrics"]) >= {"rank1", "rank5", "loss"}
    assert namespace["logits"].shape == (2, 10)
