"""The table command's plan, parsing, medians and ratios, on recorded process outputs (nothing is timed)."""

from pathlib import Path

import pytest

from cnn_flax.bench import table as bench_table
from cnn_flax.errors import UserError

PEERS = Path("/peers/peer_bench.py")


def fake_measure(outputs):
    """A `measure` that answers each command with the next recorded output for its runner."""
    calls = []

    def measure(command, cwd):
        calls.append(list(command))
        runner = "ours_bf16" if "--config.half_precision=True" in command else (
            command[command.index("--framework") + 1] if "--framework" in command else "ours")
        model = next(name for name, spec in bench_table.DECK_MODELS.items()
                     if spec.config in command or spec.peer_name in command)
        return outputs[(model, runner)].pop(0)
    return measure, calls


def ours_line(step, loop, ev, first=12.5, temp=30.0, ratio=None):
    ratio = f"loop_over_step={ratio} " if ratio is not None else ""
    return (f"benchmark model=minivgg batch=64 devices=1 step_img_per_s={step} loop_img_per_s={loop} "
            f"eval_img_per_s={ev} {ratio}epoch_extra_s=6.85 first_step_s={first} step_argument_mb=10.5 "
            f"step_output_mb=10.0 step_temp_mb={temp} peak_rss_mb=900 data=synthetic device=cpu seconds=20 "
            f"steps=111 loop_steps=111 compiles=1\n")


def peer_line(framework, train, ev):
    return f"peer={framework}[x] model=minivgg batch=64 train_img_per_s={train} eval_img_per_s={ev}\n"


def test_rounds_interleave_and_medians_give_the_ratios():
    outputs = {
        ("minivgg", "keras"): [(0, "log\n" + peer_line("keras", t, 800), "", 2000.0) for t in (100, 300, 200)],
        ("minivgg", "torch"): [(0, peer_line("torch", t, 1000), "", 700.0) for t in (400, 100, 250)],
        ("minivgg", "ours"): [(0, ours_line(510, loop, 1500, ratio=r), "", 1024.0)
                              for loop, r in ((500, 0.97), (480, 0.99), (520, 0.98))],
    }
    measure, calls = fake_measure(outputs)
    logs = []
    results = bench_table.run_table(["minivgg"], 3, 64, PEERS, False, 8.0, measure=measure, log=logs.append,
                                    python="py")
    # Each round runs ours, Keras, then PyTorch: interleaved, never one framework's whole series in a row.
    runners = [c[c.index("--framework") + 1] if "--framework" in c else "ours" for c in calls]
    assert runners == ["ours", "keras", "torch"] * 3
    assert calls[0] == ["py", "launch.py", "--config", "configs/minivgg_cifar10.py", "--mode=benchmark",
                        "--config.batch_size=64", "--config.benchmark.seconds=8"]
    # The peers' steps last about 8 s: in round 1 at our loop's 500 img/s (63 steps of 64), then at their own
    # median so far (Keras 100 img/s: 13 steps; then the median of 100 and 300; PyTorch 400, then 250).
    steps = [int(c[c.index("--steps") + 1]) for c in calls if "--steps" in c]
    assert steps == [63, 63, 13, 50, 25, 32]
    assert calls[1] == ["py", str(PEERS), "--framework", "keras", "--model", "minivgg", "--batch-size", "64",
                        "--steps", "63"]
    assert len(results) == 9 and len(logs) == 9

    table = bench_table.markdown_tables(results, ["minivgg"], 3, 8.0)
    row = next(line for line in table.splitlines() if line.startswith("| MiniVGG"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # Medians: Keras train 200, PyTorch 250, ours loop 500 (step 510), eval 800 / 1000 / 1500.
    assert cells[1:7] == ["200.0", "250.0", "510.0", "500.0", "2.50x", "2.00x"]
    assert cells[7] == "0.980"  # the median of each process's own loop/step
    assert cells[8:] == ["800.0", "1,000.0", "1,500.0", "1.88x", "1.50x"]
    memory = [line for line in table.splitlines() if line.startswith("| MiniVGG")][1]
    assert [c.strip() for c in memory.strip("|").split("|")][1:] == [
        "12.5", "10.5", "10.0", "30.0", "1,024", "2,000", "700"]


def test_failed_process_is_logged_and_left_out():
    outputs = {
        ("minigooglenet", "ours"): [(1, "", "Traceback\nUserError: broken config\n", 50.0),
                                    (0, ours_line(40, 45, 150), "", 800.0)],
        ("minigooglenet", "ours_bf16"): [(0, "no figures here\n", "", 800.0), (0, ours_line(20, 22, 60), "", 700.0)],
    }
    measure, _ = fake_measure(outputs)
    logs = []
    results = bench_table.run_table(["minigooglenet"], 2, 64, None, True, 20.0, measure=measure, log=logs.append)
    assert [(r.runner, r.values["loop_img_per_s"]) for r in results] == [("ours", 45.0), ("ours_bf16", 22.0)]
    assert "FAILED (exit code 1: UserError: broken config)" in logs[0]
    assert "FAILED (no line starting with 'benchmark '" in logs[1]
    table = bench_table.markdown_tables(results, ["minigooglenet"], 2, 20.0)
    bf16 = next(line for line in table.splitlines() if line.startswith("| MiniGoogLeNet (CIFAR-10 shape) bfloat16"))
    # No peers: ratios against them are blank; a line without loop_over_step gives the ratio of the medians.
    assert "| — | — | 20.0 | 22.0 | — | — | 1.10x |" in bf16
    assert "Medians of 2 round(s), img/s, peers and ours interleaved, 20 s per timed phase" in table


def test_parse_line_takes_numbers_and_words():
    values = bench_table.parse_line("noise=1\n" + ours_line(1, 2, 3), "benchmark ")
    assert values["model"] == "minivgg" and values["loop_img_per_s"] == 2.0 and values["device"] == "cpu"
    with pytest.raises(ValueError, match="no line"):
        bench_table.parse_line("nothing", "peer=")


def test_measured_process_reports_its_own_peak_memory(tmp_path):
    code, out, err, rss = bench_table.run_measured(
        ["python3", "-c", "import sys, time; b = bytearray(200 * 2**20); time.sleep(0.5); print('peer=x ok=1'); "
         "sys.stderr.write('e')"],
        tmp_path)
    assert (code, out, err) == (0, "peer=x ok=1\n", "e")
    assert 200 <= rss < 2000


def test_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="--peers .*no such file"):
        bench_table.main(["--peers", str(tmp_path / "missing.py")])
    with pytest.raises(UserError, match="models must come from"):
        bench_table.main(["--models", "resnet", "--peers", "none"])
    with pytest.raises(UserError, match="seconds positive"):
        bench_table.main(["--seconds", "0", "--peers", "none"])
