"""Safetensors and the Hugging Face Hub: every zoo model round-trips exactly; an export folder is a Hub repository.

The Hub is never reached: a trained quickstart run's export folder is put into a Hugging Face cache laid
out as `huggingface_hub` lays it out (blobs named by sha256, snapshots of symbolic links, refs), and
`init_from=hf://...` must find it there with HF_HUB_OFFLINE=1. Pushing is checked as the folder that
`upload_folder` receives, file by file.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import huggingface_hub
import huggingface_hub.constants as hub_constants
import jax
import numpy as np
import pytest
import yaml
from repo_paths import ROOT
from run_configs import tiny_config
from safetensors.numpy import load_file

from cnn_flax.errors import UserError
from cnn_flax.models import create_model, init_traced
from cnn_flax.models.summary import layer_rows
from cnn_flax.pretrained import hub
from cnn_flax.pretrained.safetensors_io import flatten_variables, read_safetensors, save_variables
from cnn_flax.pretrained.weight_files import load_weight_file
from cnn_flax.run.experiment import build_experiment, initial_variables
from cnn_flax.run.export import export_run
from cnn_flax.run.train import train_and_evaluate
from cnn_flax.training.checkpoint import load_variables

# Every architecture of the zoo as its configs use it, at the smallest input it takes (shapes only: no compile).
ZOO = {
    "minivgg": (dict(name="minivgg", num_classes=10), 32),
    "minigooglenet": (dict(name="minigooglenet", num_classes=10), 32),
    "deepergooglenet": (dict(name="deepergooglenet", num_classes=200, stage4=True), 64),
    "deepergooglenet_no4": (dict(name="deepergooglenet", num_classes=200, stage4=False), 64),
    "googlenet_aux": (dict(name="googlenet", num_classes=1000, aux_heads=True), 224),
    "nin": (dict(name="nin", num_classes=10), 32),
    "conv1x1_bottleneck": (dict(name="conv1x1_demo", variant="bottleneck"), 28),
    **{f"vgg_{v}": (dict(name="vgg", variant=v, num_classes=10), 32) for v in ("A", "A-LRN", "B", "C", "D", "E")},
}


def random_like(shapes, seed: int):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)


@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_model_round_trips_exactly_with_summary_layer_names(tmp_path, name):
    options, size = ZOO[name]
    if options["name"] == "conv1x1_demo":
        size_shape = (28, 28, 192)
    else:
        size_shape = (size, size, 3)
    model = create_model(options)
    shapes = jax.eval_shape(lambda: init_traced(model, size_shape, jax.random.key(0)))
    variables = random_like(shapes, seed=len(name))
    path = tmp_path / "model.safetensors"
    save_variables(path, variables, {"note": name})
    flat = load_file(str(path))  # the safetensors library itself reads our file
    assert set(flat) == set(flatten_variables(variables))
    assert {key.split("/")[0] for key in flat} == set(variables)
    rows, _ = layer_rows(model, size_shape)
    assert {key.split("/")[1] for key in flat} <= {row.name for row in rows}
    arrays, metadata = read_safetensors(path)
    assert metadata == {"format": "cnn_flax", "note": name}
    loaded = load_weight_file(str(path), model, shapes, size_shape)
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(variables)
    for got, want in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(variables), strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_files_of_the_safetensors_library_read_the_same_in_every_dtype(tmp_path):
    import ml_dtypes
    from safetensors.numpy import save_file

    rng = np.random.default_rng(3)
    tensors = {"bf16": rng.normal(size=(5, 3)).astype(ml_dtypes.bfloat16), "f16": rng.normal(size=7).astype(np.float16),
               "f64": rng.normal(size=(2, 2, 2)), "scalar": np.asarray(3.5, np.float32),
               "empty": np.zeros((0, 4), np.float32), "flags": np.asarray([True, False, True]),
               "i8": np.arange(-3, 3, dtype=np.int8), "u16": np.arange(9, dtype=np.uint16).reshape(3, 3)}
    save_file(tensors, str(tmp_path / "theirs.safetensors"), metadata={"source": "safetensors"})
    arrays, metadata = read_safetensors(tmp_path / "theirs.safetensors")
    assert metadata == {"source": "safetensors"} and set(arrays) == set(tensors)
    for name, expected in tensors.items():
        got = arrays[name]
        assert got.dtype == expected.dtype and got.shape == expected.shape and got.flags.writeable, name
        assert got.tobytes() == expected.tobytes(), name


def test_another_models_file_and_damaged_files_are_one_line_errors(tmp_path):
    small = create_model(ZOO["vgg_A"][0])
    shapes = jax.eval_shape(lambda: init_traced(small, (32, 32, 3), jax.random.key(0)))
    save_variables(tmp_path / "a.safetensors", random_like(shapes, 0))
    other = create_model(ZOO["vgg_B"][0])
    other_shapes = jax.eval_shape(lambda: init_traced(other, (32, 32, 3), jax.random.key(0)))
    with pytest.raises(UserError, match=r"a.safetensors: params/block1_conv2/bias is not in the file"):
        load_weight_file(str(tmp_path / "a.safetensors"), other, other_shapes, (32, 32, 3))
    eleven = create_model(dict(ZOO["vgg_A"][0], num_classes=11))
    eleven_shapes = jax.eval_shape(lambda: init_traced(eleven, (32, 32, 3), jax.random.key(0)))
    with pytest.raises(UserError, match=r"params/predictions/bias is \(10,\) in the file but \(11,\) in the model; "
                                        r"the file classifies 10 classes.*init_skip=predictions"):
        load_weight_file(str(tmp_path / "a.safetensors"), eleven, eleven_shapes, (32, 32, 3))
    raw = (tmp_path / "a.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match="cut.safetensors: tensor .* outside the file"):
        read_safetensors(tmp_path / "cut.safetensors")
    (tmp_path / "text.safetensors").write_bytes(b"hello world, not tensors")
    with pytest.raises(UserError, match="text.safetensors: not a safetensors file"):
        read_safetensors(tmp_path / "text.safetensors")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A quickstart run (two steps), a recorded launch command, and its export (no ONNX/TFLite: not what is tested)."""
    workdir = str(tmp_path_factory.mktemp("quickstart"))
    config = tiny_config(num_epochs=1, steps_per_epoch=2, eval_steps=1)
    config.export.onnx = "no"
    train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "run_info.json")) as handle:
        info = json.load(handle)
    info["commands"][-1]["command"] = "python launch.py --config configs/quickstart.py --workdir runs/q"
    with open(os.path.join(workdir, "run_info.json"), "w") as handle:
        json.dump(info, handle)
    manifest = export_run(config, workdir)
    exp = build_experiment(config)
    template = jax.eval_shape(lambda: init_traced(exp.model, exp.input_shape, jax.random.key(0)))
    return config, workdir, manifest, load_variables(workdir, template)


def test_export_writes_safetensors_config_and_a_model_card(exported):
    config, workdir, manifest, variables = exported
    folder = os.path.join(workdir, "export")
    flat = load_file(os.path.join(folder, "model.safetensors"))
    expected = flatten_variables(variables)
    assert sorted(flat) == sorted(expected) and any(k.startswith("batch_stats/") for k in flat)
    for key, value in expected.items():
        np.testing.assert_array_equal(flat[key], value, err_msg=key)
    assert manifest["formats"]["safetensors"] == "model.safetensors"
    with open(os.path.join(folder, "config.json")) as handle:
        hub_config = json.load(handle)
    assert hub_config["library_name"] == "cnn_flax" and hub_config["model"] == manifest["model"]
    assert hub_config["input_shape"] == [16, 16, 3] and hub_config["num_classes"] == 10
    assert hub_config["id2label"] == {str(i): str(i) for i in range(10)}
    assert hub_config["normalization"] == {"method": "scale"}
    card = open(os.path.join(folder, "README.md")).read()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert yaml.safe_load(front)["library_name"] == "cnn_flax"
    with open(os.path.join(workdir, "metrics.json")) as handle:
        metrics = json.load(handle)
    assert f"| test | {metrics['num_examples']} | {metrics['rank1']:.4f} | {metrics['rank5']:.4f} |" in body
    assert "python launch.py --config configs/quickstart.py --workdir runs/q" in body
    assert "the checkpoint of epoch 1" in body and "RGB divided by 255" in body
    assert "Dataset `digits`, 10 classes" in body and "must not be used for decisions about people" in body


def _cache_repo(cache: str, repo_id: str, folder: str, commit: str, refs: dict[str, str]) -> None:
    """`folder` as huggingface_hub caches a download: blobs by sha256, a snapshot of links, refs to the commit."""
    storage = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    for root, _, files in os.walk(folder):
        for name in files:
            source = os.path.join(root, name)
            relative = os.path.relpath(source, folder)
            with open(source, "rb") as handle:
                digest = hashlib.sha256(handle.read()).hexdigest()
            blob = os.path.join(storage, "blobs", digest)
            os.makedirs(os.path.dirname(blob), exist_ok=True)
            shutil.copyfile(source, blob)
            link = os.path.join(storage, "snapshots", commit, relative)
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink(os.path.relpath(blob, os.path.dirname(link)), link)
    os.makedirs(os.path.join(storage, "refs"), exist_ok=True)
    for ref, target in refs.items():
        with open(os.path.join(storage, "refs", ref), "w") as handle:
            handle.write(target)


def test_init_from_a_hub_repository_reads_the_offline_cache(exported, tmp_path, monkeypatch):
    config, workdir, _, variables = exported
    cache = str(tmp_path / "hub")
    commit = "0123456789abcdef0123456789abcdef01234567"
    _cache_repo(cache, "someone/quickstart", os.path.join(workdir, "export"), commit, {"main": commit, "v1": commit})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", cache)
    for source in ("hf://someone/quickstart", "hf://someone/quickstart@v1", f"hf://someone/quickstart@{commit}"):
        fresh = config.copy_and_resolve_references()
        fresh.init_from = source
        fresh.seed = 5
        loaded = initial_variables(build_experiment(fresh))
        for got, want in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(variables), strict=True):
            np.testing.assert_array_equal(got, want)
    assert hub.download("hf://someone/quickstart").endswith(os.path.join("snapshots", commit))
    with pytest.raises(UserError, match=r"hf://someone/other: not in the local Hub cache and the Hub cannot be "
                                        r"reached \(HF_HUB_OFFLINE is set"):
        hub.download("hf://someone/other")
    for bad in ("hf://just-a-name", "hf://someone/quickstart@"):
        with pytest.raises(UserError, match="is not a Hub model; write hf://user/name"):
            hub.parse_hub_source(bad)


def test_the_pushed_folder_file_by_file(exported, monkeypatch):
    """push_folder hands the export folder, unchanged, to upload_folder; each of its files is what the Hub needs."""
    _, workdir, manifest, variables = exported
    folder = os.path.join(workdir, "export")
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **options):
            calls.append(("create_repo", repo_id, options))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, **options):
            calls.append(("upload_folder", options))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert hub.push_folder(folder, "someone/quickstart") == "https://huggingface.co/someone/quickstart"
    assert calls[0] == ("create_repo", "someone/quickstart", {"private": False, "exist_ok": True})
    assert calls[1][1]["folder_path"] == folder and calls[1][1]["repo_id"] == "someone/quickstart"
    pushed = sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files)
    assert {"README.md", "config.json", "model.safetensors", "export.json", "labels.txt", "model.jax",
            "saved_model/saved_model.pb"} <= set(pushed)
    assert not [p for p in pushed if ".partial" in p or p.endswith((".pkl", ".pth", ".py"))]
    for path in pushed:  # every file but the manifest itself is in the manifest, with its checksum
        if path == "export.json":
            continue
        with open(os.path.join(folder, path), "rb") as handle:
            assert hashlib.sha256(handle.read()).hexdigest() == manifest["files"][path], path
    with pytest.raises(UserError, match="give the Hub repository as user/name"):
        hub.push_folder(folder, "no-slash")
    with pytest.raises(UserError, match="holds no model.safetensors; run --mode=export first"):
        hub.push_folder(workdir, "someone/quickstart")


@pytest.mark.slow
def test_launch_push_reaches_upload_and_says_why_it_failed_offline(exported):
    """--mode=push as users type it: the export folder goes to the Hub client, whose offline refusal is one line."""
    _, workdir, _, _ = exported
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "launch.py", "--mode=push", f"--workdir={workdir}"]
    missing = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0
    assert missing.stderr.strip().splitlines()[-1] == ("error: --mode=push needs --repo_id=user/name (the Hugging Face "
                                                       "model repository to create or update)")
    offline = subprocess.run([*command, "--repo_id=someone/quickstart"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300)
    assert offline.returncode != 0
    last = offline.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: pushing {os.path.join(workdir, 'export')} to someone/quickstart failed (")
    assert "offline mode is enabled" in last and last.endswith("(hf auth login)")
