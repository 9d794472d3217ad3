"""The one Gunicorn configuration: used by `convnet-service serve`, the tests and the Dockerfile.

Settings come from GUNICORN_* / CONVNET_* environment variables so the CLI and the container
change them without editing this file.
"""

import os

from service.config import Settings, usable_cores

# The server hooks, in an importable and tested module; Gunicorn reads them from this file.
from service.gunicorn_hooks import (  # noqa: F401
    child_exit,
    on_exit,
    on_reload,
    on_starting,
    post_fork,
    post_worker_init,
    pre_fork,
)

wsgi_app = "service.app:create_app()"
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
# Model runtimes are not fork-safe: every worker imports the app and loads the models after the fork.
preload_app = False
# One per usable core: the CPU affinity and a container's CPU quota, not the host's cores.
workers = int(os.environ.get("GUNICORN_WORKERS") or usable_cores())
# sync: one request at a time per process; the kernel queues the rest in FIFO order. It measured
# the fastest for a lone client and the lowest p99 at every load; batching serves more under load
# (docs/performance.md). Like every sync server it wants a buffering proxy in front against slow
# clients (deploy/nginx). Adaptive batching groups concurrent requests inside a worker, so it
# takes threads: with it, gthread is this project's, which spreads kept-alive connections over
# the workers (service/workers.py); without it, Gunicorn's own.
_batching = Settings.from_env().batching
_requested = os.environ.get("GUNICORN_WORKER_CLASS") or ("gthread" if _batching else "sync")
worker_class = (
    "service.workers.BalancedThreadWorker" if _batching and _requested == "gthread" else _requested
)
# Threads per gthread worker (Gunicorn itself turns sync with several threads into gthread).
threads = int(os.environ.get("GUNICORN_THREADS") or (1 if _requested == "sync" else 4))
# A sync worker is silent to the master while it serves: the slowest request is a version's first
# one, which converts it (some seconds).
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
