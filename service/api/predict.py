from __future__ import annotations

from flask import Blueprint, jsonify, request

from service import codecs, inference
from service.api import get_model, state

bp = Blueprint("predict", __name__)


@bp.post("/predict/<model>")
def predict(model: str):
    m = get_model(model)
    s = state()
    # The request itself, not Flask's proxy, whose every attribute read is a context lookup.
    payloads = codecs.images_from_request(request._get_current_object(), s.settings.max_batch)
    s.metrics.child(s.metrics.images, "/predict/<model>", m.name).observe(len(payloads))
    return jsonify(inference.predict(m, payloads, s.limits, s.metrics))
