"""The one Gunicorn configuration: used by `convnet-service serve`, the tests and the Dockerfile.

Settings come from GUNICORN_* / CONVNET_* environment variables so the CLI and the container
change them without editing this file.
"""

import os
import shutil
import tempfile

wsgi_app = "service.app:create_app()"
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
# TensorFlow is not fork-safe: every worker imports the app and loads the models after the fork.
preload_app = False
workers = int(os.environ.get("GUNICORN_WORKERS", os.cpu_count() or 1))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
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


def on_starting(server):
    # prometheus-client multiprocess mode: a fresh directory per server start, set before any
    # worker imports prometheus_client.
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path, exist_ok=True)
    else:
        path = tempfile.mkdtemp(prefix="convnet-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    server.log.info("prometheus multiprocess dir: %s", path)


def child_exit(server, worker):
    # Live gauges of a dead worker are dropped; its counters and histograms stay in the files.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
