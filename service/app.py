"""create_app(): configuration in, app out. Nothing happens at import time."""

from __future__ import annotations

import logging

from flask import Flask

from service import errors, images, instrumentation
from service.api import (
    State,
    convolve,
    docs,
    explorer,
    features,
    health,
    models,
    predict,
    snapshots,
    swagger,
    tfserving,
    v2,
    weights,
)
from service.config import Settings
from service.json_provider import OrjsonProvider
from service.metrics import Metrics
from service.registry import Registry
from service.versions import Versions

# The standard protocols beside the native API: one adapter module each (PREFIX, bp).
PROTOCOLS = (v2, tfserving)


def _record_call(metrics: Metrics, model: str):
    def record(images: int, seconds: float) -> None:
        metrics.child(metrics.inference, model, "predict").observe(seconds)
        metrics.child(metrics.batch_size, model, "predict").observe(images)

    return record


def create_app(settings: Settings | None = None, **overrides) -> Flask:
    settings = settings or Settings.from_env(**overrides)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = Flask(__name__, static_folder="explorer", static_url_path="/explorer")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    # Werkzeug's multipart limits: parts beyond a batch (+ a few form fields) are refused.
    app.config["MAX_FORM_PARTS"] = settings.max_batch + 8
    # Text fields (the API reads none) at most 96 KiB. Werkzeug also checks this limit against
    # its unparsed read buffer, one 64 KiB read plus the tail of a boundary or part header, so it
    # must stay well above 64 KiB: at 64 KiB, multipart bodies past about 64 KB were refused.
    app.config["MAX_FORM_MEMORY_SIZE"] = 96 * 1024
    app.json = OrjsonProvider(app)  # keeps class and layer order; fast on /features' 90 KB

    images.register_plugins()
    if images.normalize_digit is images.normalize_digit_python:
        logging.getLogger(__name__).warning(
            "service._digit was not built (no C compiler at install): digits are normalised "
            "by the Python reference, with the same answers and about 15 % fewer requests/s"
        )
    metrics = Metrics()
    registry = Registry(
        settings.models_dir,
        engine=settings.engine,
        engine_cache=settings.engine_cache,
        threads=settings.tf_threads,
    )
    app.extensions["convnet"] = State(
        settings=settings,
        registry=registry,
        metrics=metrics,
        limits=images.Limits(
            max_pixels=settings.max_pixels, max_request_pixels=settings.max_request_pixels
        ),
        versions=Versions(registry),
    )

    # The standard protocols answer errors in their own body, {"error": "<message>"}.
    errors.register(app, formats={p.PREFIX: errors.message_body for p in PROTOCOLS})
    instrumentation.init_app(app, metrics)
    for bp in (
        predict.bp,
        features.bp,
        models.bp,
        weights.bp,
        convolve.bp,
        snapshots.bp,
        health.bp,
        docs.bp,
        swagger.bp,
        explorer.bp,
    ):
        app.register_blueprint(bp)
    for protocol in PROTOCOLS:
        app.register_blueprint(protocol.bp)

    def loaded() -> None:
        for m in registry.models.values():
            metrics.child(metrics.model_info, m.name, str(m.version)).set(1)
            if settings.batching:
                m.enable_batching(
                    settings.max_batch_size,
                    settings.batch_timeout_micros / 1e6,
                    on_call=_record_call(metrics, m.name),
                )
        metrics.worker_ready.set(1)

    if settings.load_in_background:
        registry.start_loading(on_ready=loaded)
    else:
        registry.load_all(on_ready=loaded)
    metrics.start_sampler()
    return app
