"""The table command's plan, parsing, medians and ratios, on recorded process outputs (nothing is timed)."""

import os

import pytest

from cnn_flax.bench import cli
from cnn_flax.bench import table as bench_table
from cnn_flax.errors import UserError

PEERS = ["keras", "torch"]


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
            f"eval_img_per_s={ev} {ratio}epoch_extra_s=6.85 first_step_s={first} peak_gflop_per_s=400.0 "
            f"step_gflop=12.8 eval_gflop=4.48 step_gflop_per_s={12.8 * step / 64} loop_gflop_per_s={12.8 * loop / 64} "
            f"eval_gflop_per_s={4.48 * ev / 64} rss_imports_mb=300 rss_runtime_mb=20 rss_trainer_mb=60 "
            f"rss_first_step_mb=150 step_argument_mb=10.5 step_output_mb=10.0 step_temp_mb={temp} eval_temp_mb=12 "
            f"eval_peak_rss_mb=600 step_peak_rss_mb=800 loop_peak_rss_mb=900 peak_rss_mb=900 data=synthetic device=cpu "
            f"seconds=20 steps=111 loop_steps=111 compiles=1\n")


def peer_line(framework, train, ev, train_peak=700, eval_peak=400):
    return (f"peer={framework} model=minivgg batch=64 params=2171178 framework={framework}-x train_img_per_s={train} "
            f"eval_img_per_s={ev} train_peak_rss_mb={train_peak} eval_peak_rss_mb={eval_peak} seconds=8\n")


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
    # The peers are the repository's own module, timed for the same seconds per phase as ours.
    assert calls[1] == ["py", "-m", "cnn_flax.bench.peers.run", "--framework", "keras", "--model", "minivgg",
                        "--batch", "64", "--seconds=8"]
    assert len(results) == 9 and len(logs) == 9

    table = bench_table.markdown_tables(results, ["minivgg"], 3, 8.0)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()
            if line.startswith("| MiniVGG")]
    # Medians: Keras train 200, PyTorch 250, ours loop 500 (step 510), eval 800 / 1000 / 1500.
    assert rows[0][1:7] == ["200.0", "250.0", "510.0", "500.0", "2.50x", "2.00x"]
    assert rows[0][7] == "0.980"  # the median of each process's own loop/step
    assert rows[0][8:] == ["800.0", "1,000.0", "1,500.0", "1.88x", "1.50x"]
    # Memory per phase, each framework's own figures: ours eval 600 vs PyTorch's 400; loop 900 vs train 700.
    assert rows[1][1:] == ["600", "400", "400", "1.50x", "800", "900", "700", "700", "1.29x"]
    assert rows[2][1:] == ["12.5", "300", "20", "60", "150", "10", "10", "30", "—", "12"]
    # Distance from the limit: 0.2 GFLOP per train image (12.8 / 64), 0.07 per inference. Ours achieves
    # 510·0.2 = 102 GFLOP/s of a 400 GFLOP/s product (26%); PyTorch's 250 img/s are credited 50 (12%).
    assert rows[3][1:] == ["400", "0.200", "102 (26%)", "100 (25%)", "40 (10%)", "50 (12%)", "105 (26%)",
                           "56 (14%)", "70 (18%)"]


def test_failed_process_is_logged_and_left_out():
    outputs = {
        ("minigooglenet", "ours"): [(1, "", "Traceback\nUserError: broken config\n", 50.0),
                                    (0, ours_line(40, 45, 150), "", 800.0)],
        ("minigooglenet", "ours_bf16"): [(0, "no figures here\n", "", 800.0), (0, ours_line(20, 22, 60), "", 700.0)],
    }
    measure, _ = fake_measure(outputs)
    logs = []
    results = bench_table.run_table(["minigooglenet"], 2, 64, [], True, 20.0, measure=measure, log=logs.append)
    assert [(r.runner, r.values["loop_img_per_s"]) for r in results] == [("ours", 45.0), ("ours_bf16", 22.0)]
    assert "FAILED (exit code 1: UserError: broken config)" in logs[0]
    assert "FAILED (no line starting with 'benchmark '" in logs[1]
    table = bench_table.markdown_tables(results, ["minigooglenet"], 2, 20.0)
    bf16 = next(line for line in table.splitlines() if line.startswith("| MiniGoogLeNet (CIFAR-10 shape) bfloat16"))
    # No peers: ratios against them are blank; a line without loop_over_step gives the ratio of the medians.
    assert "| — | — | 20.0 | 22.0 | — | — | 1.10x |" in bf16
    assert "medians of 2 round(s), img/s, peers and ours interleaved, 20 s per timed phase" in table
    assert f"{cli.cpu_model()}, {os.cpu_count()} cores, device cpu: " in table.splitlines()[0]


def test_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="--peers tensorflow: name peers from keras, torch"):
        bench_table.main(["--peers", "tensorflow"])
    with pytest.raises(UserError, match="models must come from"):
        bench_table.main(["--models", "resnet", "--peers", "none"])
    with pytest.raises(UserError, match="seconds positive"):
        bench_table.main(["--seconds", "0", "--peers", "none"])
