"""Digits as people send them (tight crops, two-level scans, 16x16 scans, faint ink), recognised.

A digit cropped tight to its strokes has ink on its border; the paper's tone must come from the
border's paper, not its ink, or the whole digit is taken for paper and the input is black.
scripts/digit_kinds.py measures each kind on 1,000 held-out digits (README, Models).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
from PIL import Image, ImageFilter

from service import images
from service.engines import read_metadata
from service.registry import find_versions
from tests import corpus
from tests.server import MODELS_DIR, ROOT

SAMPLES = ROOT / "service" / "explorer" / "samples"
SPEC = read_metadata(find_versions(MODELS_DIR)["mnist"])["preprocessing"]


def digits() -> list[tuple[str, np.ndarray]]:
    """The explorer's ten held-out MNIST digits, 28x28, white on black."""
    manifest = json.loads((SAMPLES / "samples.json").read_text())["samples"]
    return [
        (s["label"], np.asarray(Image.open(SAMPLES / s["file"]).convert("L")))
        for s in manifest
        if s["model"] == "mnist"
    ]


def tight(d: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(d.max(1) > 0), np.flatnonzero(d.max(0) > 0)
    return d[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def on_paper(d: np.ndarray, ink: int = 0) -> np.ndarray:
    return (255 - (255 - ink) * (d.astype(np.float32) / 255)).astype(np.uint8)


KINDS = {
    "tight crop": lambda d: on_paper(tight(d)),
    "two-level tight scan": lambda d: np.where(tight(d) > 127, 0, 255).astype(np.uint8),
    "two-level tight, white on black": lambda d: np.where(tight(d) > 127, 255, 0).astype(np.uint8),
    "16x16 scan": lambda d: np.asarray(
        Image.fromarray(on_paper(d)).resize((16, 16), Image.Resampling.BOX)
    ),
    "faint ink on white": lambda d: on_paper(d, ink=130),
    "thick marker": lambda d: on_paper(
        np.asarray(Image.fromarray(d).filter(ImageFilter.MaxFilter(3)))
    ),
    "thin pen": lambda d: on_paper(
        np.asarray(
            Image.fromarray(d)
            .resize((56, 56), Image.Resampling.BILINEAR)
            .filter(ImageFilter.MinFilter(3))
            .resize((28, 28), Image.Resampling.BOX)
        )
    ),
    "slanted": lambda d: on_paper(
        np.asarray(
            Image.fromarray(d).transform(
                (28, 28), Image.Transform.AFFINE, (1, 0.3, -4.2, 0, 1, 0), Image.Resampling.BILINEAR
            )
        )
    ),
}


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_normalises_like_the_plain_digit(kind):
    for label, d in digits():
        plain = images.load(corpus.png(d), SPEC, images.Limits())
        got = images.load(corpus.png(KINDS[kind](d)), SPEC, images.Limits())
        assert got.max() > 0.5, f"{kind} {label}: the ink was lost"
        r = np.corrcoef(plain.ravel(), got.ravel())[0, 1]
        assert r > 0.5, (kind, label, r)  # binarising and 16 px cost detail, not the shape


@pytest.mark.server
@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_is_recognised_by_the_live_server(server, kind):
    for label, d in digits():
        r = requests.post(
            f"{server.url}/predict/mnist",
            data=corpus.png(KINDS[kind](d)),
            headers={"Content-Type": "image/png"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert r.json()["predictions"][0]["label"] == label, (kind, label, r.json())
