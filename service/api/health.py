from __future__ import annotations

from flask import Blueprint, Response, jsonify

from service.api import state

bp = Blueprint("health", __name__)


@bp.get("/livez")
def livez():
    return jsonify({"status": "alive"})


@bp.get("/readyz")
def readyz():
    registry = state().registry
    loaded = {name: str(m.version) for name, m in registry.models.items()}
    if state().draining.is_set():
        return jsonify({"status": "draining", "models": loaded}), 503
    if registry.ready.is_set():
        return jsonify({"status": "ready", "models": loaded})
    if registry.error:
        return jsonify({"status": "failed", "models": loaded, "detail": registry.error}), 503
    return jsonify({"status": "loading", "models": loaded}), 503


@bp.get("/metrics")
def metrics():
    return Response(state().metrics.render(), mimetype="text/plain; version=0.0.4")
