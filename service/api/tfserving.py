"""TensorFlow Serving's REST API (and KServe's V1 protocol, built on it): a thin adapter over the
one request path, so TF Serving clients and `kserve`'s V1 REST client work unchanged.

An instance is a float array of the model's input shape, already preprocessed as the metadata
says, or `{"b64": "<encoded image>"}`, decoded and preprocessed exactly as on /predict; either may
be named by the input, `{"image": ...}`. `:predict` answers the probabilities; with
`"signature_name": "uncertain"` (models exported with the rule), each row is the probabilities
and the native API's `uncertain` flag, as TF Serving answers a signature of two outputs.
`:classify` answers every class and its probability, best first. Errors are `{"error": "<message>"}`, as TF Serving writes
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
# Outputs the probabilities and the `uncertain` flag (DT_BOOL), for versions with the rule.
UNCERTAIN_SIGNATURE = "uncertain"
INPUT, OUTPUT, FLAG = "image", "probabilities", "uncertain"


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


def _tensor_info(name: str, dims: list[int], dtype: str = "DT_FLOAT") -> dict:
    return {
        "dtype": dtype,
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
    inputs = {INPUT: _tensor_info(INPUT, [-1, *m.input_shape])}
    outputs = {OUTPUT: _tensor_info(OUTPUT, [-1, len(m.classes)])}
    method = "tensorflow/serving/predict"
    signatures = {SIGNATURE: {"inputs": inputs, "outputs": outputs, "method_name": method}}
    if m.uncertainty:
        flagged = {**outputs, FLAG: _tensor_info(FLAG, [-1], "DT_BOOL")}
        signatures[UNCERTAIN_SIGNATURE] = {
            "inputs": inputs,
            "outputs": flagged,
            "method_name": method,
        }
    return jsonify(
        {
            "model_spec": {"name": m.name, "signature_name": "", "version": str(m.version)},
            "metadata": {"signature_def": {"signature_def": signatures}},
        }
    )


@bp.post("/models/<model>:predict")
@bp.post("/models/<model>/versions/<version>:predict")
def predict(model: str, version: str | None = None):
    m = get_version(model, version)
    req = request._get_current_object()
    body = tensors.parse_json(TFServingPredictRequest, codecs.request_body(req), "predict request")
    flagged = _check_signature(m, body.signature_name, allow_uncertain=True)
    if (body.instances is None) == (body.inputs is None):
        raise BadRequest("send exactly one of 'instances' (rows) or 'inputs' (columns)")
    if body.instances is not None:
        rows, where, key = body.instances, "instances", "predictions"
    else:
        rows, where, key = body.inputs, "inputs", "outputs"
        if isinstance(rows, dict) and set(rows) == {INPUT}:
            rows, where = rows[INPUT], f"inputs.{INPUT}"
    probabilities, flags = _probabilities(m, rows, where, req.url_rule.rule)
    if not flagged:
        return jsonify({key: probabilities.tolist()})
    if key == "predictions":
        rows_out = [
            {OUTPUT: row, FLAG: flag}
            for row, flag in zip(probabilities.tolist(), flags, strict=True)
        ]
        return jsonify({key: rows_out})
    return jsonify({key: {OUTPUT: probabilities.tolist(), FLAG: flags}})


@bp.post("/models/<model>:classify")
@bp.post("/models/<model>/versions/<version>:classify")
def classify(model: str, version: str | None = None):
    m = get_version(model, version)
    req = request._get_current_object()
    body = tensors.parse_json(
        TFServingClassifyRequest, codecs.request_body(req), "classify request"
    )
    _check_signature(m, body.signature_name, allow_uncertain=False)
    rows = []
    for i, example in enumerate(body.examples):
        if not isinstance(example, dict) or INPUT not in example or len(example) != 1:
            raise BadRequest(f"examples[{i}] must be {{'{INPUT}': <tensor or {{'b64': ...}}>}}")
        rows.append(example[INPUT])
    probabilities, _ = _probabilities(m, rows, "examples", req.url_rule.rule)
    results = []
    for row in probabilities.tolist():
        ranked = sorted(zip(m.classes, row, strict=True), key=lambda pair: -pair[1])
        results.append([[label, score] for label, score in ranked])
    return jsonify({"results": results})


def _check_signature(m: Model, name: str | None, allow_uncertain: bool) -> bool:
    """True when the request names the signature with the `uncertain` output."""
    known = [SIGNATURE, *([UNCERTAIN_SIGNATURE] if allow_uncertain and m.uncertainty else [])]
    if name in (None, ""):
        return False
    if name not in known:
        raise BadRequest(f"unknown signature {name!r}; the model has {', '.join(map(repr, known))}")
    return name == UNCERTAIN_SIGNATURE


def _probabilities(m: Model, rows: Any, where: str, endpoint: str) -> tuple[Any, list[bool]]:
    s = state()
    if isinstance(rows, list) and len(rows) > s.settings.max_batch:
        raise TooLarge(f"{len(rows)} images; at most {s.settings.max_batch} per request")
    inputs = tensors.tfserving_instances(rows, INPUT, where)
    if not isinstance(inputs, list):
        inputs = inference.check_tensor(m, inputs, s.settings.max_batch)
    s.metrics.child(s.metrics.images, endpoint, m.name).observe(len(inputs))
    outputs = inference.infer(m, inputs, s.limits, s.metrics)
    # Counted by class and confidence, as on /predict; its `uncertain` flags, the same as there.
    described = inference.describe(m, outputs, s.metrics)
    return outputs["probabilities"], [bool(d["uncertain"]) for d in described]
