"""TensorBoard scalars without TensorFlow.

An event file is a sequence of records (length, CRCs, an `Event` protocol buffer) that the `tensorboard`
package itself can frame and encode. Writing it here rather than through TensorFlow's summary API spares
every training process TensorFlow's import (seconds of CPU, and on a GPU machine a runtime that would claim
accelerator memory) for a handful of numbers per epoch.
"""

import itertools
import os
import socket
import time

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.record_writer import RecordWriter

_file_numbers = itertools.count()


class ScalarWriter:
    """One new `events.out.tfevents.*.v2` file in `logdir`, one event per `write_scalars` call.

    The file name follows TensorFlow's writer (time, host, process id, a per-process number, `.v2`), so
    TensorBoard lists each run's file as it would have listed TensorFlow's.
    """

    def __init__(self, logdir: str) -> None:
        os.makedirs(logdir, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}." \
               f"{next(_file_numbers)}.v2"
        self.path = os.path.join(logdir, name)
        self._records = RecordWriter(open(self.path, "ab"))
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event: Event) -> None:
        self._records.write(event.SerializeToString())

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        values = [Summary.Value(tag=tag, simple_value=float(value)) for tag, value in scalars.items()]
        self._write(Event(wall_time=time.time(), step=int(step), summary=Summary(value=values)))

    def flush(self) -> None:
        self._records.flush()

    def close(self) -> None:
        if not self._records.closed:
            self._records.close()
