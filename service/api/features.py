from __future__ import annotations

from flask import Blueprint, jsonify, request

from service import codecs, inference
from service.api import get_model, state

bp = Blueprint("features", __name__)


def one_image(endpoint: str, model):
    """The request's one image, decoded and preprocessed for `model` (a batch of one)."""
    s = state()
    # The request itself, not Flask's proxy, whose every attribute read is a context lookup.
    req = request._get_current_object()
    payloads = codecs.images_from_request(req, max_images=1)  # 413 for more, 400 for none
    s.metrics.child(s.metrics.images, endpoint, model.name).observe(1)
    return inference.prepare(model, payloads, s.limits, s.metrics)


@bp.post("/features/<model>")
def features(model: str):
    m = get_model(model)
    layers = inference.select_layers(m, request.args.get("layers"))
    encoding = request.args.get("encoding", "json")
    batch = one_image("/features/<model>", m)
    return jsonify(inference.features(m, batch, layers, encoding, state().metrics))


@bp.post("/gradcam/<model>")
def gradcam(model: str):
    m = get_model(model)
    encoding = request.args.get("encoding", "json")
    batch = one_image("/gradcam/<model>", m)
    return jsonify(
        inference.gradcam(m, batch, request.args.get("class"), encoding, state().metrics)
    )
