"""The HTTP API the explorer page is built on, over the real Gunicorn server.

The page needs: itself and its assets at `/` and `/explorer/...`, the layer table of `/models`
(shapes, kernels, strides, padding: it computes receptive fields and pooling windows from them),
`/features/<model>?encoding=base64` (every layer, in order, as little-endian float32) and
`/gradcam/<model>`. These tests check each of those promises on the served models.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import numpy as np
import pytest
import requests

from service.metadata import LAYER_TYPES

pytestmark = pytest.mark.server

SAMPLES = Path(__file__).resolve().parents[1] / "service" / "explorer" / "samples"
TIMEOUT = 60


def decode(block: dict) -> np.ndarray:
    assert block["encoding"] == "base64"
    assert block["dtype"] == "float32"
    assert block["byteorder"] == "little"
    raw = base64.b64decode(block["data"])
    arr = np.frombuffer(raw, dtype="<f4")
    assert arr.size == math.prod(block["shape"])
    return arr.reshape(block["shape"])


@pytest.fixture(scope="module")
def models(server) -> dict[str, dict]:
    r = requests.get(f"{server.url}/models", timeout=TIMEOUT)
    r.raise_for_status()
    return {m["name"]: m for m in r.json()["models"]}


def sample_for(model: str) -> bytes:
    manifest = json.loads((SAMPLES / "samples.json").read_text())["samples"]
    entry = next(s for s in manifest if s["model"] == model)
    return (SAMPLES / entry["file"]).read_bytes()


def post(server, path: str, body: bytes, **params: str) -> requests.Response:
    return requests.post(
        f"{server.url}{path}",
        params=params,
        data=body,
        headers={"Content-Type": "image/png"},
        timeout=TIMEOUT,
    )


# ------------------------------------------------------------------ the page and its assets


def test_index_serves_the_explorer_page(server):
    r = requests.get(f"{server.url}/", timeout=TIMEOUT)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/html")
    assert '<script type="module" src="/explorer/explorer.js">' in r.text
    assert "http://" not in r.text and "https://" not in r.text  # nothing from elsewhere

    r = requests.get(f"{server.url}/explorer", timeout=TIMEOUT, allow_redirects=False)
    assert r.status_code in (301, 302, 308)
    assert r.headers["Location"].endswith("/")
    assert requests.get(f"{server.url}/explorer/", timeout=TIMEOUT).url == f"{server.url}/"


@pytest.mark.parametrize(
    ("path", "media_type"),
    [("explorer.js", "text/javascript"), ("explorer.css", "text/css"), ("index.html", "text/html")],
)
def test_assets_are_served_by_the_app(server, path, media_type):
    r = requests.get(f"{server.url}/explorer/{path}", timeout=TIMEOUT)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith(media_type)
    if path != "index.html":
        # SVG's namespace is a name the page never fetches.
        text = r.text.replace('"http://www.w3.org/2000/svg"', "")
        assert "http://" not in text and "https://" not in text
        assert "@import" not in text and "fonts." not in text


def test_samples_are_listed_served_and_small(server, models):
    r = requests.get(f"{server.url}/explorer/samples/samples.json", timeout=TIMEOUT)
    r.raise_for_status()
    samples = r.json()["samples"]
    total = 0
    for s in samples:
        assert s["model"] in models
        assert s["label"] in models[s["model"]]["classes"]
        got = requests.get(f"{server.url}/explorer/samples/{s['file']}", timeout=TIMEOUT)
        assert got.status_code == 200
        assert got.headers["Content-Type"] == "image/png"
        total += len(got.content)
    assert {s["model"] for s in samples} == set(models)
    assert total < 100_000


def test_unknown_asset_is_a_json_404(server):
    r = requests.get(f"{server.url}/explorer/nope.js", timeout=TIMEOUT)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


# ------------------------------------------------------------------ the layer table


def test_layer_table_has_what_the_page_needs(models):
    for m in models.values():
        names = [row["name"] for row in m["layers"]]
        assert len(names) == len(set(names))
        assert m["layers"][-1]["type"] == "softmax"
        assert m["layers"][-1]["output_shape"] == [len(m["classes"])]
        shapes = {m["input"]["name"]: m["input"]["shape"]}
        for row in m["layers"]:
            assert row["type"] in LAYER_TYPES  # the schema's: the page draws each
            # Every row names its inputs, each an earlier row (or the image): the page follows
            # them through residual branches.
            assert row["inputs"] and all(n in shapes for n in row["inputs"]), row
            if row["type"] == "add":
                assert len(row["inputs"]) == 2
                assert all(shapes[n] == row["output_shape"] for n in row["inputs"])
            if row["type"] in ("conv", "pool"):
                h, w = shapes[row["inputs"][0]][:2]
                k, s, pad = row["kernel_size"], row["stride"], row["padding"]
                # The page's receptive-field arithmetic assumes TF's output sizes.
                if pad == "same":
                    expect = [math.ceil(h / s[0]), math.ceil(w / s[1])]
                else:
                    expect = [(h - k[0]) // s[0] + 1, (w - k[1]) // s[1] + 1]
                assert row["output_shape"][:2] == expect, row
            shapes[row["name"]] = row["output_shape"]
            if row["type"] == "conv":
                assert row["output_shape"][2] == row["filters"]


# ------------------------------------------------------------------ /features


@pytest.mark.parametrize("model", ["mnist", "scenes"])
def test_features_are_every_layer_in_order_as_float32(server, models, model):
    m = models[model]
    r = post(server, f"/features/{model}", sample_for(model), encoding="base64")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == model
    assert [layer["name"] for layer in body["layers"]] == [row["name"] for row in m["layers"]]
    acts = {}
    for layer, row in zip(body["layers"], m["layers"], strict=True):
        assert layer["type"] == row["type"]
        assert layer["shape"] == row["output_shape"]
        acts[layer["name"]] = decode(layer)
        assert np.isfinite(acts[layer["name"]]).all()

    x = decode(body["input"])
    assert list(x.shape) == m["input"]["shape"]
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.2

    probs = body["prediction"]["probabilities"]
    assert list(probs) == m["classes"]  # class order, which the page's bars keep
    np.testing.assert_allclose(acts["softmax"], list(probs.values()), atol=1e-5)
    assert body["prediction"]["label"] == m["classes"][int(acts["softmax"].argmax())]

    # Each pooling unit is the max of its window in the layer before: what the page highlights.
    for i, row in enumerate(m["layers"]):
        if row["type"] == "relu":
            assert acts[row["name"]].min() >= 0
        if row["type"] != "pool":
            continue
        before = acts[m["layers"][i - 1]["name"]]
        (kh, kw), (sh, sw) = row["kernel_size"], row["stride"]
        oh, ow, _ = row["output_shape"]
        windows = np.stack(
            [
                before[dy : dy + sh * oh : sh, dx : dx + sw * ow : sw]
                for dy in range(kh)
                for dx in range(kw)
            ]
        )
        np.testing.assert_allclose(acts[row["name"]], windows.max(axis=0), rtol=1e-5, atol=1e-6)


def test_features_layer_selection(server, models):
    r = post(
        server, "/features/mnist", sample_for("mnist"), encoding="base64", layers="pool1,conv1"
    )
    assert r.status_code == 200
    assert [layer["name"] for layer in r.json()["layers"]] == ["conv1", "pool1"]

    # Naming no layer (empty, or only commas and spaces) is asking for all of them.
    every = [row["name"] for row in models["mnist"]["layers"]]
    for none in ("", ",", " , "):
        r = post(server, "/features/mnist", sample_for("mnist"), encoding="png", layers=none)
        assert [layer["name"] for layer in r.json()["layers"]] == every, repr(none)

    r = post(server, "/features/mnist", sample_for("mnist"), layers="conv1,nope")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "bad_request"
    assert "nope" in r.json()["error"]["message"]


def test_features_errors_are_json(server):
    r = post(server, "/features/mnist", b"not an image", encoding="base64")
    assert r.status_code == 415
    assert r.json()["error"]["status"] == 415
    r = post(server, "/features/nosuchmodel", sample_for("mnist"))
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
    r = post(server, "/features/mnist", sample_for("mnist"), encoding="hex")
    assert r.status_code == 400


# ------------------------------------------------------------------ /gradcam


@pytest.mark.parametrize("model", ["scenes", "mnist"])
def test_gradcam_for_the_predicted_class(server, models, model):
    m = models[model]
    r = post(server, f"/gradcam/{model}", sample_for(model), encoding="base64")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["class"] == body["prediction"]["label"]
    layer = m["signatures"]["gradcam"]["layer"]
    assert body["layer"] == layer
    row = next(row for row in m["layers"] if row["name"] == layer)
    heat = decode(body["heatmap"])
    assert list(heat.shape) == row["output_shape"][:2]
    assert np.isfinite(heat).all()
    assert heat.min() >= 0.0 and heat.max() <= 1.0 + 1e-6
    assert list(decode(body["input"]).shape) == m["input"]["shape"]


def test_gradcam_for_a_chosen_class_and_json_encoding(server, models):
    classes = models["scenes"]["classes"]
    body = sample_for("scenes")
    maps = {}
    for cls in classes[:2]:
        r = post(server, "/gradcam/scenes", body, **{"class": cls})
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["class"] == cls
        assert got["heatmap"]["encoding"] == "json"
        maps[cls] = np.array(got["heatmap"]["data"], dtype=np.float32)
        assert list(maps[cls].shape) == got["heatmap"]["shape"]
    # Each class has its own evidence: the two maps differ somewhere by a visible amount.
    assert float(np.abs(maps[classes[0]] - maps[classes[1]]).max()) > 0.1


@pytest.mark.parametrize("model", ["scenes", "mnist"])
def test_gradcam_values_are_the_savedmodels_own(server, models, model):
    """The served heat map equals the SavedModel's `gradcam` signature on the same input."""
    import tensorflow as tf

    from service.registry import find_versions
    from tests.server import MODELS_DIR

    m = models[model]
    cls = m["classes"][1]
    r = post(server, f"/gradcam/{model}", sample_for(model), encoding="base64", **{"class": cls})
    assert r.status_code == 200, r.text
    body = r.json()
    path = find_versions(MODELS_DIR)[model]
    assert path.name == m["version"]
    signature = tf.saved_model.load(str(path)).signatures[m["signatures"]["gradcam"]["name"]]
    want = signature(
        image=tf.constant(decode(body["input"])[None]),
        class_index=tf.constant([m["classes"].index(cls)], tf.int32),
    )["heatmap"].numpy()[0]
    np.testing.assert_allclose(decode(body["heatmap"]), want, atol=1e-5)


def test_gradcam_errors(server):
    r = post(server, "/gradcam/scenes", sample_for("scenes"), **{"class": "unicorn"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "bad_request" and "unicorn" in err["message"]
    r = post(server, "/gradcam/nosuchmodel", sample_for("scenes"))
    assert r.status_code == 404
