"""create_app(): configuration in, app out. Nothing happens at import time."""

from __future__ import annotations

import logging

from flask import Flask

from service import errors, images, instrumentation
from service.api import State, docs, explorer, features, health, models, predict
from service.config import Settings
from service.metrics import Metrics
from service.registry import Registry


def create_app(settings: Settings | None = None, **overrides) -> Flask:
    settings = settings or Settings.from_env(**overrides)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = Flask(__name__, static_folder="explorer", static_url_path="/explorer")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    # Werkzeug's multipart limits: parts beyond a batch (+ a few form fields) are refused.
    app.config["MAX_FORM_PARTS"] = settings.max_batch + 8
    app.config["MAX_FORM_MEMORY_SIZE"] = 64 * 1024
    app.json.sort_keys = False  # keep class order and layer order as the model defines them

    images.register_plugins()
    metrics = Metrics()
    registry = Registry(settings.models_dir)
    app.extensions["convnet"] = State(
        settings=settings,
        registry=registry,
        metrics=metrics,
        limits=images.Limits(max_pixels=settings.max_pixels),
    )

    errors.register(app)
    instrumentation.init_app(app, metrics)
    for bp in (predict.bp, features.bp, models.bp, health.bp, docs.bp, explorer.bp):
        app.register_blueprint(bp)

    def loaded() -> None:
        for m in registry.models.values():
            metrics.model_info.labels(m.name, str(m.version)).set(1)
        metrics.worker_ready.set(1)

    if settings.load_in_background:
        registry.start_loading(settings.tf_threads, on_ready=loaded)
    else:
        registry.load_all(settings.tf_threads)
        loaded()
    metrics.start_sampler()
    return app
