"""Gunicorn's threaded worker, with connections spread over the workers by how many each holds.

Every gthread worker waits on the same listening socket, and whichever calls accept() first gets
the connection. A client pool opens its connections in a burst, and keeps them alive, so one
worker could take them all and keep them while the other idled (README, Performance).

Here each worker publishes how many connections it holds on a board the master shares with every
worker it forks (gunicorn.conf.py: on_starting, pre_fork, child_exit). A worker that holds more
than some sibling gives way: it waits, while a connection is still waiting to be taken, until the
siblings have caught up, for at most MAX_WAIT. Nothing is refused, so no connection starves, and
workers that hold as many as each other accept at once. A lone worker never waits.
"""

from __future__ import annotations

import mmap
import select
import time

from gunicorn.workers.gthread import ThreadWorker

SLOTS = 64  # workers alive at once, a HUP's old and new together; more are not balanced
NOT_ACCEPTING = -1
MAX_WAIT = 0.005  # seconds: about one GIL switch interval of a busy sibling
POLL_INTERVAL = 100e-6


class ConnectionBoard:
    """The connections each accepting worker holds, in memory shared across the fork."""

    def __init__(self, slots: int = SLOTS) -> None:
        self._memory = mmap.mmap(-1, slots * 4)  # anonymous and shared: forked workers see it
        self._counts = memoryview(self._memory).cast("i")
        for slot in range(slots):
            self._counts[slot] = NOT_ACCEPTING

    def free_slot(self, taken: set[int | None]) -> int | None:
        return next((slot for slot in range(len(self._counts)) if slot not in taken), None)

    def publish(self, slot: int, connections: int) -> None:
        self._counts[slot] = connections

    def clear(self, slot: int) -> None:
        self._counts[slot] = NOT_ACCEPTING

    def fewest_elsewhere(self, slot: int) -> int | None:
        """The fewest connections any other accepting worker holds; None when there is none."""
        counts = self._counts.tolist()
        counts[slot] = NOT_ACCEPTING
        return min((count for count in counts if count != NOT_ACCEPTING), default=None)


class BalancedThreadWorker(ThreadWorker):
    # Set by the master's pre_fork hook; without them this is Gunicorn's gthread worker.
    board: ConnectionBoard | None = None
    board_slot: int | None = None

    def _publish(self) -> None:
        if self.board is not None and self.board_slot is not None:
            self.board.publish(self.board_slot, self.nr_conns if self._accepting else NOT_ACCEPTING)

    def set_accept_enabled(self, enabled: bool) -> None:
        super().set_accept_enabled(enabled)
        self._publish()  # a worker that stops accepting (full, or stopping) is not waited for

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        super().wait_for_and_dispatch_events(timeout)
        self._publish()  # connections finished or timed out in this round

    def accept(self, listener) -> None:
        if self.board is not None and self.board_slot is not None:
            waiting = select.poll()
            waiting.register(listener, select.POLLIN)
            deadline = time.monotonic() + MAX_WAIT
            while self._holds_more_than_a_sibling() and time.monotonic() < deadline:
                time.sleep(POLL_INTERVAL)
                if not waiting.poll(0):
                    return  # a sibling took it
        super().accept(listener)  # EAGAIN when another worker took it first: ignored there
        self._publish()

    def _holds_more_than_a_sibling(self) -> bool:
        fewest = self.board.fewest_elsewhere(self.board_slot)
        return fewest is not None and self.nr_conns > fewest
