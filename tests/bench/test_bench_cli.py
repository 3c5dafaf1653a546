"""The shared command line: its output line, reading it back, memory of a process and of a phase, flags."""

import subprocess
import sys

import pytest

from cnn_flax.bench import cli
from cnn_flax.errors import UserError


def test_parse_line_takes_numbers_and_words():
    values = cli.parse_line("noise=1\nbenchmark model=minivgg batch=64 loop_img_per_s=2.0 device=cpu", "benchmark ")
    assert values["model"] == "minivgg" and values["loop_img_per_s"] == 2.0 and values["device"] == "cpu"
    with pytest.raises(ValueError, match="no line"):
        cli.parse_line("nothing", "peer=")


def test_lines_format_each_kind_of_figure():
    figures = dict(model="minivgg", batch=64, seconds=0.5, loop_over_step=0.98765, first_step_s=12.345,
                   step_gflop=0.0123456, step_of_peak=0.25, eval_img_per_s=1234.56, xla=True)
    assert cli.format_line("benchmark", figures, ["model", "batch", "eval_img_per_s", "loop_over_step",
                                                  "first_step_s", "step_gflop", "step_of_peak", "seconds", "xla",
                                                  "absent"]) == (
        "benchmark model=minivgg batch=64 eval_img_per_s=1234.6 loop_over_step=0.988 first_step_s=12.35 "
        "step_gflop=0.01235 step_of_peak=0.250 seconds=0.5 xla=1")


def test_a_value_that_rounds_to_zero_has_no_sign():
    """A memory delta of -0.04 MB is no change; a real loss keeps its sign."""
    figures = dict(rss_trainer_mb=-0.04, rss_first_step_mb=-380.5, epoch_extra_s=-0.001, loop_over_step=-0.0)
    assert cli.format_line("benchmark", figures, list(figures)) == (
        "benchmark rss_trainer_mb=0.0 rss_first_step_mb=-380.5 epoch_extra_s=0.00 loop_over_step=0.000")


def test_measured_process_reports_its_own_peak_memory(tmp_path):
    code, out, err, rss = cli.run_measured(
        ["python3", "-c", "import sys, time; b = bytearray(200 * 2**20); time.sleep(0.5); print('peer=x ok=1'); "
         "sys.stderr.write('e')"],
        tmp_path)
    assert (code, out, err) == (0, "peer=x ok=1\n", "e")
    assert 200 <= rss < 2000


def test_a_phase_peak_starts_at_the_resident_size():
    """After a 300 MB buffer is freed, the process's peak still holds it; from a reset, a 100 MB phase's does not."""
    probe = ("from cnn_flax.bench import cli\n"
             "b = bytearray(300 * 2**20); del b\n"
             "before = cli.peak_rss_mb(); assert cli.reset_peak()\n"
             "c = bytearray(100 * 2**20)\n"
             "print(round(before), round(cli.peak_rss_mb()), round(cli.rss_mb()))")
    before, phase, now = map(int, subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                                 check=True).stdout.split())
    assert before > 300 and 100 <= phase < 200 and phase >= now


def test_common_flags_and_their_errors(tmp_path):
    parser = cli.parser("First line.\n\nUsage text.", config=True, seconds=20.0, batch=64)
    args = parser.parse_args(["--config", "configs/minivgg_cifar10.py", "--batch", "8"])
    assert (args.config, args.seconds, args.batch) == ("configs/minivgg_cifar10.py", 20.0, 8)
    assert parser.description == "First line." and "Usage text." in parser.epilog
    with pytest.raises(UserError, match="--seconds 0, --batch -1: must be positive"):
        cli.check_positive(seconds=0, batch=-1)
    config = cli.load_config("configs/minivgg_cifar10.py", batch=8)
    assert config.batch_size == 8 and config.model.name == "minivgg"
    with pytest.raises(UserError, match=r"config file .*missing.py not found"):
        cli.load_config(str(tmp_path / "missing.py"))
