"""The standard protocols (issue 29) against the real Gunicorn server, with the real clients:
Triton's `tritonclient.http` for the Open Inference Protocol (/v2), and kserve's
`InferenceRESTClient` for V2 and V1 (TF Serving's REST API, /v1), in a venv of its own.

The probabilities must be /predict's, exactly, for the same image, on every route; and a tensor
equal to the input /features reports must give /predict's answer exactly.
"""

from __future__ import annotations

import base64
import fcntl
import gzip
import json
import os
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from service.config import Settings
from tests import corpus
from tests.test_bench import needs_wrk, run_bench
from tests.test_metrics import delta, scrape

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[1]
DIGIT = corpus.encode(corpus.digit(7, size=28), "PNG")
DIGIT_JPEG = corpus.encode(corpus.digit(4, size=64), "JPEG")
SCENE = (ROOT / "service" / "explorer" / "samples" / "boat-1.png").read_bytes()
MAX_BATCH = Settings().max_batch
KSERVE = "kserve>=0.21"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def predict(server, *images: bytes, model: str = "mnist") -> np.ndarray:
    """/predict's probabilities, one row per image, as float32 (the model's own values)."""
    r = requests.post(
        f"{server.url}/predict/{model}", json={"images": [b64(i) for i in images]}, timeout=30
    )
    assert r.status_code == 200, r.text
    rows = [list(p["probabilities"].values()) for p in r.json()["predictions"]]
    return np.array(rows, dtype=np.float32)


def features_input(server, image: bytes, model: str = "mnist") -> np.ndarray:
    """The preprocessed input /features reports, exact (base64 float32), with a batch axis."""
    r = requests.post(
        f"{server.url}/features/{model}?layers=relu1&encoding=base64",
        data=image,
        headers={"Content-Type": "image/png"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    tensor = r.json()["input"]
    return np.frombuffer(base64.b64decode(tensor["data"]), "<f4").reshape(1, *tensor["shape"])


@pytest.fixture(scope="module")
def client(server):
    with triton.InferenceServerClient(server.url.removeprefix("http://")) as c:
        yield c


def bytes_input(*images: bytes, binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("image_bytes", [len(images)], "BYTES")
    if binary:
        tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
    else:  # JSON strings must be text: base64
        tensor.set_data_from_numpy(np.array([b64(i) for i in images], dtype=np.object_), False)
    return tensor


def fp32_input(array: np.ndarray, binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("image", list(array.shape), "FP32")
    tensor.set_data_from_numpy(np.ascontiguousarray(array, np.float32), binary_data=binary)
    return tensor


# --- Open Inference Protocol with tritonclient ---------------------------------------------------


def test_health_and_server_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "convnet-service"
    assert {"binary_tensor_data", "classification"} <= set(meta["extensions"])
    assert client.is_model_ready("mnist") and client.is_model_ready("scenes")
    assert not client.is_model_ready("no-such-model")


@pytest.mark.parametrize(
    ("model", "shape", "classes"), [("mnist", [32, 32, 1], 10), ("scenes", [32, 32, 3], 4)]
)
def test_model_metadata_describes_inputs_outputs_and_versions(
    client, server, model, shape, classes
):
    meta = client.get_model_metadata(model)
    native = requests.get(f"{server.url}/models/{model}", timeout=10).json()
    assert meta["name"] == model
    assert native["version"] in meta["versions"]
    assert meta["parameters"]["version"] == native["version"]
    assert meta["parameters"]["preprocessing"] == native["preprocessing"]
    assert meta["parameters"]["classes"] == native["classes"]
    inputs = {i["name"]: i for i in meta["inputs"]}
    assert inputs["image"] == {"name": "image", "datatype": "FP32", "shape": [-1, *shape]}
    assert inputs["image_bytes"] == {"name": "image_bytes", "datatype": "BYTES", "shape": [-1]}
    assert meta["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
        {"name": "uncertain", "datatype": "BOOL", "shape": [-1]},
    ]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_uncertain_output_is_the_native_flag(client, server, binary):
    """The `uncertain` flag as a BOOL output, on request: the same as /predict's per image."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((40, 40), 255, np.uint8)).save(buf, format="PNG")
    blank = buf.getvalue()
    images = [DIGIT, blank]
    outputs = [
        triton.InferRequestedOutput("probabilities", binary_data=binary),
        triton.InferRequestedOutput("uncertain", binary_data=binary),
    ]
    result = client.infer("mnist", [bytes_input(*images, binary=binary)], outputs=outputs)
    flags = result.as_numpy("uncertain")
    assert flags.dtype == np.bool_ and flags.shape == (2,)
    native = [
        requests.post(
            f"{server.url}/predict/mnist",
            data=image,
            headers={"Content-Type": "image/png"},
            timeout=30,
        ).json()["predictions"][0]["uncertain"]
        for image in images
    ]
    assert flags.tolist() == native and native[1] is True  # a blank image is flagged
    np.testing.assert_array_equal(result.as_numpy("probabilities"), predict(server, *images))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_bytes_input_gives_predicts_probabilities_exactly(client, server, binary):
    expected = predict(server, DIGIT, DIGIT_JPEG)
    outputs = None if binary else [triton.InferRequestedOutput("probabilities", binary_data=False)]
    result = client.infer(
        "mnist", [bytes_input(DIGIT, DIGIT_JPEG, binary=binary)], outputs=outputs, request_id="r1"
    )
    response = result.get_response()
    assert response["model_name"] == "mnist" and response["id"] == "r1"
    got = result.as_numpy("probabilities")
    assert got.dtype == np.float32 and got.shape == (2, 10)
    np.testing.assert_array_equal(got, expected)
    binary_output = "binary_data_size" in response["outputs"][0].get("parameters", {})
    assert binary_output == binary  # tritonclient asks for binary outputs unless told otherwise


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize(("model", "image"), [("mnist", DIGIT), ("scenes", SCENE)])
def test_fp32_tensor_of_features_input_gives_predicts_answer_exactly(
    client, server, model, image, binary
):
    tensor = features_input(server, image, model)
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary)]
    result = client.infer(model, [fp32_input(tensor, binary)], outputs=outputs)
    np.testing.assert_array_equal(
        result.as_numpy("probabilities"), predict(server, image, model=model)
    )


def test_classification_extension(client, server):
    expected = predict(server, DIGIT)[0]
    for binary in (True, False):
        out = triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=3)
        got = client.infer("mnist", [bytes_input(DIGIT)], outputs=[out]).as_numpy("probabilities")
        assert got.shape == (1, 3)
        rows = [(v.decode() if isinstance(v, bytes) else v).split(":") for v in got[0]]
        order = np.argsort(-expected, kind="stable")[:3]
        assert [int(index) for _, index, _ in rows] == order.tolist()
        assert [label for _, _, label in rows] == [str(i) for i in order]  # mnist's labels
        assert float(rows[0][0]) == pytest.approx(expected[order[0]], abs=1e-6)


def test_every_version_on_disk_is_addressable(client, server):
    served = requests.get(f"{server.url}/v2/models/mnist", timeout=10).json()
    assert len(served["versions"]) >= 2  # models/mnist holds more than the served version
    for version in served["versions"]:
        assert client.is_model_ready("mnist", version)
        assert client.get_model_metadata("mnist", version)["versions"] == [version]
        result = client.infer("mnist", [bytes_input(DIGIT)], model_version=version)
        assert result.get_response()["model_version"] == version
        assert result.as_numpy("probabilities").argmax() == 7
    served_version = served["parameters"]["version"]
    result = client.infer("mnist", [bytes_input(DIGIT)], model_version=served_version)
    np.testing.assert_array_equal(result.as_numpy("probabilities"), predict(server, DIGIT))
    for unknown in ("999", "03", "x"):
        with pytest.raises(InferenceServerException) as exc:
            client.infer("mnist", [bytes_input(DIGIT)], model_version=unknown)
        assert exc.value.status() == "404", unknown
        assert not client.is_model_ready("mnist", unknown)


def test_compressed_request(client, server):
    for algorithm in ("gzip", "deflate"):
        result = client.infer(
            "mnist", [bytes_input(DIGIT)], request_compression_algorithm=algorithm
        )
        np.testing.assert_array_equal(result.as_numpy("probabilities"), predict(server, DIGIT))


def test_errors_come_back_through_the_client_with_the_right_status(client):
    cases = [
        (lambda: client.infer("no-such-model", [bytes_input(DIGIT)]), "404", "no model named"),
        (lambda: client.infer("mnist", [fp32_input(np.zeros((1, 28, 28, 1)))]), "400", "shape"),
        (lambda: client.infer("mnist", [bytes_input(b"\x89PNG\r\n\x1a\nbroken")]), "422", ""),
        (lambda: client.infer("mnist", [bytes_input(b"plain text")]), "415", ""),
        (
            lambda: client.infer("mnist", [bytes_input(*[DIGIT] * (MAX_BATCH + 1))]),
            "413",
            "at most",
        ),
        (
            lambda: client.infer("mnist", [fp32_input(np.full((1, 32, 32, 1), np.nan))]),
            "400",
            "finite",
        ),
        (
            lambda: client.infer(
                "mnist", [bytes_input(DIGIT)], outputs=[triton.InferRequestedOutput("logits")]
            ),
            "400",
            "unknown output",
        ),
    ]
    for call, status, words in cases:
        with pytest.raises(InferenceServerException) as exc:
            call()
        assert exc.value.status() == status, (status, exc.value.message())
        assert words in exc.value.message()
    wrong_name = triton.InferInput("pixels", [1], "BYTES")
    wrong_name.set_data_from_numpy(np.array([DIGIT], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="unknown input"):
        client.infer("mnist", [wrong_name])


# --- Hand-made bodies: what the clients never send ------------------------------------------------


def v2_post(server, body: bytes, headers: dict | None = None, model: str = "mnist"):
    return requests.post(
        f"{server.url}/v2/models/{model}/infer", data=body, headers=headers or {}, timeout=30
    )


def binary_body(header: dict, data: bytes) -> tuple[bytes, dict]:
    head = json.dumps(header).encode()
    return head + data, {"Inference-Header-Content-Length": str(len(head))}


def test_malformed_v2_requests_get_a_json_error_and_the_right_4xx(server):
    one = {"name": "image_bytes", "datatype": "BYTES", "shape": [1]}
    elements = struct.pack("<I", len(DIGIT)) + DIGIT
    cases = [
        (b"not json", {}, 400),
        (b"[]", {}, 400),
        (json.dumps({"inputs": []}).encode(), {}, 400),
        (json.dumps({"inputs": [one, one]}).encode(), {}, 400),
        (json.dumps({"inputs": [{**one, "datatype": "FP32"}]}).encode(), {}, 400),
        (json.dumps({"inputs": [{**one, "data": ["%%%"]}]}).encode(), {}, 400),
        (json.dumps({"inputs": [{**one, "data": [1]}]}).encode(), {}, 400),
        (json.dumps({"inputs": [{**one, "shape": [-1]}]}).encode(), {}, 400),
        (json.dumps({"inputs": [{**one, "shape": [2], "data": [b64(DIGIT)]}]}).encode(), {}, 400),
        (json.dumps({"inputs": [{**one, "shape": [10**12]}]}).encode(), {}, 413),
        (
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "image",
                            "datatype": "FP32",
                            "shape": [1, 32, 32, 1],
                            "data": ["a"] * 1024,
                        }
                    ]
                }
            ).encode(),
            {},
            400,
        ),
        (
            json.dumps(
                {
                    "inputs": [
                        {"name": "image", "datatype": "FP32", "shape": [0, 32, 32, 1], "data": []}
                    ]
                }
            ).encode(),
            {},
            400,
        ),
        (
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "image",
                            "datatype": "FP32",
                            "shape": [1, 32, 32, 1],
                            "data": [[1, 2], [3]],
                        }
                    ]
                }
            ).encode(),
            {},
            400,
        ),
        # Binary sections that lie about their sizes.
        (
            *binary_body(
                {"inputs": [{**one, "parameters": {"binary_data_size": 10**6}}]}, elements
            ),
            400,
        ),
        (*binary_body({"inputs": [{**one, "parameters": {"binary_data_size": 3}}]}, elements), 400),
        (
            *binary_body(
                {"inputs": [{**one, "parameters": {"binary_data_size": len(elements)}}]},
                elements + b"xx",
            ),
            400,
        ),
        (
            *binary_body(
                {"inputs": [{**one, "parameters": {"binary_data_size": 8}}]},
                struct.pack("<I", 2**31) + b"abcd",
            ),
            400,
        ),
        (
            *binary_body(
                {"inputs": [{**one, "parameters": {"binary_data_size": "8"}}]}, b"12345678"
            ),
            400,
        ),
        # A million empty elements for a shape of one: refused after the second, not split.
        (
            *binary_body(
                {"inputs": [{**one, "parameters": {"binary_data_size": 4 * 10**6}}]},
                bytes(4 * 10**6),
            ),
            400,
        ),
        # A batch past the limit: 413 before its data is read.
        (
            json.dumps(
                {"inputs": [{"name": "image", "datatype": "FP32", "shape": [10**9, 32, 32, 1]}]}
            ).encode(),
            {},
            413,
        ),
        (b"{}", {"Inference-Header-Content-Length": "99"}, 400),
        (b"{}", {"Inference-Header-Content-Length": "-1"}, 400),
        (b"{}", {"Inference-Header-Content-Length": "two"}, 400),
        (json.dumps({"inputs": [one]}).encode(), {"Content-Encoding": "br"}, 415),
        (b"\x1f\x8b\x08\x00garbage", {"Content-Encoding": "gzip"}, 400),
        # A gzip bomb: 64 MiB of zeros in 64 KB, past the body limit once inflated.
        (gzip.compress(bytes(64 * 2**20)), {"Content-Encoding": "gzip"}, 413),
    ]
    for body, headers, status in cases:
        r = v2_post(server, body, headers)
        assert r.status_code == status, (body[:120], headers, r.text)
        error = r.json()["error"]
        assert isinstance(error, str) and error, r.text
    # The wrong method and an unknown route under /v2 answer in the protocol's shape too.
    r = requests.get(f"{server.url}/v2/models/mnist/infer", timeout=10)
    assert r.status_code == 405 and isinstance(r.json()["error"], str)
    r = requests.get(f"{server.url}/v2/repository/index", timeout=10)
    assert r.status_code == 404 and isinstance(r.json()["error"], str)
    # The native API keeps its own error body.
    r = requests.post(f"{server.url}/predict/nope", data=DIGIT, timeout=10)
    assert r.json()["error"]["code"] == "not_found"


def test_a_bytes_request_decodes_at_most_its_pixel_budget(server):
    from tests import hostile_corpus

    bomb = hostile_corpus.png_claiming(100_000, 100_000)
    body, headers = binary_body(
        {
            "inputs": [
                {
                    "name": "image_bytes",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": 4 + len(bomb)},
                }
            ]
        },
        struct.pack("<I", len(bomb)) + bomb,
    )
    r = v2_post(server, body, headers)
    assert r.status_code == 413 and "error" in r.json(), r.text


def test_hostile_files_get_the_native_apis_status_through_both_protocols(client, server):
    """tests/hostile_corpus.py's files (bombs, truncated, corrupt, foreign formats) as V2 BYTES
    through tritonclient and as TF Serving b64: the status /predict gives, fast, never a 5xx."""
    from tests import hostile_corpus
    from tests.test_hostile_input import REQUEST_BOUND

    for p in hostile_corpus.payloads():
        started = time.perf_counter()
        with pytest.raises(InferenceServerException) as exc:
            client.infer("mnist", [bytes_input(p.data)])
        assert exc.value.status() == str(p.status), (p.kind, exc.value.message())
        r = requests.post(
            f"{server.url}/v1/models/mnist:predict",
            json={"instances": [{"b64": b64(p.data)}]},
            timeout=30,
        )
        assert r.status_code == p.status and isinstance(r.json()["error"], str), (p.kind, r.text)
        assert time.perf_counter() - started < 2 * REQUEST_BOUND, p.kind


# --- TF Serving REST API --------------------------------------------------------------------------


def test_tfserving_status_metadata_predict_and_classify(server):
    url = f"{server.url}/v1/models/mnist"
    native = requests.get(f"{server.url}/models/mnist", timeout=10).json()
    status = requests.get(url, timeout=10).json()
    versions = [s["version"] for s in status["model_version_status"]]
    assert native["version"] in versions and status["ready"] is True
    assert {s["state"] for s in status["model_version_status"]} == {"AVAILABLE"}
    sig = requests.get(f"{url}/metadata", timeout=10).json()["metadata"]["signature_def"]
    image = sig["signature_def"]["serving_default"]["inputs"]["image"]
    assert [d["size"] for d in image["tensor_shape"]["dim"]] == ["-1", "32", "32", "1"]

    expected = predict(server, DIGIT, DIGIT_JPEG).tolist()
    rows = [{"b64": b64(DIGIT)}, {"image": {"b64": b64(DIGIT_JPEG)}}]
    r = requests.post(f"{url}:predict", json={"instances": rows}, timeout=30)
    assert r.status_code == 200, r.text
    assert np.array_equal(np.float32(r.json()["predictions"]), np.float32(expected))
    tensor = features_input(server, DIGIT).tolist()
    r = requests.post(f"{url}:predict", json={"inputs": {"image": tensor}}, timeout=30)
    assert np.array_equal(np.float32(r.json()["outputs"]), np.float32(expected[:1]))
    r = requests.post(
        f"{url}:classify", json={"examples": [{"image": {"b64": b64(DIGIT)}}]}, timeout=30
    )
    label, score = r.json()["results"][0][0]
    assert label == "7" and np.float32(score) == np.float32(max(expected[0]))

    for version in versions:
        r = requests.post(
            f"{url}/versions/{version}:predict", json={"instances": rows[:1]}, timeout=60
        )
        assert r.status_code == 200 and np.argmax(r.json()["predictions"][0]) == 7, r.text
    for body, status in [
        ({"instances": [{"b64": b64(DIGIT)}, [0.0] * 3]}, 400),
        ({"instances": [{"b64": "%%%"}]}, 400),
        ({"instances": []}, 400),
        ({"instances": [{"b64": b64(DIGIT)}], "inputs": []}, 400),
        ({"instances": [{"b64": b64(DIGIT)}], "signature_name": "other"}, 400),
        ({"instances": [{"b64": b64(DIGIT)}] * (MAX_BATCH + 1)}, 413),
        ({"instances": [{"b64": b64(b"\x89PNG\r\n\x1a\nbroken")}]}, 422),
    ]:
        r = requests.post(f"{url}:predict", json=body, timeout=30)
        assert r.status_code == status, (str(body)[:100], r.text)
        assert isinstance(r.json()["error"], str)
    r = requests.post(f"{url}/versions/999:predict", json={"instances": rows[:1]}, timeout=30)
    assert r.status_code == 404 and isinstance(r.json()["error"], str)


def test_tfserving_uncertain_signature_carries_the_native_flag(server):
    """`signature_name: "uncertain"`: each row is the probabilities and /predict's flag, as TF
    Serving answers a signature with two outputs; refused where the version has no rule."""
    blank = corpus.png(np.full((40, 40), 255, np.uint8))
    images = [DIGIT, blank]
    url = f"{server.url}/v1/models/mnist"
    native = [
        requests.post(
            f"{server.url}/predict/mnist", data=i, headers={"Content-Type": "image/png"}, timeout=30
        ).json()["predictions"][0]
        for i in images
    ]
    assert [p["uncertain"] for p in native] == [False, True]
    sigs = requests.get(f"{url}/metadata", timeout=10).json()["metadata"]["signature_def"]
    outputs = sigs["signature_def"]["uncertain"]["outputs"]
    assert outputs["uncertain"]["dtype"] == "DT_BOOL" and set(outputs) == {
        "probabilities",
        "uncertain",
    }

    rows = [{"b64": b64(i)} for i in images]
    body = {"signature_name": "uncertain", "instances": rows}
    r = requests.post(f"{url}:predict", json=body, timeout=30)
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    assert [row["uncertain"] for row in got] == [False, True]
    np.testing.assert_array_equal(
        np.float32([row["probabilities"] for row in got]), predict(server, *images)
    )
    body = {"signature_name": "uncertain", "inputs": {"image": rows}}
    columns = requests.post(f"{url}:predict", json=body, timeout=30).json()["outputs"]
    assert columns["uncertain"] == [False, True]
    np.testing.assert_array_equal(np.float32(columns["probabilities"]), predict(server, *images))

    # A signature for :predict only; and mnist v3 was exported before the rule existed.
    body = {"signature_name": "uncertain", "examples": [{"image": rows[0]}]}
    assert requests.post(f"{url}:classify", json=body, timeout=30).status_code == 400
    body = {"signature_name": "uncertain", "instances": rows[:1]}
    r = requests.post(f"{url}/versions/3:predict", json=body, timeout=60)
    assert r.status_code == 400 and "uncertain" in r.json()["error"], r.text
    sigs = requests.get(f"{url}/versions/3/metadata", timeout=10).json()["metadata"]
    assert set(sigs["signature_def"]["signature_def"]) == {"serving_default"}


# --- One service underneath: metrics --------------------------------------------------------------


def test_protocol_requests_are_counted_under_their_route_templates(client, server):
    before = scrape(server.url)
    client.infer("mnist", [bytes_input(DIGIT)])
    with pytest.raises(InferenceServerException):
        client.infer("mnist", [bytes_input(b"plain text")])
    requests.post(
        f"{server.url}/v1/models/mnist:predict",
        json={"instances": [{"b64": b64(DIGIT)}]},
        timeout=30,
    )
    requests.post(f"{server.url}/v1/models/nope:predict", json={"instances": []}, timeout=30)
    after = scrape(server.url)
    requests_total = "convnet_http_requests_total"
    v2 = "/v2/models/<model>/infer"
    assert delta(before, after, requests_total, endpoint=v2, model="mnist", status="200") == 1
    assert delta(before, after, requests_total, endpoint=v2, model="mnist", status="415") == 1
    v1 = "/v1/models/<model>:predict"
    assert delta(before, after, requests_total, endpoint=v1, model="mnist", status="200") == 1
    assert delta(before, after, requests_total, endpoint=v1, model="unknown", status="404") == 1
    assert delta(before, after, "convnet_predictions_total", model="mnist", **{"class": "7"}) == 2
    # Both V2 requests carried one image (the refused one too, as on /predict).
    assert delta(before, after, "convnet_images_per_request_count", endpoint=v2, model="mnist") == 2


# --- kserve's own client, in its own venv ---------------------------------------------------------


def kserve_venv() -> Path:
    """A venv with kserve, made once and cached: kserve pins a protobuf that clashes with
    TensorFlow's. CONVNET_KSERVE_VENV names another place for it."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = Path(os.environ.get("CONVNET_KSERVE_VENV") or cache / "convnet-service" / "kserve-venv")
    stamp = path / ".convnet-installed"
    if stamp.exists() and stamp.read_text() == KSERVE:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test runs make it once
        if not (stamp.exists() and stamp.read_text() == KSERVE):
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(path)], check=True)
            subprocess.run(
                [
                    str(path / "bin" / "python"),
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    KSERVE,
                ],
                check=True,
                timeout=600,
            )
            stamp.write_text(KSERVE)
    return path


def test_kserve_rest_client_v2_and_v1(server, tmp_path):
    python = kserve_venv() / "bin" / "python"
    tensor = features_input(server, DIGIT)
    case = tmp_path / "case.json"
    case.write_text(
        json.dumps({"model": "mnist", "png_b64": b64(DIGIT), "tensor": tensor.tolist()})
    )
    done = subprocess.run(
        [str(python), str(ROOT / "tests" / "kserve_client.py"), server.url, str(case)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    expected = predict(server, DIGIT)
    v2, v1 = out["v2"], out["v1"]
    assert v2["live"] is True and v2["ready"] is True
    assert v2["model_ready"] is True and v2["unknown_model_ready"] is False
    assert v2["bytes_model_name"] == "mnist" and v2["bytes_id"] == "kserve-test"
    for key in ("bytes_binary", "fp32_json", "fp32_binary"):
        np.testing.assert_array_equal(np.float32(v2[key]), expected, err_msg=key)
    status, message = v2["unknown_model"]
    assert status == 404 and "no model named 'no-such-model'" in message
    assert v1["model_ready"] is True
    np.testing.assert_array_equal(np.float32(v1["b64"]), expected)
    np.testing.assert_array_equal(np.float32(v1["tensor"]), expected)
    status, message = v1["bad_shape"]
    assert status == 400 and "does not match" in message


def test_the_snippets_in_docs_protocols_md_run(server, tmp_path):
    """docs/protocols.md's client snippets, run as written against this server."""
    (tmp_path / "digit.png").write_bytes(DIGIT)
    text = (ROOT / "docs" / "protocols.md").read_text()
    snippets = re.findall(r"```(python|sh)\n(.*?)```", text, re.S)
    assert [lang for lang, _ in snippets] == ["python", "python", "sh"]
    host = server.url.removeprefix("http://")
    for lang, code in snippets:
        code = code.replace("localhost:8000", host)
        if lang == "sh":
            command = ["bash", "-c", code]
        elif "kserve" in code:
            command = [str(kserve_venv() / "bin" / "python"), "-c", code]
        else:
            command = [sys.executable, "-c", code]
        done = subprocess.run(
            command, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, (code, done.stderr[-2000:])
        assert done.stdout.strip(), code
        if lang == "sh":
            assert np.argmax(json.loads(done.stdout)["predictions"][0]) == 7


@needs_wrk
def test_bench_drives_the_protocol_cells(tmp_path):
    """bench.run's V2 (BYTES and FP32, binary) and TF Serving cells: every request answered."""
    rows, _ = run_bench(tmp_path, "--concurrency", "2", "--only", "service", "--path", "/v")
    assert {(r["path"], r["body"]) for r in rows} == {
        ("/v2/models/mnist/infer", "digit28.v2bytes"),
        ("/v2/models/mnist/infer", "digit28.v2fp32"),
        ("/v1/models/mnist:predict", "digit28.tfserving.json"),
    }
    for row in rows:
        assert row["errors"] == 0 and row["rps"] > 0, row
        assert row["model_us"] > 0, row  # the model ran: the stage histograms moved


def test_with_batching_on_the_protocols_share_the_batcher_and_its_answers():
    """In process, batching on: tensors and images go through the same batcher as /predict."""
    from service.app import create_app
    from tests.server import MODELS_DIR

    app = create_app(models_dir=MODELS_DIR, load_in_background=False, batching=True)
    client = app.test_client()
    expected = client.post("/predict/mnist", data=DIGIT, headers={"Content-Type": "image/png"})
    expected = list(expected.json["predictions"][0]["probabilities"].values())
    body = {
        "inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": [b64(DIGIT)]}]
    }
    r = client.post("/v2/models/mnist/infer", json=body)
    assert r.status_code == 200 and r.json["outputs"][0]["data"] == expected, r.json
    features = client.post(
        "/features/mnist?encoding=base64&layers=relu1",
        data=DIGIT,
        headers={"Content-Type": "image/png"},
    )
    tensor = np.frombuffer(base64.b64decode(features.json["input"]["data"]), "<f4")
    body = {
        "inputs": [
            {"name": "image", "datatype": "FP32", "shape": [1, 32, 32, 1], "data": tensor.tolist()}
        ]
    }
    r = client.post("/v2/models/mnist/infer", json=body)
    assert r.status_code == 200 and r.json["outputs"][0]["data"] == expected, r.json
    r = client.post("/v1/models/mnist:predict", json={"instances": [{"b64": b64(DIGIT)}]})
    assert r.json["predictions"] == [expected]
    registry = app.extensions["convnet"].metrics.registry
    calls = registry.get_sample_value(
        "convnet_inference_batch_size_count", {"model": "mnist", "signature": "predict"}
    )
    assert calls and calls >= 4  # every call went through the batcher's recorder
