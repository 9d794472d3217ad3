"""`GET /models/<model>/weights`: each weighted layer's kernel and bias (batch norm: scale and
offset), in Keras's layouts, from the weights file written beside the engine (service/weights.py)."""

from __future__ import annotations

import numpy as np
from flask import Blueprint, jsonify, request

from service import codecs, engines, weights
from service.api import get_model, state
from service.errors import ApiError, BadRequest

bp = Blueprint("weights", __name__)
_STORE = weights.WeightStore()


def encode(arr: np.ndarray, encoding: str) -> dict:
    """One parameter array; as PNG, a kernel (kh, kw, in, out) is one tile per (in, out) pair,
    out fastest, and the shape stays the kernel's."""
    flat = arr.reshape(*arr.shape[:2], -1) if arr.ndim == 4 and encoding == "png" else arr
    return {**codecs.encode_array(flat, encoding), "shape": list(arr.shape)}


@bp.get("/models/<model>/weights")
def get_weights(model: str):
    m = get_model(model)
    encoding = request.args.get("encoding", "json")
    if encoding not in codecs.ENCODINGS:
        raise BadRequest(f"unknown encoding {encoding!r}; use one of {', '.join(codecs.ENCODINGS)}")
    # Written with the engine (converted in a subprocess first only under the tensorflow engine).
    engine_file = engines.prepare({m.name: m.path}, state().registry.engine_cache)[m.name]
    try:
        found = _STORE.get(engines.weights_path(engine_file), m.metadata)
    except weights.WeightsError as exc:
        raise ApiError(
            f"the weights of {m.name} cannot be read: {exc}", code="internal", status=500
        ) from exc
    names = weights.select(found, m.metadata, request.args.get("layers"))
    return jsonify(
        weights.body(
            m.name, str(m.version), m.metadata, found, names, lambda a: encode(a, encoding)
        )
    )
