"""The supervisor of a multi-host process: how it reads a lost peer and the resume point, and what it does with
a crash, a signal and its own death (the end-to-end check, two processes on loopback with one killed, is in
test_multihost.py).

The native reports below are copied from jax 0.10.2's output on two loopback processes, one killed.
"""

import json
import os
import signal
import subprocess
import sys
import time

from killing import running
from repo_paths import ROOT

from cnn_flax.run.supervisor import EXIT_PEER_LOST, continues_from, loss_line, lost_processes

# Process 0 (it hosts the coordination service) after process 1 was killed: the service's verdict.
SERVICE_VERDICT = """\
E1207 01:30:48.917860   11398 coordination_service.cc:1549] [5109062082259102348] Use error polling to propagate \
the following error to all tasks: UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):
1
The tasks have crashed. Check the task logs for an earlier error, or scheduler events (e.g. preemption, eviction) \
to debug further. [type.googleapis.com/tensorflow.CoordinationServiceError='']
E1207 01:30:48.918796   11409 coordination_service_agent.cc:289] Polled an error from coordination service (this \
can be an error from this or another task).
F1207 01:30:48.918361   11989 client.h:80] Terminating process because the JAX distributed service detected fatal \
errors. This most likely indicates that another task died; see the other task logs for more details.
*** Check failure stack trace: ***
"""
# Process 1 after process 0 (the coordinator) was killed.
COORDINATOR_GONE = """\
E1207 01:33:15.944932   13995 coordination_service_agent.cc:289] Polled an error from coordination service (this \
can be an error from this or another task).
F1207 01:33:15.944966   13995 client.h:80] Terminating process because the JAX distributed service detected fatal \
errors. This most likely indicates that another task died; see the other task logs for more details. Disable \
Python buffering, i.e. `python -u`, to be sure to see all the previous output. absl::Status: UNAVAILABLE: Failed to \
send RPC to coordination service.
Additional GRPC error information from remote target coordination_service while calling \
/xla.coordination.CoordinationService/PollForError:
:UNKNOWN:Error received from peer  {grpc_status:14, grpc_message:"recvmsg:Connection reset by peer"}
*** Check failure stack trace: ***
"""
SHUTDOWN_BARRIER = """\
E1207 01:30:17.767454    7634 coordination_service.cc:1520] [8952192058043536097] Shutdown barrier in coordination \
service has failed:
INTERNAL: Barrier failed because: task is set to ERROR: UNAVAILABLE: Task 1 heartbeat timeout. This indicates that \
the remote task has failed, got preempted, or crashed unexpectedly.
F1207 01:30:17.768253    7561 client.h:80] Terminating process because the JAX distributed service detected fatal \
errors.
"""


def test_the_lost_process_is_read_from_what_the_child_or_jax_reported():
    assert lost_processes("cnn_flax: lost processes 1,3\n") == [1, 3]  # the child asked the service itself
    assert lost_processes(SERVICE_VERDICT) == [1]
    assert lost_processes(COORDINATOR_GONE) == [0]
    assert lost_processes(SHUTDOWN_BARRIER) == [1]
    assert lost_processes("F1207 client.h:80] ... JAX distributed service detected fatal errors.\n") == []
    assert lost_processes("W1207 some warning\n") is None  # not a lost process: the run's own error
    assert lost_processes("") is None


def _checkpoint(folder: str, name: str, meta: dict) -> None:
    os.makedirs(os.path.join(folder, name, "meta"))
    with open(os.path.join(folder, name, "meta", "metadata"), "w") as handle:
        json.dump(meta, handle)


def test_continues_from_names_the_newest_complete_checkpoint(tmp_path):
    folder = str(tmp_path / "checkpoints")
    assert continues_from(folder, 3) == "the run starts again from epoch 1 (no checkpoint was complete)"
    _checkpoint(folder, "epoch_1", {"epoch": 1, "batch": 0, "step": 6})
    _checkpoint(folder, "epoch_2.orbax-checkpoint-tmp-1765", {"epoch": 2, "batch": 0, "step": 12})  # half-written
    assert continues_from(folder, 3) == "the run continues from epoch 2"
    _checkpoint(os.path.join(folder, "interrupted"), "step_9", {"epoch": 1, "batch": 3, "step": 9})
    assert continues_from(folder, 3) == "the run continues in epoch 2 after batch 3"
    _checkpoint(folder, "epoch_3", {"epoch": 3, "batch": 0, "step": 18})
    assert continues_from(folder, 3) == "the run continues after its last epoch (3) with the evaluation"


def test_the_line_names_who_was_lost_and_how_to_resume():
    assert loss_line([1], 2, "the run continues from epoch 2") == (
        "process 1 of 2 was lost (killed, crashed or unreachable); restart all 2 processes with the same command: "
        "the run continues from epoch 2")
    assert loss_line([1, 3], 4, None) == (
        "processes 1, 3 of 4 were lost (killed, crashed or unreachable); restart all 4 processes with the same "
        "command")
    assert loss_line([], 2, None).startswith("another process of 2 was lost")


# The supervisor on its own, in a process that imports no JAX: what the child does is chosen by argv[1].
CHILD = """
import os, signal, sys, time
from cnn_flax.run import supervisor

supervisor.supervise(lambda lost: f"lost {lost}", sys.argv[2] or None, sys.argv[3] == "verbose")
os.write(2, b"native: a report of native code\\n")
print("from Python", file=sys.stderr, flush=True)
if sys.argv[1] == "abort":
    os.abort()
if sys.argv[1] == "lost":
    os.write(2, b"cnn_flax: lost processes 1\\n")
    os._exit(75)
if sys.argv[1] == "wait":
    signal.signal(signal.SIGTERM, lambda *_: (print("SIGTERM reached the run", file=sys.stderr), sys.exit(3)))
    print(os.getpid(), flush=True)
    time.sleep(60)
"""


def _supervised(what: str, log: str = "", verbose: bool = False, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, what, log, "verbose" if verbose else ""], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def test_a_native_crash_is_one_line_and_its_report_goes_to_the_log(tmp_path):
    log = str(tmp_path / "log.txt")
    out, err = _supervised("abort", log).communicate(timeout=60)
    assert err.splitlines() == ["from Python", f"error: the run ended by SIGABRT; its native report is at the end "
                                               f"of {log} (--verbose shows it here)"]
    assert "native: a report of native code" in open(log).read()
    run = _supervised("abort", log, verbose=True)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 128 + signal.SIGABRT and "native: a report of native code" in err and "error:" not in err


def test_a_lost_peer_is_the_one_line_of_the_caller():
    run = _supervised("lost")
    _, err = run.communicate(timeout=60)
    assert run.returncode == EXIT_PEER_LOST and err.splitlines() == ["from Python", "error: lost [1]"]


def test_sigterm_is_passed_on_and_a_killed_supervisor_takes_the_run_with_it():
    run = _supervised("wait")
    child = int(run.stdout.readline())
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 3 and "SIGTERM reached the run" in err
    run = _supervised("wait")
    child = int(run.stdout.readline())
    run.kill()
    run.communicate(timeout=60)
    deadline = time.monotonic() + 10
    while running(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not running(child)
