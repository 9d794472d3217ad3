"""`POST /convolve`: a small kernel applied to a small grey image, as a conv layer applies one
filter to one channel (the explorer's "try the seed's filters")."""

from __future__ import annotations

import numpy as np
from flask import Blueprint, jsonify, request
from pydantic import ValidationError

from service import codecs
from service.convolve import conv2d
from service.errors import BadRequest, UnsupportedMediaType
from service.schemas import ConvolveRequest

bp = Blueprint("convolve", __name__)


def _rectangular(rows: list[list[float]], what: str) -> np.ndarray:
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise BadRequest(f"{what}: every row must have the same length (got {sorted(widths)})")
    return np.array(rows, np.float64)


@bp.post("/convolve")
def convolve():
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("send the image and kernel as application/json")
    try:
        body = ConvolveRequest.model_validate_json(codecs.request_body(request))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise BadRequest(f"invalid JSON body: {problems}") from None
    image = _rectangular(body.image, "image")
    kernel = _rectangular(body.kernel, "kernel")
    if body.padding == "valid" and (
        kernel.shape[0] > image.shape[0] or kernel.shape[1] > image.shape[1]
    ):
        raise BadRequest(f"kernel {list(kernel.shape)} is larger than image {list(image.shape)}")
    out = conv2d(image[..., None], kernel[..., None, None], padding=body.padding)[..., 0]
    return jsonify(
        {
            "shape": list(out.shape),
            "encoding": "json",
            "data": out.tolist(),
            "min": float(out.min()),
            "max": float(out.max()),
        }
    )
