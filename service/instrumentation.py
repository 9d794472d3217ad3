"""Request metrics: count, latency, in flight and body size for every request, with bounded labels."""

from __future__ import annotations

import time

from flask import Flask, Request, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from service.metrics import Metrics
from service.registry import find_versions


def _route(app: Flask, req: Request) -> tuple[str, dict]:
    """The matched rule and its arguments; for a wrong method on a route (405), that route."""
    if req.url_rule is not None:
        return req.url_rule.rule, req.view_args or {}
    exc = req.routing_exception
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        try:
            rule, args = app.url_map.bind_to_environ(req.environ).match(
                method=next(iter(exc.valid_methods)), return_rule=True
            )
            return rule.rule, args
        except HTTPException:
            pass
    return "unmatched", {}


def queued_seconds(header: str | None, now: float) -> float | None:
    """The wait since the proxy's `X-Request-Start: t=<unix seconds>` (nginx's `${msec}`; also
    milliseconds or microseconds, as other proxies send it), or None without a usable one."""
    if not header:
        return None
    try:
        started = float(header.removeprefix("t="))
    except ValueError:
        return None
    for scale in (1.0, 1e3, 1e6):  # seconds, ms, us since the epoch: told apart by size
        if started / scale < 1e10:
            started /= scale
            break
    waited = now - started
    # A clock step between the proxy's host and ours, or a forged header: not a wait.
    return max(waited, 0.0) if -1.0 < waited < 3600.0 else None


def _labels(app: Flask, req: Request, on_disk: frozenset[str]) -> tuple[str, str]:
    # The route's rule, never the raw path, and only model names we serve: a random URL or an
    # unknown model name creates no new series.
    endpoint, args = _route(app, req)
    model = args.get("model", "")
    if model and model not in on_disk and model not in app.extensions["convnet"].registry.models:
        model = "unknown"
    return endpoint, model


# Where the hooks keep a request's start and whether it counts in flight: WSGI environ keys, as
# middleware keeps per-request state, read through the request object itself. Each attribute
# read through Flask's `request` or `g` proxy costs a context lookup (about 0.7 us): the hooks
# read some ten, on every request.
STARTED = "convnet.started"
IN_FLIGHT = "convnet.in_flight"


def init_app(app: Flask, metrics: Metrics) -> None:
    # The models on disk, known before they load: a request answered 503 while they load keeps
    # its model's name instead of counting as "unknown".
    on_disk = frozenset(find_versions(app.extensions["convnet"].settings.models_dir))

    @app.before_request
    def _start() -> None:
        req = request._get_current_object()
        environ = req.environ
        environ[STARTED] = time.perf_counter()
        # With sync workers a request waits in the listen queue, where nothing in the app sees it.
        waited = queued_seconds(environ.get("HTTP_X_REQUEST_START"), time.time())
        if waited is not None:
            metrics.queue.observe(waited)
        # A scrape is not traffic: counting it would make in-flight read 1 on every idle scrape.
        if req.url_rule is None or req.url_rule.rule != "/metrics":
            metrics.in_flight.inc()
            environ[IN_FLIGHT] = True

    @app.after_request
    def _record(response):
        req = request._get_current_object()
        endpoint, model = _labels(app, req, on_disk)
        if endpoint != "/metrics":
            elapsed = time.perf_counter() - req.environ.get(STARTED, time.perf_counter())
            status = str(response.status_code)
            metrics.child(metrics.requests, endpoint, model, status).inc()
            metrics.child(metrics.latency, endpoint, model, status).observe(elapsed)
            body_bytes = req.content_length
            if body_bytes:
                metrics.child(metrics.body_bytes, endpoint).observe(body_bytes)
        return response

    @app.teardown_request
    def _finish(exc) -> None:
        if request.environ.pop(IN_FLIGHT, False):
            metrics.in_flight.dec()
