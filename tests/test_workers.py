"""service/workers.py: the Gunicorn internals it relies on, the drain's socket filter, and the
threaded worker that spreads kept-alive connections over the workers."""

from __future__ import annotations

import inspect
import os
import signal
import socket
import time
from collections import Counter

import gunicorn
import pytest
from gunicorn import util
from gunicorn.arbiter import Arbiter
from gunicorn.config import Config
from gunicorn.glogging import Logger
from gunicorn.workers import base, gthread, sync

from service import workers
from tests import corpus
from tests.server import GunicornServer

DIGIT = corpus.encode(corpus.digit(7, 64), "PNG")


# --- Gunicorn's internals, as service/workers.py uses them ------------------------------------


def test_gunicorn_is_the_major_version_the_internals_were_checked_against():
    """A new major Gunicorn (pyproject.toml allows none) fails here first: re-check each internal
    listed in service/workers.py's docstring against its source, then update CHECKED_GUNICORN.
    Within the major version, the tests below check each internal itself."""
    checked = tuple(int(part) for part in workers.CHECKED_GUNICORN.split("."))
    assert gunicorn.version_info[0] == checked[0] and gunicorn.version_info >= checked


def test_workers_call_the_util_functions_replaced_in_them_by_module_attribute():
    # Replacing util.write_error / util.close_graceful reaches the workers only while they call
    # them through the module, with these parameters.
    assert list(inspect.signature(util.write_error).parameters) == [
        "sock",
        "status_int",
        "reason",
        "mesg",
    ]
    assert next(iter(inspect.signature(util.close_graceful).parameters)) == "sock"
    assert "util.write_error(client, status_int, reason, mesg)" in inspect.getsource(
        base.Worker.handle_error
    )
    assert "util.close_graceful(client)" in inspect.getsource(sync.SyncWorker.handle)
    assert "util.close_graceful(" in inspect.getsource(gthread)


def test_the_arbiter_dispatches_sigterm_by_name_and_closes_its_listeners_then_stops_workers():
    run = inspect.getsource(Arbiter.run)
    assert 'getattr(self, "handle_%s" % signame' in run  # an instance's handle_term is used
    with pytest.raises(StopIteration):
        Arbiter.handle_term(object())  # SIGTERM: leave the main loop, then halt() -> stop()
    stop = inspect.getsource(Arbiter.stop)
    assert stop.index("close_sockets(self.LISTENERS") < stop.index("self.kill_workers(sig)")
    assert isinstance(Arbiter.WORKERS, dict)


@pytest.fixture
def sync_worker(tmp_path):
    cfg = Config()
    cfg.set("worker_tmp_dir", str(tmp_path))
    worker = sync.SyncWorker(1, 1, [], None, 30, cfg, Logger(cfg))
    yield worker
    worker.tmp.close()


def test_a_worker_stops_gracefully_on_handle_exit_and_wakes_on_its_pipe(sync_worker):
    # Gunicorn's SIGTERM handler, which the drain calls from its own thread when it is done.
    assert "signal.signal(signal.SIGTERM, self.handle_exit)" in inspect.getsource(
        base.Worker.init_signals
    )
    assert "self.PIPE = os.pipe()" in inspect.getsource(base.Worker.init_process)
    assert sync_worker.alive
    sync_worker.handle_exit(signal.SIGTERM, None)
    assert not sync_worker.alive
    assert "self.PIPE[0] in ret[0]" in inspect.getsource(sync.SyncWorker.wait)


def test_a_worker_runs_post_worker_init_with_its_app_loaded_before_it_accepts():
    init = inspect.getsource(base.Worker.init_process)
    assert init.index("self.load_wsgi()") < init.index("self.cfg.post_worker_init(self)")
    assert init.index("self.cfg.post_worker_init(self)") < init.index("self.run()")
    assert "self.wsgi = self.app.wsgi()" in inspect.getsource(base.Worker.load_wsgi)


def test_every_worker_but_the_first_waits_for_its_models(sync_worker):
    answers = iter([False, False, True])
    calls: list[int] = []

    def loaded() -> bool:
        calls.append(1)
        return next(answers)

    sync_worker.age = 1  # the server's first worker
    workers.accept_once_loaded(sync_worker, loaded)
    assert not calls
    sync_worker.age = 2  # its sibling at a cold start, a replacement, or a HUP's new generation
    beats: list[int] = []
    sync_worker.notify = lambda: beats.append(1)  # the master's heartbeat while it waits
    workers.accept_once_loaded(sync_worker, loaded)
    assert len(calls) == 3 and len(beats) == 2


def test_the_threaded_worker_has_what_the_balanced_worker_overrides():
    for name, params in {
        "accept": ["self", "listener"],
        "set_accept_enabled": ["self", "enabled"],
        "wait_for_and_dispatch_events": ["self", "timeout"],
    }.items():
        assert list(inspect.signature(getattr(gthread.ThreadWorker, name)).parameters) == params
    init = inspect.getsource(gthread.ThreadWorker.__init__)
    assert "self.nr_conns = 0" in init and "self._accepting = False" in init


# --- The drain's socket filter ------------------------------------------------------------------


def test_a_filtered_listener_keeps_its_queued_connections_and_takes_no_new_one():
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    queued = socket.create_connection(listener.getsockname(), timeout=5)
    deadline = time.monotonic() + 5
    assert not workers.wait_until_accepted([listener], deadline)  # one is waiting
    workers.refuse_new_connections(listener)
    late = socket.socket()
    late.setblocking(False)
    late.connect_ex(listener.getsockname())  # its SYN is dropped: it never joins the queue
    taken, _ = listener.accept()  # the queued connection is still there ...
    taken.sendall(b"answered")
    assert queued.recv(8) == b"answered"
    assert workers.wait_until_accepted([listener], deadline)  # ... and nothing came after it
    with pytest.raises(BlockingIOError):
        listener.accept()
    for sock in (taken, queued, late, listener):
        sock.close()


def test_the_stop_notice_is_shared_with_a_forked_worker():
    notice = workers.StopNotice()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child waits for the parent's flag)
        deadline = time.monotonic() + 10
        while not notice.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        os._exit(0 if notice.is_set() else 1)
    notice.set()
    assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0


# --- The connection board -----------------------------------------------------------------------


def test_the_board_tells_each_worker_the_fewest_connections_a_sibling_holds():
    board = workers.ConnectionBoard(slots=4)
    assert board.fewest_elsewhere(0) is None  # nobody else accepts
    assert board.free_slot({0, 1}) == 2 and board.free_slot({0, 1, 2, 3}) is None
    board.publish(0, 5)
    board.publish(1, 2)
    board.publish(3, 7)
    assert board.fewest_elsewhere(0) == 2 and board.fewest_elsewhere(1) == 5
    board.clear(1)  # stopped or dead: no longer waited for
    assert board.fewest_elsewhere(0) == 7 and board.fewest_elsewhere(3) == 5


class _Worker(workers.BalancedThreadWorker):
    """The rule alone, no process: Gunicorn's own accept records what it would take."""

    def __init__(self, board, slot, held):
        self.board, self.board_slot, self.nr_conns, self._accepting = board, slot, held, True
        self.accepted = 0


@pytest.fixture
def pending(monkeypatch):
    """A loopback listener with one connection waiting, and the worker's accept recorded."""
    monkeypatch.setattr(
        workers.ThreadWorker, "accept", lambda self, listener: setattr(self, "accepted", 1)
    )
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    yield listener
    client.close()
    listener.close()


def test_a_worker_holding_no_more_than_its_siblings_accepts_at_once(pending, monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(workers.time, "sleep", slept.append)
    board = workers.ConnectionBoard(slots=4)
    board.publish(1, 3)
    for held in (0, 3):
        worker = _Worker(board, 0, held)
        worker.accept(pending)
        assert worker.accepted and not slept
    lone = _Worker(workers.ConnectionBoard(slots=4), 0, held=40)
    lone.accept(pending)  # no one to give way to
    assert lone.accepted and not slept


def test_a_worker_holding_more_gives_the_connection_to_a_sibling(pending, monkeypatch):
    board = workers.ConnectionBoard(slots=4)
    board.publish(1, 2)
    taken = []

    def sibling_takes_it(seconds):  # while this worker waits, the sibling accepts
        if not taken:
            taken.append(pending.accept()[0])

    monkeypatch.setattr(workers.time, "sleep", sibling_takes_it)
    worker = _Worker(board, 0, held=3)
    worker.accept(pending)
    assert taken and not worker.accepted
    taken[0].close()


def test_a_worker_holding_more_takes_the_connection_when_no_sibling_does(pending):
    board = workers.ConnectionBoard(slots=4)
    board.publish(1, 2)  # accepting, but never gets round to it
    worker = _Worker(board, 0, held=3)
    started = time.monotonic()
    worker.accept(pending)
    assert worker.accepted and time.monotonic() - started >= workers.MAX_WAIT


def _send(sock: socket.socket) -> None:
    head = (
        f"POST /predict/mnist HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(DIGIT)}\r\n\r\n"
    ).encode()
    sock.sendall(head + DIGIT)


def _read_answer(sock: socket.socket) -> bytes:
    """The headers of a whole 200 answer that keeps the connection alive."""

    def more() -> bytes:
        chunk = sock.recv(65536)
        if not chunk:  # closed: without this check the loops below would spin forever
            raise ConnectionError(f"the server closed mid-answer after {answer + body!r}")
        return chunk

    answer = body = b""
    while b"\r\n\r\n" not in answer:
        answer += more()
    header, body = answer.split(b"\r\n\r\n", 1)
    length = int(header.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += more()
    return header


@pytest.mark.server
def test_a_burst_of_kept_alive_connections_is_spread_over_the_workers(tmp_path):
    """A client pool opens its connections at once and keeps them (wrk, a connection pool).
    Every request is answered and every connection kept, and each of the two workers holds
    some of them: none takes the whole burst while the other idles."""
    with GunicornServer(tmp=tmp_path, env={"CONVNET_BATCHING": "1"}) as srv:
        assert "Using worker: service.workers.BalancedThreadWorker" in srv.log()
        pool = [socket.create_connection(("127.0.0.1", srv.port), timeout=30) for _ in range(16)]
        try:
            for sock in pool:
                _send(sock)
            headers = [_read_answer(sock) for sock in pool]
            by_worker = Counter(srv.worker_holding(sock) for sock in pool)
        finally:
            for sock in pool:
                sock.close()
    for header in headers:
        assert header.startswith(b"HTTP/1.1 200") and b"keep-alive" in header.lower(), header
    assert len(by_worker) == 2 and min(by_worker.values()) >= 4, by_worker
