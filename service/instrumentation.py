"""Request metrics: count, latency, in flight and body size for every request, with bounded labels."""

from __future__ import annotations

import time

from flask import Flask, g, request

from service.metrics import Metrics


def _labels(app: Flask) -> tuple[str, str]:
    # The route's rule, never the raw path, and only model names we serve: a random URL or an
    # unknown model name creates no new series.
    endpoint = request.url_rule.rule if request.url_rule else "unmatched"
    model = (request.view_args or {}).get("model", "")
    if model and model not in app.extensions["convnet"].registry.models:
        model = "unknown"
    return endpoint, model


def init_app(app: Flask, metrics: Metrics) -> None:
    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()
        metrics.in_flight.inc()
        g.in_flight = True

    @app.after_request
    def _record(response):
        endpoint, model = _labels(app)
        if endpoint != "/metrics":
            elapsed = time.perf_counter() - g.get("started", time.perf_counter())
            metrics.requests.labels(endpoint, model, str(response.status_code)).inc()
            metrics.latency.labels(endpoint, model).observe(elapsed)
            if request.content_length:
                metrics.body_bytes.labels(endpoint).observe(request.content_length)
        return response

    @app.teardown_request
    def _finish(exc) -> None:
        if g.pop("in_flight", False):
            metrics.in_flight.dec()
