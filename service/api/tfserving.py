"""TensorFlow Serving's REST API (and KServe's V1 protocol, built on it): a thin adapter over the
one request path, so TF Serving clients and `kserve`'s V1 REST client work unchanged.

An instance is a float array of the model's input shape, already preprocessed as the metadata
says, or `{"b64": "<encoded image>"}`, decoded and preprocessed exactly as on /predict; either may
be named by the input, `{"image": ...}`. `:predict` answers the probabilities, `:classify` every
class and its probability, best first. Errors are `{"error": "<message>"}`, as TF Serving writes
them (errors.register, by prefix), with the native API's statuses.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from service import codecs, inference, tensors
from service.api import get_version, state
from service.errors import BadRequest, TooLarge
from service.registry import Model
from service.schemas import TFServingClassifyRequest, TFServingPredictRequest

PREFIX = "/v1"
bp = Blueprint("tfserving", __name__, url_prefix=PREFIX)

SIGNATURE = "serving_default"
INPUT, OUTPUT = "image", "probabilities"


def _version_status(version: int) -> dict:
    return {
        "version": str(version),
        "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""},
    }


@bp.get("/models/<model>")
@bp.get("/models/<model>/versions/<version>")
def status(model: str, version: str | None = None):
    m = get_version(model, version)  # another version is loaded: AVAILABLE means it can answer
    versions = [m.version] if version is not None else state().versions.available(m)
    return jsonify(
        {
            "model_version_status": [_version_status(v) for v in sorted(versions, reverse=True)],
            # KServe's V1 protocol reads these (its client's is_model_ready).
            "name": m.name,
            "ready": True,
        }
    )


def _tensor_info(name: str, dims: list[int]) -> dict:
    return {
        "dtype": "DT_FLOAT",
        "tensor_shape": {
            "dim": [{"size": str(d), "name": ""} for d in dims],
            "unknown_rank": False,
        },
        "name": f"{SIGNATURE}_{name}:0",
    }


@bp.get("/models/<model>/metadata")
@bp.get("/models/<model>/versions/<version>/metadata")
def metadata(model: str, version: str | None = None):
    m = get_version(model, version)
    signature = {
        "inputs": {INPUT: _tensor_info(INPUT, [-1, *m.input_shape])},
        "outputs": {OUTPUT: _tensor_info(OUTPUT, [-1, len(m.classes)])},
        "method_name": "tensorflow/serving/predict",
    }
    return jsonify(
        {
            "model_spec": {"name": m.name, "signature_name": "", "version": str(m.version)},
            "metadata": {"signature_def": {"signature_def": {SIGNATURE: signature}}},
        }
    )


@bp.post("/models/<model>:predict")
@bp.post("/models/<model>/versions/<version>:predict")
def predict(model: str, version: str | None = None):
    m = get_version(model, version)
    req = request._get_current_object()
    body = tensors.parse_json(TFServingPredictRequest, codecs.request_body(req), "predict request")
    _check_signature(body.signature_name)
    if (body.instances is None) == (body.inputs is None):
        raise BadRequest("send exactly one of 'instances' (rows) or 'inputs' (columns)")
    if body.instances is not None:
        rows, where, key = body.instances, "instances", "predictions"
    else:
        rows, where, key = body.inputs, "inputs", "outputs"
        if isinstance(rows, dict) and set(rows) == {INPUT}:
            rows, where = rows[INPUT], f"inputs.{INPUT}"
    probabilities = _probabilities(m, rows, where, req.url_rule.rule)
    return jsonify({key: probabilities.tolist()})


@bp.post("/models/<model>:classify")
@bp.post("/models/<model>/versions/<version>:classify")
def classify(model: str, version: str | None = None):
    m = get_version(model, version)
    req = request._get_current_object()
    body = tensors.parse_json(
        TFServingClassifyRequest, codecs.request_body(req), "classify request"
    )
    _check_signature(body.signature_name)
    rows = []
    for i, example in enumerate(body.examples):
        if not isinstance(example, dict) or INPUT not in example or len(example) != 1:
            raise BadRequest(f"examples[{i}] must be {{'{INPUT}': <tensor or {{'b64': ...}}>}}")
        rows.append(example[INPUT])
    probabilities = _probabilities(m, rows, "examples", req.url_rule.rule)
    results = []
    for row in probabilities.tolist():
        ranked = sorted(zip(m.classes, row, strict=True), key=lambda pair: -pair[1])
        results.append([[label, score] for label, score in ranked])
    return jsonify({"results": results})


def _check_signature(name: str | None) -> None:
    if name not in (None, "", SIGNATURE):
        raise BadRequest(f"unknown signature {name!r}; the model has {SIGNATURE!r}")


def _probabilities(m: Model, rows: Any, where: str, endpoint: str):
    s = state()
    if isinstance(rows, list) and len(rows) > s.settings.max_batch:
        raise TooLarge(f"{len(rows)} images; at most {s.settings.max_batch} per request")
    inputs = tensors.tfserving_instances(rows, INPUT, where)
    if not isinstance(inputs, list):
        inputs = inference.check_tensor(m, inputs, s.settings.max_batch)
    s.metrics.child(s.metrics.images, endpoint, m.name).observe(len(inputs))
    outputs = inference.infer(m, inputs, s.limits, s.metrics)
    inference.describe(m, outputs, s.metrics)  # counted by class and confidence, as on /predict
    return outputs["probabilities"]
