"""One peer measurement: a deck model in Keras or PyTorch, timed the way `--mode=benchmark` times ours.

    python -m cnn_flax.bench.peers.run --framework keras --model minivgg --seconds 10
    python -m cnn_flax.bench.peers.run --framework torch --model deepergooglenet --batch 64 --phase train

Each phase (`eval`: inference; `train`: the train step with its optimizer) runs on one random batch kept
in memory: one step that traces or compiles, then warm-up windows until the rate holds still, then timed
windows of a frozen step count, the median window giving images/s (`bench.phases`, as ours). The default
`--phase both` runs the eval phase in a child process and then the train phase in this one, so that each
phase's peak resident memory (VmHWM) is that of a process that did only it, as ours are measured. Prints one
line: `peer=FRAMEWORK model=… batch=… params=… train_img_per_s=… eval_img_per_s=… …_peak_rss_mb=…`.
"""

import importlib
import importlib.util
import sys
import time
from typing import Any

from cnn_flax.bench import cli
from cnn_flax.bench.peers.deck import MODELS
from cnn_flax.bench.phases import phase_after_one
from cnn_flax.defaults import base
from cnn_flax.errors import UserError

FRAMEWORKS = {"keras": ("cnn_flax.bench.peers.keras_models", "keras"),
              "torch": ("cnn_flax.bench.peers.torch_models", "torch")}
PHASES = ("eval", "train")
KEYS = ("model", "batch", "params", "framework", "xla", "train_img_per_s", "eval_img_per_s", "first_step_s",
        "eval_first_s", "rss_imports_mb", "train_peak_rss_mb", "eval_peak_rss_mb", "seconds", "train_steps",
        "eval_steps")


def load_framework(framework: str) -> Any:
    """The peer module of `framework`; a framework that is not installed is a one-line error."""
    module, package = FRAMEWORKS[framework]
    if importlib.util.find_spec(package) is None:
        raise UserError(f"--framework {framework}: {package} is not installed; pip install 'cnn_flax[bench]'")
    return importlib.import_module(module)


def measure(framework: str, model: str, batch: int, seconds: float, phase: str) -> dict[str, Any]:
    """The figures of one phase in this process: rate, steps, time to the first step's result, peak memory."""
    start = time.perf_counter()
    peers = load_framework(framework)
    figures: dict[str, Any] = dict(rss_imports_mb=cli.rss_mb())
    peer = peers.Peer(model, batch, train=phase == "train")
    window = peer.train if phase == "train" else peer.infer
    window(1)  # traces, compiles, allocates
    figures["first_step_s" if phase == "train" else "eval_first_s"] = time.perf_counter() - start
    timed = phase_after_one(seconds, window)
    figures.update({f"{phase}_img_per_s": timed.steps_per_second * batch, f"{phase}_steps": timed.timed_steps,
                    f"{phase}_peak_rss_mb": cli.peak_rss_mb(), "params": peer.params, "framework": peer.framework,
                    "xla": peer.xla})
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__, seconds=base("peer").benchmark.seconds, batch=64)
    parser.add_argument("--framework", choices=sorted(FRAMEWORKS), required=True)
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument("--phase", choices=(*PHASES, "both"), default="both",
                        help="both: eval in a child process, then train in this one")
    args = parser.parse_args(argv)
    cli.check_positive(seconds=args.seconds, batch=args.batch)
    load_framework(args.framework)  # before starting a child
    figures: dict[str, Any] = dict(model=args.model, batch=args.batch, seconds=args.seconds)
    if args.phase == "both":
        command = [sys.executable, "-m", __spec__.name, "--framework", args.framework, "--model", args.model,
                   "--batch", str(args.batch), f"--seconds={args.seconds!r}", "--phase", "eval"]
        child = cli.child_figures(command, "peer=")
        figures.update({key: child[key] for key in ("eval_img_per_s", "eval_first_s", "eval_peak_rss_mb")})
        figures["eval_steps"] = int(child["eval_steps"])
    figures.update(measure(args.framework, args.model, args.batch, args.seconds,
                           "train" if args.phase == "both" else args.phase))
    print(cli.format_line(f"peer={args.framework}", figures, KEYS), flush=True)
    return 0


if __name__ == "__main__":
    cli.run(main)
