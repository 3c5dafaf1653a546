"""Export: every architecture's SavedModel, ONNX, jax.export and TFLite files agree with the Flax model.

Each architecture is exported once (module fixture) and its artifacts are run in one separate process
that never imports cnn_flax (tests/support/export_artifacts_check.py), at a batch size other than the export's;
a trained quickstart run is exported from its checkpoint and predicted on from the folder alone, and a
Keras file is exported through init_from. Each architecture is exported at the smallest input it
accepts, with random weights scaled by fan-in (initialising the real way would compile each network
once more; any weights serve to compare two computations). The cheap checks (errors, overwrite,
benchmark lines) share one one-layer export.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from random_weights import random_variables
from repo_paths import ROOT  # noqa: E402
from run_configs import tiny_config
from xla_settings import xla_flags

from cnn_flax.data.augment.preprocess import normalize
from cnn_flax.data.dataset import DatasetInfo
from cnn_flax.errors import UserError
from cnn_flax.export import load_jax, open_export
from cnn_flax.export.function import build_inference_function, inference_variables
from cnn_flax.export.runtimes import TFLITE_INTERPRETERS, litert_installed, load_tflite, tflite_interpreter_class
from cnn_flax.export.write import write_export
from cnn_flax.models import create_model, init_traced
from cnn_flax.run import modes
from cnn_flax.run.export import export_run
from cnn_flax.run.predict import predict_from_export
from cnn_flax.run.train import train_and_evaluate

RUNTIMES = ("jax", "saved_model", "onnx", "tflite")
OUTPUTS = {"jax": ["probabilities", "top5"], "saved_model": ["probabilities", "top5"], "onnx": ["probabilities"],
           "tflite": ["probabilities", "top5"]}
# TFLite's float32 kernels (XNNPACK) sum in other orders than XLA's: measured 2e-6 at most on these networks,
# the same 1e-5 bound as the other runtimes holds for it.
TOLERANCE = 1e-5


@dataclasses.dataclass(frozen=True)
class Family:
    model: dict  # the config's model, with num_classes fixed where the data would give it
    size: int
    normalization: str
    # DeeperGoogLeNet's random BatchNorm statistics leave pixel-scale inputs (mean_rgb) unnormalised, and its
    # softmax saturates (probabilities 0 and 1, nothing to compare): its first conv takes pixels / 64.
    first_kernel_scale: float = 1.0


# Every architecture of the zoo, as its config uses it; MiniVGG is the trained quickstart run below.
FAMILIES = {
    "nin_cifar10": Family(dict(name="nin", num_classes=10), 32, "mean_image"),
    "minigooglenet_cifar10": Family(dict(name="minigooglenet", num_classes=10), 32, "mean_image"),
    "deeper_exp1_sgd": Family(dict(name="deepergooglenet", num_classes=7, stage4=False), 64, "mean_rgb",
                              first_kernel_scale=1 / 64),
    # 224: after five stride-2 stages the 7x7 average pool needs 7x7 maps. Auxiliary heads in the weights.
    "googlenet_imagenet": Family(dict(name="googlenet", num_classes=6, aux_heads=True), 224, "caffe"),
    # VGG A-LRN (the LRN column) at 32x32, the smallest input its five pools take: 28M parameters.
    "vgg_imagenet:A-LRN": Family(dict(name="vgg", variant="A-LRN", num_classes=4), 32, "caffe"),
}
# One batch size per network: each size is one more compile for JAX and TensorFlow. The export checks ONNX
# at batch 2 and TFLite stores batch 1; the quickstart's files also run batches 1 and 3 in turn, one load each.
ZOO_BATCHES, QUICKSTART_BATCHES = [3], [1, 3]


def synthetic_info(size: int, num_classes: int) -> DatasetInfo:
    rng = np.random.default_rng(1)
    return DatasetInfo("synthetic", num_classes, tuple(f"class_{i}" for i in range(num_classes)), (size, size, 3),
                       {}, np.asarray([123.7, 116.3, 103.5], np.float32),
                       rng.uniform(90, 140, (size, size, 3)).astype(np.float32))


def flax_probabilities(model, variables, images, method, info) -> np.ndarray:
    """The reference: the Flax module itself, on the training pipeline's normalisation."""
    logits = jax.jit(lambda v, x: model.apply(v, normalize(x, method, info), train=False))(variables, images)
    return np.asarray(jax.nn.softmax(np.asarray(logits, np.float32)), np.float32)


def tiny_quickstart(**overrides):
    """`tiny_config` cut to one epoch of two steps: enough for a checkpoint to export."""
    return tiny_config(**{"num_epochs": 1, "steps_per_epoch": 2, "eval_steps": 1, **overrides})


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Each family exported once, TFLite too: {config: (export folder, images, expected probabilities, variables)}."""
    root = tmp_path_factory.mktemp("zoo")
    cases = {}
    for seed, (config_name, family) in enumerate(FAMILIES.items()):
        model, size = create_model(family.model), family.size
        info = synthetic_info(size, family.model["num_classes"])
        variables = random_variables(model, size, seed, family.first_kernel_scale)
        images = np.random.default_rng(seed).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
        expected = flax_probabilities(model, variables, images, family.normalization, info)
        assert np.max(expected) < 0.999, config_name  # a saturated softmax would make the comparisons vacuous
        function = build_inference_function(model, variables, (size, size, 3), family.normalization, info)
        folder = str(root / config_name.replace(":", "_"))
        write_export(function, folder, info.class_names, {"config": config_name}, tflite=True)
        cases[config_name] = (folder, images, expected, variables)
    return cases


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A quickstart run (MiniVGG on digits, 16x16, two steps), exported from its checkpoint (TFLite too)."""
    workdir = str(tmp_path_factory.mktemp("quickstart"))
    config = tiny_quickstart()
    config.export.tflite = True
    train_and_evaluate(config, workdir)
    manifest = export_run(config, workdir)
    images = np.random.default_rng(7).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    paths = []
    for i, image in enumerate(images):
        paths.append(os.path.join(workdir, f"image_{i}.png"))
        Image.fromarray(image).save(paths[-1])
    return config, workdir, manifest, images, paths


@pytest.fixture(scope="module")
def separate_process(zoo, trained, tmp_path_factory):
    """Every artifact checked by tests/support/export_artifacts_check.py in its own process; its JSON report."""
    root = tmp_path_factory.mktemp("check")
    config, workdir, _, images, _ = trained
    from cnn_flax.run.experiment import build_experiment
    from cnn_flax.training.checkpoint import load_variables

    experiment = build_experiment(config)
    template = jax.eval_shape(lambda: init_traced(experiment.model, experiment.input_shape, jax.random.key(0)))
    variables = load_variables(workdir, template)
    expected = flax_probabilities(experiment.model, variables, images, "scale", None)
    cases = {name: (folder, imgs, want, ZOO_BATCHES) for name, (folder, imgs, want, _) in zoo.items()}
    cases["quickstart"] = (os.path.join(workdir, "export"), images, expected, QUICKSTART_BATCHES)
    spec = []
    for name, (folder, imgs, want, batches) in cases.items():
        stem = str(root / name.replace(":", "_"))
        np.save(stem + "_images.npy", imgs)
        np.save(stem + "_expected.npy", want)
        spec.append(dict(name=name, dir=folder, images=stem + "_images.npy", expected=stem + "_expected.npy",
                         batches=batches))
    with open(root / "spec.json", "w") as handle:
        json.dump(spec, handle)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # As in this process, on one device: compiles are the slow part.
    env.update(JAX_DISABLE_MOST_OPTIMIZATIONS="1", XLA_FLAGS=xla_flags(1))
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "support", "export_artifacts_check.py"),
                           str(root / "spec.json")], cwd=str(root), env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("config_name", [*FAMILIES, "quickstart"])
def test_every_format_agrees_with_the_flax_model(separate_process, config_name):
    results = separate_process[config_name]
    assert sorted(results) == sorted(RUNTIMES)
    for runtime, result in results.items():
        assert result["same_top5"], (runtime, result)
        assert result["max_abs_difference"] <= TOLERANCE, (runtime, result)
        assert result["outputs"] == OUTPUTS[runtime], (runtime, result)
    # TFLite stores batch 1 with a resizable batch dimension; the checks above resized it to 3.
    size = FAMILIES[config_name].size if config_name in FAMILIES else 16
    assert results["tflite"]["input"] == {"shape": [1, size, size, 3], "shape_signature": [-1, size, size, 3],
                                          "interpreter": "ai_edge_litert" if litert_installed() else "tensorflow"}


def test_the_checking_process_never_loaded_cnn_flax_or_flax(separate_process):
    assert separate_process["modules_loaded"] == []


def test_inference_weights_leave_out_the_auxiliary_heads(zoo):
    family = FAMILIES["googlenet_imagenet"]
    variables = zoo["googlenet_imagenet"][3]
    kept = inference_variables(create_model(family.model), variables, (family.size, family.size, 3))
    assert {"aux_4a", "aux_4d"} <= set(variables["params"])
    assert set(kept["params"]) == set(variables["params"]) - {"aux_4a", "aux_4d"}


def test_export_json_describes_the_folder(trained):
    config, workdir, manifest, _, _ = trained
    folder = os.path.join(workdir, "export")
    with open(os.path.join(folder, "export.json")) as handle:
        assert json.load(handle) == manifest
    assert manifest["formats"] == {"jax": "model.jax", "saved_model": "saved_model", "onnx": "model.onnx",
                                   "tflite": "model.tflite", "safetensors": "model.safetensors"}
    assert manifest["input_shape"] == [16, 16, 3]
    assert manifest["class_names"] == [str(i) for i in range(10)]
    assert manifest["normalization"] == {"method": "scale"}
    assert manifest["image_decoding"] == {"kind": "keras_load_img", "interpolation": "nearest"}
    assert manifest["source"] == {"checkpoint": os.path.join(os.path.abspath(workdir), "checkpoints", "epoch_1"),
                                  "epoch": 1}
    assert manifest["model"]["name"] == "minivgg" and manifest["compute_dtype"] == "float32"
    assert set(manifest["versions"]) == {"cnn_flax", "jax"}
    with open(os.path.join(folder, "labels.txt")) as handle:
        assert handle.read().splitlines() == manifest["class_names"]
    listed = {os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files}
    assert set(manifest["files"]) == listed - {"export.json"}
    assert "saved_model/saved_model.pb" in manifest["files"]
    assert not [name for name in os.listdir(workdir) if ".partial" in name]


def test_predict_from_the_export_folder_matches_predict_on_the_run(trained, capsys):
    config, workdir, _, images, paths = trained
    from_run = modes.predict(config, workdir, paths)
    for runtime in (*RUNTIMES, "tflite"):
        from_export = predict_from_export(os.path.join(workdir, "export"), paths, runtime=runtime)
        for a, b in zip(from_run, from_export, strict=True):
            assert a["image"] == b["image"]
            assert [e["index"] for e in a["top5"]] == [e["index"] for e in b["top5"]]
            np.testing.assert_allclose([e["prob"] for e in a["top5"]], [e["prob"] for e in b["top5"]], atol=1e-5)
    with open(os.path.join(workdir, "predictions.json")) as handle:
        assert [r["image"] for r in json.load(handle)] == [r["image"] for r in from_run]
    assert os.path.isfile(os.path.join(workdir, "predictions.csv"))
    direct = load_jax(os.path.join(workdir, "export", "model.jax"))(images)
    assert direct["probabilities"].shape == (3, 10) and direct["top5"].dtype == np.int32


def test_launch_predicts_from_an_export_folder_without_a_config(trained, tmp_path):
    """launch.py's flags and dispatch, run in this process: a new one would only add JAX's and TensorFlow's
    start-up (the folder alone is what it reads either way)."""
    import launch

    _, workdir, _, _, paths = trained
    launch.FLAGS.unparse_flags()  # every flag at its default: no --config
    try:
        launch.parse_flags(["launch.py", "--mode=predict", f"--export_dir={workdir}/export",
                            f"--images={','.join(paths)}", f"--workdir={tmp_path}", "--export_runtime=tflite"])
        assert launch.FLAGS.config is None
        assert launch.run() == 0
    finally:
        launch.FLAGS.unparse_flags()
    with open(tmp_path / "predictions.json") as handle:
        from_launch = json.load(handle)
    with open(os.path.join(workdir, "predictions.json")) as handle:
        assert [r["top5"][0]["index"] for r in from_launch] == [r["top5"][0]["index"] for r in json.load(handle)]


# Bad input: one line each.

def test_a_half_precision_run_exports_a_float32_graph(trained, monkeypatch):
    import cnn_flax.run.export as run

    config, workdir, _, _, _ = trained
    config = tiny_quickstart(half_precision=True)
    captured = {}
    monkeypatch.setattr(run, "write_export", lambda function, *args, **kwargs: captured.update(
        function=function, facts=args[2]))
    run.export_run(config, workdir, overwrite=True)
    function = captured["function"]
    assert function.model.dtype == jnp.float32 and captured["facts"]["trained_dtype"] == "bfloat16"
    jaxpr = jax.make_jaxpr(function.bound_probabilities())(function.image_spec(2))
    assert "bf16" not in str(jaxpr)


def test_export_without_a_checkpoint_or_init_from(tmp_path):
    with pytest.raises(UserError, match="no checkpoint in .* and no init_from"):
        export_run(tiny_quickstart(), str(tmp_path))


def test_export_from_keras_weights_gives_keras_predictions(tmp_path):
    """--config.init_from=FILE.h5 without a checkpoint: the quickstart's MiniVGG (16x16), built and saved by Keras."""
    keras = pytest.importorskip("keras")
    import keras_models

    keras.utils.set_random_seed(5)
    network = keras_models.minivgg(keras, (16, 16, 3), 10)
    rng = np.random.default_rng(5)
    for layer in network.layers:  # BatchNorm statistics far from the initial 0 and 1, so inference mode shows
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([gamma + 0.2 * rng.normal(size=gamma.shape), 0.1 * rng.normal(size=beta.shape),
                               0.3 * rng.normal(size=mean.shape), rng.uniform(0.2, 2.0, variance.shape)])
    weights = str(tmp_path / "minivgg_keras.h5")
    network.save(weights)
    config = tiny_quickstart(init_from=weights, **{"export.onnx": "no"})
    assert config.data.normalize == "scale"  # the Keras side below divides by 255 for it
    manifest = export_run(config, str(tmp_path / "run"))
    assert manifest["source"] == {"init_from": weights}
    assert manifest["formats"] == {"jax": "model.jax", "saved_model": "saved_model", "safetensors": "model.safetensors"}
    images = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    keras_probabilities = network.predict(images.astype(np.float32) / 255.0, verbose=0)
    assert np.max(keras_probabilities) < 0.999 and np.min(np.max(keras_probabilities, axis=1)) > 0.2
    exported = load_jax(tmp_path / "run" / "export" / "model.jax")(images)
    np.testing.assert_allclose(exported["probabilities"], keras_probabilities, atol=1e-5)
    np.testing.assert_array_equal(exported["top5"], np.argsort(-keras_probabilities, axis=1)[:, :5])


def test_an_existing_export_folder_is_refused_unless_overwrite(trained):
    config, workdir, _, _, _ = trained
    with pytest.raises(UserError, match="export already exists; pass --overwrite"):
        export_run(config, workdir)
    with pytest.raises(UserError, match=r"--checkpoint=3: no such epoch .*\(saved: 1\)"):
        export_run(config, workdir, checkpoint="3", overwrite=True)


def _tiny_function(min_pool: bool = False, sort: bool = False):
    """A one-layer classifier (seconds to export); with `min_pool`, an operation jax2onnx lacks; with `sort`,
    one TensorFlow Lite's converter lacks."""
    import flax.linen as nn

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            if min_pool:
                x = jax.lax.reduce_window(x, jnp.inf, jax.lax.min, (1, 2, 2, 1), (1, 1, 1, 1), "SAME")
            if sort:
                x = jnp.sort(x, axis=-1)
            return nn.Dense(3)(x.reshape((x.shape[0], -1)))

    model = Tiny()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))
    return build_inference_function(model, variables, (4, 4, 3), "scale", None)


def test_an_operation_onnx_cannot_express_is_named_and_the_rest_is_written(tmp_path, caplog):
    folder = str(tmp_path / "export")
    manifest = write_export(_tiny_function(min_pool=True), folder, ["a", "b", "c"], {})
    assert manifest["formats"] == {"jax": "model.jax", "saved_model": "saved_model"}
    assert "'reduce_window_min'" in manifest["notes"]["onnx"]
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [manifest["notes"]["onnx"]]
    assert not os.path.exists(os.path.join(folder, "model.onnx"))
    with pytest.raises(UserError, match="'reduce_window_min'"):
        write_export(_tiny_function(min_pool=True), str(tmp_path / "required"), ["a", "b", "c"], {}, onnx="yes")
    assert os.path.isdir(tmp_path / "required" / "saved_model")  # the other formats are still written


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> str:
    """The one-layer classifier exported in every format; tests that change it work on a copy."""
    folder = str(tmp_path_factory.mktemp("tiny") / "export")
    write_export(_tiny_function(), folder, ["a", "b", "c"], {}, onnx="yes", tflite=True)
    return folder


def test_overwrite_replaces_tflite_runs_and_a_damaged_model_onnx_is_refused(tiny_export, tmp_path):
    folder = str(tmp_path / "export")
    shutil.copytree(tiny_export, folder)
    with pytest.raises(UserError, match="already exists"):
        write_export(_tiny_function(), folder, ["a", "b", "c"], {})
    write_export(_tiny_function(), folder, ["x", "y", "z"], {}, overwrite=True, onnx="yes", tflite=True)
    assert open_export(folder, "onnx").class_names == ("x", "y", "z")
    images = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    np.testing.assert_allclose(open_export(folder, "tflite").probabilities(images),
                               open_export(folder, "jax").probabilities(images), atol=1e-6)
    with open(os.path.join(folder, "model.onnx"), "r+b") as handle:
        handle.truncate(100)
    image = str(tmp_path / "image.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(image)
    with pytest.raises(UserError, match=r"model.onnx is damaged \(its sha256 differs"):
        predict_from_export(folder, [image], runtime="onnx")


def _interpreter(kind: str) -> str:
    """`kind`, or a skip where the LiteRT package is not installed (TensorFlow's interpreter always is)."""
    if kind == "litert" and not litert_installed():
        pytest.skip("ai-edge-litert is not installed (pip install 'cnn_flax[export]')")
    return kind


@pytest.mark.parametrize("kind", TFLITE_INTERPRETERS)
def test_each_tflite_interpreter_runs_the_export_like_jax(tiny_export, kind):
    run = load_tflite(os.path.join(tiny_export, "model.tflite"), _interpreter(kind))
    reference = open_export(tiny_export, "jax").probabilities
    for batch in (1, 5, 2):  # the stored batch is 1: each call resizes the input
        images = np.random.default_rng(batch).integers(0, 256, (batch, 4, 4, 3), dtype=np.uint8)
        got = run(images)
        assert got.shape == (batch, 3) and got.dtype == np.float32
        np.testing.assert_allclose(got, reference(images), atol=1e-6)


@pytest.mark.parametrize("kind", TFLITE_INTERPRETERS)
def test_each_tflite_interpreter_predicts_the_trained_run_like_flax(trained, kind):
    config, workdir, _, images, paths = trained
    run = load_tflite(os.path.join(workdir, "export", "model.tflite"), _interpreter(kind))
    from_run = modes.predict(config, workdir, paths)
    got = run(images)
    assert [int(i) for i in np.argmax(got, axis=1)] == [r["top5"][0]["index"] for r in from_run]
    np.testing.assert_allclose(np.max(got, axis=1), [r["top5"][0]["prob"] for r in from_run], atol=1e-5)


def test_litert_is_preferred_where_installed_and_tensorflow_serves_otherwise(monkeypatch):
    import cnn_flax.export.runtimes as runtimes

    if litert_installed():
        assert tflite_interpreter_class().__module__.startswith("ai_edge_litert")
    monkeypatch.setattr(runtimes, "litert_installed", lambda: False)
    assert tflite_interpreter_class().__module__.startswith("tensorflow")
    with pytest.raises(UserError, match="TFLite interpreter 'tflm' is not known; use one of litert, tensorflow"):
        tflite_interpreter_class("tflm")
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # as if the package were absent
    with pytest.raises(UserError, match=r"needs the ai-edge-litert package; pip install ai-edge-litert"):
        tflite_interpreter_class("litert")


def test_onnx_required_without_the_extra_is_one_line(tmp_path, monkeypatch):
    import cnn_flax.export.write as write

    monkeypatch.setattr(write, "onnx_available", lambda: False)
    with pytest.raises(UserError, match=r"export.onnx=yes needs jax2onnx and onnxruntime; pip install"):
        write_export(_tiny_function(), str(tmp_path / "a"), ["a", "b", "c"], {}, onnx="yes")
    manifest = write_export(_tiny_function(), str(tmp_path / "b"), ["a", "b", "c"], {}, onnx="auto")
    assert "onnx" not in manifest["formats"] and "not installed" in manifest["notes"]["onnx"]


def test_a_model_without_classes_is_not_exported(tmp_path):
    from configs import conv1x1_demo

    with pytest.raises(UserError, match="gives feature maps, not class probabilities"):
        export_run(conv1x1_demo.get_config("direct"), str(tmp_path))


def test_benchmark_prints_one_line_per_runtime(tiny_export, monkeypatch):
    from cnn_flax.bench import export as benchmark

    monkeypatch.setattr(benchmark, "MIN_SECONDS", 0.02)  # the lines, not the figures, are under test
    lines = benchmark.benchmark_export(tiny_export, batches=(1, 4)).splitlines()
    assert [line.split()[1] for line in lines] == ["runtime=jax", "runtime=tf_saved_model", "runtime=onnxruntime",
                                                  "runtime=tflite"]
    for line in lines:
        fields = dict(field.split("=") for field in line.split()[2:])
        assert list(fields) == ["batch1_img_per_s", "batch4_img_per_s"]
        assert all(float(value) > 0 for value in fields.values())


def test_exporting_a_moving_average_the_run_did_not_keep_is_one_line(trained):
    _, workdir, _, _, _ = trained
    with pytest.raises(UserError, match="without a moving average of the weights"):
        export_run(tiny_quickstart(ema_eval=True), workdir, overwrite=True)


def test_tflite_that_cannot_convert_is_one_line_after_the_other_formats(tmp_path):
    folder = tmp_path / "export"
    with pytest.raises(UserError, match=r"^model.tflite not written: TensorFlow Lite cannot convert this model "
                                        r"\('vhlo.sort_v1' op is not part of the vhlo support yet.\); the other"):
        write_export(_tiny_function(sort=True), str(folder), ["a", "b", "c"], {}, onnx="no", tflite=True)
    with open(folder / "export.json") as handle:
        assert json.load(handle)["formats"] == {"jax": "model.jax", "saved_model": "saved_model"}
