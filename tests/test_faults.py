"""Faults and load against the real Gunicorn service: slow clients, a worker killed mid-request,
graceful shutdown, worker recycling and a short soak. Every test is bounded in time and stops
every process it starts, also on failure. Run with `-s` to see the measured figures.

Longer runs on demand: SOAK_SECONDS=900 pytest tests/test_faults.py -k soak -s
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from prometheus_client import CollectorRegistry, generate_latest, multiprocess

from tests import corpus
from tests.server import MODELS_DIR, GunicornServer, NginxProxy, find_nginx

pytestmark = [pytest.mark.server, pytest.mark.slow]

DIGIT = corpus.encode(corpus.digit(7, 64), "PNG")
PHOTO = corpus.encode(corpus.photo(320, 240), "JPEG", quality=90)
SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "60"))


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def predict(url: str, timeout: float = 60, close: bool = True) -> requests.Response:
    headers = {"Content-Type": "image/png"}
    if close:  # one connection per request: no keep-alive race blurs what was accepted
        headers["Connection"] = "close"
    return requests.post(f"{url}/predict/mnist", data=DIGIT, headers=headers, timeout=timeout)


def refused(exc: BaseException) -> bool:
    """True when the connection itself was refused: the request was never accepted."""
    while exc is not None:
        if isinstance(exc, ConnectionRefusedError):
            return True
        exc = exc.__cause__ or exc.__context__ or (exc.args[0] if exc.args else None)
        if not isinstance(exc, BaseException):
            return False
    return False


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def metrics_from_dir(path: Path) -> str:
    """The merged multiprocess metrics, read from the files (also after the server stopped)."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(path))
    return generate_latest(registry).decode()


def predicts_counted(text: str, status: str = "200") -> int:
    return int(
        metric_total(
            text, "convnet_http_requests_total", endpoint="/predict/<model>", status=status
        )
    )


class ClientThreads:
    """`self.threads` threads running `self._run` from the start of a `with` block until
    `self.stop` is set at its end."""

    threads: int
    stop: threading.Event

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        self._threads = [
            threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)
        ]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(90)


@dataclass
class Load(ClientThreads):
    """`threads` clients calling `call` in a loop until stopped; outcomes and latencies kept."""

    call: Callable[[], requests.Response]
    threads: int = 4
    outcomes: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # answers other than 200
    resets: list[str] = field(default_factory=list)  # connections closed without an answer
    stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                r = self.call()
                key = str(r.status_code)
                if r.status_code != 200:
                    self.errors.append(f"{r.status_code} {r.text[:200]}")
            except requests.RequestException as exc:
                key = "refused" if refused(exc) else "reset"
                self.resets.append(repr(exc)[:300]) if key == "reset" else None
                time.sleep(0.05)
            self.outcomes[key] += 1
            if key == "200":
                self.latencies.append(time.perf_counter() - started)

    def summary(self) -> str:
        lat = sorted(self.latencies) or [0.0]
        return (
            f"{dict(self.outcomes)}; latency p50 {lat[len(lat) // 2] * 1000:.0f} ms, "
            f"p99 {lat[int(len(lat) * 0.99)] * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms"
        )


@contextmanager
def gunicorn(tmp_path: Path, **kwargs):
    srv = GunicornServer(tmp=tmp_path, **kwargs)
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


# --- (a) slow clients -------------------------------------------------------------------------


class SlowLoris:
    """`n` sockets sending a request's headers one line every `interval` s, never finishing."""

    def __init__(self, port: int, n: int, interval: float = 1.0) -> None:
        self.port, self.n, self.interval = port, n, interval
        self.stop = threading.Event()
        self.closed_by_server = 0
        self.sockets: list[socket.socket] = []

    def _open(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        s.sendall(b"POST /predict/mnist HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        return s

    def _run(self) -> None:
        i = 0
        while not self.stop.wait(self.interval):
            i += 1
            for k, s in enumerate(self.sockets):
                try:
                    s.sendall(f"X-Slow-{i}: {'a' * 10}\r\n".encode())
                except OSError:
                    self.closed_by_server += 1
                    s.close()
                    try:  # like the real attack: reconnect
                        self.sockets[k] = self._open()
                    except OSError:
                        pass

    def __enter__(self) -> SlowLoris:
        self.sockets = [self._open() for _ in range(self.n)]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self._thread.join(10)
        for s in self.sockets:
            s.close()


def measure_under_slowloris(url: str, port: int, n: int, seconds: float = 12) -> dict:
    with SlowLoris(port, n) as loris:
        time.sleep(2)  # the sockets are open and dribbling before we measure
        latencies, failures = [], []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                r = predict(url, timeout=10)
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    failures.append(r.status_code)
            except requests.RequestException as exc:
                failures.append(type(exc).__name__)
            time.sleep(0.1)
        closed = loris.closed_by_server
    lat = sorted(latencies) or [float("inf")]
    return {
        "loris_sockets": n,
        "ok": len(latencies),
        "failed": failures,
        "p50_ms": round(statistics.median(lat) * 1000, 1),
        "max_ms": round(lat[-1] * 1000, 1),
        "loris_closed_by_server": closed,
    }


SLOW_CLIENTS = 24  # 3 x (2 workers x 4 threads): more than either worker class can hold


@pytest.mark.xfail(
    reason="measured: Gunicorn's sync worker (the default) reads one connection at a time, so one "
    "dribbling socket per worker stalls the service; a gthread worker gives each connection a "
    "thread while it reads the headers and stalls once it holds `threads` of them (24 sockets "
    "against 2 workers x 4 threads: 0-2 of ~100 requests served in 12 s). The deployment must "
    "put a buffering proxy (nginx) in front: test_slowloris_through_nginx",
    strict=True,  # if Gunicorn alone ever copes, this says so
    raises=AssertionError,  # starved, not crashed: a crash fails the test
)
def test_slowloris_direct(tmp_path):
    """More dribbling sockets than any worker holds: does Gunicorn alone still serve?"""
    n = SLOW_CLIENTS
    with gunicorn(tmp_path, workers=2) as server:  # its own: the starved one is thrown away
        result = measure_under_slowloris(server.url, server.port, n)
    print(f"\nslow loris, Gunicorn direct: {result}")
    assert not result["failed"], result
    assert result["ok"] > 10 and result["max_ms"] < 2000, result


def nginx(tmp_path: Path, upstream: int):
    if find_nginx() is None:
        pytest.skip("nginx is not installed (apt-get install -y nginx)")
    return NginxProxy(tmp_path, upstream).running()


def test_slowloris_through_nginx(server, tmp_path):
    """The same attack against Debian's nginx as a buffering reverse proxy in front."""
    with nginx(tmp_path, server.port) as proxy:
        n = SLOW_CLIENTS
        result = measure_under_slowloris(proxy.url, proxy.port, n)
    print(f"\nslow loris, through nginx: {result}")
    assert not result["failed"], result
    assert result["ok"] > 10 and result["max_ms"] < 2000, result


def test_nginx_keeps_metrics_from_the_public(server, tmp_path):
    """The compose file's proxy answers /metrics 404 (JSON, like the service's own 404s);
    Prometheus scrapes the service directly, where it still answers."""
    with nginx(tmp_path, server.port) as proxy:
        for path in ("/metrics", "//metrics", "/%6Detrics", "/metrics?x=1"):
            r = requests.get(f"{proxy.url}{path}", timeout=10)
            assert r.status_code == 404, (path, r.status_code, r.text[:200])
            assert r.json()["error"]["code"] == "not_found"
        assert predict(proxy.url).status_code == 200
    assert "convnet_http_requests_total" in requests.get(f"{server.url}/metrics", timeout=10).text


def test_a_stopped_service_behind_nginx_is_a_json_502(tmp_path):
    """The service down (restarting, crashed): nginx's own 502 is the service's JSON error, with
    a Retry-After, for every method."""
    if find_nginx() is None:
        pytest.fail("nginx is not installed (apt-get install -y nginx)")
    srv = GunicornServer(tmp=tmp_path / "srv", workers=1)
    (tmp_path / "srv").mkdir()
    srv.start()
    with NginxProxy(tmp_path, srv.port).running() as proxy:
        assert predict(proxy.url).status_code == 200
        srv.stop()
        for r in (predict(proxy.url), requests.get(f"{proxy.url}/models", timeout=10)):
            assert r.status_code == 502, r.text
            assert r.headers["Content-Type"] == "application/json"
            assert r.headers["Retry-After"] == "1"
            assert r.json()["error"] == {
                "code": "bad_gateway",
                "message": "The service is unreachable; retry shortly.",
                "status": 502,
            }


def test_nginx_closes_a_request_that_times_out_without_an_html_page(server, tmp_path):
    """nginx sends no 408: a request whose headers or body stop arriving is closed unanswered."""
    if find_nginx() is None:
        pytest.fail("nginx is not installed (apt-get install -y nginx)")
    shorter = {
        "client_header_timeout 10s;": "client_header_timeout 1s;",
        "client_body_timeout 10s;": "client_body_timeout 1s;",
    }
    with NginxProxy(tmp_path, server.port, replace=shorter).running() as proxy:
        for head in (
            b"POST /predict/mnist HTTP/1.1\r\nHost: t\r\n",  # headers never end
            b"POST /predict/mnist HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\n"
            b"Content-Length: 100\r\n\r\nabc",  # 3 bytes of 100
        ):
            sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
            started = time.monotonic()
            sock.sendall(head)
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
            sock.close()
            assert received == b"", received[:200]
            assert time.monotonic() - started < 5


def queue_seconds(url: str) -> tuple[float, float]:
    """convnet_http_request_queue_seconds' (count, sum) from the service's /metrics."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        for key in ("_count", "_sum"):
            if line.startswith(f"convnet_http_request_queue_seconds{key} "):
                values[key] = float(line.split()[-1])
    return values.get("_count", 0.0), values.get("_sum", 0.0)


def test_nginx_replaces_a_forged_x_request_start(server, tmp_path):
    """A client's own X-Request-Start (here from 1970) must not reach the queue-wait metric:
    nginx sends its own stamp instead."""
    if find_nginx() is None:
        pytest.fail("nginx is not installed (apt-get install -y nginx)")
    with NginxProxy(tmp_path, server.port).running() as proxy:
        count0, sum0 = queue_seconds(server.url)
        for _ in range(10):
            r = requests.post(
                f"{proxy.url}/predict/mnist",
                data=DIGIT,
                headers={"Content-Type": "image/png", "X-Request-Start": "t=1"},
                timeout=10,
            )
            assert r.status_code == 200
        count1, sum1 = queue_seconds(server.url)
    assert count1 - count0 == 10  # each request's wait was measured, from nginx's stamp
    assert sum1 - sum0 < 10, sum1 - sum0  # the forged stamp would add 1.8e9 s each


def post_and_keep_the_socket(port: int) -> socket.socket:
    """POST a digit, read the whole response, and return the socket still open: what an idle
    keep-alive pool (or someone on purpose) does after a `Connection: close` answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = "POST /predict/mnist HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\n"
    sock.sendall(f"{head}Content-Length: {len(DIGIT)}\r\n\r\n".encode() + DIGIT)
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < length(data):
        chunk = sock.recv(65536)
        assert chunk, f"the server closed before the whole response: {data!r}"
        data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data
    return sock


def length(response: bytes) -> int:
    """Content-Length of a response whose headers have arrived."""
    for line in response.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise AssertionError(f"no Content-Length: {response!r}")


def test_clients_keeping_their_socket_after_the_response_do_not_hold_the_worker(tmp_path):
    """Gunicorn lingers up to 2 s after each response until the client closes its side; one sync
    worker serves nothing meanwhile. Five clients that keep their sockets would cost 10 s."""
    with gunicorn(tmp_path, workers=1) as srv:
        held = []
        started = time.monotonic()
        try:
            for _ in range(5):
                held.append(post_and_keep_the_socket(srv.port))
            r = predict(srv.url, timeout=10)
            elapsed = time.monotonic() - started
        finally:
            for sock in held:
                sock.close()
    print(f"\n5 held sockets, then one more request: {elapsed * 1000:.0f} ms")
    assert r.status_code == 200
    assert elapsed < 2.0, f"{elapsed:.1f} s: the worker waited for clients to hang up"


# --- (b) a worker killed mid-request ----------------------------------------------------------


def ready_pids(srv: GunicornServer, from_files: bool = False) -> set[int]:
    """Workers that report their models loaded (the liveall gauge has a pid label); from the
    metrics files, without a request, where one would queue behind a load."""
    if from_files:
        text = metrics_from_dir(srv.metrics_dir)
    else:
        text = requests.get(f"{srv.url}/metrics", timeout=10).text
    return {
        int(line.split('pid="', 1)[1].split('"', 1)[0])
        for line in text.splitlines()
        if line.startswith("convnet_worker_ready{") and line.endswith(" 1.0")
    }


def holder(srv: GunicornServer, client: socket.socket) -> int | None:
    """The worker that has accepted `client`'s connection, or None while none has."""
    try:
        return srv.worker_holding(client)
    except AssertionError:
        return None


def test_worker_killed_mid_request_is_replaced_and_metrics_keep_completed(tmp_path):
    with gunicorn(tmp_path, workers=2) as srv:
        before = [predict(srv.url) for _ in range(20)]
        assert all(r.status_code == 200 for r in before)
        # A request in flight: headers and half of the body sent, the worker is reading it.
        client = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        client.sendall(
            b"POST /predict/mnist HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            + f"Content-Length: {len(DIGIT)}\r\n\r\n".encode()
            + DIGIT[: len(DIGIT) // 2]
        )
        deadline = time.monotonic() + 10
        while (victim := holder(srv, client)) is None:
            assert time.monotonic() < deadline, "no worker took the connection"
            time.sleep(0.01)
        old_pids = set(srv.worker_pids())
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        with pytest.raises(OSError):  # the in-flight request dies with its worker
            client.sendall(DIGIT[len(DIGIT) // 2 :])
            if not client.recv(1):
                raise ConnectionResetError("closed without a response")
        client.close()
        # The next requests succeed at once (the other worker), and the replacement comes up.
        after = [predict(srv.url) for _ in range(20)]
        assert all(r.status_code == 200 for r in after), [r.status_code for r in after]
        while not (ready_pids(srv) - old_pids):
            assert time.monotonic() - killed_at < 120, "no replacement worker became ready"
            time.sleep(0.1)
        replaced_in = time.monotonic() - killed_at
        pids = srv.worker_pids()
        assert victim not in pids and len(pids) == 2
        more = [predict(srv.url) for _ in range(20)]
        assert all(r.status_code == 200 for r in more)
        text = requests.get(f"{srv.url}/metrics", timeout=10).text
        counted = predicts_counted(text)
        print(
            f"\nSIGKILL mid-request: replacement ready in {replaced_in:.1f} s; "
            f"/predict 200s counted {counted}, completed by clients 60"
        )
        assert counted == 60  # the dead worker's counters survive it; the killed request is not one


# --- (c) graceful shutdown --------------------------------------------------------------------


@dataclass
class Sent:
    """One request of a `Ledger`: its id, when it was wholly sent, and how it ended."""

    id: int
    sent_at: float | None = None  # None: the connection was never made
    outcome: str = ""  # "200" (or another status), "refused", "reset"


@dataclass
class Ledger(ClientThreads):
    """`threads` clients, each sending /predict requests on a new connection apiece, every one
    with its own X-Request-Id, until stopped; every request's fate is kept by its id. Raw
    sockets, so that "sent" means every byte written before the time recorded."""

    port: int
    threads: int = 6
    sent: list[Sent] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _ids: Iterator[int] = field(default_factory=itertools.count)

    def send(
        self, entry: Sent, pause_mid_body: float = 0.0, halfway: threading.Event | None = None
    ) -> None:
        head = (
            f"POST /predict/mnist HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\n"
            f"X-Request-Id: {entry.id}\r\nConnection: close\r\n"
            f"Content-Length: {len(DIGIT)}\r\n\r\n"
        ).encode()
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        except ConnectionRefusedError:
            entry.outcome = "refused"
            return
        with sock:
            try:
                if pause_mid_body:  # a slow client: half of the body, a pause, the rest
                    sock.sendall(head + DIGIT[:100])
                    if halfway is not None:
                        halfway.set()
                    time.sleep(pause_mid_body)
                    sock.sendall(DIGIT[100:])
                else:
                    sock.sendall(head + DIGIT)
                entry.sent_at = time.monotonic()
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
            except OSError:
                answer = b""
        status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/1.") else ""
        entry.outcome = status or "reset"

    def _run(self) -> None:
        while not self.stop.is_set():
            entry = Sent(next(self._ids))
            self.sent.append(entry)
            self.send(entry)
            if entry.outcome == "refused":
                time.sleep(0.05)

    def before(self, moment: float) -> list[Sent]:
        return [e for e in self.sent if e.sent_at is not None and e.sent_at < moment]

    def outcomes(self) -> Counter:
        return Counter(e.outcome for e in self.sent)


def stop_under_load(tmp_path: Path, drain: float, batching: bool = False) -> dict:
    """One server, 2 workers, 6 clients and one slow request through SIGTERM."""
    env = {"CONVNET_DRAIN_SECONDS": str(drain), "CONVNET_BATCHING": "1" if batching else "0"}
    with gunicorn(tmp_path, workers=2, env=env) as srv:
        readiness: list[tuple[float, int | str]] = []
        stop_polling = threading.Event()

        def poll_readyz() -> None:
            while not stop_polling.is_set():
                try:
                    r = requests.get(
                        f"{srv.url}/readyz", headers={"Connection": "close"}, timeout=5
                    )
                    status = r.status_code if r.status_code == 200 else r.json()["status"]
                except requests.RequestException as exc:
                    status = "refused" if refused(exc) else "reset"
                readiness.append((time.monotonic(), status))
                time.sleep(0.02)

        poller = threading.Thread(target=poll_readyz)
        poller.start()
        try:
            with Ledger(srv.port) as ledger:
                slow, halfway = Sent(-1), threading.Event()
                slow_client = threading.Thread(target=ledger.send, args=(slow, 1.0, halfway))
                while len(ledger.sent) < 1500:  # steady load before the signal
                    time.sleep(0.05)
                slow_client.start()
                assert halfway.wait(10)  # the signal comes while its body is still arriving
                signalled = time.monotonic()
                srv.proc.send_signal(signal.SIGTERM)
                srv.proc.wait(60)
                exited = time.monotonic()
                time.sleep(0.3)  # a few refused connections after the listener is gone
                slow_client.join(60)
        finally:
            stop_polling.set()
            poller.join(10)
        log = srv.log()
    after = [(t - signalled, s) for t, s in readiness if t >= signalled]
    return {
        "ledger": ledger,
        "slow": slow,
        "signalled": signalled,
        "exited_after": exited - signalled,
        "first_draining": next((t for t, s in after if s == "draining"), None),
        "first_refused": next((t for t, s in after if s == "refused"), None),
        "served": predicts_counted(metrics_from_dir(srv.metrics_dir)),
        "log": log,
    }


@pytest.mark.parametrize(
    ("drain", "batching"),
    [(0.0, False), (0.0, False), (1.0, False), (0.0, True)],
    ids=["sync-1", "sync-2", "sync-drain-1s", "batching"],
)
def test_sigterm_under_load_answers_every_request_sent_before_it(tmp_path, drain, batching):
    """6 clients, a new connection per request, each with its own id, and one slow client,
    through SIGTERM. Every request whose connection the server's kernel took must come back 200:
    those wholly sent before the signal, those still waiting in the accept queue when the
    workers stopped, and the slow one, whose body was still arriving. A connection attempted
    after that is refused, never reset (a client can retry it safely). With a drain delay,
    /readyz answers 503 at once and every request sent during the delay is still served. Four
    servers (the last with batching's threaded workers), 1,500 requests or more sent before each
    signal: a loss of 1 in 1,000 would show."""
    run = stop_under_load(tmp_path, drain, batching)
    ledger, signalled = run["ledger"], run["signalled"]
    before = ledger.before(signalled)
    unanswered = [(e.id, e.outcome) for e in ledger.sent if e.outcome not in ("200", "refused")]
    outcomes = ledger.outcomes()
    print(
        f"\nSIGTERM under load (6 clients, drain {drain} s, batching {batching}): "
        f"{dict(outcomes)}; "
        f"{len(before)} sent before the signal, {len(unanswered)} connected and unanswered; "
        f"slow request {run['slow'].outcome}; readiness 503 'draining' after "
        f"{run['first_draining']} s, first refused connection after {run['first_refused']} s; "
        f"master exited after {run['exited_after']:.2f} s"
    )
    assert len(before) >= 1500
    assert all(e.outcome == "200" for e in before), Counter(e.outcome for e in before)
    assert not unanswered, unanswered[:20]  # nothing reset, and no status other than 200
    assert run["slow"].outcome == "200"
    # The server counted the 200s the clients got (the slow one too), and no answer went unseen.
    assert run["served"] == outcomes["200"] + 1
    if drain:
        # /readyz answers 503 at once (without a delay the listener lets no connection in) ...
        assert run["first_draining"] is not None and run["first_draining"] < drain
        # ... the whole delay is served: every request sent during it came back 200 ...
        during = [e for e in ledger.before(signalled + drain) if e.sent_at >= signalled]
        assert during and all(e.outcome == "200" for e in during)
        assert max(e.sent_at for e in during) - signalled > drain * 0.8
        # ... and nothing was refused before it ended.
        assert run["first_refused"] is None or run["first_refused"] >= drain
    assert "WORKER TIMEOUT" not in run["log"] and "SIGKILL" not in run["log"]
    assert "still queued" not in run["log"], run["log"][-3000:]


def test_hup_under_load_loses_no_request(tmp_path):
    """SIGHUP: new workers start (loading their models before they accept) and the old ones
    stop; the listening socket stays open all along, so every request is answered 200."""
    with gunicorn(tmp_path, workers=2) as srv:
        first = set(srv.worker_pids())
        with Ledger(srv.port) as ledger:
            while len(ledger.sent) < 300:
                time.sleep(0.05)
            srv.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 60
            while set(srv.worker_pids()) & first or len(ready_pids(srv, from_files=True)) < 2:
                assert time.monotonic() < deadline, srv.log()[-3000:]
                time.sleep(0.1)
            reloaded = len(ledger.sent)
            while len(ledger.sent) < reloaded + 300:
                time.sleep(0.05)
    outcomes = ledger.outcomes()
    print(f"\nSIGHUP under load (6 clients): {dict(outcomes)}")
    assert outcomes == Counter({"200": len(ledger.sent)}), outcomes


def test_a_replica_restarted_behind_nginx_costs_no_request(tmp_path):
    """Two replicas behind the compose file's nginx; one is stopped (SIGTERM) and started again
    under load, as a rolling restart does. What nginx had forwarded to it is answered by it; a
    connection it no longer takes fails before nginx sends anything, and nginx passes the request
    to the other replica: every client gets its 200, none a 5xx."""
    if find_nginx() is None:
        pytest.fail("nginx is not installed (apt-get install -y nginx)")
    folders = [tmp_path / name for name in ("a", "b", "a-again", "nginx")]
    for folder in folders:
        folder.mkdir()
    a = GunicornServer(tmp=folders[0], workers=1)
    b = GunicornServer(tmp=folders[1], workers=1)
    both = {f"server 127.0.0.1:{a.port};": f"server 127.0.0.1:{a.port}; server 127.0.0.1:{b.port};"}
    again = GunicornServer(tmp=folders[2], workers=1, port=a.port)

    def served(srv: GunicornServer) -> int:
        return predicts_counted(requests.get(f"{srv.url}/metrics", timeout=10).text)

    try:
        a.start(), b.start()
        proxy = NginxProxy(folders[3], a.port, replace=both)
        with proxy.running(), Ledger(proxy.port) as ledger:
            while len(ledger.sent) < 500:
                time.sleep(0.05)
            a.stop()  # SIGTERM, and wait until it has exited
            stopped = len(ledger.sent)
            again.start()
            # nginx leaves a failed server out for fail_timeout (10 s), then sends it its share.
            deadline = time.monotonic() + 60
            while len(ledger.sent) < stopped + 500 or not served(again):
                assert time.monotonic() < deadline, "the restarted replica got no request"
                time.sleep(0.1)
            served_again = served(again)
    finally:
        for srv in (a, b, again):
            srv.stop()
    outcomes = ledger.outcomes()
    served_by_a = predicts_counted(metrics_from_dir(a.metrics_dir))
    print(
        f"\nrestart behind nginx (6 clients, 2 replicas): {dict(outcomes)}; the restarted replica "
        f"served {served_by_a} before its stop and {served_again} after its start"
    )
    assert outcomes == Counter({"200": len(ledger.sent)}), outcomes
    assert served_by_a > 0 and served_again > 0


def test_sigterm_with_a_drain_delay_stops_an_idle_worker_gracefully(tmp_path):
    """With no request to wake it, a sync worker waits in select() for timeout/2 (30 s): the drain
    timer must wake it, or the master SIGKILLs it at graceful_timeout instead of a clean exit."""
    env = {"CONVNET_DRAIN_SECONDS": "0.5", "GUNICORN_GRACEFUL_TIMEOUT": "15"}
    with gunicorn(tmp_path, workers=1, env=env) as srv:
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(60)
        log = srv.log()
    assert "Worker exiting" in log and "SIGKILL" not in log, log[-3000:]


# --- (d) worker recycling ---------------------------------------------------------------------


ARCHIVES = {"counter_archive.db", "histogram_archive.db", "archive.lock"}


def test_worker_recycling_under_load_fails_no_request(tmp_path):
    env = {"GUNICORN_MAX_REQUESTS": "50", "GUNICORN_MAX_REQUESTS_JITTER": "10"}
    with gunicorn(tmp_path, workers=2, env=env) as srv:
        first_pids = set(srv.worker_pids())
        files_before = sorted(p.name for p in srv.metrics_dir.iterdir())
        target = 400
        with Load(lambda: predict(srv.url)) as load:
            deadline = time.monotonic() + 240
            while sum(load.outcomes.values()) < target and time.monotonic() < deadline:
                time.sleep(0.2)
        # A worker can still be recycled by the last requests of the load; between its exit and
        # the master's child_exit (which archives its files) the directory holds a dead worker's
        # files. Take the listing when no worker came or went while it was taken, and that
        # transient, if any, is over.
        for _ in range(50):
            live = srv.worker_pids()
            files_after = sorted(p.name for p in srv.metrics_dir.iterdir())
            dead = [n for n in files_after if not any(n.endswith(f"_{pid}.db") for pid in live)]
            if srv.worker_pids() == live and set(dead) <= ARCHIVES:
                break
            time.sleep(0.2)
        size_after = sum(p.stat().st_size for p in srv.metrics_dir.iterdir())
        text = requests.get(f"{srv.url}/metrics", timeout=10).text
        log = srv.log()
    recycled = log.count("Autorestarting worker")
    print(
        f"\nrecycling (max_requests 50 +/- 10): {load.summary()}; {recycled} recycles; "
        f"metrics dir {len(files_before)} files -> {len(files_after)} files "
        f"({size_after / 2**20:.1f} MiB): {files_after}"
    )
    assert sum(load.outcomes.values()) >= target, "load did not finish in time"
    assert not load.errors and set(load.outcomes) == {"200"}, (
        dict(load.outcomes),
        load.errors[:5],
        load.resets[:5],
    )
    assert recycled >= 2 and not first_pids & set(live)
    assert predicts_counted(text) == load.outcomes["200"]  # the recycled workers' counts are kept
    # Bounded: the live workers' files and one archive per type, whatever the number of recycles
    # (service/metrics.py folds each dead worker's files into the archive).
    others = [n for n in files_after if not any(n.endswith(f"_{pid}.db") for pid in live)]
    assert set(others) <= ARCHIVES, others


def newest_version(model_dir: Path) -> Path:
    return max((p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def model_info(url: str) -> dict[str, set[str]]:
    """{model: versions} that convnet_model_info reports with the value 1."""
    found: dict[str, set[str]] = {}
    for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("convnet_model_info{") and line.endswith(" 1.0"):
            labels = dict(
                part.split("=", 1)
                for part in line[line.index("{") + 1 : line.index("}")].split(",")
            )
            found.setdefault(labels["model"].strip('"'), set()).add(labels["version"].strip('"'))
    return found


def test_replacement_workers_serve_the_pinned_version_until_a_reload(tmp_path):
    """Workers recycled while a new version is being exported, or after it is complete, serve the
    version the master started with: no 503 from a half-written SavedModel, no two versions
    served side by side. SIGHUP moves every worker to the newest complete version."""
    models = tmp_path / "models"
    shutil.copytree(MODELS_DIR, models)
    env = {"CONVNET_MODELS_DIR": str(models), "GUNICORN_MAX_REQUESTS": "5"}

    def versions(srv: GunicornServer, n: int) -> Counter:
        answers = [predict(srv.url) for _ in range(n)]
        return Counter(
            r.json()["version"] if r.status_code == 200 else r.status_code for r in answers
        )

    served = newest_version(models / "mnist")
    old, new = str(served.name), str(int(served.name) + 1)
    with gunicorn(tmp_path, workers=1, env=env) as srv:
        partial = models / "mnist" / new  # what an export or a copy under way looks like
        partial.mkdir()
        shutil.copy(served / "saved_model.pb", partial)
        during = versions(srv, 20)  # 20 requests: 4 recycles
        shutil.rmtree(partial)
        shutil.copytree(served, partial)
        meta_path = partial / "assets.extra" / "metadata.json"
        meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "version": int(new)}))
        complete = versions(srv, 20)
        srv.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while versions(srv, 1) != Counter({new: 1}):
            assert time.monotonic() < deadline, srv.log()[-3000:]
            time.sleep(0.2)
        reloaded = versions(srv, 10)
        info = model_info(srv.url)
        log = srv.log()
    print(f"\nrecycled: during export {dict(during)}, after {dict(complete)}; HUP {dict(reloaded)}")
    assert log.count("Autorestarting worker") >= 6
    assert during == complete == Counter({old: 20})
    assert reloaded == Counter({new: 10})
    # convnet_model_info names what is served now, not what was served before the reload.
    assert info["mnist"] == {new}, info


def test_a_reload_keeps_serving_a_model_whose_new_version_cannot_be_converted(tmp_path):
    """A complete but corrupt new version: SIGHUP must not trade the working version for 503s,
    since Gunicorn stops the old workers as soon as the new ones start."""
    models = tmp_path / "models"
    shutil.copytree(MODELS_DIR, models)
    served = newest_version(models / "mnist")
    new = int(served.name) + 1
    with gunicorn(tmp_path, workers=1, env={"CONVNET_MODELS_DIR": str(models)}) as srv:
        broken = models / "mnist" / str(new)
        shutil.copytree(served, broken)
        meta_path = broken / "assets.extra" / "metadata.json"
        meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "version": new}))
        (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
        first = set(srv.worker_pids())
        srv.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 90
        while set(srv.worker_pids()) & first or srv.ready_workers() < 1:
            assert time.monotonic() < deadline, srv.log()[-3000:]
            time.sleep(0.2)
        answers = [predict(srv.url) for _ in range(10)]
        log = srv.log()
    assert [(r.status_code, r.json().get("version")) for r in answers] == [
        (200, served.name)
    ] * 10, log
    assert "keeping" in log and f"mnist/{new}" in log, log[-3000:]


# --- (e) soak ---------------------------------------------------------------------------------


def test_soak_flat_memory_no_errors(server):
    calls = [
        lambda: predict(server.url, close=False),
        lambda: requests.post(
            f"{server.url}/predict/scenes",
            data=PHOTO,
            headers={"Content-Type": "image/jpeg"},
            timeout=60,
        ),
        lambda: requests.post(
            f"{server.url}/features/mnist?encoding=base64",
            data=DIGIT,
            headers={"Content-Type": "image/png"},
            timeout=60,
        ),
    ]
    counter = iter(range(10**9))
    pids = server.worker_pids()
    samples: list[dict[int, int]] = []
    with Load(lambda: calls[next(counter) % len(calls)](), threads=3) as load:
        started = time.monotonic()
        while time.monotonic() - started < SOAK_SECONDS:
            samples.append({pid: rss(pid) for pid in pids})
            time.sleep(SOAK_SECONDS / 12)
    assert server.worker_pids() == pids, "a worker was replaced during the soak"
    # Growth over the second half of the run (the first half is warm-up: caches, TF arenas).
    mid, end = samples[len(samples) // 2], {pid: rss(pid) for pid in pids}
    growth = {pid: (end[pid] - mid[pid]) / 2**20 for pid in pids}
    print(
        f"\nsoak {SOAK_SECONDS:.0f} s, 3 clients: {load.summary()}; RSS MiB per worker "
        + ", ".join(
            f"{pid}: {samples[0][pid] / 2**20:.0f} -> {mid[pid] / 2**20:.0f} -> {end[pid] / 2**20:.0f}"
            for pid in pids
        )
    )
    assert not load.errors and set(load.outcomes) == {"200"}, (
        dict(load.outcomes),
        load.errors[:5],
        load.resets[:5],
    )
    # "Flat" (docs/hardening.md): measured 0 MiB over the second half of a 60 s soak.
    assert all(g < 4 for g in growth.values()), growth
