"""torchvision's VGG weights in our VGG, checked against torchvision itself, and the torch file reader.

torchvision builds the reference networks with random weights; `torch.save` writes them in both of its file
layouts (the zip archive of today, and the stream of pickles the published VGG16/VGG19 files use); our
reader, which never imports torch, must give torch's numbers, and our VGG with those weights torchvision's
logits. The full networks at 224x224 (the classifier reads 7x7x512 maps) are slow on a CPU, so the fast
tests compare the convolutional stacks of every column at 32x32 and the slow ones the logits of A and D.
torchvision's networks are built and run by tests/support/torchvision_reference.py in a process of their own
(torchvision's triton cannot start beside TensorFlow); torch alone is imported here, to write test files.
"""

import importlib.util
import json
import os
import pickle
import subprocess
import sys
import zipfile

import jax
import ml_dtypes
import numpy as np
import pytest
from PIL import Image
from random_weights import variable_shapes
from repo_paths import ROOT  # noqa: E402

from cnn_flax.errors import UserError
from cnn_flax.models import create_model, init_variables
from cnn_flax.pretrained import imagenet_class_names
from cnn_flax.pretrained.safetensors_io import save_variables
from cnn_flax.pretrained.torch_pickle import read_torch_file
from cnn_flax.pretrained.weight_files import load_weight_file
from cnn_flax.run import modes

torch = pytest.importorskip("torch")
if importlib.util.find_spec("torchvision") is None:
    pytest.skip("torchvision is not installed (pip install -e '.[torch]')", allow_module_level=True)
REFERENCE = os.path.join(ROOT, "tests", "support", "torchvision_reference.py")


def torchvision_references(folder, networks: dict[str, dict]) -> dict[str, tuple[str, np.ndarray | None]]:
    """torchvision's networks, all built in one process: for each file name, a spec (kind: a column's features,
    the full model, or features + a 1x1 classifier; variant, seed, batch_norm, layout, NHWC images or None).
    Returns the saved file's path and, where images were given, the network's outputs on them."""
    specs, done = [], {}
    for name, options in networks.items():
        spec = {**dict(kind="features", variant="A", seed=0, batch_norm=False, layout="zip"), **options,
                "weights": str(folder / name), "outputs": str(folder / f"{name}.out.npy")}
        if spec["images"] is not None:
            np.save(folder / f"{name}.in.npy", spec["images"])
            spec["images"] = str(folder / f"{name}.in.npy")
        specs.append(spec)
    (folder / "specs.json").write_text(json.dumps(specs))
    run = subprocess.run([sys.executable, REFERENCE, str(folder / "specs.json")], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    for spec in specs:
        done[os.path.basename(spec["weights"])] = (spec["weights"],
                                                    np.load(spec["outputs"]) if spec["images"] else None)
    return done


COLUMN_IMAGES = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype(np.float32)
PREDICT_PIXELS = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
TORCHVISION_MEAN, TORCHVISION_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
# Every network the fast tests compare with, made in one start of torch for the module.
NETWORKS = {
    **{f"vgg_{variant}.pth": dict(variant=variant, images=COLUMN_IMAGES) for variant in "ABDE"},
    "vgg11.pth": dict(images=None),
    "vgg11_bn.pth": dict(batch_norm=True, images=None),
    "vgg11-32.pth": dict(kind="classifier", seed=4, layout="legacy",
                         images=((PREDICT_PIXELS / 255.0 - TORCHVISION_MEAN) / TORCHVISION_STD).astype(np.float32)),
}


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[str, tuple[str, np.ndarray | None]]:
    return torchvision_references(tmp_path_factory.mktemp("torchvision"), NETWORKS)


def saved_state(path: str) -> dict:
    return torch.load(path, weights_only=True)


def ours(variant: str, size: int, **options):
    """Our VGG and the shapes of its variables: a file gives every weight, so nothing needs initialising."""
    model = create_model({"name": "vgg", "variant": variant, "num_classes": 1000, **options})
    return model, variable_shapes(model, (size, size, 3))


def test_reader_gives_torchs_numbers_for_both_file_layouts_without_torch(tmp_path):
    """dtypes, a transposed (non-contiguous) tensor, two views of one storage, one tensor under two names, a
    scalar, an empty tensor; every array is writable and apart from the others."""
    torch.manual_seed(0)
    base = torch.randn(6, 4)
    state = {"weight": torch.randn(3, 2, 3, 3), "half": torch.randn(5).half(), "bf16": torch.randn(7).bfloat16(),
             "steps": torch.tensor(12345678912, dtype=torch.int64), "mask": torch.tensor([True, False, True]),
             "transposed": base.t(), "rows": base[2:4], "empty": torch.zeros(0, 3), "int8": torch.arange(-4, 4,
                                                                                                        dtype=torch.int8)}
    state["tied"] = state["weight"]  # one storage, whole, for two names
    for legacy in (False, True):
        path = tmp_path / f"state_{legacy}.pth"
        torch.save(state, path, _use_new_zipfile_serialization=not legacy)
        assert zipfile.is_zipfile(path) is not legacy
        read = read_torch_file(path)
        assert list(read) == list(state)
        for name, tensor in state.items():
            expected = (tensor.float().numpy().astype(ml_dtypes.bfloat16) if tensor.dtype == torch.bfloat16
                        else tensor.numpy())
            assert read[name].dtype == expected.dtype and read[name].shape == expected.shape, name
            np.testing.assert_array_equal(read[name], expected, err_msg=name)
            assert read[name].flags.c_contiguous and read[name].flags.writeable
        read["weight"] += 1
        np.testing.assert_array_equal(read["tied"], state["tied"].numpy())


def test_reader_unwraps_a_checkpoint_dict_and_reads_parameters(tmp_path):
    layer = torch.nn.Linear(3, 2)
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 3, "state_dict": layer.state_dict(), "params": list(layer.parameters())}, path)
    read = read_torch_file(path)
    assert sorted(read) == ["bias", "weight"]
    np.testing.assert_array_equal(read["weight"], layer.weight.detach().numpy())


class _Payload:
    """Unpickling this runs `os.system`: what a malicious .pth file does."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("legacy", [False, True])
def test_a_file_that_would_run_code_is_refused_and_runs_nothing(tmp_path, legacy):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "x": _Payload(str(marker))}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UserError, match=r"evil.pth: the file needs posix.system.*run code"):
        read_torch_file(path)
    assert not marker.exists()


def test_damaged_and_foreign_files_are_named(tmp_path):
    torch.save({"w": torch.arange(1000.0)}, tmp_path / "ok.pth")
    raw = (tmp_path / "ok.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match="cut.pth: not a readable PyTorch file"):
        read_torch_file(tmp_path / "cut.pth")
    (tmp_path / "plain.pth").write_bytes(pickle.dumps({"w": [1, 2]}, protocol=2))
    with pytest.raises(UserError, match="plain.pth: not a PyTorch file"):
        read_torch_file(tmp_path / "plain.pth")
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "linear.pth")
    model, template = ours("A", 32, include_top=False)
    with pytest.raises(UserError, match="not a torchvision VGG state dict"):
        load_weight_file(str(tmp_path / "linear.pth"), model, template, (32, 32, 3))


@pytest.mark.parametrize("variant", ["A", "B", "D", "E"])
def test_every_columns_convolutions_equal_torchvisions(references, variant):
    """include_top=False at 32x32: the last feature map [1, 1, 512] of each column equals torchvision's."""
    path, expected = references[f"vgg_{variant}.pth"]
    model, template = ours(variant, 32, include_top=False)
    variables = load_weight_file(path, model, template, (32, 32, 3))
    got = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, COLUMN_IMAGES))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_wrong_column_batchnorm_files_and_sizes_are_one_line_errors(references):
    vgg11, vgg11_bn = references["vgg11.pth"][0], references["vgg11_bn.pth"][0]
    model, template = ours("D", 32, include_top=False)
    with pytest.raises(UserError, match=r"vgg11.pth: 8 convolutions in the file but 13 in VGG column D; it is vgg11: "
                                        r"set --config.model.variant=A"):
        load_weight_file(vgg11, model, template, (32, 32, 3))
    model, template = ours("A", 32, include_top=False)
    with pytest.raises(UserError, match="vgg11_bn.pth: a VGG with BatchNorm"):
        load_weight_file(vgg11_bn, model, template, (32, 32, 3))
    model, template = ours("A", 32)  # a classifier, but only the convolutions in the file
    with pytest.raises(UserError, match="no classifier .* include_top=False"):
        load_weight_file(vgg11, model, template, (32, 32, 3))


FULL_IMAGES = np.random.default_rng(0).standard_normal((1, 224, 224, 3)).astype(np.float32)
# The stream-of-pickles layout torchvision's published VGG files have, and timm's Hub file: model.safetensors in
# timm's layout, written by the safetensors library.
FULL_NETWORKS = {"vgg_A.pth": dict(kind="full", variant="A", layout="legacy", images=FULL_IMAGES),
                 "model.safetensors": dict(kind="full", variant="D", layout="timm", images=FULL_IMAGES)}


@pytest.fixture(scope="module")
def full_references(tmp_path_factory) -> dict[str, tuple[str, np.ndarray | None]]:
    """Both full networks from one start of torch (the slow tests')."""
    return torchvision_references(tmp_path_factory.mktemp("torchvision_full"), FULL_NETWORKS)


def _full_model_check(full_references, name: str, variant: str) -> None:
    path, expected = full_references[name]
    model, template = ours(variant, 224)
    variables = load_weight_file(str(path), model, template, (224, 224, 3))
    got = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, FULL_IMAGES))
    assert got.shape == (1, 1000)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert np.argmax(got) == np.argmax(expected)
    with pytest.raises(UserError, match=r"the classifier reads a 7x7x512 feature map \(224x224 images\) but the model "
                                        r"is built for 64x64: set data.image_size=224, or use include_top=False"):
        load_weight_file(str(path), *ours(variant, 64), (64, 64, 3))


@pytest.mark.slow
def test_vgg_a_from_a_torchvision_pth_gives_torchvisions_logits(full_references):
    _full_model_check(full_references, "vgg_A.pth", "A")


@pytest.mark.slow
def test_vgg_d_from_a_timm_safetensors_file_gives_torchvisions_logits(full_references):
    _full_model_check(full_references, "model.safetensors", "D")


def test_a_new_classifier_keeps_the_models_own_layer(references, tmp_path):
    """init_skip=predictions with 10 classes: every other layer from the file, the classifier as initialised."""
    state = saved_state(references["vgg11.pth"][0])
    rng = np.random.default_rng(0)
    for index, shape in ((0, (4096, 512)), (3, (4096, 4096)), (6, (1000, 4096))):
        state[f"classifier.{index}.weight"] = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))
        state[f"classifier.{index}.bias"] = torch.from_numpy(rng.standard_normal(shape[:1], dtype=np.float32))
    torch.save(state, tmp_path / "vgg11_32.pth")  # a classifier for 1x1 maps: the same reordering at 32x32
    model = create_model({"name": "vgg", "variant": "A", "num_classes": 10})
    template = init_variables(model, jax.random.key(0), (32, 32, 3))
    with pytest.raises(UserError, match=r"layer predictions has kernel \(4096, 1000\) in the file but \(4096, 10\) "
                                        r"in the model; the file classifies 1000 classes.*init_skip=predictions"):
        load_weight_file(str(tmp_path / "vgg11_32.pth"), model, template, (32, 32, 3))
    loaded = load_weight_file(str(tmp_path / "vgg11_32.pth"), model, template, (32, 32, 3), skip=("predictions",))
    np.testing.assert_array_equal(loaded["params"]["predictions"]["kernel"],
                                  template["params"]["predictions"]["kernel"])
    np.testing.assert_array_equal(loaded["params"]["fc2"]["kernel"], state["classifier.3.weight"].numpy().T)
    np.testing.assert_array_equal(loaded["params"]["block1_conv1"]["kernel"],
                                  state["features.0.weight"].numpy().transpose(2, 3, 1, 0))
    save_variables(tmp_path / "ours.safetensors", loaded)  # and our own file of it reads back unchanged
    again = load_weight_file(str(tmp_path / "ours.safetensors"), model, template, (32, 32, 3))
    jax.tree_util.tree_map(np.testing.assert_array_equal, again, loaded)


def test_mode_predict_with_torchvision_weights_and_normalisation(references, tmp_path):
    """--mode=predict as the docs give it (vgg_imagenet:A, init_from=the .pth, data.normalize=torchvision) at 32x32,
    where torchvision's convolutions end in 1x1 maps: torch's own layers with its ImageNet normalisation agree."""
    import importlib

    weights, logits = references["vgg11-32.pth"]
    config = importlib.import_module("configs.vgg_imagenet").get_config("A")
    config.data.image_size = 32
    config.data.normalize = "torchvision"
    config.init_from = weights
    paths = []
    for i, image in enumerate(PREDICT_PIXELS):
        paths.append(str(tmp_path / f"photo_{i}.png"))
        Image.fromarray(image).save(paths[-1])
    predictions = modes.predict(config, str(tmp_path / "run"), paths)
    expected = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    for row, entry in zip(expected, predictions, strict=True):
        assert [p["index"] for p in entry["top5"]] == list(np.argsort(-row, kind="stable")[:5])
        np.testing.assert_allclose([p["prob"] for p in entry["top5"]], np.sort(row)[::-1][:5], rtol=1e-4)
    names = imagenet_class_names()
    assert [p["name"] for p in predictions[0]["top5"]] == [names[p["index"]] for p in predictions[0]["top5"]]
