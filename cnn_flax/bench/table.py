"""docs/performance.md's table in one command: every deck model, ours and both peers, interleaved.

    python -m cnn_flax.bench.table --rounds 3                       # MiniVGG, MiniGoogLeNet, DeeperGoogLeNet
    python -m cnn_flax.bench.table --rounds 3 --half-precision      # adds bfloat16 rows of ours
    python -m cnn_flax.bench.table --models minigooglenet --peers /path/to/peer_bench.py

Each round runs, for each model in turn, our `--mode=benchmark`, the Keras/TensorFlow peer and the
PyTorch peer, every one a fresh process, so a slow minute of a shared machine hits all three alike
instead of one framework's whole series. Ours times each phase for `--seconds`; the peers take a step
count, so each is given the steps that last about as long at its own rate (its median in earlier
rounds; in the first, our loop's rate of the same round). The table gives the median of the rounds
and the ratios ours/peer for the training loop and for inference (ratios are what carries from one
machine to another, absolute figures are not), and loop/step, the median of each of our processes'
own ratio. Each process's peak resident memory is the kernel's high-water mark of that child
(VmHWM, polled from /proc), the same way for every framework. The raw lines go to stderr as they
arrive; the table goes to stdout.
"""

import argparse
import dataclasses
import math
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from cnn_flax.defaults import base
from cnn_flax.errors import UserError

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PEERS = REPO.parent / "shared" / "peers" / "peer_bench.py"


@dataclasses.dataclass(frozen=True)
class Model:
    title: str
    config: str  # relative to the repository
    peer_name: str  # the model's name in peer_bench.py


DECK_MODELS = {
    "minivgg": Model("MiniVGG (CIFAR-10 shape)", "configs/minivgg_cifar10.py", "minivgg"),
    "minigooglenet": Model("MiniGoogLeNet (CIFAR-10 shape)", "configs/minigooglenet_cifar10.py", "minigooglenet"),
    "deepergooglenet": Model("DeeperGoogLeNet (Tiny ImageNet shape)", "configs/deeper_sgd_baseline.py",
                             "deepergooglenet"),
}
PEERS = ("keras", "torch")
PEER_MIN_STEPS = 10  # peer_bench.py's own default: never fewer


@dataclasses.dataclass(frozen=True)
class Result:
    """One process's figures: the key=value pairs of its output line, plus its peak resident memory."""
    model: str
    runner: str  # "keras", "torch", "ours" or "ours_bf16"
    values: dict[str, float | str]
    peak_rss_mb: float


def parse_line(output: str, prefix: str) -> dict[str, float | str]:
    """The key=value pairs of the last output line starting with `prefix`; numbers as floats."""
    lines = [line for line in output.splitlines() if line.startswith(prefix)]
    if not lines:
        raise ValueError(f"no line starting with {prefix!r} in the output")
    values: dict[str, float | str] = {}
    for token in lines[-1].split():
        key, sep, value = token.partition("=")
        if not sep:
            continue
        try:
            values[key] = float(value)
        except ValueError:
            values[key] = value
    return values


def _peak_rss_mb(pid: int) -> float | None:
    """VmHWM of a running process: the peak of its own address space, which exec starts afresh."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def run_measured(command: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str, str, float]:
    """(exit code, stdout, stderr, peak RSS in MB) of a fresh process running `command`.

    The peak is polled from /proc while the process runs. The rusage of wait4 would be simpler, but Linux
    carries the parent's peak into the child across fork and exec, so a child of a large process (a test
    worker, a notebook) would report the parent's memory.
    """
    peak = [0.0]
    with tempfile.TemporaryFile(mode="w+") as errors:
        process = subprocess.Popen(list(command), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=errors, text=True)

        def watch() -> None:
            while process.poll() is None:
                peak[0] = max(peak[0], _peak_rss_mb(process.pid) or 0.0)
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        stdout = process.stdout.read()
        process.stdout.close()
        process.wait()
        watcher.join()
        errors.seek(0)
        return process.returncode, stdout, errors.read(), peak[0]


def plan(models: Sequence[str], rounds: int, peers: Path | None, half_precision: bool) -> list[tuple[int, str, str]]:
    """(round, model, runner) in the order they run: rounds outermost, then models, then ours before the peers
    (whose step counts follow our loop's rate in the first round)."""
    runners = ["ours", *(PEERS if peers else ()), *(("ours_bf16",) if half_precision else ())]
    return [(r, model, runner) for r in range(rounds) for model in models for runner in runners]


def peer_steps(results: Sequence["Result"], model: str, runner: str, seconds: float, batch_size: int) -> int:
    """Steps that keep a peer's timed training about `seconds` long: from its own median rate so far, else
    from our loop's, else peer_bench.py's default."""
    def rates(who: str, key: str) -> list[float]:
        return [r.values[key] for r in results if r.model == model and r.runner == who
                and isinstance(r.values.get(key), float)]

    known = rates(runner, "train_img_per_s") or rates("ours", "loop_img_per_s")
    if not known:
        return PEER_MIN_STEPS
    return max(PEER_MIN_STEPS, math.ceil(seconds * statistics.median(known) / batch_size))


def command_for(model: str, runner: str, batch_size: int, peers: Path | None, python: str, seconds: float,
                steps: int = PEER_MIN_STEPS) -> tuple[list[str], str]:
    """The command line of one measurement and the prefix of the line that carries its figures; `seconds`
    is our phases' length, `steps` a peer's."""
    spec = DECK_MODELS[model]
    if runner in PEERS:
        return ([python, str(peers), "--framework", runner, "--model", spec.peer_name,
                 "--batch-size", str(batch_size), "--steps", str(steps)], "peer=")
    command = [python, "launch.py", "--config", spec.config, "--mode=benchmark",
               f"--config.batch_size={batch_size}", f"--config.benchmark.seconds={seconds:g}"]
    if runner == "ours_bf16":
        command.append("--config.half_precision=True")
    return command, "benchmark "


def _median(results: list[Result], key: str) -> float | None:
    values = [r.values[key] for r in results if isinstance(r.values.get(key), float)]
    return statistics.median(values) if values else None


def _rss(results: list[Result]) -> float | None:
    return statistics.median(r.peak_rss_mb for r in results) if results else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _ratio(ours: float | None, peer: float | None) -> str:
    return "—" if ours is None or not peer else f"{ours / peer:.2f}x"


def markdown_tables(results: list[Result], models: Sequence[str], rounds: int, seconds: float) -> str:
    """Throughput (medians, ratios ours/peer) and start-up/memory tables of `results`, as Markdown."""
    def group(model: str, runner: str) -> list[Result]:
        return [r for r in results if r.model == model and r.runner == runner]

    speed = ["| model | Keras train | PyTorch train | ours step | ours loop | loop/Keras | loop/PyTorch | loop/step "
             "| Keras eval | PyTorch eval | ours eval | eval/Keras | eval/PyTorch |",
             "|" + "---|" * 13]
    memory = ["| model | ours first step s | XLA step argument MB | output MB | temp MB | peak RSS ours MB "
              "| peak RSS Keras MB | peak RSS PyTorch MB |",
              "|" + "---|" * 8]
    for model in models:
        keras, torch = group(model, "keras"), group(model, "torch")
        k_train, t_train = _median(keras, "train_img_per_s"), _median(torch, "train_img_per_s")
        k_eval, t_eval = _median(keras, "eval_img_per_s"), _median(torch, "eval_img_per_s")
        for runner, label in (("ours", ""), ("ours_bf16", " bfloat16")):
            ours = group(model, runner)
            if not ours:
                continue
            title = DECK_MODELS[model].title + label
            step, loop, ev = (_median(ours, f"{k}_img_per_s") for k in ("step", "loop", "eval"))
            own_ratio = _median(ours, "loop_over_step")  # within one process: the machine's load cancels
            loop_step = _ratio(loop, step) if own_ratio is None else f"{own_ratio:.3f}"
            speed.append(f"| {title} | {_fmt(k_train)} | {_fmt(t_train)} | {_fmt(step)} | {_fmt(loop)} "
                         f"| {_ratio(loop, k_train)} | {_ratio(loop, t_train)} | {loop_step} "
                         f"| {_fmt(k_eval)} | {_fmt(t_eval)} | {_fmt(ev)} "
                         f"| {_ratio(ev, k_eval)} | {_ratio(ev, t_eval)} |")
            memory.append(f"| {title} | {_fmt(_median(ours, 'first_step_s'))} "
                          f"| {_fmt(_median(ours, 'step_argument_mb'))} | {_fmt(_median(ours, 'step_output_mb'))} "
                          f"| {_fmt(_median(ours, 'step_temp_mb'))} | {_fmt(_rss(ours), 0)} "
                          f"| {_fmt(_rss(keras), 0)} | {_fmt(_rss(torch), 0)} |")
    got = sorted({r.model for r in results})
    note = (f"Medians of {rounds} round(s), img/s, peers and ours interleaved, {seconds:g} s per timed phase; "
            f"models measured: {', '.join(got)}.")
    return "\n".join([note, "", *speed, "", *memory])


def run_table(models: Sequence[str], rounds: int, batch_size: int, peers: Path | None, half_precision: bool,
              seconds: float, measure: Callable[[Sequence[str], Path], tuple[int, str, str, float]] = run_measured,
              log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
              python: str = sys.executable) -> list[Result]:
    """Every measurement of the plan, in order; a failed process is logged and left out of the medians."""
    results = []
    for round_index, model, runner in plan(models, rounds, peers, half_precision):
        steps = peer_steps(results, model, runner, seconds, batch_size) if runner in PEERS else PEER_MIN_STEPS
        command, prefix = command_for(model, runner, batch_size, peers, python, seconds, steps)
        code, stdout, stderr, rss = measure(command, REPO)
        try:
            if code != 0:
                raise ValueError(f"exit code {code}: {(stderr.strip().splitlines() or [''])[-1]}")
            values = parse_line(stdout, prefix)
        except ValueError as error:
            log(f"[round {round_index + 1}] {model} {runner} FAILED ({error}): {' '.join(command)}")
            continue
        results.append(Result(model, runner, values, rss))
        line = next(line for line in reversed(stdout.splitlines()) if line.startswith(prefix))
        log(f"[round {round_index + 1} {runner} peak_rss_mb={rss:.0f}] {line}")
    return results


def _peers_path(value: str) -> Path | None:
    if value == "none":
        return None
    path = Path(value).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"--peers {value}: no such file; give the path of peer_bench.py, or --peers none "
                        "to measure ours alone")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DECK_MODELS),
                        help=f"comma-separated, from {', '.join(DECK_MODELS)}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--peers", default=str(DEFAULT_PEERS),
                        help="path of peer_bench.py (Keras and PyTorch peers), or 'none'")
    parser.add_argument("--half-precision", action="store_true", help="also measure ours in bfloat16")
    parser.add_argument("--seconds", type=float, default=base("table").benchmark.seconds,
                        help="timed seconds of each of our phases (--config.benchmark.seconds); the peers get "
                             "step counts of about as long")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in DECK_MODELS]
    if unknown or not models or args.rounds < 1 or args.seconds <= 0:
        raise UserError(f"--models {args.models} --rounds {args.rounds} --seconds {args.seconds:g}: models must "
                        f"come from {', '.join(DECK_MODELS)}, rounds be at least 1 and seconds positive")
    peers = _peers_path(args.peers)
    results = run_table(models, args.rounds, args.batch_size, peers, args.half_precision, args.seconds)
    print(markdown_tables(results, models, args.rounds, args.seconds))
    return 0 if results else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as error:
        sys.exit(f"error: {error}")
