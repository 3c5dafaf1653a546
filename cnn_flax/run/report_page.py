"""Every run's report.html: record what ran and where, then build the page from the workdir's files.

Training, evaluation and ablations call `write_run_report` when they finish; `--mode=report` calls
`rebuild_report`, which only reads files, so a page can be rebuilt (after an upgrade, on another machine)
without the data or an accelerator. The environment is recorded when a run happens (`run_info.json`),
never at rebuild time, because only then is it the environment the numbers came from.
"""

import datetime
import importlib.metadata
import json
import logging
import os
import platform
import shlex
import sys
from typing import Any

import jax
import ml_collections

from cnn_flax.atomic import write_json
from cnn_flax.errors import UserError
from cnn_flax.evaluation.html_page import build_report

log = logging.getLogger("cnn_flax")
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-cpu", "tensorflow", "numpy")


def environment(num_devices: int = 0) -> dict[str, Any]:
    """Versions and the devices of the run (config.num_devices), in the words a bug report needs."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    devices = jax.local_devices()[:num_devices] if num_devices > 0 else jax.devices()
    return {"python": platform.python_version(), **versions, "backend": jax.default_backend(),
            "devices": [f"{d.device_kind} ({d.platform}:{d.id})" for d in devices],
            "device count": len(devices), "processes": jax.process_count(),
            "system": f"{platform.system()} {platform.machine()}"}


def _command() -> str | None:
    """The launch.py command line; None when a run was started from Python (its argv says nothing)."""
    if not sys.argv or os.path.basename(sys.argv[0]) != "launch.py":
        return None
    return shlex.join(["python", "launch.py", *sys.argv[1:]])


def _read_info(workdir: str) -> dict[str, Any]:
    try:
        with open(os.path.join(workdir, "run_info.json"), encoding="utf-8") as handle:
            info = json.load(handle)
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def _plan(config: ml_collections.ConfigDict | None) -> list[str] | None:
    """The optimizer and learning-rate plan as --mode=summary prints it; None for models without classes."""
    if config is None or "optimizer" not in config or "num_classes" not in config.get("model", {}):
        return None
    from cnn_flax.run.experiment import optimizer_plan

    try:
        return optimizer_plan(config)
    except (KeyError, AttributeError, ValueError, TypeError, UserError) as error:  # an older or edited config.json
        log.warning("report.html: no learning-rate plan (%s)", error)
        return None


def record_run(workdir: str, mode: str, config: ml_collections.ConfigDict | None) -> dict[str, Any]:
    """Add this run to run_info.json: this run's environment and plan; earlier commands are kept."""
    info = _read_info(workdir)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    commands = [*info.get("commands", []), {"mode": mode, "command": _command(), "time": now}]
    num_devices = int(config.get("num_devices", 0)) if config is not None else 0
    info = {"environment": environment(num_devices), "commands": commands[-20:],
            "learning_rate_plan": _plan(config) if config is not None else info.get("learning_rate_plan")}
    write_json(os.path.join(workdir, "run_info.json"), info)
    return info


def _workdir_config(workdir: str) -> ml_collections.ConfigDict | None:
    try:
        with open(os.path.join(workdir, "config.json"), encoding="utf-8") as handle:
            return ml_collections.ConfigDict(json.load(handle))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as error:
        raise UserError(f"{workdir}/config.json is not valid JSON ({error}); rerun the training to rewrite it"
                        ) from error


def write_run_report(workdir: str, mode: str, config: ml_collections.ConfigDict | None = None) -> str | None:
    """After a run: record it, then (re)build report.html. Process 0 only; returns the page's path."""
    if jax.process_index() != 0:
        return None
    if config is not None and not os.path.exists(os.path.join(workdir, "config.json")):
        write_json(os.path.join(workdir, "config.json"), config.to_dict())  # e.g. evaluating init_from
    info = record_run(workdir, mode, config if config is not None else _workdir_config(workdir))
    return build_report(workdir, info["learning_rate_plan"])


def rebuild_report(workdir: str, config: ml_collections.ConfigDict | None = None) -> str:
    """--mode=report: the page again from the workdir's files, with the plan the run recorded (or that of
    `config` when given, or of config.json for a workdir without a recorded plan)."""
    if not os.path.isdir(workdir):
        raise UserError(f"--workdir={workdir} does not exist; give the folder of a finished run")
    known = ("config.json", "history.json", "metrics.json", "ablation.txt", "checkpoints_evaluation.json")
    if not any(os.path.exists(os.path.join(workdir, name)) for name in known):
        raise UserError(f"{workdir} holds none of {', '.join(known)}; is it the workdir of a run?")
    plan = _read_info(workdir).get("learning_rate_plan")
    if config is not None or plan is None:
        plan = _plan(config if config is not None else _workdir_config(workdir))
    return build_report(workdir, plan)
