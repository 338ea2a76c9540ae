"""Input-pipeline overlap: the next batches are read (and placed) while the current step runs.

`Prefetch(batches, place, depth)` wraps a train stream (source.BatchStream). A background thread
calls `place(next(batches))` and puts the result into a queue of at most `depth` items; the loop's
`next()` takes the oldest. depth=0 (data.prefetch=0) reads and places in the caller, as before.

The resumable state stays exact: the thread records `batches.get_state()` right after each
`next()`, beside the batch it produced, and `get_state()` returns the state recorded with the
last batch the loop CONSUMED. The batches still waiting in the queue are not part of it, so a run
saved at step k and resumed reads batch k+1 next, whatever the thread had read ahead.

An exception in the thread (a corrupt file, a decoding error) is raised again in the caller's
`next()`, the same exception object with its message, once the batches before it were consumed.
`close()` (the loop calls it in a `finally`, also when a signal stops the run) tells the thread to
stop and joins it; the thread is a daemon, so a stuck read can never keep the process alive.

`place_in_thread=False` runs `place` in the caller and only `next(batches)` in the thread: the
loop uses that with several processes, where `place` builds global arrays
(jax.make_array_from_process_local_data) and every process must do so in the step's order, on the
thread that dispatches the step.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

_END = object()  # the wrapped stream ended (StopIteration)


class Prefetch:
    """A source.BatchStream that reads `depth` batches ahead in a daemon thread."""

    def __init__(self, batches, place: Callable[[dict], Any] = lambda b: b, depth: int = 2, *,
                 place_in_thread: bool = True):
        if depth < 0:
            raise ValueError(f"prefetch depth must be >= 0, got {depth}")
        self._batches, self._place, self._depth = batches, place, depth
        self._place_in_thread = place_in_thread
        self._state = batches.get_state()  # the position after the last consumed batch
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed: BaseException | None = None

    def __iter__(self):
        return self

    def __next__(self):
        if self._depth == 0:
            batch = self._place(next(self._batches))
            self._state = self._batches.get_state()
            return batch
        if self._failed is not None:
            raise self._failed
        if self._thread is None:
            self._start()
        item = self._queue.get()
        if item is _END:
            self._queue.put(_END)  # every later next() ends too
            raise StopIteration
        kind, value, state = item
        if kind == "error":
            self._failed = value
            raise value
        self._state = state
        return value if self._place_in_thread else self._place(value)

    def get_state(self) -> dict:
        return self._state

    def set_state(self, state: dict) -> None:
        """Drops what was read ahead and continues the wrapped stream from `state`."""
        self.close()
        self._batches.set_state(state)
        self._state = self._batches.get_state()
        self._failed, self._thread, self._stop = None, None, threading.Event()

    def close(self) -> None:
        """Stops the thread and waits for it (at most a few seconds: a read in flight finishes)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout=10.0)

    def _start(self) -> None:
        self._queue = queue.Queue(maxsize=self._depth)
        self._thread = threading.Thread(target=self._produce, args=(self._queue, self._stop),
                                        name="jaxmodels-prefetch", daemon=True)
        self._thread.start()

    def _produce(self, q: queue.Queue, stop: threading.Event) -> None:
        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        while not stop.is_set():
            try:
                batch = next(self._batches)
                state = self._batches.get_state()
                if self._place_in_thread:
                    batch = self._place(batch)
            except StopIteration:
                put(_END)
                return
            except BaseException as e:  # noqa: BLE001 - every failure must reach the caller
                put(("error", e, None))
                return
            if not put(("batch", batch, state)):
                return
