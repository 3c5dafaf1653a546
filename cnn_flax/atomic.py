"""Atomic file writes: every file a run leaves (JSON records, reports, tables, figures) goes through here.

A reader (a user with `training.png` open, a tool polling `history.json`, a second run resuming) must never
see a half-written file. Each write goes to a hidden temporary file in the destination folder and is then
renamed over the target with `os.replace`, which is atomic on one filesystem; a failed write removes its
temporary file and leaves the previous version in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, binary: bool = False, newline: str | None = None,
                errors: str | None = None) -> Iterator[IO[Any]]:
    """An open handle whose content replaces `path` only when the block ends without an error.

    `newline` and `errors` are open()'s (the csv module wants newline=""; file names that are not UTF-8
    need errors="surrogateescape").
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its 0600 mode would survive the rename; open(..., "x") honours the umask like any file.
    tmp = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
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
