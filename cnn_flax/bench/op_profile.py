"""Where a config's train step and inference spend their time, by kind of operation, from XLA's own trace.

    python -m cnn_flax.bench.op_profile --config configs/minigooglenet_cifar10.py --steps 3 --batch 64

Runs the compiled train step and the inference step under `jax.profiler.trace`, reads every executed
XLA operation's time from the trace and sorts it into categories with the compiled module's HLO: each
instruction's metadata names the layer (`inception2/3x3/conv`) and the direction (`transpose(jvp(…))`
is the backward pass); a convolution's gradient with an image-shaped result is the input gradient, one
with a kernel-shaped result the kernel gradient. XLA's kernel-gradient convolutions carry no
metadata (a convolution without it is one), and copies without it (activations transposed for a kernel
gradient) take the category of the first instruction that uses them. Shares are of the summed operation
time on all threads, so they hold on a busy machine as long as both runs are measured alike. On a CPU an
Eigen convolution's trace event covers its launch, not its work (docs/performance.md), so the convolution
categories are undercounts there.
"""

import collections
import glob
import gzip
import json
import os
import re
import tempfile
from collections.abc import Iterable
from typing import TYPE_CHECKING

from cnn_flax.bench import cli
from cnn_flax.errors import UserError

if TYPE_CHECKING:
    import ml_collections

OUTSIDE_MODEL = "outside the model (optimizer, loss, augmentation)"
_KERNEL_GRADIENT = "convolution kernel gradient"
_KERNEL_GRADIENT_COPIES = "convolution kernel gradient: layout copies"
CATEGORIES = ("convolution forward", "convolution input gradient", _KERNEL_GRADIENT, _KERNEL_GRADIENT_COPIES,
              "BatchNorm", "activation", "concatenation", "pooling", "dense",
              OUTSIDE_MODEL, "other")

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\(?[a-z]\w*\[[\d,]*\][^ ]*) ([\w\-]+)\((.*)$")
# pool, pool2, avg_pool, block1_pool, global_max_pooling; not pool_proj
_POOL_SCOPE = re.compile(r"^(\w+_)?pool(ing)?\d*$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_OPERANDS = re.compile(r"%([\w.\-]+)")


def _dims(shape: str) -> list[int]:
    match = re.search(r"\[([\d,]*)\]", shape)
    return [int(d) for d in match.group(1).split(",") if d] if match else []


def categorize(op_name: str, opcode: str, shape: str, batch: int) -> str:
    """The category of one HLO instruction from its metadata's op_name, its opcode and result shape."""
    backward = "transpose(" in op_name
    scopes = set(re.split(r"[/()]+", op_name))  # the module path, whichever transform wraps which part
    layer = op_name.split(")/", 1)[-1] if ")/" in op_name else op_name
    if "bn" in scopes:
        return "BatchNorm"
    if "conv" in scopes:
        if not backward:
            return "convolution forward"
        return "convolution input gradient" if _dims(shape)[:1] == [batch] else _KERNEL_GRADIENT
    if any(_POOL_SCOPE.match(scope) for scope in scopes) or opcode in ("reduce-window", "select-and-scatter"):
        return "pooling"
    if "concatenate" in layer or opcode == "concatenate":
        return "concatenation"
    if any(word in layer for word in ("/dense", "dense/", "classifier", "fc")):
        return "dense"
    if any(word in layer for word in ("relu", "max", "select_n")):
        return "activation"
    if not op_name or "jvp(" not in op_name:
        return OUTSIDE_MODEL
    return "other"


def instruction_categories(hlo_text: str, batch: int) -> dict[str, str]:
    """Category of every instruction of a compiled module's HLO text, keyed by the instruction's name."""
    found: dict[str, tuple[str, str, str, list[str]]] = {}
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, shape, opcode, rest = match.groups()
        op_name = _OP_NAME.search(rest)
        operands = _OPERANDS.findall(rest.split("),", 1)[0])
        found[name] = (op_name.group(1) if op_name else "", opcode, shape, operands)

    users: dict[str, list[str]] = collections.defaultdict(list)
    for name, (_, _, _, operands) in found.items():
        for operand in operands:
            users[operand].append(name)

    def own(name: str) -> str:
        op_name, opcode, _, _ = found[name]
        return op_name or ("transpose(jvp(model))/conv/kernel_gradient" if opcode == "convolution" else "")

    def purpose(name: str, depth: int = 0) -> str:
        """op_name of `name`, or of the first instruction with one that consumes it (a layout copy's purpose)."""
        if own(name) or depth > 6:
            return own(name)
        return next((op for user in users.get(name, []) if (op := purpose(user, depth + 1))), "")

    categories = {}
    for name, (_, opcode, shape, _) in found.items():
        category = categorize(own(name) or purpose(name), opcode, shape, batch)
        copy = not own(name) and name.startswith(("transpose", "copy"))
        categories[name] = _KERNEL_GRADIENT_COPIES if copy and category == _KERNEL_GRADIENT else category
    return categories


def operation_seconds(trace_events: Iterable[dict], categories: dict[str, str]) -> dict[str, float]:
    """Seconds per category of the trace's complete events whose names are instructions of the module."""
    totals: dict[str, float] = collections.defaultdict(float)
    for event in trace_events:
        if event.get("ph") == "X" and event.get("name") in categories:
            totals[categories[event["name"]]] += event.get("dur", 0.0) / 1e6
    return dict(totals)


def shares_table(columns: dict[str, dict[str, float]]) -> str:
    """Markdown: one row per category, one column per measured phase, each cell a percentage of its column."""
    names = list(columns)
    lines = ["| category | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    totals = {name: sum(columns[name].values()) or 1.0 for name in names}
    for category in CATEGORIES:
        if not any(columns[name].get(category) for name in names):
            continue
        cells = [f"{100 * columns[name].get(category, 0.0) / totals[name]:.1f}%" for name in names]
        lines.append(f"| {category} | " + " | ".join(cells) + " |")
    lines.append("| operation seconds (all threads) | " + " | ".join(f"{totals[n]:.2f}" for n in names) + " |")
    return "\n".join(lines)


def trace_events(directory: str) -> list[dict]:
    """The events of the one profiler trace written under `directory` (jax.profiler's .trace.json.gz)."""
    files = glob.glob(os.path.join(directory, "**", "*.trace.json.gz"), recursive=True)
    with gzip.open(files[0]) as handle:
        return json.load(handle)["traceEvents"]


def profile(config: "ml_collections.ConfigDict", steps: int) -> dict[str, dict[str, float]]:
    """{'train': seconds per category, 'inference': …} of `steps` traced runs of each compiled step."""
    import jax

    from cnn_flax.bench.model import BareSteps, benchmark_config
    from cnn_flax.run.train import Trainer

    run_config = benchmark_config(config, steps, use_data=False)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = Trainer(run_config)
        bare = BareSteps(trainer)
        predict = trainer.evaluator.predict_step[False]

        def inference() -> None:
            bare.infer(steps)

        bare(1)
        inference()
        # The compiled module is one device's program: its images are that device's part of the batch.
        batch_size = jax.tree.leaves(bare.batch)[0].addressable_shards[0].data.shape[0]
        phases = {"train": (lambda: bare(steps), trainer.train_step, (bare.state, bare.batch, bare.metrics)),
                  "inference": (inference, predict, (bare.state.variables, bare.batch))}
        columns = {}
        for phase, (run, step, args) in phases.items():
            categories = instruction_categories(step.lower(*args).compile().as_text(), batch_size)
            directory = os.path.join(scratch, phase)
            with jax.profiler.trace(directory):
                run()
            columns[phase] = operation_seconds(trace_events(directory), categories)
    return columns


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__, config=True, batch=64)
    parser.add_argument("--steps", type=int, default=3, help="traced runs of each compiled step")
    parser.add_argument("--half-precision", action="store_true", help="bfloat16 compute")
    parser.add_argument("--off", default="", help="comma-separated CPU kernels to replace by XLA's own ops "
                        "(max_pool, batch_norm, conv_kernel_gradient): the profile before a rewrite")
    args = parser.parse_args(argv)
    cli.check_positive(steps=args.steps)
    cli.tune_runtime()  # the same XLA settings as launch.py, before JAX starts
    from cnn_flax.models import cpu_kernels

    off = tuple(name for name in args.off.split(",") if name)
    unknown = sorted(set(off) - set(cpu_kernels.KERNELS))
    if unknown:
        raise UserError(f"--off {args.off}: {', '.join(unknown)} is not a CPU kernel; "
                        f"name some of {', '.join(cpu_kernels.KERNELS)}")
    config = cli.load_config(args.config, args.batch)
    config.half_precision = args.half_precision
    with cpu_kernels.switched_off(*off):  # read while tracing: both compiled steps keep XLA's ops
        print(shares_table(profile(config, args.steps)))
    return 0


if __name__ == "__main__":
    cli.run(main)
