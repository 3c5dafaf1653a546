"""Killing launch.py for real (SIGKILL, as the kernel or a preempting scheduler does) and reading what it left.

`freeze_and_kill` stops the process with SIGSTOP the moment a poll sees the wanted point, so the files it
leaves are the ones the poll saw (give or take the few milliseconds between the poll and the signal), then
kills it and waits until every process it started (prepare's decoding pool) is gone too.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import h5py
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 300
PARTIAL = re.compile(r"\.partial[@-]")


def env(devices: int = 1) -> dict[str, str]:
    """CPU devices as on a laptop; compiled programs are shared with the other tests through the cache."""
    out = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1", TF_CPP_MIN_LOG_LEVEL="3",
               JAX_COMPILATION_CACHE_DIR=os.path.join(ROOT, ".jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return out


def launch(args: list[str], log_path: str | None = None, devices: int = 1) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "launch.py", *args], cwd=ROOT, env=env(devices), capture_output=True,
                            text=True, timeout=TIMEOUT)
    if log_path:
        with open(log_path, "a") as log:
            log.write(result.stdout + result.stderr)
    return result


def start(args: list[str], log_path: str, devices: int = 1) -> subprocess.Popen:
    with open(log_path, "a") as log:
        return subprocess.Popen([sys.executable, "launch.py", *args], cwd=ROOT, env=env(devices), stdout=log,
                                stderr=subprocess.STDOUT)


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (children, their children...), read from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    stat = handle.read()
            except OSError:
                continue
            parents[int(entry)] = int(stat[stat.rindex(b")") + 2:].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().split(b")")[-1].split()[0] != b"Z"
    except OSError:
        return False


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, log_path: str, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the run ended or stalled before {what}:\n{open(log_path).read()[-3000:]}")
        time.sleep(0.001)


def freeze_and_kill(process: subprocess.Popen) -> None:
    """SIGSTOP, then SIGKILL; returns once the process and everything it started are gone."""
    process.send_signal(signal.SIGSTOP)
    below = descendants(process.pid)
    process.send_signal(signal.SIGKILL)
    assert process.wait(TIMEOUT) == -signal.SIGKILL
    deadline = time.monotonic() + 30
    while (left := [pid for pid in below if running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"processes {left} of the killed run are still running"


def listing(folder: str) -> list[str]:
    """Every file and folder under `folder` (hidden ones included), relative, sorted."""
    out = []
    for base, folders, files in os.walk(folder):
        out += [os.path.relpath(os.path.join(base, name), folder) for name in folders + files]
    return sorted(out)


def partials(folder: str) -> list[str]:
    return [name for name in sorted(os.listdir(folder)) if PARTIAL.search(name)] if os.path.isdir(folder) else []


def hdf5_contents(path: str) -> dict:
    """Every dataset (as numpy) and attribute of an HDF5 file, keyed by name."""
    out = {}
    with h5py.File(path, "r") as f:
        for key, value in f.attrs.items():
            out[f"attr:{key}"] = np.asarray(value).tolist()
        for key, dataset in f.items():
            out[key] = dataset[()]
    return out


def assert_same_hdf5(path_a: str, path_b: str) -> None:
    a, b = hdf5_contents(path_a), hdf5_contents(path_b)
    assert sorted(a) == sorted(b), (path_a, path_b)
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key], dtype=object if key in ("paths", "skipped") else None),
                                      np.asarray(b[key], dtype=object if key in ("paths", "skipped") else None),
                                      err_msg=f"{path_b}: {key}")
