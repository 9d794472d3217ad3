"""`GET /models/<name>/weights` and `POST /convolve` over the real Gunicorn server.

The weights the service serves from the file written beside its engine must be the SavedModel's
own variables (TensorFlow reads those here, never in the service), in Keras's layouts, and must
reproduce the activations `/features` returns; a file that does not match the layer table is
refused. `/convolve` must compute exactly what a naive loop computes.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import numpy as np
import pytest
import requests

from service import engines
from service import weights as weights_file
from service.convolve import same_padding
from tests.server import MODELS_DIR

pytestmark = pytest.mark.server

SAMPLES = Path(__file__).resolve().parents[1] / "service" / "explorer" / "samples"
TIMEOUT = 60


def decode(block: dict) -> np.ndarray:
    assert block["encoding"] == "base64" and block["dtype"] == "float32"
    arr = np.frombuffer(base64.b64decode(block["data"]), "<f4")
    assert arr.size == math.prod(block["shape"])
    return arr.reshape(block["shape"])


def weights(server, model: str, **params: str) -> requests.Response:
    return requests.get(f"{server.url}/models/{model}/weights", params=params, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def served(server) -> dict[str, dict]:
    r = requests.get(f"{server.url}/models", timeout=TIMEOUT)
    return {m["name"]: m for m in r.json()["models"]}


def saved_variables(model: dict) -> dict[str, np.ndarray]:
    """The SavedModel's variables by '<layer>/<weight>' (conv1/kernel, bn1/gamma, ...)."""
    import tensorflow as tf

    path = MODELS_DIR / model["name"] / model["version"]
    loaded = tf.saved_model.load(str(path))
    return {"/".join(v.name.split(":")[0].split("/")[-2:]): v.numpy() for v in loaded.variables}


@pytest.mark.parametrize("name", ["mnist", "scenes"])
def test_weights_are_the_saved_models_variables(server, served, name):
    model = served[name]
    body = weights(server, name, encoding="base64").json()
    assert (body["model"], body["version"]) == (name, model["version"])
    weighted = [r for r in model["layers"] if r["type"] in ("conv", "dense", "batchnorm")]
    assert [(x["name"], x["type"]) for x in body["layers"]] == [
        (r["name"], r["type"]) for r in weighted
    ]
    saved = saved_variables(model)
    for layer in body["layers"]:
        n = layer["name"]
        if layer["type"] == "batchnorm":
            gamma, beta = saved[f"{n}/gamma"], saved[f"{n}/beta"]
            mean, var = saved[f"{n}/moving_mean"], saved[f"{n}/moving_variance"]
            scale = gamma / np.sqrt(
                var + 1e-3
            )  # Keras's default epsilon (training/architectures.py keeps it)
            np.testing.assert_allclose(decode(layer["scale"]), scale, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(
                decode(layer["offset"]), beta - mean * scale, rtol=1e-5, atol=1e-6
            )
            continue
        np.testing.assert_allclose(decode(layer["kernel"]), saved[f"{n}/kernel"], rtol=1e-6)
        if f"{n}/bias" in saved:
            np.testing.assert_allclose(decode(layer["bias"]), saved[f"{n}/bias"], rtol=1e-6)
        else:
            assert layer["bias"] is None
    if name == "mnist":
        first = body["layers"][0]
        assert (first["name"], first["kernel"]["shape"]) == ("conv1", [5, 5, 1, 6])


def test_json_and_png_encodings_and_layer_selection(server):
    body = weights(server, "mnist", layers="fc1, conv1").json()
    assert [x["name"] for x in body["layers"]] == ["conv1", "fc1"]  # network order
    conv1 = body["layers"][0]
    assert np.array(conv1["kernel"]["data"]).shape == (5, 5, 1, 6)
    assert conv1["bias"]["shape"] == [6]
    b64 = weights(server, "mnist", layers="conv1", encoding="base64").json()["layers"][0]
    np.testing.assert_allclose(np.array(conv1["kernel"]["data"]), decode(b64["kernel"]), atol=5e-7)
    png = weights(server, "mnist", layers="conv2", encoding="png").json()["layers"][0]["kernel"]
    assert png["shape"] == [5, 5, 6, 16] and png["media_type"] == "image/png"
    assert png["grid"]["rows"] * png["grid"]["cols"] >= 6 * 16
    assert base64.b64decode(png["data"]).startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ({"layers": "nosuch"}, 400, "unknown layer"),
        ({"layers": "conv1,relu1"}, 400, "no weights"),
        ({"encoding": "xml"}, 400, "unknown encoding"),
    ],
)
def test_bad_requests_are_json_errors(server, params, status, words):
    r = weights(server, "mnist", **params)
    assert r.status_code == status
    error = r.json()["error"]
    assert error["status"] == status and words in error["message"]


def test_unknown_model_is_404(server):
    r = weights(server, "nosuch")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def _conv_reference(x: np.ndarray, kernel: np.ndarray, stride: list[int], padding: str):
    """A plain loop: each output unit is the sum of its window times the kernel."""
    kh, kw, _, cout = kernel.shape
    if padding == "same":
        (t, b), (lf, rt) = (
            same_padding(x.shape[0], kh, stride[0]),
            same_padding(x.shape[1], kw, stride[1]),
        )
        x = np.pad(x, ((t, b), (lf, rt), (0, 0)))
    oh = (x.shape[0] - kh) // stride[0] + 1
    ow = (x.shape[1] - kw) // stride[1] + 1
    out = np.zeros((oh, ow, cout))
    for y in range(oh):
        for xx in range(ow):
            win = x[y * stride[0] : y * stride[0] + kh, xx * stride[1] : xx * stride[1] + kw]
            out[y, xx] = np.tensordot(win, kernel, axes=3)
    return out


@pytest.mark.parametrize("name", ["mnist", "scenes"])
def test_weights_reproduce_the_served_activations(server, served, name):
    """Every conv, dense and batch-norm layer: its input's activations times the weights served
    (plus bias, through its ReLU) is the activation /features returns, the arithmetic the
    explorer shows at a unit."""
    model = served[name]
    sample = next(
        s
        for s in json.loads((SAMPLES / "samples.json").read_text())["samples"]
        if s["model"] == name
    )
    feats = requests.post(
        f"{server.url}/features/{name}?encoding=base64",
        data=(SAMPLES / sample["file"]).read_bytes(),
        headers={"Content-Type": "image/png"},
        timeout=TIMEOUT,
    ).json()
    acts = {x["name"]: decode(x).astype(np.float64) for x in feats["layers"]}
    acts["image"] = decode(feats["input"]).astype(np.float64)
    params = {x["name"]: x for x in weights(server, name, encoding="base64").json()["layers"]}
    rows = {r["name"]: r for r in model["layers"]}
    for lname, layer in params.items():
        row = rows[lname]
        x = acts[row["inputs"][0]]
        if row["type"] == "batchnorm":
            got = x * decode(layer["scale"]) + decode(layer["offset"])
        else:
            kernel = decode(layer["kernel"]).astype(np.float64)
            if row["type"] == "conv":
                got = _conv_reference(x, kernel, row["stride"], row["padding"])
            else:
                got = x.reshape(-1) @ kernel
            if layer["bias"] is not None:
                got = got + decode(layer["bias"])
            if row.get("activation") == "relu":
                got = np.maximum(got, 0)
        want = acts[lname]
        np.testing.assert_allclose(got, want, atol=1e-4 * max(1, np.abs(want).max()), err_msg=lname)


def test_a_weights_file_off_the_layer_table_is_refused(tmp_path):
    """Every array the layer table implies, float32 of its shape, and nothing else; a conv
    without a bias reads as None."""
    newest = max((MODELS_DIR / "scenes").glob("[0-9]*"), key=lambda p: int(p.name))
    metadata = engines.read_metadata(newest)
    shapes = weights_file.expected_shapes(metadata)
    assert shapes["conv1"]["kernel"] == (3, 3, 3, 32) and shapes["fc"]["kernel"] == (128, 4)
    good = {
        f"{layer}/{array}": np.ones(shape, np.float32)
        for layer, wanted in shapes.items()
        for array, shape in wanted.items()
    }
    del good["conv1/bias"]
    path = tmp_path / "good.weights.npz"
    np.savez(path, **good)
    read = weights_file.read(path, metadata)
    assert list(read) == list(shapes) and read["conv1"]["bias"] is None
    assert read["bn1"]["scale"].shape == (32,)
    bad = [
        ({**good, "fc/kernel": np.ones((4, 128), np.float32)}, r"fc/kernel is float32 \[4, 128\]"),
        ({**good, "bn1/offset": np.ones(32)}, "bn1/offset is float64"),
        ({k: v for k, v in good.items() if k != "b1_1_conv_a/kernel"}, "no b1_1_conv_a/kernel"),
        ({**good, "flip/kernel": np.ones(3, np.float32)}, "belong to no weighted layer"),
    ]
    for arrays, words in bad:
        np.savez(tmp_path / "bad.npz", **arrays)
        with pytest.raises(weights_file.WeightsError, match=words):
            weights_file.read(tmp_path / "bad.npz", metadata)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(weights_file.WeightsError, match="not a readable weights file"):
        weights_file.read(tmp_path / "junk.npz", metadata)


# ------------------------------------------------------------------ /convolve


def convolve(server, body) -> requests.Response:
    return requests.post(f"{server.url}/convolve", json=body, timeout=TIMEOUT)


KERNELS = {
    "identity": [[0, 0, 0], [0, 1, 0], [0, 0, 0]],
    "edges": [[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]],
    "sharpen": [[0, -1, 0], [-1, 5, -1], [0, -1, 0]],
    "gaussian": [[1 / 16, 2 / 16, 1 / 16], [2 / 16, 4 / 16, 2 / 16], [1 / 16, 2 / 16, 1 / 16]],
    "wide": [[0.5, -2.25, 3.0, 1.0, -0.125]],
}


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_convolve_is_exact(server, kernel, padding):
    image = np.random.default_rng(7).random((32, 29)).round(4)
    k = np.array(KERNELS[kernel], np.float64)
    r = convolve(server, {"image": image.tolist(), "kernel": k.tolist(), "padding": padding})
    assert r.status_code == 200, r.text
    body = r.json()
    want = _conv_reference(image[..., None], k[..., None, None], [1, 1], padding)[..., 0]
    got = np.array(body["data"])
    assert body["shape"] == list(want.shape) == list(got.shape)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert (body["min"], body["max"]) == (got.min(), got.max())
    if kernel == "identity":  # the image itself ("valid": less its border)
        assert np.array_equal(got, image if padding == "same" else image[1:-1, 1:-1])


@pytest.mark.parametrize(
    ("raw", "status", "words"),
    [
        ('{"image": [[NaN]], "kernel": [[1]]}', 400, "finite"),
        ('{"image": [[1e999]], "kernel": [[1]]}', 400, "finite"),
        ('{"image": [[1, 2], [3]], "kernel": [[1]]}', 400, "same length"),
        ('{"image": [[1]], "kernel": [[1, 1]], "padding": "valid"}', 400, "larger than"),
        ('{"image": [[1]], "kernel": [[1]], "padding": "full"}', 400, "padding"),
        ('{"image": [[1]], "kernel": [[1]], "stride": 2}', 400, "stride"),
        ('{"image": [], "kernel": [[1]]}', 400, "image"),
        ('{"image": [[1]]}', 400, "kernel"),
        ("[1, 2", 400, "invalid JSON"),
        (json.dumps({"image": [[0] * 65], "kernel": [[1]]}), 400, "at most 64"),
        (json.dumps({"image": [[0]] * 65, "kernel": [[1]]}), 400, "at most 64"),
        (json.dumps({"image": [[0]], "kernel": [[1]] * 8}), 400, "at most 7"),
    ],
)
def test_convolve_rejects_bad_bodies(server, raw, status, words):
    r = requests.post(
        f"{server.url}/convolve",
        data=raw,
        headers={"Content-Type": "application/json"},
        timeout=TIMEOUT,
    )
    assert r.status_code == status, r.text
    assert r.json()["error"]["status"] == status and words in r.json()["error"]["message"]


def test_convolve_wants_json(server):
    r = requests.post(
        f"{server.url}/convolve", data=b"1", headers={"Content-Type": "text/plain"}, timeout=TIMEOUT
    )
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
