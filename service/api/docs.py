"""`/openapi.json`, generated from the pydantic schemas (its page, `/docs`: swagger.py)."""

from __future__ import annotations

from flask import Blueprint, jsonify
from pydantic import BaseModel

from service import schemas
from service.codecs import ENCODINGS
from service.images import MEDIA_TYPES

bp = Blueprint("docs", __name__)

IMAGE_TYPES = list(MEDIA_TYPES.values())  # the formats service/images.py decodes
ERRORS = {
    "400": "Malformed request (bad JSON, bad base64, unknown layer or encoding).",
    "404": "Unknown model.",
    "413": "Body, image pixels, or number of images too large.",
    "415": "Unsupported Content-Type or image format.",
    "422": "Not a decodable image.",
    "503": "Models still loading.",
    "405": "Method not allowed on this route (the Allow header lists those that are).",
    "431": "Request headers too large (refused by Gunicorn before the route).",
}


def _ref(model: type[BaseModel]) -> dict:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel], description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _errors(*codes: str) -> dict:
    return {c: _json(schemas.ErrorResponse, ERRORS[c]) for c in codes}


def _protocol_errors(schema: type[BaseModel], *codes: str) -> dict:
    return {c: _json(schema, ERRORS[c]) for c in codes}


_VERSION = {
    "name": "version",
    "in": "path",
    "required": True,
    "description": "The served version, or another complete version on disk.",
    "schema": {"type": "string"},
}


def _protocol_paths(model_param: dict) -> dict:
    """The Open Inference Protocol (/v2) and TF Serving's REST API (/v1): docs/protocols.md."""
    v2_errors = _protocol_errors(schemas.V2Error, "404", "503")
    infer_errors = _protocol_errors(schemas.V2Error, "400", "404", "413", "415", "422", "503")
    infer_body = {
        "required": True,
        "content": {
            "application/json": {"schema": _ref(schemas.V2InferRequest)},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "Binary tensor data extension: the JSON header "
                "(Inference-Header-Content-Length bytes), then the raw tensors.",
            },
        },
    }
    infer_ok = {
        "description": "Outputs; with binary outputs, the JSON header "
        "(Inference-Header-Content-Length bytes) and the raw tensors after it.",
        "content": {
            "application/json": {"schema": _ref(schemas.V2InferResponse)},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
    paths: dict = {
        "/v2": {
            "get": {
                "summary": "Open Inference Protocol: server metadata and extensions",
                "responses": {"200": _json(schemas.V2ServerMetadata, "Server.")},
            }
        },
        "/v2/health/live": {
            "get": {
                "summary": "Open Inference Protocol: the server is live",
                "responses": {"200": _json(schemas.V2Live, "Live.")},
            }
        },
        "/v2/health/ready": {
            "get": {
                "summary": "Open Inference Protocol: every model is ready",
                "responses": {
                    "200": _json(schemas.V2Ready, "Ready."),
                    "503": _json(schemas.V2Ready, "Not ready."),
                },
            }
        },
    }
    tf_errors = _protocol_errors(schemas.TFServingError, "404", "503")
    tf_infer_errors = _protocol_errors(
        schemas.TFServingError, "400", "404", "413", "415", "422", "503"
    )
    for base, params in (
        ("/v2/models/{model}", [model_param]),
        ("/v2/models/{model}/versions/{version}", [model_param, _VERSION]),
    ):
        paths[base] = {
            "get": {
                "summary": "Open Inference Protocol: model metadata (inputs, outputs, versions)",
                "parameters": params,
                "responses": {"200": _json(schemas.V2ModelMetadata, "Model."), **v2_errors},
            }
        }
        paths[f"{base}/ready"] = {
            "get": {
                "summary": "Open Inference Protocol: the model (version) is loaded",
                "parameters": params,
                "responses": {"200": _json(schemas.V2ModelReady, "Ready."), **v2_errors},
            }
        }
        paths[f"{base}/infer"] = {
            "post": {
                "summary": "Open Inference Protocol: probabilities for an FP32 tensor or "
                "BYTES of encoded images",
                "parameters": params,
                "requestBody": infer_body,
                "responses": {"200": infer_ok, **infer_errors},
            }
        }
    for base, params in (
        ("/v1/models/{model}", [model_param]),
        ("/v1/models/{model}/versions/{version}", [model_param, _VERSION]),
    ):
        paths[base] = {
            "get": {
                "summary": "TF Serving: model version status",
                "parameters": params,
                "responses": {"200": _json(schemas.TFServingModelStatus, "Status."), **tf_errors},
            }
        }
        paths[f"{base}/metadata"] = {
            "get": {
                "summary": "TF Serving: signature_def metadata",
                "parameters": params,
                "responses": {"200": _json(schemas.TFServingMetadata, "Metadata."), **tf_errors},
            }
        }
        for verb, request, response, summary in (
            (
                "predict",
                schemas.TFServingPredictRequest,
                schemas.TFServingPredictResponse,
                "probabilities for rows (instances) or columns (inputs)",
            ),
            (
                "classify",
                schemas.TFServingClassifyRequest,
                schemas.TFServingClassifyResponse,
                "every class and its probability, best first",
            ),
        ):
            paths[f"{base}:{verb}"] = {
                "post": {
                    "summary": f"TF Serving: {summary}",
                    "parameters": params,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref(request)}},
                    },
                    "responses": {"200": _json(response, "Results."), **tf_infer_errors},
                }
            }
    return paths


PROTOCOL_SCHEMAS = (
    schemas.V2Error,
    schemas.V2Live,
    schemas.V2Ready,
    schemas.V2ModelReady,
    schemas.V2ServerMetadata,
    schemas.V2ModelMetadata,
    schemas.V2InferRequest,
    schemas.V2InferResponse,
    schemas.TFServingError,
    schemas.TFServingModelStatus,
    schemas.TFServingMetadata,
    schemas.TFServingPredictRequest,
    schemas.TFServingPredictResponse,
    schemas.TFServingClassifyRequest,
    schemas.TFServingClassifyResponse,
)


def _image_body(batch: bool) -> dict:
    binary = {"type": "string", "format": "binary"}
    field = {"type": "array", "items": binary} if batch else binary
    content = {t: {"schema": binary} for t in IMAGE_TYPES}
    # Any other type is sniffed from the file's bytes, as for an image/* one.
    content["application/octet-stream"] = {"schema": binary}
    content["multipart/form-data"] = {
        "schema": {"type": "object", "properties": {"image": field}, "required": ["image"]}
    }
    content["application/json"] = {"schema": _ref(schemas.ImagesRequest)}
    return {"required": True, "content": content}


_MODEL = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
_ENCODING = {
    "name": "encoding",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "enum": list(ENCODINGS), "default": "json"},
}


def _layers_param(description: str) -> dict:
    return {
        "name": "layers",
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string"},
    }


def build_openapi(model_names: list[str]) -> dict:
    model_param = {**_MODEL, "description": f"One of: {', '.join(model_names) or '(loading)'}"}
    if model_names:  # the models this server has loaded: clients and fuzzers see the valid names
        model_param["schema"] = {"type": "string", "enum": list(model_names)}
    infer_errors = _errors("400", "404", "413", "415", "422", "503")
    paths = {
        "/predict/{model}": {
            "post": {
                "summary": "Class probabilities for one or more images",
                "parameters": [model_param],
                "requestBody": _image_body(batch=True),
                "responses": {
                    "200": _json(schemas.PredictResponse, "One prediction per image."),
                    **infer_errors,
                },
            }
        },
        "/features/{model}": {
            "post": {
                "summary": "Every named layer's activations for one image",
                "parameters": [
                    model_param,
                    _ENCODING,
                    _layers_param("Comma-separated layer names (default: all)."),
                ],
                "requestBody": _image_body(batch=False),
                "responses": {
                    "200": _json(schemas.FeaturesResponse, "Activations."),
                    **infer_errors,
                },
            }
        },
        "/gradcam/{model}": {
            "post": {
                "summary": "Grad-CAM heat map of one image for a class (default: the predicted one)",
                "parameters": [
                    model_param,
                    _ENCODING,
                    {
                        "name": "class",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                ],
                "requestBody": _image_body(batch=False),
                "responses": {"200": _json(schemas.GradcamResponse, "Heat map."), **infer_errors},
            }
        },
        "/models": {
            "get": {
                "summary": "Every loaded model's metadata",
                "responses": {"200": _json(schemas.ModelList, "Models."), **_errors("503")},
            }
        },
        "/models/{model}": {
            "get": {
                "summary": "One model's metadata: classes, input, preprocessing, layer table",
                "parameters": [model_param],
                "responses": {"200": _json(schemas.ModelInfo, "Model."), **_errors("404", "503")},
            }
        },
        "/models/{model}/weights": {
            "get": {
                "summary": "Each layer's learned weights: conv and dense kernel and bias, batch "
                "norm scale and offset (Keras's layouts)",
                "parameters": [
                    model_param,
                    _ENCODING,
                    _layers_param(
                        "Comma-separated names of layers with weights (default: all of them)."
                    ),
                ],
                "responses": {
                    "200": _json(schemas.WeightsResponse, "Weights."),
                    **_errors("400", "404", "503"),
                },
            }
        },
        "/convolve": {
            "post": {
                "summary": "A kernel (at most 7x7) applied to a grey image (at most 64x64), as a "
                "conv layer applies one filter to one channel",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref(schemas.ConvolveRequest)}},
                },
                "responses": {
                    "200": _json(schemas.ConvolveResponse, "The feature map."),
                    **_errors("400", "413", "415"),
                },
            }
        },
        "/models/{model}/snapshots": {
            "get": {
                "summary": "The served version's training snapshots and its loss history",
                "parameters": [model_param],
                "responses": {
                    "200": _json(schemas.SnapshotList, "Snapshots (none: an empty list)."),
                    **_errors("404", "503"),
                },
            }
        },
        "/snapshots/{model}": {
            "post": {
                "summary": "One image through each training snapshot: random weights to trained",
                "parameters": [model_param],
                "requestBody": _image_body(batch=False),
                "responses": {
                    "200": _json(schemas.SnapshotsResponse, "One prediction per snapshot."),
                    **infer_errors,
                },
            }
        },
        "/livez": {
            "get": {
                "summary": "The process is alive",
                "responses": {"200": _json(schemas.Health, "Alive.")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Every model is loaded and warmed up",
                "responses": {
                    "200": _json(schemas.Health, "Ready."),
                    "503": _json(schemas.Health, "Not ready."),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }
    paths.update(_protocol_paths(model_param))
    for path, ops in paths.items():
        # A protocol route answers a wrong method in its protocol's error body; Gunicorn answers
        # 431 before any route, in the service's own.
        wrong_method = (
            schemas.V2Error
            if path.startswith("/v2")
            else schemas.TFServingError
            if path.startswith("/v1")
            else schemas.ErrorResponse
        )
        for op in ops.values():
            op["responses"].setdefault("405", _json(wrong_method, ERRORS["405"]))
            op["responses"].setdefault("431", _json(schemas.ErrorResponse, ERRORS["431"]))
    components: dict = {}
    for model in (
        schemas.ImagesRequest,
        schemas.PredictResponse,
        schemas.FeaturesResponse,
        schemas.GradcamResponse,
        schemas.WeightsResponse,
        schemas.ConvolveRequest,
        schemas.ConvolveResponse,
        schemas.SnapshotList,
        schemas.SnapshotsResponse,
        schemas.ModelList,
        schemas.Health,
        schemas.ErrorResponse,
        *PROTOCOL_SCHEMAS,
    ):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", by_alias=True)
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "convnet-service",
            "version": "1",
            "description": "Image classification with ConvNets you can look inside.",
        },
        "paths": paths,
        "components": {"schemas": components},
    }


def _openapi() -> dict:
    from service.api import state

    return build_openapi(sorted(state().registry.models))


@bp.get("/openapi.json")
def openapi():
    return jsonify(_openapi())
