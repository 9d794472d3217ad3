"""Wire formats: image bytes out of a request body, arrays into response encodings.

Requests carry images in one of three ways:
- the raw image as the body, with an `image/*` (or `application/octet-stream`) Content-Type;
- `multipart/form-data` with one or more files in the field `image`;
- JSON `{"images": ["<base64>" | "data:image/...;base64,<base64>", ...]}`.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np
from flask import Request
from PIL import Image
from pydantic import ValidationError

from service.errors import BadRequest, TooLarge, UnsupportedMediaType
from service.schemas import ImagesRequest

ENCODINGS = ("json", "base64", "png")


def _decode_base64(text: str, index: int) -> bytes:
    return decode_base64(text, f"images[{index}]")


def decode_base64(text: str, where: str) -> bytes:
    """An image sent as text: base64 or a base64 data URL; `where` names it in errors."""
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or not header.lower().endswith(";base64"):  # case-blind, as WHATWG says
            raise BadRequest(f"{where}: a data URL must be 'data:<type>;base64,<data>'")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"{where}: not valid base64 ({exc})") from exc


def request_body(request: Request) -> bytes:
    """The whole body, never silently cut short.

    A chunked body (no Content-Length) is cut at MAX_CONTENT_LENGTH by Werkzeug without an error,
    which would pass a truncated image on; one more read past the limit raises its 413 instead.
    """
    data = request.get_data(cache=False)
    limit = request.max_content_length
    if limit is not None and request.content_length is None and len(data) >= limit:
        request.stream.read(1)  # raises RequestEntityTooLarge when more was sent
    return data


def images_from_request(request: Request, max_images: int) -> list[bytes]:
    """The image payloads of a request, in order; raises ApiError for anything malformed."""
    mimetype = request.mimetype
    if mimetype.startswith("image/") or mimetype == "application/octet-stream":
        images = [request_body(request)]
    elif mimetype == "multipart/form-data":
        files = request.files.getlist("image")
        if not files:
            fields = sorted(set(request.files) | set(request.form))
            raise BadRequest(f"multipart body has no file field 'image' (fields: {fields})")
        if len(files) > max_images:
            raise TooLarge(f"{len(files)} images; at most {max_images} per request")
        images = [f.read() for f in files]
    elif mimetype == "application/json":
        raw = request_body(request)
        try:
            body = ImagesRequest.model_validate_json(raw)
        except ValidationError as exc:
            errors = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
            )
            raise BadRequest(f"invalid JSON body: {errors}") from None
        if len(body.images) > max_images:
            raise TooLarge(f"{len(body.images)} images; at most {max_images} per request")
        images = [_decode_base64(text, i) for i, text in enumerate(body.images)]
    elif not mimetype:
        raise UnsupportedMediaType(
            "missing Content-Type; send image/*, multipart/form-data or application/json"
        )
    else:
        # curl's --data-binary sends a form Content-Type unless told otherwise: say so.
        hint = (
            " (curl: add -H 'Content-Type: image/png')" if mimetype.endswith("urlencoded") else ""
        )
        raise UnsupportedMediaType(
            f"Content-Type {mimetype!r} is not accepted; "
            f"send image/*, multipart/form-data or application/json{hint}"
        )
    if not images or (len(images) == 1 and not images[0]):
        raise BadRequest("the request holds no image")
    return images


def encode_array(arr: np.ndarray, encoding: str) -> dict[str, Any]:
    """One activation tensor (without the batch axis) in the requested encoding."""
    arr = np.asarray(arr, dtype=np.float32)
    out: dict[str, Any] = {"shape": list(arr.shape), "encoding": encoding}
    if encoding == "json":
        # Rounded in float64: a float32 rounded to 6 decimals still prints 17 digits.
        out["data"] = np.round(arr.astype(np.float64), 6).tolist()
    elif encoding == "base64":
        out["dtype"] = "float32"
        out["byteorder"] = "little"
        # The buffer itself, no copy unless the bytes need reordering (tobytes() would copy).
        out["data"] = base64.b64encode(np.ascontiguousarray(arr, "<f4")).decode("ascii")
    elif encoding == "png":
        grid, (rows, cols) = feature_grid(arr)
        out["min"], out["max"] = float(arr.min()), float(arr.max())
        out["grid"] = {"rows": rows, "cols": cols}
        out["media_type"] = "image/png"
        out["data"] = base64.b64encode(png_bytes(grid)).decode("ascii")
    else:
        raise BadRequest(f"unknown encoding {encoding!r}; use one of {', '.join(ENCODINGS)}")
    return out


def feature_grid(arr: np.ndarray, gap: int = 1) -> tuple[np.ndarray, tuple[int, int]]:
    """(H, W, C) feature maps -> one uint8 image of C tiles; a vector becomes a one-row strip,
    one (H, W) map a single tile.

    Each layer is scaled to 0..255 by its own min and max, so maps of one layer compare.
    """
    if arr.ndim == 1:
        arr = arr[np.newaxis, :, np.newaxis]
    elif arr.ndim == 2:  # one map (a Grad-CAM heat map): a single tile
        arr = arr[:, :, np.newaxis]
    h, w, c = arr.shape
    cols = int(np.ceil(np.sqrt(c)))
    rows = int(np.ceil(c / cols))
    lo, hi = float(arr.min()), float(arr.max())
    scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
    grid = np.zeros((rows * (h + gap) - gap, cols * (w + gap) - gap), np.uint8)
    for i in range(c):
        r, col = divmod(i, cols)
        grid[r * (h + gap) : r * (h + gap) + h, col * (w + gap) : col * (w + gap) + w] = scaled[
            ..., i
        ]
    return grid, (rows, cols)


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
