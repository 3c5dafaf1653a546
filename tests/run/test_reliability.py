"""Preemption and broken disks through launch.py, as a user meets them: real signals, real files.

One uninterrupted run is the reference. A run stopped by SIGTERM in the middle of an epoch and a run
whose newest checkpoint was overwritten with garbage must both finish with exactly its history and
parameters (a run killed with SIGKILL while it writes a checkpoint is the soak's, tests/run/test_soak.py).
A full disk and a non-finite loss must end the run with one line that says what happened and what to do,
keeping the good checkpoints. Settings are tiny (16x16 digits, 6 steps of 32 per epoch) so each run takes seconds.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from killing import assert_same_tree, env, history, saved
from repo_paths import ROOT  # noqa: E402

ARGS = ["--config", "configs/quickstart.py", "--config.data.image_size=16", "--config.batch_size=32",
        "--config.steps_per_epoch=6", "--config.num_epochs=3", "--config.log_every_steps=1",
        "--config.eval_steps=2"]
TIMEOUT = 300

# launch.py with a checkpoint write failing as on a full disk, after part of the checkpoint is written: the
# arrays go to Orbax's temporary folder, then the JSON meta fails, with Python's own error (OSError) or with
# the error TensorStore raises for the arrays, the operating system's reason inside a ValueError (its text
# copied from a real full tmpfs).
DISK_FULL = """
import errno, runpy, sys
from cnn_flax.training import checkpoint

write = checkpoint.write_checkpoint
if sys.argv[1] == "json":
    error = OSError(errno.ENOSPC, "No space left on device", "meta")
else:
    error = ValueError("RESOURCE_EXHAUSTED: Error writing in OCDBT database: Failed to write 1690240 bytes to "
                       "file 17: No space left on device [os_error_code='28']")

class NoSpaceForMeta(dict):
    def items(self):  # what json.dumps reads, after the arrays were handed to the writer
        raise error

def write_then_fail(manager, number, args, *metrics):
    meta = NoSpaceForMeta(args.meta.item) if number > 3 else args.meta.item
    write(manager, number, type(args)(state=args.state, meta=type(args.meta)(meta)), *metrics)

checkpoint.write_checkpoint = write_then_fail
sys.argv = sys.argv[2:]
runpy.run_path("launch.py", run_name="__main__")
"""


def launch(workdir: str, *extra: str, prefix: tuple[str, ...] = ("launch.py",)) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *prefix, *ARGS, "--workdir", workdir, *extra], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=TIMEOUT)


def start(workdir: str, log_path: str) -> subprocess.Popen:
    with open(log_path, "w") as log:
        return subprocess.Popen([sys.executable, "launch.py", *ARGS, "--workdir", workdir], cwd=ROOT, env=env(),
                                stdout=log, stderr=subprocess.STDOUT)


def wait_for(condition, process: subprocess.Popen, log_path: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the run ended or stalled before the moment to stop it:\n{open(log_path).read()[-3000:]}")
        time.sleep(0.005)


def full_log(workdir: str) -> str:
    """The run's log.txt (its progress, step by step: the terminal output of a run without one has no bars)."""
    try:
        with open(os.path.join(workdir, "log.txt")) as handle:
            return handle.read()
    except FileNotFoundError:
        return ""


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def entries(workdir: str) -> list[str]:
    return sorted(os.listdir(os.path.join(workdir, "checkpoints")))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> str:
    workdir = str(tmp_path_factory.mktemp("reference"))
    result = launch(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["epoch"] for r in history(workdir)] == [1, 2, 3]
    return workdir


def test_sigterm_mid_epoch_then_the_same_command_equals_an_uninterrupted_run(reference, tmp_path):
    workdir, log_path = str(tmp_path / "run"), str(tmp_path / "run.log")
    run = start(workdir, log_path)
    wait_for(lambda: re.search(r"\] epoch 2 step 1/6:", full_log(workdir)), run, log_path)
    run.send_signal(signal.SIGTERM)  # the first step of epoch 2 is done; the other five take about a second
    assert run.wait(TIMEOUT) == 0, open(log_path).read()[-3000:]
    stopped = re.search(r"Stopped in epoch 2 after batch (\d) \(step (\d+)\)", open(log_path).read())
    assert stopped, open(log_path).read()[-3000:]
    assert os.listdir(os.path.join(workdir, "checkpoints", "interrupted")) == [f"step_{stopped.group(2)}"]
    assert [r["epoch"] for r in history(workdir)] == [1]

    result = launch(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resuming from the checkpoint after epoch 1, batch {stopped.group(1)}" in result.stderr
    assert history(workdir) == history(reference)
    assert_same_tree(saved(workdir, 3), saved(reference, 3))
    assert not os.path.exists(os.path.join(workdir, "checkpoints", "interrupted"))  # gone with its checkpoint


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(reference, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(reference, workdir)
    state = os.path.join(workdir, "checkpoints", "epoch_3", "state")
    files = [os.path.join(d, f) for d, _, names in os.walk(state) for f in names]
    largest = max(files, key=os.path.getsize)  # the parameter data itself
    with open(largest, "r+b") as handle:
        handle.write(np.random.default_rng(0).bytes(os.path.getsize(largest)))

    result = launch(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"Checkpoint \S*epoch_3 is corrupt \(.*\); falling back to the previous one", result.stderr)
    aside = [name for name in os.listdir(workdir) if name.startswith("checkpoints.corrupt-")]
    assert len(aside) == 1 and os.listdir(os.path.join(workdir, aside[0])) == ["epoch_3"]  # kept for a look
    assert "Resuming from the checkpoint after epoch 2 " in result.stderr
    assert history(workdir) == history(reference)
    assert_same_tree(saved(workdir, 3), saved(reference, 3))  # epoch 3 trained again and saved whole


@pytest.mark.parametrize("failing", ["json", "arrays"])
def test_disk_full_while_saving_is_one_line_and_keeps_the_checkpoints(reference, tmp_path, failing):
    workdir = str(tmp_path / "run")
    shutil.copytree(reference, workdir)
    result = launch(workdir, "--config.num_epochs=4", prefix=("-c", DISK_FULL, failing, "launch.py"))
    assert result.returncode == 2, result.stderr[-3000:]
    lines = error_lines(result)
    folder = os.path.join(workdir, "checkpoints")
    assert len(lines) == 1 and f"could not write a checkpoint into {folder} (No space left on device)" in lines[0]
    assert "free disk space or choose another --workdir, then run the same command again" in lines[0]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "epoch_4" not in entries(workdir)  # at most its half-written temporary folder, which the next run removes:
    from cnn_flax.training.checkpoint import Checkpoints

    Checkpoints(os.path.join(workdir, "checkpoints")).close()  # Orbax removes it in the background
    deadline = time.monotonic() + 30
    while len(entries(workdir)) > 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert entries(workdir) == ["epoch_1", "epoch_2", "epoch_3"]
    assert_same_tree(saved(workdir, 3), saved(reference, 3))


def test_non_finite_loss_names_the_step_and_keeps_the_last_good_checkpoint(reference, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(reference, workdir)
    result = launch(workdir, "--config.num_epochs=4", "--config.optimizer.learning_rate=1e12")
    assert result.returncode == 2, result.stderr[-3000:]
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr[-3000:]
    step = re.search(r"the loss became non-finite at step (\d+); the last good checkpoint is epoch 3\. Lower the "
                     r"learning rate \(--config.optimizer.learning_rate\) and resume", lines[0])
    assert step and 18 < int(step.group(1)) <= 24, lines[0]  # a step of epoch 4
    assert "Traceback" not in result.stderr
    assert entries(workdir) == ["epoch_1", "epoch_2", "epoch_3"]
    assert history(workdir) == history(reference)
    assert_same_tree(saved(workdir, 3), saved(reference, 3))


def test_verbose_shows_the_traceback_of_a_one_line_error(tmp_path):
    """Without --verbose a UserError is one line (tests/test_launch.py, and the tests above); with it, the trace."""
    missing = str(tmp_path / "nowhere")
    result = subprocess.run([sys.executable, "launch.py", "--config", "configs/deeper_exp2_adam.py",
                             f"--config.data.dir={missing}", "--config.data.root=", "--workdir", str(tmp_path / "run"),
                             "--verbose"], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode != 0 and "Traceback (most recent call last)" in result.stderr
    assert f"UserError: {missing}/train.hdf5 not found and data.root is empty" in result.stderr


def test_evaluating_a_corrupt_epoch_names_it(tmp_path):
    from cnn_flax.errors import UserError
    from cnn_flax.training.checkpoint import Checkpoints

    tree = {"w": np.arange(1000, dtype=np.float32)}
    checkpoints = Checkpoints(str(tmp_path))
    checkpoints.save_epoch(1, tree, {"epoch": 1, "batch": 0, "step": 10})
    for folder, _, names in os.walk(os.path.join(str(tmp_path), "epoch_1", "state")):
        for name in names:
            with open(os.path.join(folder, name), "wb") as handle:
                handle.write(b"garbage")
    with pytest.raises(UserError, match=r"epoch_1 is corrupt or of another model \(.*\); use another epoch"):
        checkpoints.restore_epoch(1, tree)
    checkpoints.close()


def test_checkpoints_of_another_input_size_are_refused_not_taken_for_corrupt(reference, tmp_path):
    from cnn_flax.errors import UserError
    from cnn_flax.run.train import train_and_evaluate
    from configs import quickstart

    workdir = str(tmp_path / "run")
    shutil.copytree(reference, workdir)
    config = quickstart.get_config()
    config.data.image_size, config.steps_per_epoch = 32, 6
    with pytest.raises(UserError, match="holds checkpoints of the model for 16x16 inputs, not 32x32; use another"):
        train_and_evaluate(config, workdir)
    assert entries(workdir) == ["epoch_1", "epoch_2", "epoch_3"]  # nothing set aside
