"""What every benchmark entry point shares: its flags, its config, its one output line, its child processes.

Each entry point (`--mode=benchmark`, `bench.precision`, `bench.op_profile`, `bench.table`, `bench.input`,
`bench.prepare`, the peers) builds its parser here, so `--config`, `--seconds` and `--batch` mean the same
everywhere; loads its config through `config_args.load_config`, as `launch.py` does; prints its figures as
one `kind key=value ...` line that `parse_line` reads back; and reports a `UserError` as one line.

Memory is read from /proc the same way for every framework: the kernel's high-water mark of a process's
own address space (VmHWM), which exec starts afresh. `getrusage` would be simpler, but Linux carries the
parent's peak into a child across fork and exec, so a child of a large process (a test worker, a notebook,
the table) would report its parent's memory. Nothing here imports JAX: the peers use this module too, and
a peer process imports only its own framework.
"""

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from cnn_flax.errors import UserError

if TYPE_CHECKING:
    import ml_collections

REPO = Path(__file__).resolve().parents[2]  # the checkout: launch.py and configs/ are here


def parser(doc: str, *, config: bool = False, seconds: float | None = None,
           batch: int | None = None) -> argparse.ArgumentParser:
    """A parser whose description is the module docstring's first line and whose usage shows the rest;
    `config`, `seconds` and `batch` add the common flags (the last two with these defaults)."""
    first, _, rest = doc.strip().partition("\n")
    p = argparse.ArgumentParser(description=first, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    if config:
        p.add_argument("--config", required=True,
                       help="a config file, e.g. configs/minivgg_cifar10.py (FILE:ARG as launch.py takes it)")
    if seconds is not None:
        p.add_argument("--seconds", type=float, default=seconds,
                       help=f"timed seconds of each phase, after its warm-up (default {seconds:g})")
    if batch is not None:
        p.add_argument("--batch", type=int, default=batch, help=f"images per step (default {batch})")
    return p


def check_positive(**values: float) -> None:
    """One line naming every flag that must be positive and is not."""
    bad = [f"--{name.replace('_', '-')} {value:g}" for name, value in values.items() if not value > 0]
    if bad:
        raise UserError(f"{', '.join(bad)}: must be positive")


def load_config(path: str, batch: int | None = None) -> "ml_collections.ConfigDict":
    """The config of `path` (FILE or FILE:ARG) as launch.py loads it, with `batch_size` set when given.

    The working directory goes on sys.path first: config files import `configs.common`.
    """
    from cnn_flax.run.config_args import load_config as load

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    config = load(path)
    if batch is not None:
        check_positive(batch=batch)
        config.batch_size = batch
    return config


def tune_runtime() -> None:
    """launch.py's process settings (XLA CPU flags, allocator), before JAX starts: figures as a run sees them."""
    from cnn_flax.runtime import tune_cpu

    tune_cpu()


def format_value(key: str, value: Any) -> str:
    """Ratios with three decimals, durations with two, operations per step with four digits, other floats
    with one; `seconds` as given. A value that rounds to zero is written without a sign: a memory delta of
    -0.04 MB is no change, and `-0.0` would read as a loss."""
    if isinstance(value, bool):
        return str(int(value))
    if not isinstance(value, float):
        return str(value)
    if key == "seconds":
        text = f"{value:g}"
    elif "_over_" in key or key.endswith("_of_peak"):
        text = f"{value:.3f}"
    elif key.endswith("_gflop"):  # per step: small models do a fraction of one
        text = f"{value:.4g}"
    elif key.endswith("_s") and not key.endswith("_per_s"):
        text = f"{value:.2f}"
    else:
        text = f"{value:.1f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def format_line(kind: str, figures: Mapping[str, Any], keys: Sequence[str]) -> str:
    """`kind key=value ...` for the keys of `keys` that `figures` has, in that order."""
    return " ".join([kind, *(f"{key}={format_value(key, figures[key])}" for key in keys if key in figures)])


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


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what the platform says), for a table's heading."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _status_mb(pid: int | str, field: str) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def rss_mb(pid: int | str = "self") -> float | None:
    """Resident memory now (VmRSS), or None off Linux."""
    return _status_mb(pid, "VmRSS")


def peak_rss_mb(pid: int | str = "self") -> float | None:
    """The resident high-water mark (VmHWM) of a process; for this one off Linux, getrusage's figure."""
    peak = _status_mb(pid, "VmHWM")
    if peak is None and pid == "self":
        per_mb = 2**20 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / per_mb
    return peak


def reset_peak() -> bool:
    """Start this process's high-water mark afresh at its resident size now, so that the next reading of
    `peak_rss_mb` is the peak of what ran in between (Linux 4.0 and later: "5" to /proc/self/clear_refs).
    False where that is not possible: peaks then count from the process's start."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def run_measured(command: Sequence[str], cwd: Path = REPO,
                 env: dict[str, str] | None = None) -> tuple[int, str, str, float]:
    """(exit code, stdout, stderr, peak RSS in MB) of a fresh process running `command`; the peak is polled
    from /proc while the process runs."""
    peak = [0.0]
    with tempfile.TemporaryFile(mode="w+") as errors:
        process = subprocess.Popen(list(command), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=errors, text=True)

        def watch() -> None:
            while process.poll() is None:
                peak[0] = max(peak[0], peak_rss_mb(process.pid) or 0.0)
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        stdout = process.stdout.read()
        process.stdout.close()
        process.wait()
        watcher.join()
        errors.seek(0)
        return process.returncode, stdout, errors.read(), peak[0]


def child_figures(command: Sequence[str], prefix: str) -> dict[str, float | str]:
    """The figures line of a child process; its failure as a UserError with its last error line."""
    code, stdout, stderr, _ = run_measured(command)
    if code != 0:
        last = (stderr.strip().splitlines() or ["no error output"])[-1]
        raise UserError(f"the measuring process {' '.join(command[1:4])} … failed (exit code {code}): {last}")
    return parse_line(stdout, prefix)


def run(main: Callable[[], int]) -> NoReturn:
    """Exit with `main()`'s code; a UserError ends the process with its one line."""
    try:
        sys.exit(main())
    except UserError as error:
        sys.exit(f"error: {error}")
