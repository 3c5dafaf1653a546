"""Killing launch.py for real (SIGKILL, as the kernel or a preempting scheduler does) and reading what it left.

`freeze_and_kill` stops the process with SIGSTOP the moment a poll sees the wanted point, so the files it
leaves are the ones the poll saw (give or take the few milliseconds between the poll and the signal), then
kills it and waits until every process it started (prepare's decoding pool) is gone too.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import h5py
import numpy as np
from repo_paths import ROOT
from xla_settings import xla_flags

TIMEOUT = 300
PARTIAL = re.compile(r"\.partial[@-]")


def env(devices: int = 1, optimize: bool = False) -> dict[str, str]:
    """CPU devices as on a laptop; compiled programs are shared with the other tests through the cache
    (conftest's $JAX_COMPILATION_CACHE_DIR, inherited).

    `optimize`: XLA's optimizing compiles, as a user's run has them, for a run whose steps (not its compiles)
    take the time (the quickstart's three epochs: 31 s without them, 18 s with, from a filled cache)."""
    out = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="0" if optimize else "1",
               TF_CPP_MIN_LOG_LEVEL="3",
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               XLA_FLAGS=xla_flags(devices))
    return out


def launch(args: list[str], log_path: str | None = None, devices: int = 1) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "launch.py", *args], cwd=ROOT, env=env(devices), capture_output=True,
                            text=True, timeout=TIMEOUT)
    if log_path:
        with open(log_path, "a") as log:
            log.write(result.stdout + result.stderr)
    return result


def start(args: list[str], log_path: str, devices: int = 1) -> subprocess.Popen:
    with open(log_path, "a") as log:
        return subprocess.Popen([sys.executable, "launch.py", *args], cwd=ROOT, env=env(devices), stdout=log,
                                stderr=subprocess.STDOUT)


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (children, their children...), read from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    stat = handle.read()
            except OSError:
                continue
            parents[int(entry)] = int(stat[stat.rindex(b")") + 2:].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().split(b")")[-1].split()[0] != b"Z"
    except OSError:
        return False


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, log_path: str, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the run ended or stalled before {what}:\n{open(log_path).read()[-3000:]}")
        time.sleep(0.001)


def freeze_and_kill(process: subprocess.Popen) -> None:
    """SIGSTOP, then SIGKILL; returns once the process and everything it started are gone."""
    process.send_signal(signal.SIGSTOP)
    below = descendants(process.pid)
    process.send_signal(signal.SIGKILL)
    assert process.wait(TIMEOUT) == -signal.SIGKILL
    deadline = time.monotonic() + 30
    while (left := [pid for pid in below if running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"processes {left} of the killed run are still running"


def write_digit_photos(root: str) -> None:
    """510 digits at 160x160 in three class folders, plus junk: train takes about a second to decode here."""
    from folder_images import add_junk, digit_images, write_class
    from PIL import Image

    for label, images in digit_images((0, 1, 7), 170).items():
        big = [np.asarray(Image.fromarray(g).resize((160, 160), Image.Resampling.BILINEAR)) for g in images]
        write_class(os.path.join(root, f"digit_{label}"), big)
    add_junk(os.path.join(root, "digit_0"))


def prepare_args(root: str, data_dir: str) -> list[str]:
    """--mode=prepare of a photo folder into 16x16 files, with val and test large enough to be caught writing."""
    return ["--config", "configs/folder.py", f"--config.data.root={root}", f"--config.data.dir={data_dir}",
            "--config.data.image_size=16", "--config.data.val_fraction=0.3", "--config.data.test_fraction=0.3",
            "--mode=prepare"]


def listing(folder: str) -> list[str]:
    """Every file and folder under `folder` (hidden ones included), relative, sorted."""
    out = []
    for base, folders, files in os.walk(folder):
        out += [os.path.relpath(os.path.join(base, name), folder) for name in folders + files]
    return sorted(out)


def partials(folder: str) -> list[str]:
    return [name for name in sorted(os.listdir(folder)) if PARTIAL.search(name)] if os.path.isdir(folder) else []


def hdf5_contents(path: str) -> dict:
    """Every dataset (as numpy) and attribute of an HDF5 file, keyed by name."""
    out = {}
    with h5py.File(path, "r") as f:
        for key, value in f.attrs.items():
            out[f"attr:{key}"] = np.asarray(value).tolist()
        for key, dataset in f.items():
            out[key] = dataset[()]
    return out


def assert_same_hdf5(path_a: str, path_b: str) -> None:
    a, b = hdf5_contents(path_a), hdf5_contents(path_b)
    assert sorted(a) == sorted(b), (path_a, path_b)
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key], dtype=object if key in ("paths", "skipped") else None),
                                      np.asarray(b[key], dtype=object if key in ("paths", "skipped") else None),
                                      err_msg=f"{path_b}: {key}")


# --- export ---

def export_contents(folder: str) -> dict:
    """What an export must reproduce: its files, export.json without timings, labels and the JAX program.

    TensorFlow writes a SavedModel with other bytes each time (its fingerprint, ids): their digests in
    export.json are compared by name only, and the SavedModel by its outputs (`export_outputs`); so is the
    model card's, which quotes the training command (with its --workdir).
    """
    with open(os.path.join(folder, "export.json")) as handle:
        manifest = json.load(handle)
    manifest["notes"] = {k: v for k, v in manifest["notes"].items() if not k.endswith("_seconds")}
    # README.md, the model card, names the command that trained the run, whose --workdir differs between copies
    manifest["files"] = {name: "TensorFlow's" if name.startswith("saved_model/") else
                         "the run's card" if name == "README.md" else digest
                         for name, digest in manifest["files"].items()}
    if manifest.get("command"):  # the training command, less the --workdir of this copy of the run
        manifest["command"] = re.sub(r"--workdir[= ]\S+", "--workdir", manifest["command"])
    source = manifest["source"]["checkpoint"]  # checkpoints/epoch_N, in whichever copy of the run
    manifest["source"]["checkpoint"] = os.path.join(*source.split(os.sep)[-2:])
    return {"files": listing(folder), "manifest": manifest,
            "labels": open(os.path.join(folder, "labels.txt")).read(),
            "jax": open(os.path.join(folder, "model.jax"), "rb").read()}


def export_outputs(folder: str) -> dict[str, np.ndarray]:
    """Probabilities of both runtimes on fixed images, read through the export's own loaders."""
    from cnn_flax.export.runtimes import open_export

    images = np.random.default_rng(1).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    return {runtime: np.asarray(open_export(folder, runtime).probabilities(images))
            for runtime in ("jax", "saved_model")}


# --- training ---

def history(workdir: str) -> list[dict]:
    """history.json without the wall-clock seconds, the one field that may differ between equal runs."""
    with open(os.path.join(workdir, "history.json")) as handle:
        return [{k: v for k, v in record.items() if k != "seconds"} for record in json.load(handle)]


def saved(workdir: str, epoch: int) -> dict:
    """The whole state of checkpoints/epoch_N (parameters, BatchNorm statistics, optimizer) as numpy."""
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(step_prefix="epoch", read_only=True)
    with ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), options=options,
                               item_names=("state", "meta")) as manager:
        return manager.restore(epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]["state"]


def assert_same_tree(a: dict, b: dict) -> None:
    import jax

    paths_a, leaves_a = zip(*jax.tree_util.tree_leaves_with_path(a), strict=True)
    paths_b, leaves_b = zip(*jax.tree_util.tree_leaves_with_path(b), strict=True)
    assert paths_a == paths_b
    for path, x, y in zip(paths_a, leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
