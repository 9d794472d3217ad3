"""Training snapshots over the real Gunicorn server: `GET /models/<name>/snapshots` and
`POST /snapshots/<name>`, and the explorer's "watching it learn" view in headless Chromium.

The fixture makes its own snapshot folder in the format training/snapshots.py exports (so the
test does not wait for a training run): "init", one dense layer of random weights whose
probabilities the test computes with numpy, and "final", the served model's own engine, whose
probabilities must be /predict's. A copy of scenes without snapshots checks what the API and the page say then.
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from service.engines import convert
from service.metadata import SNAPSHOTS_FILE, SNAPSHOTS_FOLDER, validate_snapshots
from tests import test_explorer as explorer
from tests.server import ROOT, GunicornServer
from tests.test_explorer import CHROMIUM, assert_clean, click_sample, open_explorer, shot

pytestmark = [pytest.mark.server, pytest.mark.slow]

# The explorer tests' headless Chromium and page (fixtures found by their names here).
browser = explorer.browser
page = explorer.page

REAL_MODELS = ROOT / "models"
SAMPLES = ROOT / "service" / "explorer" / "samples"
TIMEOUT = 60
HISTORY = {"loss": [2.3, 0.4, 0.2], "val_loss": [2.2, 0.5, 0.3], "accuracy": [0.1, 0.9, 0.95]}


def newest(name: str) -> Path:
    return max(
        (REAL_MODELS / name).glob("*/saved_model.pb"), key=lambda p: int(p.parent.name)
    ).parent


# "init": random weights, one dense layer; the test computes its probabilities with numpy.
INIT_WEIGHTS = np.random.default_rng(3).normal(0, 0.05, (32 * 32, 10)).astype(np.float32)


def init_probabilities(image: np.ndarray) -> np.ndarray:
    logits = image.reshape(-1).astype(np.float64) @ INIT_WEIGHTS
    e = np.exp(logits - logits.max())
    return e / e.sum()


def random_engine(out: Path) -> None:
    """A LiteRT engine image (N, 32, 32, 1) -> probabilities: softmax(flatten(image) @ W)."""
    import tensorflow as tf

    weights = tf.constant(INIT_WEIGHTS)
    spec = tf.TensorSpec((None, 32, 32, 1), tf.float32, name="image")
    module = tf.Module()
    module.serve = tf.function(
        lambda image: {"probabilities": tf.nn.softmax(tf.reshape(image, (-1, 32 * 32)) @ weights)},
        input_signature=[spec],
    )
    saved = out.with_suffix(".savedmodel")
    tf.saved_model.save(module, str(saved), signatures={"serving_default": module.serve})
    out.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(saved)).convert())
    shutil.rmtree(saved)


@pytest.fixture(scope="module")
def snapshot_server(tmp_path_factory) -> Iterator[GunicornServer]:
    tmp = tmp_path_factory.mktemp("snapshots")
    models = tmp / "models"
    ignore = shutil.ignore_patterns(SNAPSHOTS_FOLDER, "report")
    mnist = shutil.copytree(newest("mnist"), models / "mnist" / "1", ignore=ignore)
    shutil.copytree(newest("scenes"), models / "scenes" / "1", ignore=ignore)
    folder = tmp / SNAPSHOTS_FOLDER  # built aside, moved in whole
    folder.mkdir()
    random_engine(folder / "init.tflite")
    convert(mnist, folder / "final.tflite")
    index = {
        "format": 1,
        "snapshots": [
            {
                "name": "init",
                "label": "before training",
                "epoch": 0,
                "step": 0,
                "file": "init.tflite",
            },
            {"name": "final", "label": "trained", "epoch": 3, "step": 90, "file": "final.tflite"},
        ],
        "history": HISTORY,
    }
    validate_snapshots(index, "the test's snapshots")
    (folder / SNAPSHOTS_FILE).write_text(json.dumps(index))
    shutil.move(folder, mnist / SNAPSHOTS_FOLDER)
    srv = GunicornServer(tmp=tmp, workers=1, env={"CONVNET_MODELS_DIR": str(models)})
    srv.start()
    yield srv
    srv.stop()


def sample(model: str) -> bytes:
    manifest = json.loads((SAMPLES / "samples.json").read_text())["samples"]
    return (SAMPLES / next(s for s in manifest if s["model"] == model)["file"]).read_bytes()


def post(url: str, path: str, body: bytes) -> requests.Response:
    return requests.post(
        f"{url}{path}", data=body, headers={"Content-Type": "image/png"}, timeout=TIMEOUT
    )


def features_input(url: str) -> np.ndarray:
    """The sample as the model sees it (what each snapshot is given)."""
    block = post(url, "/features/mnist?layers=softmax&encoding=base64", sample("mnist")).json()
    raw = base64.b64decode(block["input"]["data"])
    return np.frombuffer(raw, "<f4").reshape(block["input"]["shape"])


def test_the_list_and_the_history(snapshot_server):
    body = requests.get(f"{snapshot_server.url}/models/mnist/snapshots", timeout=TIMEOUT).json()
    assert [s["name"] for s in body["snapshots"]] == ["init", "final"]
    assert body["snapshots"][1] == {"name": "final", "label": "trained", "epoch": 3, "step": 90}
    assert body["history"] == HISTORY
    none = requests.get(f"{snapshot_server.url}/models/scenes/snapshots", timeout=TIMEOUT).json()
    assert none["snapshots"] == [] and none["history"] == {}


def test_one_image_through_each_snapshot(snapshot_server):
    url = snapshot_server.url
    r = post(url, "/snapshots/mnist", sample("mnist"))
    assert r.status_code == 200, r.text
    init, final = r.json()["snapshots"]
    assert init["name"] == "init"
    image = features_input(url)
    assert list(init["prediction"]["probabilities"].values()) == pytest.approx(
        init_probabilities(image).tolist(), abs=1e-6
    )
    served = post(url, "/predict/mnist", sample("mnist")).json()["predictions"][0]
    assert final["prediction"]["label"] == served["label"]
    for cls, p in served["probabilities"].items():
        assert final["prediction"]["probabilities"][cls] == pytest.approx(p, abs=1e-6)


def test_errors(snapshot_server):
    url = snapshot_server.url
    r = post(url, "/snapshots/scenes", sample("scenes"))
    assert r.status_code == 404 and "without training snapshots" in r.json()["error"]["message"]
    assert post(url, "/snapshots/nosuch", sample("mnist")).status_code == 404
    r = post(url, "/snapshots/mnist", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    assert r.status_code == 422 and r.json()["error"]["code"] == "undecodable_image"
    r = requests.post(f"{url}/snapshots/mnist", timeout=TIMEOUT)
    assert r.status_code == 415


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"
)
def test_the_page_shows_it_learning_and_says_when_it_cannot(page, snapshot_server):
    url = snapshot_server.url
    open_explorer(page, url, "mnist")
    click_sample(page, "mnist")
    view = page.locator("#learning")
    page.wait_for_selector("#learning[data-state=shown]")
    rows = view.locator("li[data-snapshot]")
    assert rows.evaluate_all("els => els.map(e => e.dataset.snapshot)") == ["init", "final"]
    init = json.loads(rows.nth(0).get_attribute("data-probabilities"))
    assert list(init.values()) == pytest.approx(
        init_probabilities(features_input(url)).tolist(), abs=1e-6
    )
    assert rows.nth(1).get_attribute("data-label") == page.locator("#bars li.top").get_attribute(
        "data-class"
    )
    # The loss curve: one point per epoch of each recorded series.
    for series, values in HISTORY.items():
        if "loss" in series:
            assert view.locator(f"polyline[data-series={series}]").get_attribute(
                "data-points"
            ) == str(len(values))
    # Keyboard: each snapshot is a button that shows its probabilities.
    rows.nth(0).locator("button").focus()
    page.keyboard.press("Enter")
    assert "before training" in view.locator(".snapshot-detail").inner_text()
    shot(page, "mnist-learning")
    # A version without snapshots: the page says so.
    open_explorer(page, url, "scenes")
    click_sample(page, "scenes")
    page.wait_for_selector("#learning[data-state=none]")
    assert "without training snapshots" in view.inner_text()
    assert_clean(page, url)


@pytest.mark.parametrize("model", ["mnist", "scenes"])
def test_the_committed_models_learn_from_chance_to_their_answer(server, model):
    """The served versions' own snapshots (training/snapshots.py, replayed for versions trained
    before them): before training at chance, trained the served model's answer."""
    body = requests.get(f"{server.url}/models/{model}/snapshots", timeout=TIMEOUT).json()
    names = [s["name"] for s in body["snapshots"]]
    assert names == ["init", "step1", "epoch1", "epoch5", "final"]
    assert len(body["history"]["loss"]) == body["snapshots"][-1]["epoch"]
    r = post(server.url, f"/snapshots/{model}", sample(model))
    assert r.status_code == 200, r.text
    by_name = {s["name"]: s["prediction"] for s in r.json()["snapshots"]}
    served = post(server.url, f"/predict/{model}", sample(model)).json()["predictions"][0]
    classes = len(served["probabilities"])
    # Random weights: no class near certain.
    assert max(by_name["init"]["probabilities"].values()) < 3 / classes
    # The trained network is the served one before its calibration temperature.
    assert by_name["final"]["label"] == served["label"]
