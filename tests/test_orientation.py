"""EXIF orientation over HTTP, as phones write it: all eight values (the mirrored 2, 4, 5 and 7
too), in JPEG, HEIC and AVIF, on a non-square photo, give the upright image's model input."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import requests

from tests import corpus

pytestmark = pytest.mark.server

PHOTO = corpus.photo(96, 64)  # non-square: a transposition changes the shape


def model_input(server, body: bytes) -> np.ndarray:
    r = requests.post(
        f"{server.url}/features/scenes?layers=conv1&encoding=base64",
        data=body,
        headers={"Content-Type": "application/octet-stream"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    t = r.json()["input"]
    return np.frombuffer(base64.b64decode(t["data"]), "<f4").reshape(t["shape"])


@pytest.mark.parametrize("fmt", ["JPEG", "HEIF", "AVIF"])
def test_every_orientation_is_undone(server, fmt):
    upright = model_input(server, corpus.with_orientation(PHOTO, 1, fmt))
    for orientation in range(2, 9):
        got = model_input(server, corpus.with_orientation(PHOTO, orientation, fmt))
        # Lossy codecs: the same picture within a few grey levels, far from any other one.
        error = float(np.abs(got - upright).mean())
        others = [
            float(np.abs(np.asarray(t(upright)) - upright).mean())
            for t in (np.fliplr, np.flipud, lambda a: np.rot90(a, 2))
        ]
        assert error < 0.03, (fmt, orientation, error)
        assert error < min(others) / 3, (fmt, orientation, error, others)
