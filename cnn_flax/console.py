"""Where log records go when a person runs launch.py: notices and warnings on the terminal, the full log
in a file.

Without --verbose the terminal shows warnings and errors, and cnn_flax's own few notices (a run resuming),
each one line, written through tqdm so a progress bar being drawn is cleared first and redrawn after (a
log line never lands inside a bar). The
full log — every INFO record of cnn_flax, absl, clu and Orbax, tracebacks included — goes to `log.txt` in
the workdir. With --verbose the terminal shows the full log too, at DEBUG level.
"""

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from tqdm import tqdm

# Libraries whose INFO records are many and rarely useful; they reach log.txt only from WARNING up.
CHATTY = ("jax", "orbax", "tensorflow", "h5py", "matplotlib", "PIL", "urllib3", "fsspec")
# Start-up notices TensorFlow's C++ runtime prints on import (it ignores TF_CPP_MIN_LOG_LEVEL for these).
# TensorFlow only reads data here and never gets a GPU, so its CUDA probing says nothing about JAX's devices.
NATIVE_NOISE = ("All log messages before absl::InitializeLog() is called", "oneDNN custom operations are on",
                "This TensorFlow binary is optimized to use available CPU instructions",
                "To enable the following instructions", "Unable to register cu", "Could not find cuda drivers",
                "failed call to cuInit")
_settings = {"verbose": False}  # what launch.py asked for, for blocks that run long after it configured logging
FULL_FORMAT = "%(levelname).1s%(asctime)s.%(msecs)03d %(process)d %(filename)s:%(lineno)d] %(message)s"
FULL_DATE = "%m%d %H:%M:%S"


class TerminalFilter(logging.Filter):
    """Warnings and errors of every library, and cnn_flax's own notices (e.g. that a run resumes), but not
    its per-epoch and per-step records: the Reporter prints the epoch's line itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return (record.levelno == logging.INFO and record.name.split(".")[0] == "cnn_flax"
                and not str(record.msg).startswith("epoch "))


class TerminalFormatter(logging.Formatter):
    """cnn_flax's notices as plain sentences; warnings and errors with their level in front."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname}: {text}"


class TqdmHandler(logging.StreamHandler):
    """A stderr handler that writes through tqdm, so an active progress bar is redrawn below the line."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise into the run
            self.handleError(record)


def configure_logging(verbose: bool) -> logging.Handler:
    """Replace absl's stderr handler by the terminal handler; return it (launch.py adds its filters)."""
    from absl import logging as absl_logging

    _settings["verbose"] = verbose
    root = logging.getLogger()
    for handler in list(root.handlers):  # absl's, and any plain terminal handler a library added early
        if handler is absl_logging.get_absl_handler() or (
                type(handler) is logging.StreamHandler and handler.stream in (sys.stderr, sys.stdout)):
            root.removeHandler(handler)
    console = TqdmHandler()
    if verbose:
        console.setFormatter(logging.Formatter(FULL_FORMAT, FULL_DATE))
        console.setLevel(logging.DEBUG)
    else:
        console.setFormatter(TerminalFormatter("%(message)s"))
        console.addFilter(TerminalFilter())
    root.addHandler(console)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("absl").setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.captureWarnings(True)  # Python warnings become records too, instead of raw writes into a bar
    return console


def log_to_file(path: str) -> logging.Handler:
    """Append the full log to `path` (made with its folder when missing) until the process ends."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FULL_FORMAT, FULL_DATE))
    handler.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    return handler


def log_file_name(process_index: int) -> str:
    """log.txt for process 0; every other process of a multi-host run keeps its own file beside it."""
    return "log.txt" if process_index == 0 else f"log.process{process_index}.txt"


@contextlib.contextmanager
def _native_stderr_to(target: Any) -> Iterator[None]:
    """File descriptor 2 into `target` inside the block: native code writes there, past Python's sys.stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(target.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Everything native code prints to file descriptor 2 inside the block is dropped (TensorFlow Lite)."""
    with open(os.devnull, "w") as devnull, _native_stderr_to(devnull):
        yield


@contextlib.contextmanager
def quiet_native_start(verbose: bool | None = None) -> Iterator[None]:
    """Hold back what native libraries print to file descriptor 2 inside the block; afterwards pass on every
    line but TensorFlow's known start-up notices (all of them with --verbose; `None`: as logging was configured)."""
    if _settings["verbose"] if verbose is None else verbose:
        yield
        return
    with tempfile.TemporaryFile() as capture:
        try:
            with _native_stderr_to(capture):
                yield
        finally:
            capture.seek(0)
            text = capture.read().decode(errors="replace")
            kept = [line for line in text.splitlines() if line.strip() and not any(n in line for n in NATIVE_NOISE)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)
