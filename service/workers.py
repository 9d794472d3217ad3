"""How Gunicorn's processes run this service: the one module that touches Gunicorn's internals.

Checked against Gunicorn 27.0.1 (CHECKED_GUNICORN); pyproject.toml bounds it below the next
major. tests/test_workers.py asserts each internal used here still exists and behaves as relied
on, and fails on a Gunicorn that differs. What is used, and what for:

- `gunicorn.util.write_error` and `util.close_graceful`, replaced in each worker: Gunicorn's own
  errors in the service's JSON, and no 2 s linger after a response (`patch_worker_io`).
- `Worker.handle_exit` (the graceful stop Gunicorn installs for SIGTERM), `Worker.PIPE` (its
  wake-up pipe), `Worker.sockets` and `Worker.alive`: the drain on SIGTERM (`install_drain`).
- `Worker.wsgi`, `Worker.age`, `Worker.cfg`, `Worker.notify`: the app a worker loaded, and a
  worker that waits for its models before it accepts (`accept_once_loaded`).
- `Arbiter.handle_term` (the master's SIGTERM, dispatched by name from its main loop) and
  `Arbiter.WORKERS`: telling workers that the server stops, and board slots.
- `ThreadWorker.accept`, `set_accept_enabled`, `wait_for_and_dispatch_events`, `nr_conns` and
  `_accepting`: the threaded worker that spreads connections (`BalancedThreadWorker`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import mmap
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

CHECKED_GUNICORN = "27.0.1"

# --- Gunicorn's own answers: JSON errors, and no linger after a response ---------------------


def json_write_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """Gunicorn's own errors (request line or headers too long, bad chunking, ...) as our JSON.

    Gunicorn answers those before the app sees the request, with an HTML page; the API promises
    JSON for every error, so workers send the same body the app would.
    """
    code = {414: "uri_too_long", 431: "headers_too_large", 501: "not_implemented"}.get(
        status_int, "bad_request" if status_int < 500 else "internal"
    )
    body = json.dumps(
        {"error": {"code": code, "message": mesg or reason, "status": status_int}}
    ).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1")
    util.write_nonblock(sock, head + body)


def close_after_response(linger: Callable[..., None]) -> Callable[..., None]:
    """Gunicorn's close, without waiting for the client to hang up when nothing is left unread.

    Gunicorn's `close_graceful` half-closes, then reads until the client closes its side, for up
    to 2 s. That wait exists to drain request bytes the app never read: closing a socket with
    unread data sends a reset, which can destroy the response before the client reads it. But a
    sync worker serves nothing else meanwhile, so a client that reads its response and keeps the
    socket open (an idle keep-alive pool, or on purpose) holds a worker for 2 s per request.
    When no unread byte is waiting, a plain close cannot reset anything, so the worker closes at
    once; otherwise Gunicorn's drain runs as before.
    """

    def close(sock: Any, *args: Any, **kwargs: Any) -> None:
        if type(sock) is socket.socket:  # TLS sockets refuse MSG_PEEK: they keep Gunicorn's way
            try:
                sock.setblocking(False)
                unread = sock.recv(1, socket.MSG_PEEK)
            except OSError:  # nothing waiting (BlockingIOError), or reset: nothing to protect
                unread = b""
            if not unread:  # b"" also when the client has already closed its side
                sock.close()
                return
        linger(sock, *args, **kwargs)

    return close


def patch_worker_io() -> None:
    """In a worker (post_fork): Gunicorn's module functions that the workers call by name."""
    util.write_error = json_write_error
    util.close_graceful = close_after_response(util.close_graceful)


# --- A worker's start ----------------------------------------------------------------------------


def loaded_app(worker: Any) -> Any:
    """The WSGI app the worker loaded (post_worker_init runs after Gunicorn's load_wsgi)."""
    return worker.wsgi


def accept_once_loaded(worker: Any, loaded: Callable[[], Any]) -> None:
    """In post_worker_init: every worker but the server's very first (`age` 1) enters Gunicorn's
    accept loop only once `loaded()` is true; `loaded` waits up to a second, and the worker tells
    the master it is alive between waits. The first answers /livez and /readyz ("loading")
    during a cold start; once it is ready, a request can only reach a worker that is ready too."""
    if worker.age == 1:
        return
    while not loaded() and worker.alive:
        worker.notify()  # the master's heartbeat: loading is not hanging


# --- Stopping without losing a connection ----------------------------------------------------


class StopNotice:
    """One flag in memory shared across the fork: the master sets it when the whole server stops
    (SIGTERM), so that a worker told to stop can tell that from a HUP, a scale-in or a recycle,
    where the listening socket lives on in other workers."""

    def __init__(self) -> None:
        self._memory = mmap.mmap(-1, 1)  # anonymous and shared: forked workers see it

    def set(self) -> None:
        self._memory[0] = 1

    def is_set(self) -> bool:
        return self._memory[0] == 1


def announce_stops(server: Any, notice: StopNotice) -> None:
    """The master's SIGTERM sets `notice` before Gunicorn's own handling (which closes the
    master's copy of the listeners and sends every worker SIGTERM)."""
    gunicorn_term = server.handle_term

    def handle_term() -> None:
        notice.set()
        gunicorn_term()

    server.handle_term = handle_term  # the main loop looks handlers up by name on the arbiter


SO_ATTACH_FILTER = 26  # <asm-generic/socket.h>; the socket module does not export it
# One classic BPF instruction, `ret #0`: keep no byte of any packet.
_DROP_EVERYTHING = struct.pack("HBBI", 0x06, 0, 0, 0)  # BPF_RET | BPF_K, k = 0


def refuse_new_connections(listener: Any) -> None:
    """Let no new connection into `listener`'s accept queue, for every process sharing it.

    The kernel completes TCP handshakes on its own and queues the connections until a worker
    accepts them; when the last process holding the listener closes it, whatever is still queued
    is reset: requests that had reached the server, lost. A filter that drops every packet makes
    the listener ignore new SYNs and the last ACK of a handshake, so the queue can only shrink
    and the workers can empty it before they exit. A client whose SYN is dropped retries it (after
    1 s) and is refused once the listener is gone, or reaches the next server on the same port.
    Linux only; raises OSError where the kernel refuses.
    """
    if sys.platform != "linux":
        raise OSError("socket filters on listeners need Linux")
    program = ctypes.create_string_buffer(_DROP_EVERYTHING)
    fprog = struct.pack("HP", 1, ctypes.addressof(program))  # struct sock_fprog
    listener.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies it


def wait_until_accepted(listeners: list[Any], deadline: float, interval: float = 0.002) -> bool:
    """Until no connection waits in any listener's accept queue (True), or `deadline` (False)."""
    queued = select.poll()
    for listener in listeners:
        queued.register(listener, select.POLLIN)
    while queued.poll(0):
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def install_drain(worker: Any, draining: threading.Event, delay: float, stops: StopNotice) -> None:
    """The worker's SIGTERM, in place of Gunicorn's immediate graceful stop:

    1. `draining` is set at once (the app's /readyz answers 503), and the worker goes on
       accepting for `delay` seconds (CONVNET_DRAIN_SECONDS), for load balancers to notice;
    2. when the whole server stops (`stops`), no new connection is let in, and the worker keeps
       accepting until the accept queue is empty: nothing that reached the server is reset;
    3. Gunicorn's graceful stop: accept no more, finish the requests in hand, exit.
    """
    gunicorn_stop = signal.getsignal(signal.SIGTERM)  # Worker.handle_exit
    # Within Gunicorn's graceful_timeout, after which the master kills the worker.
    budget = max(worker.cfg.graceful_timeout - delay - 1.0, 0.0)

    def stop() -> None:
        time.sleep(delay)
        if stops.is_set():
            try:
                for listener in worker.sockets:
                    refuse_new_connections(listener)
            except OSError as exc:
                worker.log.warning("connections still queued at exit will be reset: %s", exc)
            if not wait_until_accepted(worker.sockets, time.monotonic() + budget):
                worker.log.warning("stopping with connections still queued")
        gunicorn_stop(signal.SIGTERM, None)
        # Outside a signal handler nothing wakes the worker: an idle sync worker would sit in
        # select() for timeout/2 and be killed at graceful_timeout. Its wake-up pipe does it.
        with contextlib.suppress(OSError):
            os.write(worker.PIPE[1], b"\0")

    def on_sigterm(sig: int, frame: Any) -> None:
        if draining.is_set():
            return
        draining.set()
        worker.log.info("draining: /readyz answers 503; stopping in %.1f s", delay)
        threading.Thread(target=stop, name="drain", daemon=True).start()

    signal.signal(signal.SIGTERM, on_sigterm)


# --- The threaded worker, with connections spread over the workers ---------------------------
#
# Every gthread worker waits on the same listening socket, and whichever calls accept() first gets
# the connection. A client pool opens its connections in a burst, and keeps them alive, so one
# worker could take them all and keep them while the other idled (docs/decisions/connection-
# board.md). Here each worker publishes how many connections it holds on a board the master
# shares with every worker it forks. A worker that holds more than some sibling gives way: it
# waits, while a connection is still waiting to be taken, until the siblings have caught up, for
# at most MAX_WAIT. Nothing is refused, so no connection starves. A lone worker never waits.

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


def share_board(server: Any) -> None:
    """In the master (on_starting): a board for the balanced worker, shared with every worker."""
    if issubclass(server.worker_class, BalancedThreadWorker):
        server.convnet_connection_board = ConnectionBoard()


def take_board_slot(server: Any, worker: Any) -> None:
    """pre_fork: a slot for the worker about to be forked, one no live worker holds."""
    board = getattr(server, "convnet_connection_board", None)
    if board is not None:
        worker.board = board
        worker.board_slot = board.free_slot({w.board_slot for w in server.WORKERS.values()})


def free_board_slot(server: Any, worker: Any) -> None:
    """child_exit: a worker killed outright could not say it stopped."""
    board = getattr(server, "convnet_connection_board", None)
    if board is not None and worker.board_slot is not None:
        board.clear(worker.board_slot)
