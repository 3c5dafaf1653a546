"""Reads batches in a background thread so that disk and decoding overlap the accelerator's step.

The consumer side is a generator: when a training loop abandons it (break, exception, garbage
collection), its `finally` stops the producer and joins it, so no thread outlives its iterator and no
producer blocks forever on a full queue.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

_POLL_S = 0.05
_DONE = object()


def prefetch(make_iter: Callable[[], Iterator[T]], depth: int) -> Iterator[T]:
    """Iterates `make_iter()` in a daemon thread, keeping up to `depth` items ready (0: no thread)."""
    if depth <= 0:
        return make_iter()
    return _threaded(make_iter, depth)


def _threaded(make_iter: Callable[[], Iterator[T]], depth: int) -> Iterator[T]:
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        source = None
        try:
            source = make_iter()
            for item in source:
                if not put((True, item)):
                    return
            put((True, _DONE))
        except BaseException as error:  # handed to the consumer, which re-raises it
            put((False, error))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name="cnn_flax-data-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = items.get()
            if not ok:
                raise item
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        thread.join()
