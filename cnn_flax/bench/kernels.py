"""Each CPU kernel against XLA's own op in one process, window by window, so a shared machine's load cancels.

    python -m cnn_flax.bench.kernels --config configs/minigooglenet_cifar10.py --seconds 10 --batch 64
    python -m cnn_flax.bench.kernels --config configs/minivgg_cifar10.py --kernels max_pool --seconds 10

`cpu_kernels.py` replaces some of XLA's operations on a CPU; whether one pays depends on the model and
the machine. Here the config's model is compiled twice (random images of its shape): with every CPU
kernel ("on") and with the named ones switched back to XLA's or Flax's own op ("off",
`cpu_kernels.switched_off`). Each is warmed up on its own (`bench.phases`), then windows of about
`seconds / 3` alternate, train steps then inference, `--rounds` times; each ratio is the median of the
pairs' on/off, by the wall clock (`*_on_over_off`) and by the process's CPU time (`*_on_over_off_cpu`,
user and system: the work, not the waiting, which is the steadier figure on a machine that other work
shares). One line: `kernels model=… batch=… off=… step_on_img_per_s=… step_off_img_per_s=…
step_on_over_off=… step_on_over_off_cpu=…`, the same for `eval`, `rounds=… compiles=…`.
"""

import statistics
from typing import Any

import ml_collections

from cnn_flax.bench import cli
from cnn_flax.bench.model import BareSteps, benchmark_config, synthetic_steps
from cnn_flax.bench.phases import WINDOWS, alternated, median_ratio
from cnn_flax.errors import UserError


def kernel_figures(config: ml_collections.ConfigDict, seconds: float, kernels: tuple[str, ...],
                   rounds: int = WINDOWS) -> dict[str, Any]:
    """Train-step and inference images/s with all CPU kernels and with `kernels` off, and on/off of each,
    by the wall clock and by the process's CPU time."""
    from cnn_flax.models import cpu_kernels
    from cnn_flax.run.train import Trainer

    if seconds <= 0:
        raise UserError(f"--seconds {seconds:g}: give the positive timed seconds of each variant, e.g. 10")
    unknown = sorted(set(kernels) - set(cpu_kernels.KERNELS))
    if not kernels or unknown:
        raise UserError(f"--kernels {','.join(kernels)}: name one or more of {', '.join(cpu_kernels.KERNELS)}")
    bare: dict[str, BareSteps] = {}
    for name in ("on", "off"):
        with cpu_kernels.switched_off(*(kernels if name == "off" else ())):
            trainer = Trainer(benchmark_config(config, synthetic_steps(config), use_data=False))
            bare[name] = BareSteps(trainer)
            bare[name](1)  # compiled here, inside the switch
            bare[name].infer(1)
    figures: dict[str, Any] = dict(model=bare["on"].trainer.experiment.model_config.get("name", "?"),
                                   batch=config.batch_size, off=",".join(kernels))
    for kind in ("step", "eval"):
        runs = {name: (steps if kind == "step" else steps.infer) for name, steps in bare.items()}
        rates, cpu_rates = alternated(runs, seconds, config.batch_size, rounds)
        for name in runs:
            figures[f"{kind}_{name}_img_per_s"] = statistics.median(rates[name])
        figures[f"{kind}_on_over_off"] = median_ratio(rates["on"], rates["off"])
        figures[f"{kind}_on_over_off_cpu"] = median_ratio(cpu_rates["on"], cpu_rates["off"])
    figures["rounds"] = rounds
    figures["compiles"] = max(steps.trainer.compile_count("train") for steps in bare.values())
    return figures


KEYS = ("model", "batch", "off", *(f"{kind}_{what}" for kind in ("step", "eval")
                                   for what in ("on_img_per_s", "off_img_per_s", "on_over_off", "on_over_off_cpu")),
        "rounds", "compiles")


def format_line(figures: dict[str, Any]) -> str:
    return cli.format_line("kernels", figures, KEYS)


def main(argv: list[str] | None = None) -> int:
    from cnn_flax.models.cpu_kernels import KERNELS

    parser = cli.parser(__doc__, config=True, seconds=10.0, batch=64)
    parser.add_argument("--kernels", default=",".join(KERNELS),
                        help=f"comma-separated kernels to switch off in the 'off' variant ({', '.join(KERNELS)})")
    parser.add_argument("--rounds", type=int, default=WINDOWS, help=f"alternating pairs of windows (default {WINDOWS})")
    args = parser.parse_args(argv)
    cli.check_positive(seconds=args.seconds, rounds=args.rounds)
    cli.tune_runtime()  # the same XLA settings as launch.py, before JAX starts
    kernels = tuple(name for name in args.kernels.split(",") if name)
    print(format_line(kernel_figures(cli.load_config(args.config, args.batch), args.seconds, kernels, args.rounds)))
    return 0


if __name__ == "__main__":
    cli.run(main)
