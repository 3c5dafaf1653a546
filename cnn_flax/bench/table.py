"""docs/performance.md's tables in one command: every deck model, ours and both peers, interleaved.

    python -m cnn_flax.bench.table --rounds 3                       # MiniVGG, MiniGoogLeNet, DeeperGoogLeNet
    python -m cnn_flax.bench.table --rounds 3 --half-precision      # adds bfloat16 rows of ours
    python -m cnn_flax.bench.table --models minigooglenet --peers torch   # or --peers none: ours alone

Each round runs, for each model in turn, our `--mode=benchmark`, the Keras peer and the PyTorch peer
(`cnn_flax.bench.peers`, the same architectures timed the same way: warm-up, then timed windows, each
phase `--seconds` long), every one a fresh process, so a slow minute of a shared machine hits all three
alike instead of one framework's whole series. The tables give the median of the rounds and the ratios
ours/peer for the training loop and for inference (ratios are what carries from one machine to another,
absolute figures are not), loop/step (the median of each of our processes' own ratio), each phase's
peak resident memory (VmHWM: eval measured in a process of its own, for every framework), where our
bytes go, and how far each runs from the machine's limit: achieved GFLOP/s over a float32 matrix
product's, the peers credited with our compiled steps' operations per image. The raw lines go to stderr
as they arrive; the tables go to stdout.
"""

import dataclasses
import datetime
import os
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from cnn_flax.bench import cli
from cnn_flax.bench.cli import REPO, parse_line, run_measured
from cnn_flax.defaults import base
from cnn_flax.errors import UserError

PEER_MODULE = "cnn_flax.bench.peers.run"


@dataclasses.dataclass(frozen=True)
class Model:
    title: str
    config: str  # relative to the repository
    peer_name: str  # the model's name for the peers (`--model`)


DECK_MODELS = {
    "minivgg": Model("MiniVGG (CIFAR-10 shape)", "configs/minivgg_cifar10.py", "minivgg"),
    "minigooglenet": Model("MiniGoogLeNet (CIFAR-10 shape)", "configs/minigooglenet_cifar10.py", "minigooglenet"),
    "deepergooglenet": Model("DeeperGoogLeNet (Tiny ImageNet shape)", "configs/deeper_sgd_baseline.py",
                             "deepergooglenet"),
}
PEERS = ("keras", "torch")


@dataclasses.dataclass(frozen=True)
class Result:
    """One process's figures: the key=value pairs of its output line, plus its peak resident memory."""
    model: str
    runner: str  # "keras", "torch", "ours" or "ours_bf16"
    values: dict[str, float | str]
    peak_rss_mb: float


def plan(models: Sequence[str], rounds: int, peers: Sequence[str], half_precision: bool) -> list[tuple[int, str, str]]:
    """(round, model, runner) in the order they run: rounds outermost, then models, then ours and the peers."""
    runners = ["ours", *peers, *(("ours_bf16",) if half_precision else ())]
    return [(r, model, runner) for r in range(rounds) for model in models for runner in runners]


def command_for(model: str, runner: str, batch_size: int, python: str, seconds: float) -> tuple[list[str], str]:
    """The command line of one measurement and the prefix of the line that carries its figures; every phase
    of ours and of the peers times `seconds`."""
    spec = DECK_MODELS[model]
    if runner in PEERS:
        return ([python, "-m", PEER_MODULE, "--framework", runner, "--model", spec.peer_name,
                 "--batch", str(batch_size), f"--seconds={seconds:g}"], "peer=")
    command = [python, "launch.py", "--config", spec.config, "--mode=benchmark",
               f"--config.batch_size={batch_size}", f"--config.benchmark.seconds={seconds:g}"]
    if runner == "ours_bf16":
        command.append("--config.half_precision=True")
    return command, "benchmark "


def _median(results: list[Result], key: str) -> float | None:
    values = [r.values[key] for r in results if isinstance(r.values.get(key), float)]
    return statistics.median(values) if values else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _ratio(ours: float | None, peer: float | None) -> str:
    return "—" if ours is None or not peer else f"{ours / peer:.2f}x"


def _share(gflop_per_s: float | None, peak: float | None) -> str:
    """Achieved GFLOP/s and its share of the peak, e.g. `412 (23%)`."""
    if gflop_per_s is None:
        return "—"
    return f"{gflop_per_s:,.0f}" + ("" if not peak else f" ({100 * gflop_per_s / peak:.0f}%)")


def _row(title: str, cells: Sequence[str]) -> str:
    return "| " + " | ".join([title, *cells]) + " |"


def markdown_tables(results: list[Result], models: Sequence[str], rounds: int, seconds: float) -> str:
    """Throughput (medians, ratios ours/peer), memory per phase, where our bytes go and the distance from
    the machine's limit, as Markdown tables."""
    def group(model: str, runner: str) -> list[Result]:
        return [r for r in results if r.model == model and r.runner == runner]

    speed = ["| model | Keras train | PyTorch train | ours step | ours loop | loop/Keras | loop/PyTorch | loop/step "
             "| Keras eval | PyTorch eval | ours eval | eval/Keras | eval/PyTorch |", "|" + "---|" * 13]
    memory = ["| model | ours eval MB | Keras eval MB | PyTorch eval MB | eval/PyTorch | ours step MB | ours loop MB "
              "| Keras train MB | PyTorch train MB | train/PyTorch |", "|" + "---|" * 10]
    bytes_ = ["| model | first step s | imports MB | runtime MB | trainer MB | first step MB | XLA step argument MB "
              "| output MB | temp MB | code MB | XLA eval temp MB |", "|" + "---|" * 11]
    limit = ["| model | matmul peak GFLOP/s | GFLOP per train image | ours step | ours loop | Keras train "
             "| PyTorch train | ours eval | Keras eval | PyTorch eval |", "|" + "---|" * 10]
    for model in models:
        keras, torch = group(model, "keras"), group(model, "torch")
        k, t = ({key: _median(runs, key) for key in ("train_img_per_s", "eval_img_per_s", "train_peak_rss_mb",
                                                      "eval_peak_rss_mb")} for runs in (keras, torch))
        for runner, label in (("ours", ""), ("ours_bf16", " bfloat16")):
            ours = group(model, runner)
            if not ours:
                continue
            title = DECK_MODELS[model].title + label
            o = {key: _median(ours, key) for key in {value for r in ours for value in r.values}}
            step, loop, ev = o.get("step_img_per_s"), o.get("loop_img_per_s"), o.get("eval_img_per_s")
            own_ratio = o.get("loop_over_step")  # within one process: the machine's load cancels
            loop_step = _ratio(loop, step) if own_ratio is None else f"{own_ratio:.3f}"
            kt, tt, ke, te = k["train_img_per_s"], t["train_img_per_s"], k["eval_img_per_s"], t["eval_img_per_s"]
            speed.append(_row(title, [_fmt(kt), _fmt(tt), _fmt(step), _fmt(loop), _ratio(loop, kt), _ratio(loop, tt),
                                      loop_step, _fmt(ke), _fmt(te), _fmt(ev), _ratio(ev, ke), _ratio(ev, te)]))
            ours_eval, ours_loop, ours_train = (o.get(f"{key}_rss_mb") for key in ("eval_peak", "loop_peak", "peak"))
            memory.append(_row(title, [_fmt(ours_eval, 0), _fmt(k["eval_peak_rss_mb"], 0),
                                       _fmt(t["eval_peak_rss_mb"], 0), _ratio(ours_eval, t["eval_peak_rss_mb"]),
                                       _fmt(o.get("step_peak_rss_mb"), 0), _fmt(ours_loop, 0),
                                       _fmt(k["train_peak_rss_mb"], 0), _fmt(t["train_peak_rss_mb"], 0),
                                       _ratio(ours_train, t["train_peak_rss_mb"])]))
            bytes_.append(_row(title, [_fmt(o.get("first_step_s")), *(_fmt(o.get(key), 0) for key in (
                "rss_imports_mb", "rss_runtime_mb", "rss_trainer_mb", "rss_first_step_mb", "step_argument_mb",
                "step_output_mb", "step_temp_mb", "step_code_mb", "eval_temp_mb"))]))
            peak, batch = o.get("peak_gflop_per_s"), o.get("batch")
            train_image = o["step_gflop"] / batch if o.get("step_gflop") and batch else None
            eval_image = o["eval_gflop"] / batch if o.get("eval_gflop") and batch else None

            def credited(rate: float | None, per_image: float | None) -> float | None:
                return None if rate is None or per_image is None else rate * per_image

            limit.append(_row(title, [
                _fmt(peak, 0), _fmt(train_image, 3), _share(o.get("step_gflop_per_s"), peak),
                _share(o.get("loop_gflop_per_s"), peak), _share(credited(kt, train_image), peak),
                _share(credited(tt, train_image), peak), _share(o.get("eval_gflop_per_s"), peak),
                _share(credited(ke, eval_image), peak), _share(credited(te, eval_image), peak)]))
    got = sorted({r.model for r in results})
    devices = sorted({str(r.values["device"]) for r in results if r.runner.startswith("ours") and "device" in r.values})
    note = (f"{datetime.date.today().isoformat()}, {cli.cpu_model()}, {os.cpu_count()} cores, device "
            f"{', '.join(devices) or '?'}: medians of {rounds} round(s), img/s, peers and ours interleaved, "
            f"{seconds:g} s per timed phase; models measured: {', '.join(got)}.")
    return "\n".join([note, "", *speed, "", "Peak resident memory per phase (VmHWM):", "", *memory, "",
                      "Where our bytes go (resident MB at each point; XLA's analysis of the compiled steps):", "",
                      *bytes_, "", "Distance from the machine's limit: GFLOP/s achieved (share of the float32 matrix "
                      "product's); peers credited with our steps' operations per image:", "", *limit])


def run_table(models: Sequence[str], rounds: int, batch_size: int, peers: Sequence[str], half_precision: bool,
              seconds: float, measure: Callable[[Sequence[str], Path], tuple[int, str, str, float]] = run_measured,
              log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
              python: str = sys.executable) -> list[Result]:
    """Every measurement of the plan, in order; a failed process is logged and left out of the medians."""
    results = []
    for round_index, model, runner in plan(models, rounds, peers, half_precision):
        command, prefix = command_for(model, runner, batch_size, python, seconds)
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


def _peers(value: str) -> list[str]:
    chosen = [] if value == "none" else [p.strip() for p in value.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in PEERS]
    if unknown or (value != "none" and not chosen):
        raise UserError(f"--peers {value}: name peers from {', '.join(PEERS)} (comma-separated), or none")
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.parser(__doc__, seconds=base("table").benchmark.seconds, batch=64)
    parser.add_argument("--models", default=",".join(DECK_MODELS),
                        help=f"comma-separated, from {', '.join(DECK_MODELS)}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peers", default=",".join(PEERS),
                        help=f"comma-separated, from {', '.join(PEERS)} (cnn_flax.bench.peers), or none")
    parser.add_argument("--half-precision", action="store_true", help="also measure ours in bfloat16")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in DECK_MODELS]
    if unknown or not models or args.rounds < 1 or args.seconds <= 0:
        raise UserError(f"--models {args.models} --rounds {args.rounds} --seconds {args.seconds:g}: models must "
                        f"come from {', '.join(DECK_MODELS)}, rounds be at least 1 and seconds positive")
    peers = _peers(args.peers)
    cli.check_positive(batch=args.batch)
    results = run_table(models, args.rounds, args.batch, peers, args.half_precision, args.seconds)
    print(markdown_tables(results, models, args.rounds, args.seconds))
    return 0 if results else 1


if __name__ == "__main__":
    cli.run(main)
