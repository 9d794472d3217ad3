"""The one Gunicorn configuration: used by `convnet-service serve`, the tests and the Dockerfile.

Settings come from GUNICORN_* / CONVNET_* environment variables so the CLI and the container
change them without editing this file.
"""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from service.config import Settings, usable_cores

wsgi_app = "service.app:create_app()"
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
# TensorFlow is not fork-safe: every worker imports the app and loads the models after the fork.
preload_app = False
# One per usable core: the CPU affinity and a container's CPU quota, not the host's cores.
workers = int(os.environ.get("GUNICORN_WORKERS") or usable_cores())
# sync: one request at a time per process; the kernel queues the rest in FIFO order. It measured
# the fastest for a lone client and the lowest p99 at every load; batching serves more under load
# (README, Performance). Like every sync server it wants a buffering proxy in front against slow
# clients (deploy/nginx). Adaptive batching groups concurrent requests inside a worker, so it
# takes threads.
_requested = os.environ.get("GUNICORN_WORKER_CLASS") or (
    "gthread" if Settings.from_env().batching else "sync"
)
# Threads per gthread worker.
threads = int(os.environ.get("GUNICORN_THREADS") or (4 if _requested == "gthread" else 1))
# gthread here is Gunicorn's, with kept-alive connections spread over the workers by how many each
# holds (service/workers.py); Gunicorn itself would turn sync with several threads into gthread.
THREADED_WORKER = "service.workers.BalancedThreadWorker"
worker_class = (
    THREADED_WORKER
    if _requested == "gthread" or (_requested == "sync" and threads > 1)
    else _requested
)
# A sync worker is silent to the master while it serves: the first Grad-CAM loads TensorFlow.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
keepalive = 5
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", "0"))
# Request line and header limits (Gunicorn answers 400/431-style errors itself beyond these).
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")
# Heartbeat files on tmpfs, not a possibly slow or read-only disk.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# No runtime control socket ($HOME/.gunicorn/gunicorn.ctl): nothing may change a running server,
# and servers started side by side (tests, benchmark) must not share one.
control_socket_disable = True


def on_starting(server):
    from service.registry import find_versions, pin_versions

    settings = Settings.from_env()
    if settings.drain_seconds >= server.cfg.graceful_timeout:
        # The worker would be killed mid-drain, its in-flight requests with it.
        raise RuntimeError(
            f"CONVNET_DRAIN_SECONDS ({settings.drain_seconds:g}) must be shorter than "
            f"GUNICORN_GRACEFUL_TIMEOUT ({server.cfg.graceful_timeout})"
        )
    models = find_versions(settings.models_dir)
    if not models:
        # A mistyped models path would otherwise serve 503s forever: refuse to start. Gunicorn
        # prints a RuntimeError from here as one "Error:" line and exits 1.
        raise RuntimeError(
            f"no SavedModel under {settings.models_dir.resolve()}/<name>/<version>/ "
            "(set CONVNET_MODELS_DIR or --models-dir)"
        )
    # prometheus-client multiprocess mode: a fresh directory per server start, set before any
    # worker imports prometheus_client.
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        # The operator's folder: only prometheus-client's own files go (a last run's values),
        # never the folder or anything else in it.
        os.makedirs(path, exist_ok=True)
        for stale in Path(path).glob("*.db"):
            stale.unlink(missing_ok=True)
    else:
        path = tempfile.mkdtemp(prefix="convnet-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
        server.convnet_own_metrics_dir = path  # ours to remove in on_exit
    server.log.info("prometheus multiprocess dir: %s", path)
    from service.workers import BalancedThreadWorker, ConnectionBoard

    if issubclass(server.worker_class, BalancedThreadWorker):
        server.convnet_connection_board = ConnectionBoard()  # shared with every worker forked
    # Every worker, replacements included, serves these versions until the next start or HUP.
    pin_versions(settings.models_dir, models)
    _prepare_engines(server, settings, models)


def on_reload(server):
    # SIGHUP: new workers with the newest complete versions on disk; Gunicorn then stops the old.
    from service.registry import find_versions, pin_versions, served_versions

    settings = Settings.from_env()
    models = find_versions(settings.models_dir)
    if not models:
        server.log.error(
            "reload: no SavedModel under %s; keeping the versions served", settings.models_dir
        )
        return
    if settings.engine == "litert":
        models = _convertible(server, settings, models, served_versions(settings.models_dir))
    server.log.info("reload: serving %s", ", ".join(str(p) for p in models.values()))
    pin_versions(settings.models_dir, models)


def _convertible(server, settings, models, served):
    """`models`, but a new version that fails to convert is not served: the model keeps the
    version it has (as TF Serving does), since the old workers stop as soon as the new start."""
    from service.engines import prepare

    try:
        prepare(models, settings.engine_cache)
        return models
    except Exception as exc:
        server.log.warning("reload: engine preparation failed: %s", exc)
    kept = {}
    for name, path in models.items():
        try:
            prepare({name: path}, settings.engine_cache)
            kept[name] = path
        except Exception as exc:
            old = served.get(name)
            if old is None or old == path.resolve():
                kept[name] = path  # nothing else to serve: its workers report the failure
            else:
                server.log.error("reload: keeping %s for %s: %s failed: %s", old, name, path, exc)
                kept[name] = old
    return kept


def _prepare_engines(server, settings, models):
    # Convert each SavedModel to its LiteRT engine once, here in the master before the fork, so
    # that workers start fast and never import TensorFlow (see service/engines.py). Workers redo
    # any conversion that fails here, and /readyz reports what went wrong.
    from service.engines import prepare

    if settings.engine != "litert":
        return
    try:
        files = prepare(models, settings.engine_cache)
        server.log.info("LiteRT engines ready: %s", ", ".join(str(f) for f in files.values()))
    except Exception as exc:
        server.log.warning("engine preparation failed: %s", exc)


def on_exit(server):
    # A directory this config made up (no PROMETHEUS_MULTIPROC_DIR given) goes with the server;
    # one the operator named stays, for a look after the stop, and is emptied on the next start.
    path = getattr(server, "convnet_own_metrics_dir", None)
    if path:
        shutil.rmtree(path, ignore_errors=True)


def pre_fork(server, worker):
    # A slot on the connection board for the worker about to be forked (service/workers.py).
    board = getattr(server, "convnet_connection_board", None)
    if board is not None:
        worker.board = board
        worker.board_slot = board.free_slot({w.board_slot for w in server.WORKERS.values()})


def child_exit(server, worker):
    board = getattr(server, "convnet_connection_board", None)
    if board is not None and worker.board_slot is not None:
        board.clear(worker.board_slot)  # a worker killed outright could not say it stopped
    # Live gauges of a dead worker are dropped; its counters and histograms are kept, folded into
    # one archive file per type so the directory does not grow with every recycled worker.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        from service.metrics import archive_dead_worker

        archive_dead_worker(path, worker.pid)


def _json_write_error(sock, status_int, reason, mesg):
    """Gunicorn's own errors (request line or headers too long, bad chunking, ...) as our JSON.

    Gunicorn answers those before the app sees the request, with an HTML page; the API promises
    JSON for every error, so workers send the same body the app would.
    """
    import json

    from gunicorn import util

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


def _close_after_response(linger):
    """Gunicorn's close, without waiting for the client to hang up when nothing is left unread.

    Gunicorn's `close_graceful` half-closes, then reads until the client closes its side, for up
    to 2 s. That wait exists to drain request bytes the app never read: closing a socket with
    unread data sends a reset, which can destroy the response before the client reads it. But a
    sync worker serves nothing else meanwhile, so a client that reads its response and keeps the
    socket open (an idle keep-alive pool, or on purpose) holds a worker for 2 s per request;
    tests/test_faults.py measured it. When no unread byte is waiting, a plain close cannot
    reset anything, so the worker closes at once; otherwise Gunicorn's drain runs as before.
    """
    import socket

    def close(sock, *args, **kwargs):
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


def post_fork(server, worker):
    from gunicorn import util

    util.write_error = _json_write_error
    util.close_graceful = _close_after_response(util.close_graceful)


def post_worker_init(worker):
    """SIGTERM drains: /readyz answers 503 at once, then (after CONVNET_DRAIN_SECONDS, default 0)
    the worker stops accepting and finishes its in-flight requests, as Gunicorn always does.

    A load balancer polling /readyz sees the worker leave before its listener goes; with a drain
    delay shorter than graceful_timeout, connections arriving meanwhile are still served.
    """
    import signal
    import threading

    stop = signal.getsignal(signal.SIGTERM)  # Gunicorn's graceful stop (worker.handle_exit)
    state = getattr(worker.wsgi, "extensions", {}).get("convnet")
    if state is None:  # another WSGI app under this config (the benchmark's baselines)
        return
    delay = state.settings.drain_seconds

    def stop_later(sig):
        stop(sig, None)
        # Outside a signal handler nothing wakes the worker: an idle sync worker would sit in
        # select() for timeout/2 and be killed at graceful_timeout. Its wake-up pipe does it.
        with contextlib.suppress(OSError):
            os.write(worker.PIPE[1], b"\0")

    def drain(sig, frame):
        if state.draining.is_set():
            return
        state.draining.set()
        worker.log.info("draining: /readyz answers 503; stopping in %.1f s", delay)
        if delay > 0:
            threading.Timer(delay, stop_later, (sig,)).start()
        else:
            stop(sig, frame)

    signal.signal(signal.SIGTERM, drain)

    # A replacement worker (after max_requests recycling or a crash) takes no connection before
    # its models are loaded: otherwise it would answer its share of traffic 503 while the other
    # workers could serve it. The first workers start accepting at once, so /livez and /readyz
    # answer (503 "loading") during a cold start.
    if worker.age > worker.cfg.workers:
        registry = state.registry
        while not registry.ready.wait(1.0) and registry.error is None and worker.alive:
            worker.notify()  # the master's heartbeat: loading is not hanging
