from __future__ import annotations

from flask import Blueprint, jsonify

from service.api import get_model, ready_registry
from service.registry import Model

bp = Blueprint("models", __name__)


def model_info(m: Model) -> dict:
    md = m.metadata
    return {
        "name": m.name,
        "version": str(m.version),
        "description": md.get("description"),
        "classes": m.classes,
        "input": md["input"],
        "preprocessing": m.preprocessing,
        "layers": m.layers,
        "parameters": md.get("parameters"),
        "signatures": md.get("signatures"),
        "evaluation": md.get("evaluation"),
        "calibration": _without_bins(md.get("calibration")),
        "uncertainty": md.get("uncertainty"),
        "training": md.get("training"),
    }


@bp.get("/models")
def list_models():
    registry = ready_registry()
    return jsonify({"models": [model_info(m) for m in registry.models.values()]})


@bp.get("/models/<model>")
def get_one(model: str):
    return jsonify(model_info(get_model(model)))


def _without_bins(calibration: dict | None) -> dict | None:
    """The calibration figures, without the reliability diagram's per-bin rows (the report's
    reliability.png draws them)."""
    if calibration is None:
        return None
    return {k: v for k, v in calibration.items() if not k.startswith("reliability_")}
