"""How the supervisor of a multi-host process reads a lost peer and the resume point (the end-to-end check, two
processes on loopback with one killed, is in test_multihost.py).

The native reports below are copied from jax 0.10.2's output on two loopback processes, one killed.
"""

import json
import os

from cnn_flax.run.peers import continues_from, loss_line, lost_processes

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
