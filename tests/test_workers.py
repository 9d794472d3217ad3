"""service/workers.py: the threaded worker that spreads kept-alive connections over the workers."""

from __future__ import annotations

import socket
from collections import Counter
from types import SimpleNamespace

import pytest

from service import workers
from tests import corpus
from tests.server import GunicornServer

DIGIT = corpus.encode(corpus.digit(7, 64), "PNG")


def test_a_worker_waits_before_accepting_longer_the_more_connections_it_holds(monkeypatch):
    slept: list[float] = []
    accepted: list[object] = []
    monkeypatch.setattr(workers.time, "sleep", slept.append)
    monkeypatch.setattr(workers.ThreadWorker, "accept", lambda self, listener: accepted.append(1))
    worker = object.__new__(workers.BalancedThreadWorker)  # the rule alone, no process
    worker.cfg = SimpleNamespace(workers=2)
    for held in (0, 1, 3, 40, 1000):
        worker.nr_conns = held
        worker.accept(listener=None)
    # None held: at once. Then 50 us per connection held, never more than 2 ms; always accepted.
    assert slept == pytest.approx([50e-6, 150e-6, 0.002, 0.002])
    assert len(accepted) == 5
    # A lone worker has no one to give way to: it never waits.
    worker.cfg = SimpleNamespace(workers=1)
    worker.accept(listener=None)
    assert len(slept) == 4 and len(accepted) == 6


def _send(sock: socket.socket) -> None:
    head = (
        f"POST /predict/mnist HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(DIGIT)}\r\n\r\n"
    ).encode()
    sock.sendall(head + DIGIT)


def _read_answer(sock: socket.socket) -> bytes:
    """The headers of a whole 200 answer that keeps the connection alive."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(65536)
    header, body = answer.split(b"\r\n\r\n", 1)
    length = int(header.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
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
