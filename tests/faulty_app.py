"""The real app with one planted fault, for tests/test_internal_error.py: the scenes engine fails
on an all-white image (every input value 1.0), as a broken engine would; other images work."""

from __future__ import annotations

from flask import Flask

from service.app import create_app
from service.config import Settings


def create() -> Flask:
    app = create_app(Settings.from_env(load_in_background=False))
    model = app.extensions["convnet"].registry.get("scenes")
    predict = model.engine.predict

    def failing(batch):
        if batch.min() >= 1.0:
            raise RuntimeError("planted engine failure")
        return predict(batch)

    model.engine.predict = failing
    return app
