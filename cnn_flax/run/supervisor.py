"""A multi-host run that loses a process: every other process ends within seconds with one line that names the
lost process and the command that resumes, instead of a hang and JAX's native crash report.

What JAX does on its own (jax 0.10): the coordination service notices a dead process when its heartbeats
stop (`heartbeat_timeout_seconds` of `jax.distributed.initialize`, 100 s by default) and then ends every
other process from a native thread (absl `LOG(FATAL)`: SIGABRT and a stack dump); a process that loses the
coordinator (process 0) is ended so at once. Before that, the collectives in flight fail with a
`JaxRuntimeError`, and a Python exit would wait on the shutdown barrier (`shutdown_timeout_seconds`) before
being ended the same way. The native callback that could replace the abort (`missed_heartbeat_callback`)
is not reachable from Python, and nothing stops the error polling, so no setting inside the process can
turn the abort into a message. Hence:

- the heartbeat timeout is shortened to `HEARTBEAT_SECONDS`, so that the survivors learn within seconds;
- `supervise` forks each process of a multi-host run in two: the parent only waits, the child runs. The
  child's native stderr (file descriptor 2) goes into a pipe to the parent while Python's output goes to
  the terminal as before; a crash report stays out of sight (with `--verbose` it is passed on);
- a child whose collective fails asks the coordination service which processes are still alive, writes
  the answer into that pipe and leaves without the shutdown barrier (`exit_if_peer_lost`);
- the parent reads who was lost (from the child, or from the native report when the service's abort came
  first) and prints the one line. A parent killed takes its child with it (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable

HEARTBEAT_SECONDS = 10  # JAX's default is 100 s; shorter also ends a process stalled that long (none should be)
EXIT_PEER_LOST = 75  # EX_TEMPFAIL: a temporary failure; the same command continues
_MARKER = "cnn_flax: lost processes"
_FORWARDED = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2")
                   if hasattr(signal, name))
_TAIL_LINES = 2000


def _die_with_parent(parent: int) -> None:
    """The child is killed when the parent dies (a `kill -9` of the process the user started ends both)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG, Linux only
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def supervise(describe_loss: Callable[[list[int]], str], native_log: str | None, verbose: bool) -> None:
    """Returns in a child process that does the run; the calling process waits for it and exits.

    `describe_loss(lost)` gives the line printed when processes `lost` (empty: not known which) were lost;
    `native_log` is where the child's native output goes when it failed for another reason (without
    `verbose`, which passes it on to the terminal as it comes).
    """
    if not hasattr(os, "fork"):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    parent, (read_end, write_end) = os.getpid(), os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        _die_with_parent(parent)
        terminal = os.dup(2)
        os.dup2(write_end, 2)  # native code (and faulthandler's dump) into the pipe
        os.close(write_end)
        sys.stderr = open(terminal, "w", buffering=1, encoding=sys.stderr.encoding,  # noqa: SIM115
                          errors=sys.stderr.errors)  # Python's own output: the terminal, as before
        return
    os.close(write_end)
    for number in _FORWARDED:
        signal.signal(number, lambda received, _: os.kill(child, received))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the child from the terminal itself
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    reader = threading.Thread(target=_read_native, args=(read_end, tail, verbose), daemon=True)
    reader.start()
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    code = os.waitstatus_to_exitcode(status)
    reader.join(timeout=2)  # the pipe stays open while processes the child started still run
    text = "".join(tail)
    lost = lost_processes(text) if code != 0 else None
    if lost is not None:
        print(f"error: {describe_loss(lost)}", file=sys.stderr, flush=True)
        os._exit(EXIT_PEER_LOST)
    ended = signal.Signals(-code).name if code < 0 else f"exit status {code}"
    kept = False
    if code != 0 and not verbose and native_log and text.strip():  # what native code said before it failed
        with contextlib.suppress(OSError), open(native_log, "a", encoding="utf-8") as handle:
            handle.write(f"--- native output of the process that ended by {ended} ---\n{text}")
            kept = True
    if code < 0 and not verbose:
        where = f"; its native report is at the end of {native_log} (--verbose shows it here)" if kept else ""
        print(f"error: the run ended by {ended}{where}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(code if code >= 0 else 128 - code)


def _read_native(fd: int, tail: collections.deque, verbose: bool) -> None:
    with open(fd, "rb", buffering=0) as pipe:
        for line in pipe:
            text = line.decode(errors="replace")
            tail.append(text)
            if verbose:
                sys.stderr.write(text)
                sys.stderr.flush()


def lost_processes(native: str) -> list[int] | None:
    """Which processes the child's native output says were lost (empty: some, not said which); None: none.

    In order: what the child learnt from the coordination service itself; the service's own verdict
    ("tasks are unhealthy (stopped sending heartbeats): 1"); a process that lost the coordinator, which is
    process 0; JAX's abort without any of these (a loss, but of which process is not known).
    """
    if match := re.search(rf"{_MARKER} ([\d,]+)", native):
        return sorted({int(n) for n in match.group(1).split(",")})
    if match := re.search(r"stopped sending heartbeats\):\s*\n((?:\s*\d+\s*\n)+)", native):
        return sorted({int(n) for n in match.group(1).split()})
    if tasks := re.findall(r"Task (\d+) heartbeat timeout", native):
        return sorted({int(n) for n in tasks})
    if "JAX distributed service detected fatal errors" not in native:
        return None
    if re.search(r"coordination_service while calling .*\n?.*(Connection reset|Socket closed|Connection refused|"
                 r"failed to connect|Broken pipe|UNAVAILABLE)", native):
        return [0]
    return []


def _peer_failure(error: BaseException) -> bool:
    """A runtime error of XLA (a collective's, or the coordination service's) anywhere in the chain."""
    import jax

    seen = []
    while error is not None and error not in seen:
        if isinstance(error, jax.errors.JaxRuntimeError):
            return True
        seen.append(error)
        error = error.__cause__ or error.__context__
    return False


def _alive(timeout: float) -> set[int] | None | BaseException:
    """The processes the coordination service counts alive; its error when it cannot be reached; None when it
    did not answer in time (it answers once every live process asks, or once the dead ones are known)."""
    import jax
    from jax._src import distributed

    answer: list = []

    def ask() -> None:
        try:
            answer.append(set(distributed.global_state.client.get_live_nodes(list(range(jax.process_count())))))
        except Exception as error:  # noqa: BLE001 - the coordinator is gone
            answer.append(error)

    asking = threading.Thread(target=ask, daemon=True)
    asking.start()
    asking.join(timeout)
    return answer[0] if answer else None


def exit_if_peer_lost(error: BaseException) -> None:
    """In a supervised process of a multi-host run whose collective failed because a process is gone: tell
    the supervisor which, and leave at once (no shutdown barrier, which would only wait and abort)."""
    import jax

    if jax.process_count() == 1 or not _peer_failure(error):
        return
    alive = _alive(HEARTBEAT_SECONDS + 5)
    if alive is None:
        return  # the others are alive and busy: an error of this run, reported as usual
    if isinstance(alive, BaseException):  # the coordination service cannot be reached: process 0 is gone
        lost = [0] if jax.process_index() != 0 else []
    else:
        lost = sorted(set(range(jax.process_count())) - alive)
        if not lost:
            return  # every process is alive: an error of this run, reported as usual
    reason = (str(error).splitlines() or [type(error).__name__])[0]
    record = logging.getLogger("cnn_flax").makeRecord(
        "cnn_flax", logging.INFO, __file__, 0, "A collective failed because processes %s are gone (%s)",
        (lost, reason), None)
    for handler in logging.getLogger().handlers:  # into the log file only: the terminal gets the one line
        with contextlib.suppress(Exception):
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)
            handler.flush()
    sys.stdout.flush()
    os.write(2, f"{_MARKER} {','.join(map(str, lost))}\n".encode())
    os._exit(EXIT_PEER_LOST)


def continues_from(checkpoints: str, num_epochs: int) -> str:
    """Where the same command continues, read from the checkpoint folders alone (no JAX, no Orbax)."""
    newest = None
    for folder in (checkpoints, os.path.join(checkpoints, "interrupted")):
        with contextlib.suppress(OSError):
            for name in os.listdir(folder):
                if not re.fullmatch(r"(epoch|step)_\d+", name):  # Orbax's temporaries are never complete
                    continue
                with contextlib.suppress(OSError, ValueError, KeyError), \
                        open(os.path.join(folder, name, "meta", "metadata")) as handle:
                    meta = json.load(handle)
                    if newest is None or meta["step"] > newest["step"]:
                        newest = meta
    if newest is None:
        return "the run starts again from epoch 1 (no checkpoint was complete)"
    if newest["batch"]:
        return f"the run continues in epoch {newest['epoch'] + 1} after batch {newest['batch']}"
    if newest["epoch"] >= num_epochs:
        return f"the run continues after its last epoch ({newest['epoch']}) with the evaluation"
    return f"the run continues from epoch {newest['epoch'] + 1}"


def loss_line(lost: list[int], num_processes: int, resume: str | None) -> str:
    who = (f"process {lost[0]}" if len(lost) == 1 else f"processes {', '.join(map(str, lost))}") if lost else \
        "another process"
    verb = "was" if len(lost) <= 1 else "were"
    return (f"{who} of {num_processes} {verb} lost (killed, crashed or unreachable); restart all {num_processes} "
            f"processes with the same command" + (f": {resume}" if resume else ""))
