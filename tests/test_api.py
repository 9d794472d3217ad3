"""In-process checks with Flask's test client: fast feedback on routing, errors and encodings.

These add to tests/test_http.py (the real Gunicorn server), never replace it.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest

from service.api.docs import build_openapi
from tests import corpus


def test_every_error_is_json_never_html(client):
    for method, path in (("get", "/nope"), ("put", "/predict/mnist"), ("get", "/features/mnist")):
        r = getattr(client, method)(path)
        assert r.status_code in (404, 405) and r.is_json, r.data[:200]
        assert set(r.json["error"]) == {"code", "message", "status"}


def test_predict_body_shape(client):
    r = client.post(
        "/predict/mnist", data=corpus.encode(corpus.digit(1), "PNG"), content_type="image/png"
    )
    assert r.status_code == 200
    (pred,) = r.json["predictions"]
    assert pred["confidence"] == max(pred["probabilities"].values())


def test_base64_features_decode_to_the_json_numbers(client):
    img = corpus.encode(corpus.digit(7), "PNG")
    as_json = client.post("/features/mnist?layers=pool2", data=img, content_type="image/png").json
    as_b64 = client.post(
        "/features/mnist?layers=pool2&encoding=base64", data=img, content_type="image/png"
    ).json
    layer = as_b64["layers"][0]
    arr = np.frombuffer(base64.b64decode(layer["data"]), "<f4").reshape(layer["shape"])
    np.testing.assert_allclose(arr, np.array(as_json["layers"][0]["data"]), atol=1e-6)


def test_json_responses_keep_order_and_stay_valid_json(client):
    import json

    app = client.application
    with app.test_request_context():
        r = app.json.response({"z": np.float32(0.5), "a": [1, 2], "nan": float("nan"), 3: "é"})
    assert r.mimetype == "application/json" and r.data.endswith(b"}\n")
    # Insertion order (class order, layer order) kept; NaN becomes null, never the invalid NaN.
    assert list(json.loads(r.data)) == ["z", "a", "nan", "3"]
    assert json.loads(r.data) == {"z": 0.5, "a": [1, 2], "nan": None, "3": "é"}
    assert app.json.loads(app.json.dumps({"b": 1, "a": 2})) == {"b": 1, "a": 2}


@pytest.mark.parametrize(
    ("body", "mime", "status"),
    [
        (b"", "image/png", 400),
        (b"GIF89a", "image/gif", 422),
        (b"x", "application/xml", 415),
        (b'{"images": "not-a-list"}', "application/json", 400),
        (b'{"images": ["data:image/png,abc"]}', "application/json", 400),
    ],
)
def test_bad_bodies(client, body, mime, status):
    r = client.post("/predict/mnist", data=body, content_type=mime)
    assert r.status_code == status and r.is_json


def test_a_data_url_may_spell_base64_in_any_case(client):
    # WHATWG's data: URL parser matches ";base64" ignoring ASCII case.
    b64 = base64.b64encode(corpus.encode(corpus.digit(7), "PNG")).decode()
    r = client.post("/predict/mnist", json={"images": [f"data:image/png;BASE64,{b64}"]})
    assert r.status_code == 200, r.json


def test_openapi_lists_models_and_every_route(app):
    spec = build_openapi(["mnist", "scenes"])
    assert spec["openapi"].startswith("3.")
    assert (
        "mnist, scenes" in spec["paths"]["/predict/{model}"]["post"]["parameters"][0]["description"]
    )
    routes = {r.rule.replace("<", "{").replace(">", "}") for r in app.url_map.iter_rules()}
    for path in spec["paths"]:
        assert path in routes


def test_gradcam_records_one_model_call_and_counts_no_prediction():
    """With batching on, /gradcam calls the engine once and records that call once (through the
    batcher it was recorded twice). It counts no prediction, refused or not: the explorer sends
    each image to /features as well, which counts it."""
    from service.app import create_app
    from tests.server import MODELS_DIR

    app = create_app(models_dir=MODELS_DIR, load_in_background=False, batching=True)
    registry = app.extensions["convnet"].metrics.registry

    def count(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, {"model": "scenes", **labels}) or 0.0

    client = app.test_client()
    photo = corpus.encode(corpus.photo(), "PNG")
    r = client.post("/gradcam/scenes?class=unicorn", data=photo, content_type="image/png")
    assert r.status_code == 400 and "unicorn" in r.json["error"]["message"]
    classes = app.extensions["convnet"].registry.get("scenes").classes
    assert sum(count("convnet_predictions_total", **{"class": c}) for c in classes) == 0
    assert count("convnet_prediction_confidence_count") == 0
    r = client.post("/gradcam/scenes", data=photo, content_type="image/png")
    assert r.status_code == 200, r.json
    calls = "convnet_inference_seconds_count"
    assert count(calls, signature="predict") == 1
    assert count(calls, signature="gradcam") == 1
    assert count("convnet_inference_batch_size_sum", signature="predict") == 1
    assert count("convnet_prediction_confidence_count") == 0
    r = client.post("/features/scenes", data=photo, content_type="image/png")
    assert r.status_code == 200, r.json
    assert count("convnet_prediction_confidence_count") == 1
    label = r.json["prediction"]["label"]
    assert count("convnet_predictions_total", **{"class": label}) == 1


def test_a_wrong_method_is_counted_under_its_route():
    """GET /predict/mnist is a client using a real route wrongly (405), not an unknown URL."""
    from service.app import create_app
    from tests.server import MODELS_DIR

    app = create_app(models_dir=MODELS_DIR, load_in_background=False)
    registry = app.extensions["convnet"].metrics.registry
    client = app.test_client()
    assert client.get("/predict/mnist").status_code == 405
    assert client.get("/no/such/route").status_code == 404
    requests_total = "convnet_http_requests_total"
    labels = {"endpoint": "/predict/<model>", "model": "mnist", "status": "405"}
    assert registry.get_sample_value(requests_total, labels) == 1
    unmatched = {"endpoint": "unmatched", "model": "", "status": "404"}
    assert registry.get_sample_value(requests_total, unmatched) == 1
