"""The served version's training snapshots: `GET /models/<model>/snapshots` lists them with the
loss history, `POST /snapshots/<model>` runs one image through each (service/snapshots.py)."""

from __future__ import annotations

from flask import Blueprint, jsonify

from service import snapshots
from service.api import get_model
from service.api.features import one_image
from service.errors import NotFound
from service.registry import Model

bp = Blueprint("snapshots", __name__)
_STORE = snapshots.SnapshotStore()


def _info(entry: dict) -> dict:
    return {k: entry[k] for k in ("name", "label", "epoch", "step")}


@bp.get("/models/<model>/snapshots")
def list_snapshots(model: str):
    m = get_model(model)
    found = _STORE.get(m.path)
    return jsonify(
        {
            "model": m.name,
            "version": str(m.version),
            "snapshots": [_info(e) for e in found.entries],
            "history": found.index["history"] if found.index else {},
        }
    )


def _prediction(m: Model, probabilities: list[float]) -> dict:
    top = probabilities.index(max(probabilities))
    return {
        "label": m.classes[top],
        "confidence": probabilities[top],
        "probabilities": dict(zip(m.classes, probabilities, strict=True)),
    }


@bp.post("/snapshots/<model>")
def run_snapshots(model: str):
    m = get_model(model)
    found = _STORE.get(m.path)
    if not found.entries:
        raise NotFound(
            f"model {m.name} version {m.version} was exported without training snapshots"
        )
    batch = one_image("/snapshots/<model>", m)
    outputs = found.probabilities(batch)
    return jsonify(
        {
            "model": m.name,
            "version": str(m.version),
            "snapshots": [
                {**_info(e), "prediction": _prediction(m, out[0].tolist())}
                for e, out in zip(found.entries, outputs, strict=True)
            ],
        }
    )
