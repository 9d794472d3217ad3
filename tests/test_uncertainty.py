"""Calibrated probabilities and the `uncertain` flag, through the real server."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests

from tests import corpus
from tests.server import ROOT

pytestmark = pytest.mark.server

SAMPLES = ROOT / "service" / "explorer" / "samples"
MODELS = ("mnist", "scenes")


def samples(model: str) -> list[tuple[str, bytes]]:
    manifest = json.loads((SAMPLES / "samples.json").read_text())["samples"]
    return [
        (s["label"], (SAMPLES / s["file"]).read_bytes()) for s in manifest if s["model"] == model
    ]


def predict(server, model: str, body: bytes) -> dict:
    r = requests.post(
        f"{server.url}/predict/{model}",
        data=body,
        headers={"Content-Type": "image/png"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()["predictions"][0]


def features(server, model: str, body: bytes) -> dict:
    r = requests.post(
        f"{server.url}/features/{model}?encoding=json",
        data=body,
        headers={"Content-Type": "image/png"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def info(server) -> dict[str, dict]:
    return {m: requests.get(f"{server.url}/models/{m}", timeout=10).json() for m in MODELS}


@pytest.mark.parametrize("model", MODELS)
def test_model_info_shows_the_calibration_and_the_rule(info, model):
    c, u = info[model]["calibration"], info[model]["uncertainty"]
    assert c["method"] == "temperature scaling" and 0.05 < c["temperature"] < 20
    assert c["ece_after"] <= 0.02, c  # the target, on the held-out split
    assert 0 < u["min_confidence"] < 1 and u["max_distance"] > 0
    # Chosen with a margin (a 90 % lower bound), the target holds on images it was not chosen on.
    assert u["target_confidence"] == 0.9
    assert u["validation"]["accuracy_unflagged"] >= u["target_accuracy_unflagged"]
    assert u["validation"]["coverage"] > 0.7


@pytest.mark.parametrize("model", MODELS)
def test_samples_are_right_or_flagged(server, model):
    """The explorer's held-out samples: never a wrong answer given as sure; most right and sure."""
    sure_and_right = 0
    for label, body in samples(model):
        p = predict(server, model, body)
        assert p["label"] == label or p["uncertain"] is True, (label, p)
        sure_and_right += p["label"] == label and p["uncertain"] is False
    assert sure_and_right >= 0.75 * len(samples(model))


@pytest.mark.parametrize("model", MODELS)
def test_blank_and_noise_images_are_flagged(server, model):
    rng = np.random.default_rng(7)
    images = {
        "white": np.full((64, 64, 3), 255, np.uint8),
        "black": np.zeros((64, 64, 3), np.uint8),
        "grey": np.full((48, 80, 3), 128, np.uint8),
        "colour noise": rng.integers(0, 256, (96, 96, 3), dtype=np.uint8),
        "grey noise": np.repeat(rng.integers(0, 256, (64, 64, 1), dtype=np.uint8), 3, axis=2),
        # A large Gaussian grain: a digit's normalisation scales it into faint specks.
        "gaussian noise": np.repeat(
            np.clip(rng.normal(128, 50, (220, 220, 1)), 0, 255).astype(np.uint8), 3, axis=2
        ),
        # Dense salt and pepper, small: normalised into a 20 px square of dots.
        "salt and pepper": np.repeat(
            np.where(rng.random((40, 40, 1)) < 0.5, 0, 255).astype(np.uint8), 3, axis=2
        ),
    }
    for kind, arr in images.items():
        p = predict(server, model, corpus.png(arr))
        assert p["uncertain"] is True, (kind, p)


@pytest.mark.parametrize("model", MODELS)
def test_served_probabilities_are_the_logits_over_the_temperature(server, info, model):
    """softmax(logits / T), with the exported T: from the class layer's output in /features."""
    layers = info[model]["layers"]
    names = [row["name"] for row in layers]
    t_row = layers[names.index("temperature")]
    logits_name = names[names.index("temperature") - 1]
    t = info[model]["calibration"]["temperature"]
    assert t_row["type"] == "scale" and t_row["scale"] == pytest.approx(1 / t)
    _, body = samples(model)[0]
    f = features(server, model, body)
    acts = {layer["name"]: np.array(layer["data"]) for layer in f["layers"]}
    logits = acts[logits_name]
    expected = np.exp(logits / t - (logits / t).max())
    expected /= expected.sum()
    np.testing.assert_allclose(acts["softmax"], expected, atol=1e-5)
    p = predict(server, model, body)
    got = np.array([p["probabilities"][c] for c in info[model]["classes"]])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # /features' prediction is /predict's, uncertain flag included.
    assert f["prediction"]["label"] == p["label"]
    assert f["prediction"]["uncertain"] == p["uncertain"]
    assert f["prediction"]["confidence"] == pytest.approx(p["confidence"], abs=1e-5)
