"""The real service with one part changed, to measure what that part costs.

    service_without("preprocess"):             decode + preprocess cost nothing
    service_without("preprocess", "metrics"):  ... and no metric is recorded either
    service_with_python_digit():               no C: the digit normalisation in Python, PNGs by Pillow

Run under the project's Gunicorn config by bench/run.py (targets `service+free-prep`,
`service+free-prep+no-metrics` and `service+python-digit`). Everything else is the service
itself: routing, reading the body, the model call, the JSON response. The first two are upper
bounds and the last a baseline. Benchmark-only: nothing here is a way to serve.
"""

from __future__ import annotations

import numpy as np
from flask import Flask

from service import images, inference
from service.app import create_app
from service.config import Settings
from service.metrics import Metrics
from service.registry import Model


class _NoMetric:
    """A metric child that records nothing."""

    def inc(self, *args) -> None:
        pass

    dec = set = observe = inc


def service_without(*stages: str) -> Flask:
    unknown = set(stages) - {"preprocess", "metrics"}
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}")
    # Models loaded before the worker takes a request, so no cell sees a 503.
    app = create_app(Settings.from_env(load_in_background=False))
    if "preprocess" in stages:
        # Each distinct image is decoded and preprocessed once; later requests get that array
        # (still counted in the preprocess histogram, at 0 s): what infinitely fast native
        # preprocessing would give.
        prepare, done = inference.prepare, {}

        def prepared(
            model: Model, payloads: list[bytes], limits: images.Limits, metrics: Metrics
        ) -> np.ndarray:
            key = (model.name, *payloads)
            if key not in done:
                done[key] = prepare(model, payloads, limits, metrics)
            else:
                for _ in payloads:
                    metrics.child(metrics.preprocess, model.name).observe(0.0)
            return done[key]

        inference.prepare = prepared  # the blueprints look it up at call time
    if "metrics" in stages:
        for hooks in (
            app.before_request_funcs,
            app.after_request_funcs,
            app.teardown_request_funcs,
        ):
            hooks.clear()  # the request count, latency, in-flight and body-size hooks
        app.extensions["convnet"].metrics.child = lambda metric, *labels: _NoMetric()
    return app


def service_with_python_digit() -> Flask:
    """The service as a compiler-less install serves it: the Python reference of the digit
    normalisation instead of its C version, and every PNG through Pillow (no C unfilter)."""
    app = create_app(Settings.from_env(load_in_background=False))
    # Both are looked up at call time.
    images.normalize_digit = images.normalize_digit_python
    images.unfilter_png = None
    return app
