"""Each limit setting takes effect in the running server, not only its default.

One server with every request limit set low, and one with batching, whose batch size and wait
are checked from its own histograms under concurrent load.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from tests import corpus
from tests.server import GunicornServer

pytestmark = pytest.mark.server


DIGIT = corpus.encode(corpus.digit(7, 64), "PNG")  # 64x64: 4,096 pixels


def post(url: str, **kwargs) -> requests.Response:
    return requests.post(f"{url}/predict/mnist", timeout=30, **kwargs)


def error_code(r: requests.Response) -> str:
    assert r.headers["Content-Type"].startswith("application/json"), r.text[:200]
    return r.json()["error"]["code"]


def test_request_limits_set_low_refuse_what_the_defaults_accept(tmp_path):
    limits = {
        "CONVNET_MAX_BODY_BYTES": "3000",  # 4 small digits in a multipart body, not 4 KB
        "CONVNET_MAX_PIXELS": str(64 * 64),
        "CONVNET_MAX_REQUEST_PIXELS": str(2 * 64 * 64),
        "CONVNET_MAX_BATCH": "3",
    }
    with GunicornServer(tmp=tmp_path, workers=1, env=limits) as srv:
        files = lambda n, body=DIGIT: [("image", (f"{i}.png", body, "image/png")) for i in range(n)]  # noqa: E731
        raw = {"headers": {"Content-Type": "image/png"}}
        assert post(srv.url, data=DIGIT, **raw).status_code == 200
        # MAX_BODY_BYTES: a body over it is refused from its length.
        big = corpus.png(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
        assert len(big) > 3000
        r = post(srv.url, data=big, **raw)
        assert (r.status_code, error_code(r)) == (413, "too_large")
        # MAX_PIXELS: one pixel over, per image.
        r = post(srv.url, data=corpus.png(np.zeros((64, 65), np.uint8)), **raw)
        assert r.status_code == 413, r.text
        # MAX_REQUEST_PIXELS: two images fit, three do not (while MAX_BATCH allows three).
        assert post(srv.url, files=files(2)).status_code == 200
        r = post(srv.url, files=files(3))
        assert r.status_code == 413 and "pixels" in r.json()["error"]["message"], r.text
        # MAX_BATCH: four images in one request, over the limit of three.
        small = corpus.encode(corpus.digit(1, 16), "PNG")
        assert post(srv.url, files=files(3, small)).status_code == 200
        r = post(srv.url, files=files(4, small))
        assert r.status_code == 413, r.text


def histogram(text: str, name: str) -> dict[str, float]:
    """{le: cumulative count} of one histogram series summed over labels."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{") and 'signature="predict"' in line:
            le = line.split('le="')[1].split('"')[0]
            out[le] = out.get(le, 0.0) + float(line.split()[-1])
    return out


def test_batching_forms_batches_up_to_its_size_under_concurrent_load(tmp_path):
    env = {
        "CONVNET_BATCHING": "1",
        "CONVNET_MAX_BATCH_SIZE": "4",
        "CONVNET_BATCH_TIMEOUT_MICROS": "20000",  # wait up to 20 ms for more
    }
    with GunicornServer(tmp=tmp_path, workers=1, env=env) as srv:
        bodies = [corpus.encode(corpus.digit((0, 1, 4, 7)[d % 4], 64), "PNG") for d in range(64)]
        with ThreadPoolExecutor(16) as pool:
            statuses = list(
                pool.map(
                    lambda b: (
                        post(srv.url, data=b, headers={"Content-Type": "image/png"}).status_code
                    ),
                    bodies,
                )
            )
        assert statuses == [200] * 64
        sizes = histogram(
            requests.get(f"{srv.url}/metrics", timeout=10).text, "convnet_inference_batch_size"
        )
    calls = sizes["+Inf"]
    # Batches of more than one image formed (fewer calls than images), none over 4.
    assert calls < 64 * 0.75, sizes
    assert sizes.get("4.0", sizes.get("4")) == calls, sizes  # every call held at most 4
