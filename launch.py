"""Run a cnn_flax experiment: python launch.py --config configs/NAME.py[:ARG] [--mode MODE] [--workdir DIR]

Parses flags, sets up logging and (for multi-host runs) JAX's distributed runtime, then calls one
library function. Mistakes the user can fix are printed as one line (`--verbose` shows the traceback).
"""

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/NAME.py[:ARG]); --mode=report "
                                "reads the workdir's config.json instead.", lock_config=True)
flags.DEFINE_string("workdir", None, "Where the run writes everything (default: runs/<config name>).")
flags.DEFINE_string("checkpoint", "latest", "--mode=evaluate/predict/export: latest, best (by "
                    "checkpoint.monitor) or an epoch number; --mode=evaluate also all.")
flags.DEFINE_list("images", [], "--mode=predict: image files, or folders of them (searched recursively), to classify.")
flags.DEFINE_bool("gradcam", False, "--mode=predict: also write WORKDIR/gradcam/<image>_cam.png, the Grad-CAM map "
                  "of each image's predicted class (layer: --config.gradcam.layer).")
flags.DEFINE_string("variants", None, "--mode=ablate: 'name:key=value,...;name2:...' (default: the deck's "
                    "extensions: baseline, conv_act_bn, elu).")
flags.DEFINE_bool("ema", False, "--mode=evaluate/predict/export: use the moving average of the weights kept with "
                  "ema_decay (same as --config.ema_eval=True).")
flags.DEFINE_bool("overwrite", False, "--mode=prepare: rebuild dataset files that already exist; --mode=export: "
                  "replace WORKDIR/export.")
flags.DEFINE_string("repo_id", None, "--mode=push: the Hugging Face model repository (user/name) that WORKDIR/export "
                    "is uploaded to (created if needed; the token as huggingface_hub finds it).")
flags.DEFINE_bool("private", False, "--mode=push: create the repository as private.")
flags.DEFINE_string("export_dir", None, "--mode=predict / benchmark: answer from this export folder alone "
                    "(--config not needed).")
flags.DEFINE_enum("export_runtime", "jax", ["jax", "saved_model", "onnx", "tflite"],
                  "--mode=predict --export_dir: which of the folder's artifacts to run.")
flags.DEFINE_bool("verbose", False, "Show tracebacks and debug logs.")
flags.DEFINE_string("coordinator_address", None, "Multi-host: HOST:PORT of process 0.")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")


def _log_to_workdir() -> None:
    """Modes that write into the workdir keep their full log there (log.txt) too."""
    if FLAGS.mode in ("summary", "prepare", "report") or (FLAGS.config is None and not FLAGS.workdir):
        return
    import jax

    from cnn_flax.console import log_file_name, log_to_file

    workdir = FLAGS.workdir or os.path.join("runs", FLAGS.config.name)
    log_to_file(os.path.join(workdir, log_file_name(jax.process_index())))


def _start_distributed() -> None:
    import jax

    if FLAGS.coordinator_address:
        from cnn_flax.run.supervisor import HEARTBEAT_SECONDS

        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only used where devices are CPUs
        jax.distributed.initialize(FLAGS.coordinator_address, num_processes=FLAGS.num_processes,
                                   process_id=FLAGS.process_id, heartbeat_timeout_seconds=HEARTBEAT_SECONDS)
    elif any(key in os.environ for key in ("TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID", "MEGASCALE_COORDINATOR_ADDRESS")):
        jax.distributed.initialize()


def _workdir() -> str:
    return FLAGS.workdir or os.path.join("runs", FLAGS.config.name if FLAGS.config is not None else "")


def _supervise() -> None:
    """Multi-host (--coordinator_address): a lost process ends the others with one line (cnn_flax.run.supervisor)."""
    if not FLAGS.coordinator_address or (FLAGS.num_processes or 1) < 2:
        return
    from cnn_flax.console import log_file_name
    from cnn_flax.run import supervisor

    def describe_loss(lost: list[int]) -> str:
        resume = None
        if FLAGS.mode == "train" and FLAGS.config is not None:
            resume = supervisor.continues_from(os.path.join(_workdir(), "checkpoints"), FLAGS.config.num_epochs)
        return supervisor.loss_line(lost, FLAGS.num_processes, resume)

    supervisor.supervise(describe_loss, os.path.join(_workdir(), log_file_name(FLAGS.process_id or 0)), FLAGS.verbose)


def _train(config, workdir: str) -> None:
    from cnn_flax.run.train import train_and_evaluate

    result = train_and_evaluate(config, workdir)
    if result.metrics is not None:  # None when a signal stopped the run, and on processes other than 0
        metrics = result.metrics
        print(f"Done: rank-1 {metrics['rank1']:.4f}  rank-5 {metrics['rank5']:.4f}  loss {metrics['loss']:.4f}  "
              f"(open {os.path.join(workdir, 'report.html')})")


def _evaluate(config, workdir: str) -> None:
    from cnn_flax.run import modes

    modes.evaluate(config, workdir, FLAGS.checkpoint)


def _summary(config, workdir: str) -> None:
    from cnn_flax.run import modes

    print(modes.summary(config))


def _prepare(config, workdir: str) -> None:
    from cnn_flax.run import modes

    for path in modes.prepare(config, overwrite=FLAGS.overwrite):
        print(path)


def _predict(config, workdir: str) -> None:
    if FLAGS.export_dir:  # the export folder alone: no config, checkpoint or dataset
        from cnn_flax.errors import UserError
        from cnn_flax.run.predict import predict_from_export

        if FLAGS.gradcam:
            raise UserError("--gradcam needs the model's layers: predict with --config (and the run's --workdir), "
                            "not --export_dir")
        predict_from_export(FLAGS.export_dir, FLAGS.images, FLAGS.workdir, FLAGS.export_runtime)
        return
    from cnn_flax.run import modes

    modes.predict(config, workdir, FLAGS.images, gradcam=FLAGS.gradcam, checkpoint=FLAGS.checkpoint)


def _benchmark(config, workdir: str) -> None:
    if FLAGS.export_dir:
        from cnn_flax.bench.export import benchmark_export

        print(benchmark_export(FLAGS.export_dir))
        return
    from cnn_flax.bench.model import benchmark

    print(benchmark(config, workdir))


def _ablate(config, workdir: str) -> None:
    from cnn_flax.run.ablation import DECK_EXTENSIONS, run_ablation

    print(run_ablation(config, workdir, FLAGS.variants or DECK_EXTENSIONS))


def _export(config, workdir: str) -> None:
    from cnn_flax.run.export import export_run

    written = export_run(config, workdir, FLAGS.checkpoint, overwrite=FLAGS.overwrite)
    print(f"Exported {', '.join(written['formats'].values())} to {os.path.join(workdir, 'export')}")


def _push(config, workdir: str) -> None:
    from cnn_flax.errors import UserError
    from cnn_flax.pretrained.hub import push_folder

    if not FLAGS.repo_id:
        raise UserError("--mode=push needs --repo_id=user/name (the Hugging Face model repository to create or update)")
    print(push_folder(os.path.join(workdir, "export"), FLAGS.repo_id, private=FLAGS.private))


def _lr_find(config, workdir: str) -> None:
    from cnn_flax.run.lr_find import describe_result, lr_find

    print(describe_result(lr_find(config, workdir)))
    print(f"(plot: {os.path.join(workdir, 'lr_find.png')}, numbers: {os.path.join(workdir, 'lr_find.json')})")


def _report(config, workdir: str) -> None:
    from cnn_flax.run.report_page import rebuild_report

    print(rebuild_report(workdir, config))


# --mode=NAME -> what it does, given the config (None where the mode needs none) and the workdir.
MODES = {
    "train": _train,
    "evaluate": _evaluate,
    "summary": _summary,
    "prepare": _prepare,
    "predict": _predict,
    "benchmark": _benchmark,
    "ablate": _ablate,
    "export": _export,
    "push": _push,
    "report": _report,
    "lr_find": _lr_find,
}
flags.DEFINE_enum("mode", "train", list(MODES), "What to do.")


def run() -> int:
    from cnn_flax.errors import UserError

    config, mode = FLAGS.config, FLAGS.mode
    if FLAGS.export_dir and mode not in ("predict", "benchmark"):
        raise UserError(f"--export_dir is for --mode=predict or --mode=benchmark, not --mode={mode}")
    without_config = ((mode in ("report", "push") and FLAGS.workdir)
                      or (mode in ("predict", "benchmark") and FLAGS.export_dir))
    if config is None and not without_config:
        if mode in ("report", "push"):
            raise UserError(f"--mode={mode} needs --workdir=runs/NAME (or --config to name runs/<config name>)")
        raise UserError("--config=configs/NAME.py is required (except for --mode=report --workdir=DIR and "
                        "--mode=predict/benchmark --export_dir)")
    if config is not None and FLAGS.ema:
        config.ema_eval = True
    workdir = FLAGS.workdir or (os.path.join("runs", config.name) if config is not None else None)
    MODES[mode](config, workdir)
    return 0


def parse_flags(argv: list[str]) -> list[str]:
    from cnn_flax.errors import UserError
    from cnn_flax.run.config_args import check_config_flags

    try:
        check_config_flags(argv)
        return FLAGS(argv)
    except Exception as error:  # noqa: BLE001 - a flag mistake is one line (--verbose shows the traceback)
        text = str(error) if isinstance(error, UserError) else " ".join(str(error).split())
        print(f"error: {text}", file=sys.stderr)
        if "--verbose" in argv:
            raise
        sys.exit(2)


class _OneLineRecords(logging.Filter):
    """Without --verbose, log records stay one line each: the error that ends a run is printed on its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = record.exc_text = record.stack_info = None
        return True


def _quiet_unraisable(unraisable: "sys.UnraisableHookArgs") -> None:
    """Errors nothing can catch (TensorStore calling back into Orbax's closed event loop after a failed save)."""
    logging.getLogger("cnn_flax").debug("ignored %s in %r", unraisable.exc_type.__name__, unraisable.object)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    _supervise()  # before JAX starts: it forks
    from cnn_flax.console import configure_logging, quiet_native_start

    terminal = configure_logging(FLAGS.verbose)  # warnings on the terminal; the full log in WORKDIR/log.txt
    if not FLAGS.verbose:
        terminal.addFilter(_OneLineRecords())
        sys.unraisablehook = _quiet_unraisable
    from cnn_flax.runtime import tune_cpu, use_compile_cache

    log = logging.getLogger("cnn_flax")
    log.debug("CPU runtime settings applied: %s", tune_cpu())  # before JAX starts
    log.debug("compiled programs cached in %r", use_compile_cache())
    from cnn_flax.errors import UserError

    try:
        _start_distributed()
        _log_to_workdir()
        if FLAGS.mode in ("summary", "report"):  # quick modes that may import TensorFlow on the way
            with quiet_native_start(FLAGS.verbose):
                return run()
        return run()
    except UserError as error:
        if FLAGS.verbose:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        if FLAGS.coordinator_address:
            from cnn_flax.run.supervisor import exit_if_peer_lost

            exit_if_peer_lost(error)  # leaves the process when another one is gone
        raise


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main, flags_parser=parse_flags)
