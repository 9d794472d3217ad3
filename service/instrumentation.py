"""Request metrics: count, latency, in flight and body size for every request, with bounded labels."""

from __future__ import annotations

import time

from flask import Flask, g, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from service.metrics import Metrics
from service.registry import find_versions


def _route(app: Flask) -> tuple[str, dict]:
    """The matched rule and its arguments; for a wrong method on a route (405), that route."""
    if request.url_rule is not None:
        return request.url_rule.rule, request.view_args or {}
    exc = request.routing_exception
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        try:
            rule, args = app.url_map.bind_to_environ(request.environ).match(
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


def _labels(app: Flask, on_disk: frozenset[str]) -> tuple[str, str]:
    # The route's rule, never the raw path, and only model names we serve: a random URL or an
    # unknown model name creates no new series.
    endpoint, args = _route(app)
    model = args.get("model", "")
    if model and model not in on_disk and model not in app.extensions["convnet"].registry.models:
        model = "unknown"
    return endpoint, model


def init_app(app: Flask, metrics: Metrics) -> None:
    # The models on disk, known before they load: a request answered 503 while they load keeps
    # its model's name instead of counting as "unknown".
    on_disk = frozenset(find_versions(app.extensions["convnet"].settings.models_dir))

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()
        # With sync workers a request waits in the listen queue, where nothing in the app sees it.
        waited = queued_seconds(request.headers.get("X-Request-Start"), time.time())
        if waited is not None:
            metrics.queue.observe(waited)
        # A scrape is not traffic: counting it would make in-flight read 1 on every idle scrape.
        if request.url_rule is None or request.url_rule.rule != "/metrics":
            metrics.in_flight.inc()
            g.in_flight = True

    @app.after_request
    def _record(response):
        endpoint, model = _labels(app, on_disk)
        if endpoint != "/metrics":
            elapsed = time.perf_counter() - g.get("started", time.perf_counter())
            status = str(response.status_code)
            metrics.child(metrics.requests, endpoint, model, status).inc()
            metrics.child(metrics.latency, endpoint, model, status).observe(elapsed)
            if request.content_length:
                metrics.child(metrics.body_bytes, endpoint).observe(request.content_length)
        return response

    @app.teardown_request
    def _finish(exc) -> None:
        if g.pop("in_flight", False):
            metrics.in_flight.dec()
