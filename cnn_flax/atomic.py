"""Atomic file writes, and the temporary names every writer uses, so that a killed run's leftovers are found.

A reader (a user with `training.png` open, a tool polling `history.json`, a second run resuming) must never
see a half-written file. Each write goes to a hidden temporary file in the destination folder and is then
renamed over the target with `os.replace`, which is atomic on one filesystem; a failed write removes its
temporary file and leaves the previous version in place.

A process killed with SIGKILL (or by the kernel, or a lost machine) cannot remove its temporary file, and
on an ImageNet-sized prepare one is gigabytes. So every writer (these small files, prepare's HDF5 files,
export's folder) names its temporary `.NAME.partial@HOST.PID.START.RANDOM` with `partial_path`, and calls
`remove_stale_partials` before it writes: the temporaries of processes that no longer run go, those of a
process still writing beside it stay. START is the process's start time (in clock ticks since boot, from
/proc), which tells a dead writer from a new process that got its pid. A temporary written on another
host cannot be checked from here: it is left alone until untouched for `ELSEWHERE_STALE_SECONDS`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("cnn_flax")

# Two days: a writer elsewhere that is alive keeps touching its temporary (rows, files) far more often.
ELSEWHERE_STALE_SECONDS = 2 * 24 * 3600
_TAIL = re.compile(r"\.partial@(?P<host>[A-Za-z0-9.-]+)\.(?P<pid>\d+)\.(?P<start>\d+)\.[0-9a-f]{8}")
# Names written before the host and start time were part of them (pid only): removed once the pid is gone
# and they are an hour old, as they do not say which machine wrote them.
_LEGACY = (r"{name}\.partial-(?P<pid>\d+)", r"\.{name}\.partial-(?P<pid>\d+)(\.old)?",
           r"\.{name}\.(?P<pid>\d+)\.[0-9a-f]{{8}}\.tmp")
_LEGACY_STALE_SECONDS = 3600


def host_name() -> str:
    """This machine's name as it appears in temporary names (characters outside [A-Za-z0-9.-] become '-')."""
    return re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:64] or "localhost"


def process_start(pid: int) -> int:
    """When `pid` started, in clock ticks since boot (field 22 of /proc/PID/stat); 0 where /proc is absent."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return 0
    # The command name (field 2) may hold spaces and parentheses: count the fields after its last ')'.
    return int(stat[stat.rindex(b")") + 2:].split()[19])


def process_alive(pid: int, start: int) -> bool:
    """Whether the process that had `pid` and started at `start` (0: unknown) still runs on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process has that pid now: its start time still tells
        pass
    now = process_start(pid)
    return not (start and now and now != start)


def partial_path(target: str | os.PathLike) -> str:
    """A temporary name beside `target` that says which process on which machine writes it."""
    target = Path(target)
    return str(target.parent / f".{target.name}.partial@{host_name()}.{os.getpid()}."
                                f"{process_start(os.getpid())}.{uuid.uuid4().hex[:8]}")


def _newest_change(path: str) -> float:
    """The latest modification time in `path` (a file, or a folder and everything in it)."""
    newest = os.lstat(path).st_mtime
    if os.path.isdir(path) and not os.path.islink(path):
        for folder, folders, files in os.walk(path):
            for name in folders + files:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
    return newest


def _stale(entry: str, name: str, full: str, here: str) -> bool:
    prefix = f".{name}"
    if entry.startswith(prefix) and (match := _TAIL.fullmatch(entry[len(prefix):])):
        pid, start = int(match["pid"]), int(match["start"])
        if match["host"] == here:
            return not process_alive(pid, start)
        age = time.time() - _newest_change(full)
        if age < ELSEWHERE_STALE_SECONDS:
            log.info("Left %s alone: it was written on %s (pid %d), which this machine cannot check; it is removed "
                     "once untouched for %d hours", full, match["host"], pid, ELSEWHERE_STALE_SECONDS // 3600)
            return False
        return True
    for pattern in _LEGACY:
        if match := re.fullmatch(pattern.format(name=re.escape(name)), entry):
            return (not process_alive(int(match["pid"]), 0)
                    and time.time() - _newest_change(full) > _LEGACY_STALE_SECONDS)
    return False


def remove_stale_partials(target: str | os.PathLike) -> list[str]:
    """Removes the temporaries of `target` (files or folders) whose writers have died; returns their paths."""
    target = Path(target)
    try:
        entries = os.listdir(target.parent)
    except FileNotFoundError:
        return []
    here, removed = host_name(), []
    for entry in entries:
        full = str(target.parent / entry)
        try:
            if not _stale(entry, target.name, full, here):
                continue
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.unlink(full)
        except FileNotFoundError:  # another run cleaning up at the same time got there first
            continue
        removed.append(full)
    if removed:
        log.info("Removed what killed runs left of %s: %s", target, ", ".join(os.path.basename(p) for p in removed))
    return removed


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, binary: bool = False, newline: str | None = None,
                errors: str | None = None) -> Iterator[IO[Any]]:
    """An open handle whose content replaces `path` only when the block ends without an error.

    `newline` and `errors` are open()'s (the csv module wants newline=""; file names that are not UTF-8
    need errors="surrogateescape").
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target)
    # Not mkstemp: its 0600 mode would survive the rename; open(..., "x") honours the umask like any file.
    tmp = partial_path(target)
    try:
        with open(tmp, "xb" if binary else "x", encoding=None if binary else "utf-8", newline=newline,
                  errors=errors) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path) as handle:
        handle.write(text)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Strict JSON (no NaN/Infinity literals, which most JSON readers reject), indented for people."""
    write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
