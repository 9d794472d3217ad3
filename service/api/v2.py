"""The Open Inference Protocol (KServe V2, Triton's HTTP API): a thin adapter over the one request
path, so `tritonclient.http` and `kserve`'s REST client work unchanged (docs/protocols.md).

A model has two inputs, a request carries one: `image`, an FP32 tensor [-1, *input shape] already
preprocessed as the metadata says, or `image_bytes`, BYTES [-1] of encoded image files, decoded
and preprocessed exactly as on /predict. Its one output is `probabilities`, FP32 [-1, classes];
with `"classification": k` it is answered as BYTES "score:index:label" (Triton's extension).
Tensors travel in JSON or, with the binary tensor data extension, as raw bytes after the JSON.
Errors are `{"error": "<message>"}` (errors.register, by prefix), with the native API's statuses.
"""

from __future__ import annotations

import zlib
from importlib import metadata as package_metadata

import numpy as np
import orjson
from flask import Blueprint, Response, jsonify, request

from service import codecs, inference, tensors
from service.api import get_version, state
from service.errors import BadRequest, TooLarge, UnsupportedMediaType
from service.registry import Model
from service.schemas import V2InferRequest

PREFIX = "/v2"
bp = Blueprint("v2", __name__, url_prefix=PREFIX)

IMAGE, IMAGE_BYTES, PROBABILITIES = "image", "image_bytes", "probabilities"
# BOOL [-1]: the native API's `uncertain` flag per image, on request, for models with the rule.
UNCERTAIN = "uncertain"
INPUTS = {IMAGE: "FP32", IMAGE_BYTES: "BYTES"}
EXTENSIONS = ["binary_tensor_data", "classification"]
PLATFORM = "tensorflow_savedmodel"


def _server_version() -> str:
    try:
        return package_metadata.version("convnet-service")
    except package_metadata.PackageNotFoundError:
        return "unknown"


@bp.get("")
def server_metadata():
    return jsonify(
        {"name": "convnet-service", "version": _server_version(), "extensions": EXTENSIONS}
    )


@bp.get("/health/live")
def live():
    return jsonify({"live": True})


@bp.get("/health/ready")
def ready():
    s = state()
    ok = s.registry.ready.is_set() and not s.draining.is_set()
    return jsonify({"ready": ok}), 200 if ok else 503


def model_metadata(model: Model, versions: list[int]) -> dict:
    shape = [-1, *model.input_shape]
    return {
        "name": model.name,
        "versions": [str(v) for v in versions],
        "platform": PLATFORM,
        "inputs": [
            {"name": IMAGE, "datatype": "FP32", "shape": shape},
            {"name": IMAGE_BYTES, "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [
            {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, len(model.classes)]},
            *(
                [{"name": UNCERTAIN, "datatype": "BOOL", "shape": [-1]}]
                if model.uncertainty
                else []
            ),
        ],
        "parameters": {
            "version": str(model.version),
            "classes": model.classes,
            "preprocessing": model.preprocessing,
            "description": model.metadata.get("description"),
        },
    }


@bp.get("/models/<model>")
@bp.get("/models/<model>/versions/<version>")
def metadata(model: str, version: str | None = None):
    m = get_version(model, version)
    versions = [m.version] if version is not None else state().versions.available(m)
    return jsonify(model_metadata(m, versions))


@bp.get("/models/<model>/ready")
@bp.get("/models/<model>/versions/<version>/ready")
def model_ready(model: str, version: str | None = None):
    # Another version is loaded here, so that "ready" means it can answer at once.
    m = get_version(model, version)
    return jsonify({"name": m.name, "version": str(m.version), "ready": True})


@bp.post("/models/<model>/infer")
@bp.post("/models/<model>/versions/<version>/infer")
def infer(model: str, version: str | None = None):
    m = get_version(model, version)
    s = state()
    req = request._get_current_object()
    body = _decompressed(
        codecs.request_body(req), req.headers.get("Content-Encoding"), s.settings.max_body_bytes
    )
    header, binary = tensors.split_body(body, req.headers.get(tensors.HEADER_LENGTH))
    parsed = tensors.parse_json(V2InferRequest, header, "inference request")
    outputs = _requested_outputs(m, parsed)  # checked before the model runs
    inputs = _inputs(m, parsed, binary, s.settings.max_batch)
    s.metrics.child(s.metrics.images, req.url_rule.rule, m.name).observe(len(inputs))
    result = inference.infer(m, inputs, s.limits, s.metrics)
    # Counted by class and confidence, as on /predict; its `uncertain` flags, the same as there.
    described = inference.describe(m, result, s.metrics)
    flags = np.array([bool(d["uncertain"]) for d in described])
    return _response(m, parsed, outputs, result["probabilities"], flags)


def _inputs(m: Model, req: V2InferRequest, binary: memoryview, max_batch: int):
    if len(req.inputs) != 1:
        raise BadRequest(
            f"one input per request, {IMAGE!r} (FP32) or {IMAGE_BYTES!r} (BYTES); "
            f"got {len(req.inputs)}"
        )
    tensor = req.inputs[0]
    want = INPUTS.get(tensor.name)
    if want is None:
        raise BadRequest(
            f"unknown input {tensor.name!r}; model {m.name} takes one of {list(INPUTS)}"
        )
    if tensor.datatype != want:
        raise BadRequest(f"input {tensor.name!r} is {want}, not {tensor.datatype}")
    section = tensors.BinarySection(binary)
    size = (tensor.parameters or {}).get("binary_data_size")
    raw = section.take(size, tensor.name) if size is not None else None
    section.check_consumed()
    if tensor.shape and tensor.shape[0] > max_batch:  # refused before any data is read
        raise TooLarge(f"{tensor.shape[0]} images; at most {max_batch} per request")
    if want == "BYTES":
        return tensors.bytes_tensor(tensor.name, tensor.shape, tensor.data, raw, max_batch)
    array = tensors.fp32_tensor(tensor.name, tensor.shape, tensor.data, raw)
    return inference.check_tensor(m, array, max_batch)


def _requested_outputs(m: Model, req: V2InferRequest) -> list[tuple[str, bool, int]]:
    """(name, binary, classification k) of each requested output; the probabilities when none
    is named."""
    default = (req.parameters or {}).get("binary_data_output", False)
    if not isinstance(default, bool):
        raise BadRequest("parameter binary_data_output must be true or false")
    if not req.outputs:
        return [(PROBABILITIES, default, 0)]
    out = []
    known = [PROBABILITIES, *([UNCERTAIN] if m.uncertainty else [])]
    for o in req.outputs:
        if o.name not in known:
            raise BadRequest(f"unknown output {o.name!r}; the outputs are {known}")
        params = o.parameters or {}
        binary = params.get("binary_data", default)
        k = params.get("classification", 0)
        if not isinstance(binary, bool):
            raise BadRequest(f"output {o.name!r}: binary_data must be true or false")
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise BadRequest(f"output {o.name!r}: classification must be a whole number >= 0")
        if k and o.name != PROBABILITIES:
            raise BadRequest(f"output {o.name!r}: classification applies to {PROBABILITIES!r}")
        out.append((o.name, binary, k))
    return out


def _response(m: Model, req: V2InferRequest, outputs, probabilities, flags) -> Response:
    body: dict = {"model_name": m.name, "model_version": str(m.version)}
    if req.id is not None:
        body["id"] = req.id
    body["outputs"] = []
    blobs = []
    for name, binary, k in outputs:
        if name == UNCERTAIN:
            values, shape = flags, [len(flags)]
        elif k:
            values, shape = tensors.classification(probabilities, m.classes, k)
        else:
            values, shape = probabilities, list(probabilities.shape)
        tensor, raw = tensors.output_tensor(name, values, shape, binary)
        body["outputs"].append(tensor)
        if raw is not None:
            blobs.append(raw)
    header = orjson.dumps(body)
    if not blobs:
        return Response(header, mimetype="application/json")
    response = Response(header + b"".join(blobs), mimetype="application/octet-stream")
    response.headers[tensors.HEADER_LENGTH] = str(len(header))
    return response


def _decompressed(body: bytes, encoding: str | None, limit: int) -> bytes:
    """A body sent with Content-Encoding gzip or deflate (tritonclient's
    request_compression_algorithm), inflated to at most `limit` bytes."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not accepted; send gzip, deflate or none"
        )
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit)
    except zlib.error as exc:
        raise BadRequest(f"the {encoding} body does not inflate ({exc})") from None
    if inflater.unconsumed_tail:
        raise TooLarge(f"the body inflates to more than {limit} bytes")
    if not inflater.eof:
        raise BadRequest(f"the {encoding} body is cut short")
    return out
