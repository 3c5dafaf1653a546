"""What a newcomer sees: the README's first-hour commands from a clean workdir, the terminal under a
pseudo-terminal and as plain output, and report.html opened in headless Chromium.

One short run of the README's commands (fewer, smaller steps through --config overrides) is shared by
every test here; the training command runs under a pseudo-terminal, as a person at a terminal runs it.
"""

import contextlib
import fcntl
import io
import json
import os
import pty
import re
import shlex
import struct
import subprocess
import sys
import termios
import time

import pytest
from headless_chromium import find_chromium, inspect_page
from killing import env
from PIL import Image
from repo_paths import ROOT  # noqa: E402

from cnn_flax.errors import UserError
from cnn_flax.run.report_page import rebuild_report
from cnn_flax.run.train import train_and_evaluate
from configs import quickstart

# Few, small steps: the commands' behaviour, not the quickstart's accuracy (tests/test_launch.py checks that).
SMALL = ["--config.num_epochs=2", "--config.steps_per_epoch=4", "--config.eval_steps=2", "--config.data.image_size=16",
         "--config.log_every_steps=1"]
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+)  lr \S+  loss \S+ \(val \S+\)  accuracy \S+ \(val \S+\)  \S+  ETA \S+$")
LOG_LINE = re.compile(r"(^|\r)[IWEF]\d{4} \d\d:\d\d:\d\d|INFO|DEBUG")  # absl's record prefix, logging's levels
REPORT_SECTIONS = ["results", "curves", "per-class", "confusion-matrix", "predictions", "checkpoints", "predict",
                   "learning-rate", "config", "environment"]


def readme_first_hour() -> list[str]:
    """The command lines of the README's "The first hour" section, comments removed."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    section = text.split("## The first hour", 1)[1].split("\n## ", 1)[0]
    return [line.split("#")[0].strip() for line in section.splitlines() if line.startswith("    python launch.py")]


def needs_cifar10(command: str) -> bool:
    return "minivgg_cifar10" in command and "--mode=summary" not in command


def _env() -> dict[str, str]:
    return dict(env(), COLUMNS="100")  # one device, as a user's laptop, and a 100-column terminal


def run_in_terminal(argv: list[str], timeout: float = 300) -> tuple[int, str]:
    """Run `argv` with stdin/stdout/stderr on a 100x30 pseudo-terminal; return (exit status, what it showed)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    process = subprocess.Popen(argv, cwd=ROOT, env=_env(), stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    shown, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process ended
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    return process.wait(timeout=max(deadline - time.monotonic(), 1)), shown.decode(errors="replace")


def _adapt(command: str, workdir: str) -> list[str]:
    """The README command with the test's workdir, and small steps for the commands that build the model."""
    args = shlex.split(command)[1:]  # without "python"
    args = [workdir if a == "runs/quickstart" else a for a in args]
    if "configs/quickstart.py" in args:
        args += ["--workdir", workdir] + SMALL
    return [sys.executable, *args]


@pytest.fixture(scope="module")
def first_hour(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("first_hour") / "quickstart")
    results = {}
    for command in readme_first_hour():
        if needs_cifar10(command):
            continue
        started = time.monotonic()
        argv = _adapt(command, workdir)
        if "--mode" not in command:  # the training: in a terminal, as a person runs it
            results[command] = run_in_terminal(argv)
        else:
            done = subprocess.run(argv, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
            results[command] = (done.returncode, done.stdout + done.stderr)
        print(f"{time.monotonic() - started:.1f}s  {command}")
    return workdir, results


def _result(first_hour, fragment):
    """(exit status, output) of the one README command containing `fragment`."""
    (result,) = [value for command, value in first_hour[1].items() if fragment in command]
    return result


def _output(first_hour, fragment=None):
    """The output of a command that succeeded (without `fragment`: of the training, the command without --mode)."""
    if fragment is None:
        (status, output), = [value for command, value in first_hour[1].items() if "--mode" not in command]
    else:
        status, output = _result(first_hour, fragment)
    assert status == 0, output[-3000:]
    return output


def test_the_readme_first_hour_commands_work_from_a_clean_workdir(first_hour):
    commands = readme_first_hour()
    assert len(commands) == 7 and sum(needs_cifar10(c) for c in commands) == 2, commands
    for command, (status, output) in first_hour[1].items():
        assert status == 0, f"{command}\n{output[-3000:]}"
    assert "Total params: 2,171,178" in _output(first_hour, "--mode=summary")
    table = _output(first_hour, "--checkpoint=all")
    assert re.search(r"^1 +\d+\.\d\d% +\d+\.\d\d% +\d\.\d{4}$", table, re.M), table
    assert re.search(r"^2 +\d+\.\d\d%", table, re.M), table
    predicted = _output(first_hour, "--mode=predict")
    assert "digit_3.png" in predicted and "digit_8.png" in predicted
    assert os.path.join(first_hour[0], "report.html") in _output(first_hour, "--mode=report").splitlines()


def test_cifar10_commands_need_the_network():
    skipped = [c for c in readme_first_hour() if needs_cifar10(c)]
    assert skipped and all("configs/minivgg_cifar10.py" in c for c in skipped)
    pytest.skip(f"needs the CIFAR-10 download (network): {'; '.join(skipped)}")


def test_a_terminal_shows_bars_then_one_line_per_epoch_and_no_log_records(first_hour):
    shown = _output(first_hour)  # the training command
    lines = shown.replace("\r\n", "\n").split("\n")
    epoch_lines = [i for i, line in enumerate(lines) if line.startswith("epoch ")]
    assert [EPOCH_LINE.match(lines[i]).groups() for i in epoch_lines] == [("1", "2"), ("2", "2")], shown
    for number, i in enumerate(epoch_lines, start=1):
        bar = lines[i - 1].split("\r")[-1]  # what stays on screen of the line above: the finished bar
        assert bar.startswith(f"Epoch {number}/2: 100%|") and "4/4" in bar, repr(lines[i - 1])
    assert "\r" in shown  # bars are redrawn in place on a terminal
    assert not LOG_LINE.search(shown), shown
    assert any(line.startswith("Done: rank-1") for line in lines)
    with open(os.path.join(first_hour[0], "log.txt"), encoding="utf-8") as handle:
        log = handle.read()  # the full log went to the workdir instead
    assert re.search(r"^I\d{4} [\d:.]+ \d+ \w+\.py:\d+\] epoch 2: learning_rate=", log, re.M), log[-2000:]


def test_plain_output_has_no_bars_and_one_line_per_epoch(tmp_path):
    config = quickstart.get_config()
    config.update(dict(num_epochs=3, steps_per_epoch=2, eval_steps=1, log_every_steps=1, num_devices=1))
    config.data.image_size = 16
    out = io.StringIO()
    with contextlib.redirect_stderr(out):
        train_and_evaluate(config, str(tmp_path))
    text = out.getvalue()
    assert "\r" not in text and "%|" not in text, text
    lines = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert [EPOCH_LINE.match(line).groups() for line in lines] == [("1", "3"), ("2", "3"), ("3", "3")], text
    assert lines[-1].endswith("ETA 0s")


def test_the_report_page_loads_every_section_and_image_in_chromium(first_hour, tmp_path):
    executable = find_chromium()
    if executable is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium); .ci/run installs it")
    workdir = first_hour[0]
    screenshot = str(tmp_path / "report.png")
    page = inspect_page(executable, os.path.join(workdir, "report.html"), screenshot)
    assert page["sections"] == REPORT_SECTIONS
    names = {image["alt"] for image in page["images"]}
    with open(os.path.join(workdir, "mistakes.json"), encoding="utf-8") as handle:
        assert json.load(handle)  # a short run on digits makes mistakes (25 kept), so Grad-CAM must show them
    assert names == {"training curves", "confusion matrix", "worst mistakes", "predictions",
                     "Grad-CAM maps of the worst mistakes"}
    for image in page["images"]:
        assert image["complete"] and image["width"] > 0 and image["height"] > 0, image
    assert all(a.startswith(("data:image/png;base64,", "#")) for a in page["addresses"]), page["addresses"]
    paths = re.findall(r"(?<![\w.~])/[\w.+-]+(?:/[\w.+-]+)*", page["text"])
    assert paths and all(p.startswith(workdir) for p in paths), [p for p in paths if not p.startswith(workdir)]
    assert "Training Loss" not in page["text"]  # the figures are pictures, the text is the page's own
    assert re.search(r"Best epoch by val_loss: \d+ \(", page["text"]), page["text"][:2000]  # checkpoint.monitor
    with Image.open(screenshot) as shot:
        assert shot.format == "PNG" and shot.size[0] == 1200 and shot.size[1] == page["height"]
        assert len(set(shot.convert("L").resize((64, 64)).getdata())) > 10  # drawn, not a blank page


def test_the_report_is_rebuilt_from_the_files_alone(first_hour):
    workdir = first_hour[0]
    with open(os.path.join(workdir, "report.html"), encoding="utf-8") as handle:
        before = handle.read()
    os.remove(os.path.join(workdir, "report.html"))
    path = rebuild_report(workdir)
    with open(path, encoding="utf-8") as handle:
        after = handle.read()
    strip = lambda page: re.sub(r"built \d{4}-\d\d-\d\d \d\d:\d\d UTC", "", page)  # noqa: E731
    assert strip(after) == strip(before)
    info = json.load(open(os.path.join(workdir, "run_info.json")))
    assert [c["mode"] for c in info["commands"]] == ["train", "evaluate"]
    assert info["commands"][0]["command"].startswith("python launch.py --config configs/quickstart.py")
    assert info["environment"]["backend"] == "cpu" and info["environment"]["jax"]


def test_report_mode_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        rebuild_report(str(tmp_path / "nothing"))
    with pytest.raises(UserError, match="is it the workdir of a run"):
        rebuild_report(str(tmp_path))
