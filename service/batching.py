"""Adaptive batching: concurrent requests inside one worker share one model call.

Like TF Serving's `max_batch_size` / `batch_timeout_micros`: one thread owns the model call; request
threads queue their work and wait. A request may queue its input ready-made, or as a function
that makes it (`run`): then the batching thread makes each request's input in turn before the
shared call, so the Python-heavy decode + preprocess runs in one thread instead of competing for
the GIL across all of them (README, Performance). The batch closes when it holds `max_batch_size`
images or when `max_wait` has passed since its first image. With `max_wait = 0` it takes only what
is already queued, so a lone request is never delayed and batches form only under load, while the
previous call runs.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

# What the batched function returns: an array, or a dict of arrays, one row per image in each.
Output = np.ndarray | dict[str, np.ndarray]


def _held_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass
class _Job:
    make: Callable[[], np.ndarray]  # the input, made in the batching thread
    size: int  # rows the input will have
    x: np.ndarray | None = None
    # Released by the batching thread once result or error is set. A held lock signals once at
    # half an Event's cost (an Event's wait builds a Condition's waiter lock each time).
    done: threading.Lock = field(default_factory=_held_lock)
    result: Output | None = None
    error: BaseException | None = None


class Batcher:
    def __init__(
        self,
        fn: Callable[[np.ndarray], Output],
        max_batch_size: int,
        max_wait: float = 0.0,
        on_call: Callable[[int, float], None] | None = None,
        name: str = "batcher",
    ) -> None:
        self._fn = fn
        self._max_batch_size = max_batch_size
        self._max_wait = max_wait
        self._on_call = on_call
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._carried: _Job | None = None  # did not fit the last batch: first in the next
        threading.Thread(target=self._loop, name=name, daemon=True).start()

    def __call__(self, x: np.ndarray) -> Output:
        return self.run(lambda: x, len(x))

    def run(self, make: Callable[[], np.ndarray], size: int) -> Output:
        """fn's output for the `size` rows that `make()` returns, made and computed in the
        batching thread together with other callers' rows; what `make` raises is raised here."""
        job = _Job(make, size)
        self._queue.put(job)
        job.done.acquire()
        if job.error is not None:
            raise job.error
        return job.result

    def _collect(self) -> list[_Job]:
        jobs = [self._carried or self._queue.get()]
        self._carried = None
        size = jobs[0].size
        deadline = time.monotonic() + self._max_wait
        while size < self._max_batch_size:
            try:
                timeout = deadline - time.monotonic()
                job = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if size + job.size > self._max_batch_size:
                self._carried = job
                break
            jobs.append(job)
            size += job.size
        return jobs

    def _loop(self) -> None:
        while True:
            jobs = []
            for job in self._collect():
                try:
                    job.x = job.make()
                    jobs.append(job)
                except BaseException as exc:  # this caller's input only: the others go on
                    job.error = exc
                    job.done.release()
            if not jobs:
                continue
            try:
                x = jobs[0].x if len(jobs) == 1 else np.concatenate([j.x for j in jobs])
                started = time.perf_counter()
                out = self._fn(x)
                if self._on_call:
                    self._on_call(len(x), time.perf_counter() - started)
                offset = 0
                for job in jobs:
                    rows = slice(offset, offset + len(job.x))
                    job.result = (
                        {k: v[rows] for k, v in out.items()} if isinstance(out, dict) else out[rows]
                    )
                    offset += len(job.x)
            except BaseException as exc:  # every waiting request gets the error, none hangs
                for job in jobs:
                    job.error = exc
            for job in jobs:
                job.done.release()
