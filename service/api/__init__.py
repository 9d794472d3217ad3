"""HTTP layer: thin blueprints that decode a request, call `service.inference`, and encode."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from flask import current_app

from service.config import Settings
from service.errors import NotFound, NotReady
from service.images import Limits
from service.metrics import Metrics
from service.registry import Model, Registry
from service.versions import Versions


@dataclass
class State:
    """Everything the app owns, at app.extensions['convnet']."""

    settings: Settings
    registry: Registry
    metrics: Metrics
    limits: Limits
    # Versions other than the served ones, loaded on first use (the standard protocols' routes).
    versions: Versions | None = None
    # Set on SIGTERM (see gunicorn.conf.py): /readyz answers 503 while in-flight requests finish.
    draining: threading.Event = field(default_factory=threading.Event)


def state() -> State:
    return current_app.extensions["convnet"]


def ready_registry() -> Registry:
    registry = state().registry
    if not registry.ready.is_set():
        if registry.error:
            raise NotReady("loading the models failed; see /readyz and the server log")
        raise NotReady("models are still loading; retry shortly (see /readyz)")
    return registry


def get_model(name: str) -> Model:
    registry = ready_registry()
    model = registry.get(name)
    if model is None:
        raise NotFound(f"no model named {name!r}; available: {sorted(registry.models)}")
    return model


def get_version(name: str, version: str | None) -> Model:
    """The served model, or another complete version of it on disk (`version` as in the URL)."""
    model = get_model(name)
    versions = state().versions
    if version is None or versions is None:
        return model
    return versions.get(model, version)
