"""service/workers.py: the threaded worker that spreads kept-alive connections over the workers."""

from __future__ import annotations

import socket
import time
from collections import Counter

import pytest

from service import workers
from tests import corpus
from tests.server import GunicornServer

DIGIT = corpus.encode(corpus.digit(7, 64), "PNG")


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
