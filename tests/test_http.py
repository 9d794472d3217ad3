"""The real service over HTTP: Gunicorn with 2 workers on a loopback port, the committed models."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import requests
from PIL import Image

from tests import corpus
from tests.server import MODELS_DIR, GunicornServer, free_port

pytestmark = pytest.mark.server


def post(server, path: str, data: bytes, mime: str = "image/png", **kw) -> requests.Response:
    return requests.post(
        f"{server.url}{path}", data=data, headers={"Content-Type": mime}, timeout=30, **kw
    )


def png(img) -> bytes:
    return corpus.encode(img, "PNG")


def decode_b64(tensor: dict) -> np.ndarray:
    assert tensor["encoding"] == "base64" and tensor["dtype"] == "float32"
    return np.frombuffer(base64.b64decode(tensor["data"]), "<f4").reshape(tensor["shape"])


def assert_error(r: requests.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()["error"]
    assert body["code"] == code and body["status"] == status and body["message"]
    return body


def test_health(server):
    assert requests.get(f"{server.url}/livez", timeout=5).json() == {"status": "alive"}
    ready = requests.get(f"{server.url}/readyz", timeout=5)
    assert ready.status_code == 200
    assert set(ready.json()["models"]) == {"mnist", "scenes"}


def test_readiness_turns_true_only_after_loading(tmp_path):
    # The TensorFlow engine loads for seconds in the worker: a window wide enough to watch.
    srv = GunicornServer(tmp=tmp_path, workers=1, env={"CONVNET_ENGINE": "tensorflow"})
    srv.start(wait_ready=False)
    try:
        ready, predict = [], []
        for _ in range(600):
            try:
                r = requests.get(f"{srv.url}/readyz", timeout=5)
            except requests.ConnectionError:
                time.sleep(0.05)
                continue
            ready.append(r.json()["status"])
            if r.status_code == 200:
                break
            predict.append(post(srv, "/predict/mnist", png(corpus.digit(7))))
        assert ready[0] == "loading" and ready[-1] == "ready"
        not_ready = [p for p in predict if p.status_code == 503]
        assert not_ready and not_ready[0].json()["error"]["code"] == "not_ready"
        assert all(p.status_code in (200, 503) for p in predict)
        assert post(srv, "/predict/mnist", png(corpus.digit(7))).status_code == 200
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("env", "args", "status", "message"),
    [
        ({}, ["--models-dir", "{tmp}"], 1, "Error: no SavedModel under"),
        ({"CONVNET_MAX_BATCH": "lots"}, [], 2, "CONVNET_MAX_BATCH must be a whole number"),
        ({"CONVNET_TF_THREADS": "0"}, [], 2, "CONVNET_TF_THREADS must be at least 1, not 0"),
        ({"CONVNET_DRAIN_SECONDS": "2s"}, [], 2, "CONVNET_DRAIN_SECONDS must be a number"),
        (
            {"CONVNET_DRAIN_SECONDS": "30", "GUNICORN_GRACEFUL_TIMEOUT": "20"},
            [],
            1,
            "CONVNET_DRAIN_SECONDS (30) must be shorter than GUNICORN_GRACEFUL_TIMEOUT (20)",
        ),
    ],
    ids=["no-models", "malformed-setting", "out-of-range", "malformed-drain", "drain-too-long"],
)
def test_serve_refuses_to_start_misconfigured(tmp_path, env, args, status, message):
    # A mistyped path or setting is one line and an exit status, not a server answering 503s.
    cmd = [sys.executable, "-m", "service.cli", "serve", "--bind", f"127.0.0.1:{free_port()}"]
    run = subprocess.run(
        cmd + [a.format(tmp=tmp_path) for a in args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == status and message in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


def test_api_says_when_loading_failed_rather_than_loading(tmp_path):
    from service.app import create_app

    app = create_app(models_dir=tmp_path)  # nothing to load: the background loader fails
    registry = app.extensions["convnet"].registry
    for _ in range(100):
        if registry.error:
            break
        time.sleep(0.05)
    client = app.test_client()
    assert client.get("/readyz").json["status"] == "failed"
    for r in (client.get("/models"), client.post("/predict/mnist", data=b"x")):
        assert r.status_code == 503 and "failed" in r.json["error"]["message"]


def test_find_versions_takes_the_newest_complete_plainly_numbered_version(tmp_path):
    from service.registry import find_versions

    def version(name: str, *files: str) -> None:
        for f in files:
            (tmp_path / "m" / name / f).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "m" / name / f).write_text("x")

    complete = ("saved_model.pb", "assets.extra/metadata.json")
    version("2", *complete)
    version("7", "saved_model.pb")  # no metadata yet: an export or copy under way
    version("\u00b2", *complete)  # superscript two: str.isdigit() says yes, int() fails
    version("010", *complete)  # would read as 10, beside a possible "10"
    version(".9.partial", *complete)  # training/export.py's staging folder
    assert find_versions(tmp_path) == {"m": tmp_path / "m" / "2"}


def test_find_versions_skips_smoke_and_tuning_split_runs(tmp_path, caplog):
    from service.registry import find_versions

    def version(model: str, name: str, training: dict) -> None:
        (tmp_path / model / name / "assets.extra").mkdir(parents=True)
        (tmp_path / model / name / "saved_model.pb").write_text("x")
        metadata = json.dumps({"training": training})
        (tmp_path / model / name / "assets.extra" / "metadata.json").write_text(metadata)

    version("m", "2", {"smoke_run": False, "tuning_split": False})
    version("m", "3", {"smoke_run": False})  # exported before tuning_split existed (scenes v2)
    version("m", "4", {"smoke_run": True, "tuning_split": False})  # convnet-train --max-batches
    version("m", "5", {"smoke_run": False, "tuning_split": True})  # convnet-train --tuning-split
    version("n", "1", {"smoke_run": True, "tuning_split": True})  # nothing to serve
    with caplog.at_level("WARNING", logger="service.registry"):
        assert find_versions(tmp_path) == {"m": tmp_path / "m" / "3"}
    assert "m/4: its metadata marks it a smoke_run" in caplog.text
    assert "m/5: its metadata marks it a tuning_split" in caplog.text


@pytest.mark.parametrize("fmt", sorted(corpus.FORMATS))
@pytest.mark.parametrize("model", ["mnist", "scenes"])
def test_predict_every_format_raw_body(server, model, fmt):
    img = corpus.digit(7, 120) if model == "mnist" else corpus.photo(96, 64)
    data, mime = corpus.in_format(img, fmt)
    r = post(server, f"/predict/{model}", data, mime)
    assert r.status_code == 200, r.text
    body = r.json()
    meta = requests.get(f"{server.url}/models/{model}", timeout=5).json()
    assert body["model"] == model and body["version"] == meta["version"]
    (pred,) = body["predictions"]
    assert list(pred["probabilities"]) == meta["classes"]
    assert sum(pred["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert pred["label"] == max(pred["probabilities"], key=pred["probabilities"].get)


def test_predict_three_ways_agree_and_batches_keep_order(server):
    a, b = png(corpus.digit(7, 100)), png(corpus.digit(0, 100))
    single_a = post(server, "/predict/mnist", a).json()["predictions"][0]
    single_b = post(server, "/predict/mnist", b).json()["predictions"][0]
    files = [
        ("image", ("a.png", a, "image/png")),
        ("image", ("b.png", b, "image/png")),
        ("image", ("a2.png", a, "image/png")),
    ]
    multi = requests.post(f"{server.url}/predict/mnist", files=files, timeout=30).json()
    as_json = requests.post(
        f"{server.url}/predict/mnist",
        json={
            "images": [
                base64.b64encode(a).decode(),
                "data:image/png;base64," + base64.b64encode(b).decode(),
                base64.b64encode(a).decode(),
            ]
        },
        timeout=30,
    ).json()
    for body in (multi, as_json):
        preds = body["predictions"]
        assert len(preds) == 3
        for got, want in zip(preds, (single_a, single_b, single_a), strict=True):
            assert got["label"] == want["label"]
            np.testing.assert_allclose(
                list(got["probabilities"].values()), list(want["probabilities"].values()), atol=1e-6
            )


@pytest.mark.parametrize(
    ("count", "fmt", "side"),
    [(1, "JPEG", 800), (2, "JPEG", 800), (64, "PNG", 32)],
    ids=["one-photo", "two-photos", "64-small-pngs"],
)
def test_multipart_uploads_of_real_sizes(server, count, fmt, side):
    # Noisy photos of about 290 KB, and a full batch of small PNGs (150 KB in all): Werkzeug
    # applies its form memory limit to its read buffer too, and a limit at its 64 KiB read size
    # refused every multipart body past about 64 KB.
    rng = np.random.default_rng(count)
    photos = [
        corpus.encode(
            Image.fromarray(rng.integers(0, 256, (side * 3 // 4, side, 3), np.uint8)), fmt
        )
        for _ in range(count)
    ]
    files = [
        ("image", (f"{i}.img", body, "application/octet-stream")) for i, body in enumerate(photos)
    ]
    r = requests.post(f"{server.url}/predict/scenes", files=files, timeout=60)
    assert r.status_code == 200, (sum(map(len, photos)), r.text)
    assert len(r.json()["predictions"]) == count


def test_predict_matches_the_savedmodel_called_directly(server):
    """The service's probabilities are the SavedModel's own on the preprocessed array it used."""
    import tensorflow as tf

    from service.registry import find_versions

    for model, img in (("mnist", corpus.digit(4, 200)), ("scenes", corpus.photo(120, 90, seed=3))):
        data = png(img)
        feats = post(server, f"/features/{model}?encoding=base64&layers=softmax", data).json()
        x = decode_b64(feats["input"])[np.newaxis]
        saved = tf.saved_model.load(str(find_versions(MODELS_DIR)[model]))
        direct = saved.signatures["serving_default"](image=tf.constant(x))["probabilities"].numpy()[
            0
        ]
        served = post(server, f"/predict/{model}", data).json()["predictions"][0]["probabilities"]
        np.testing.assert_allclose(list(served.values()), direct, atol=1e-6)
        # /features agrees with /predict on the softmax layer.
        np.testing.assert_allclose(decode_b64(feats["layers"][0]), direct, atol=1e-6)
        assert feats["prediction"]["probabilities"] == pytest.approx(served, abs=1e-6)


@pytest.mark.parametrize("model", ["mnist", "scenes"])
def test_features_encodings_and_layer_selection(server, model):
    meta = requests.get(f"{server.url}/models/{model}", timeout=5).json()
    img = png(corpus.digit(7, 100) if model == "mnist" else corpus.photo())
    sizes = {}
    for encoding in ("json", "base64", "png"):
        r = post(server, f"/features/{model}?encoding={encoding}", img)
        assert r.status_code == 200, r.text
        sizes[encoding] = len(r.content)
        body = r.json()
        assert [layer["name"] for layer in body["layers"]] == [
            row["name"] for row in meta["layers"]
        ]
        for layer, row in zip(body["layers"], meta["layers"], strict=True):
            assert layer["shape"] == row["output_shape"] and layer["type"] == row["type"]
            assert layer["encoding"] == encoding
        assert body["input"]["shape"] == meta["input"]["shape"]
        if encoding == "json":  # numbers rounded to 6 decimals, as documented, not 17 digits
            values = np.ravel(body["layers"][0]["data"]).tolist()
            assert values and all(round(v, 6) == v for v in values)
    assert sizes["png"] < sizes["base64"] < sizes["json"]
    png_body = post(server, f"/features/{model}?encoding=png&layers=conv1", img).json()
    (conv1,) = png_body["layers"]
    grid = base64.b64decode(conv1["data"])
    assert (
        grid.startswith(b"\x89PNG")
        and conv1["grid"]["rows"] * conv1["grid"]["cols"] >= conv1["shape"][-1]
    )
    first, second = [r["name"] for r in meta["layers"] if r["type"] in ("conv", "pool")][:2]
    some = post(server, f"/features/{model}?layers={second},{first}&encoding=base64", img).json()
    assert [layer["name"] for layer in some["layers"]] == [first, second]  # network order
    relu = decode_b64(
        post(server, f"/features/{model}?layers=relu1&encoding=base64", img).json()["layers"][0]
    )
    assert relu.min() >= 0


def test_gradcam(server):
    r = post(server, "/gradcam/scenes?encoding=base64&class=cat", png(corpus.photo()))
    assert r.status_code == 200, r.text
    body = r.json()
    heat = decode_b64(body["heatmap"])
    assert body["class"] == "cat" and heat.ndim == 2 and heat.min() >= 0 and heat.max() <= 1.0
    assert_error(
        post(server, "/gradcam/scenes?class=horse", png(corpus.photo())), 400, "bad_request"
    )


def test_models_openapi_and_docs(server):
    models = requests.get(f"{server.url}/models", timeout=5).json()["models"]
    assert {m["name"] for m in models} == {"mnist", "scenes"}
    for m in models:
        assert m["classes"] and m["preprocessing"]["resize"]
        assert any(row.get("kernel_size") for row in m["layers"])
    mnist = requests.get(f"{server.url}/models/mnist", timeout=5).json()
    assert mnist["classes"] == [str(d) for d in range(10)]
    scenes = requests.get(f"{server.url}/models/scenes", timeout=5).json()
    assert scenes["classes"] == ["dog", "cat", "boat", "bird"]
    spec = requests.get(f"{server.url}/openapi.json", timeout=5).json()
    assert {"/predict/{model}", "/features/{model}", "/models", "/readyz"} <= set(spec["paths"])
    assert "PredictResponse" in spec["components"]["schemas"]


def test_docs_page_and_its_files_come_from_the_service(server):
    """Swagger UI on /openapi.json; its files are the service's own (the browser test:
    tests/test_docs_page.py). Anything else under /docs is a JSON error."""
    import re

    docs = requests.get(f"{server.url}/docs", timeout=5)
    assert docs.status_code == 200 and docs.headers["Content-Type"].startswith("text/html")
    assert '"url": "/openapi.json"' in docs.text and '"validatorUrl": null' in docs.text
    assert "//" not in re.sub(r"<script>.*?</script>", "", docs.text, flags=re.S)
    files = re.findall(r'(?:href|src)="([^"]+)"', docs.text)
    assert {"/docs/swagger-ui.css", "/docs/swagger-ui-bundle.js"} <= set(files)
    for path in files:
        r = requests.get(f"{server.url}{path}", timeout=10)
        assert r.status_code == 200 and r.content, path
    assert_error(requests.get(f"{server.url}/docs/index.html", timeout=5), 404, "not_found")
    assert_error(requests.get(f"{server.url}/docs/nope/", timeout=5), 404, "not_found")
    wrong = requests.post(f"{server.url}/docs", timeout=5)
    assert_error(wrong, 405, "method_not_allowed")
    assert "GET" in wrong.headers["Allow"]


def test_error_statuses(server):
    digit = png(corpus.digit(7))
    assert_error(post(server, "/predict/nope", digit), 404, "not_found")
    assert_error(requests.get(f"{server.url}/no/such/route", timeout=5), 404, "not_found")
    assert_error(requests.get(f"{server.url}/predict/mnist", timeout=5), 405, "method_not_allowed")
    assert_error(
        post(server, "/predict/mnist", b"hello", "text/plain"), 415, "unsupported_media_type"
    )
    assert_error(
        requests.post(f"{server.url}/predict/mnist", data=digit, timeout=5),
        415,
        "unsupported_media_type",
    )
    # What `curl --data-binary @digit.png` sends: the error says how to fix the command.
    as_curl = post(server, "/predict/mnist", digit, "application/x-www-form-urlencoded")
    assert (
        "Content-Type: image/png" in assert_error(as_curl, 415, "unsupported_media_type")["message"]
    )
    assert_error(
        post(server, "/predict/mnist", b"%!PS-Adobe-3.0 EPSF-3.0\n", "image/png"),
        415,
        "unsupported_media_type",
    )
    assert_error(post(server, "/predict/mnist", digit[:60]), 422, "undecodable_image")
    assert_error(
        post(server, "/predict/mnist", b"{not json", "application/json"), 400, "bad_request"
    )
    assert_error(
        post(server, "/predict/mnist", b'{"images": ["@@@"]}', "application/json"),
        400,
        "bad_request",
    )
    assert_error(
        post(server, "/predict/mnist", b'{"images": []}', "application/json"), 400, "bad_request"
    )
    assert_error(
        post(server, "/predict/mnist", b'{"pictures": ["x"]}', "application/json"),
        400,
        "bad_request",
    )
    r = requests.post(f"{server.url}/predict/mnist", files={"file": ("a.png", digit)}, timeout=5)
    assert_error(r, 400, "bad_request")
    assert_error(post(server, "/features/mnist?layers=conv9", digit), 400, "bad_request")
    assert_error(post(server, "/features/mnist?encoding=xml", digit), 400, "bad_request")
    two = [("image", ("a.png", digit)), ("image", ("b.png", digit))]
    assert_error(
        requests.post(f"{server.url}/features/mnist", files=two, timeout=5), 413, "too_large"
    )
    many = [("image", (f"{i}.png", digit)) for i in range(65)]
    assert_error(
        requests.post(f"{server.url}/predict/mnist", files=many, timeout=30), 413, "too_large"
    )
    huge = b"\x89PNG\r\n\x1a\n" + bytes(21 * 1024 * 1024)
    assert_error(post(server, "/predict/mnist", huge), 413, "too_large")
    # The service is still healthy after all of that.
    assert post(server, "/predict/mnist", digit).status_code == 200


def test_drawn_digits_are_recognised(server):
    """Digits as people send them: dark ink on white, large, any size. Needs the trained model."""
    meta = requests.get(f"{server.url}/models/mnist", timeout=5).json()
    if meta["training"].get("smoke_run"):
        pytest.skip("models/mnist is a smoke-trained model")
    for value in (0, 1, 4, 7):
        for size in (56, 280, 900):
            r = post(
                server,
                "/predict/mnist",
                corpus.encode(corpus.digit(value, size), "JPEG"),
                "image/jpeg",
            )
            assert r.json()["predictions"][0]["label"] == str(value), (value, size, r.json())


def test_responses_are_json_serialisable_floats(server):
    body = post(server, "/features/mnist?encoding=json&layers=fc1", png(corpus.digit(7))).json()
    assert json.dumps(body) and len(body["layers"][0]["data"]) == 120
