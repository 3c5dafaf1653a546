"""bfloat16 against float32 in one process, window by window, so that a shared machine's load cancels out.

    python -m cnn_flax.bench.precision --config configs/minigooglenet_cifar10.py --seconds 20 --batch 64

Two benchmark processes run minutes apart, and on a machine other work shares, the load between them
moves either figure by more than the precision does. Here both precisions of the config's model are
compiled in one process (on random images of its shape), each warmed up on its own (`bench.phases`),
and then windows of about `seconds / 3` of each alternate: float32 train steps, bfloat16 train steps,
float32 inference, bfloat16 inference, three times. Each ratio is the median of the three pairs. Prints
one line: `precision model=… batch=… step_f32_img_per_s=… step_bf16_img_per_s=… step_bf16_over_f32=…`
and the same for `eval`.
"""

import statistics
from collections.abc import Callable
from typing import Any

import ml_collections

from cnn_flax.bench import cli
from cnn_flax.bench.model import BareSteps, benchmark_config, synthetic_steps
from cnn_flax.bench.phases import alternated, median_ratio
from cnn_flax.defaults import base
from cnn_flax.errors import UserError

PRECISIONS = {"f32": False, "bf16": True}


def precision_figures(config: ml_collections.ConfigDict, seconds: float) -> dict[str, Any]:
    """Train-step and inference images/s of float32 and bfloat16 compute, and bfloat16/float32 of each."""
    from cnn_flax.run.train import Trainer

    if seconds <= 0:
        raise UserError(f"--seconds {seconds:g}: give the positive timed seconds of each precision, e.g. 20")
    bare: dict[str, BareSteps] = {}
    for name, half in PRECISIONS.items():
        variant = ml_collections.ConfigDict(config.to_dict())
        variant.half_precision = half
        trainer = Trainer(benchmark_config(variant, synthetic_steps(variant), use_data=False))
        bare[name] = BareSteps(trainer)
        bare[name](1)
        bare[name].infer(1)
    batch_size = config.batch_size
    figures: dict[str, Any] = dict(model=next(iter(bare.values())).trainer.experiment.model_config.get("name", "?"),
                                   batch=batch_size)
    for kind in ("step", "eval"):
        runs: dict[str, Callable[[int], float]] = {
            name: (steps if kind == "step" else steps.infer) for name, steps in bare.items()}
        rates, _ = alternated(runs, seconds, batch_size)
        for name in runs:
            figures[f"{kind}_{name}_img_per_s"] = statistics.median(rates[name])
        figures[f"{kind}_bf16_over_f32"] = median_ratio(rates["bf16"], rates["f32"])
    figures["compiles"] = max(steps.trainer.compile_count("train") for steps in bare.values())
    return figures


KEYS = ("model", "batch", *(f"{kind}_{what}" for kind in ("step", "eval")
                              for what in ("f32_img_per_s", "bf16_img_per_s", "bf16_over_f32")), "compiles")


def format_line(figures: dict[str, Any]) -> str:
    return cli.format_line("precision", figures, KEYS)


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__, config=True, seconds=base("precision").benchmark.seconds, batch=64)
    args = parser.parse_args(argv)
    cli.check_positive(seconds=args.seconds)
    cli.tune_runtime()  # the same XLA settings as launch.py, before JAX starts
    print(format_line(precision_figures(cli.load_config(args.config, args.batch), args.seconds)))
    return 0


if __name__ == "__main__":
    cli.run(main)
