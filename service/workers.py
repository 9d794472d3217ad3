"""Gunicorn's threaded worker, with connections spread over the workers by how many each holds.

Every gthread worker waits on the same listening socket, and whichever calls accept() first gets
the connection. A client pool opens its connections in a burst, and keeps them alive, so one
worker could take them all and keep them while the other idled (README, Performance). Here a
worker that already holds connections waits a little before accepting, longer the more it holds:
a worker holding fewer gets there first. Nothing is refused, so no connection starves; when every
worker is equally full, each accept waits at most MAX_DELAY. A lone worker never waits.
"""

from __future__ import annotations

import time

from gunicorn.workers.gthread import ThreadWorker

DELAY_PER_CONNECTION = 50e-6  # seconds
MAX_DELAY = 0.002


class BalancedThreadWorker(ThreadWorker):
    def accept(self, listener) -> None:
        if self.nr_conns and self.cfg.workers > 1:  # alone, there is no one to give way to
            time.sleep(min(self.nr_conns * DELAY_PER_CONNECTION, MAX_DELAY))
        super().accept(listener)  # EAGAIN when another worker took it first: ignored there
