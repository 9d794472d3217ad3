"""The service's Gunicorn server hooks, named by service/gunicorn.conf.py.

The master checks the settings, picks and converts the model versions and prepares the metrics
directory before it forks; the workers drain on SIGTERM and report their models. What touches
Gunicorn's internals is in service/workers.py; these hooks use Gunicorn's documented hook API.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from service import workers
from service.config import Settings


def on_starting(server: Any) -> None:
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
    _prepare_metrics_dir(server)
    workers.share_board(server)
    server.convnet_stops = workers.StopNotice()
    workers.announce_stops(server, server.convnet_stops)
    # Every worker, replacements included, serves these versions until the next start or HUP.
    pin_versions(settings.models_dir, models)
    _prepare_engines(server, settings, models)


def _prepare_metrics_dir(server: Any) -> None:
    """prometheus-client's multiprocess mode: a fresh directory per server start, named in the
    environment before any worker imports prometheus_client (its values class is chosen then)."""
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


def on_reload(server: Any) -> None:
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


def on_exit(server: Any) -> None:
    # A directory this config made up (no PROMETHEUS_MULTIPROC_DIR given) goes with the server;
    # one the operator named stays, for a look after the stop, and is emptied on the next start.
    path = getattr(server, "convnet_own_metrics_dir", None)
    if path:
        shutil.rmtree(path, ignore_errors=True)


def pre_fork(server: Any, worker: Any) -> None:
    workers.take_board_slot(server, worker)
    worker.convnet_stops = server.convnet_stops


def child_exit(server: Any, worker: Any) -> None:
    workers.free_board_slot(server, worker)
    # Live gauges of a dead worker are dropped; its counters and histograms are kept, folded into
    # one archive file per type so the directory does not grow with every recycled worker.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        from service.metrics import archive_dead_worker

        archive_dead_worker(path, worker.pid)


def post_fork(server: Any, worker: Any) -> None:
    workers.patch_worker_io()


def post_worker_init(worker: Any) -> None:
    """SIGTERM drains (service/workers.py, `install_drain`): /readyz answers 503 at once, the
    worker keeps serving for CONVNET_DRAIN_SECONDS (default 0), then, when the whole server stops,
    until no connection is left queued, and then finishes its in-flight requests and exits."""
    state = getattr(workers.loaded_app(worker), "extensions", {}).get("convnet")
    if state is None:  # another WSGI app under this config (the benchmark's baselines)
        return
    workers.install_drain(
        worker, state.draining, state.settings.drain_seconds, worker.convnet_stops
    )
    # A worker takes no connection before its models are loaded: otherwise it would answer its
    # share of traffic 503 while another could serve it (a cold start's /readyz turns 200 when
    # one worker is ready). Only the very first accepts at once, so /livez and /readyz answer
    # (503 "loading") during a cold start.
    registry = state.registry
    workers.accept_once_loaded(worker, lambda: registry.ready.wait(1.0) or registry.error)
