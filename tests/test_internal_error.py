"""The 500 path: an engine failure is a JSON 500, counted under status="500", and the worker
goes on serving."""

from __future__ import annotations

import numpy as np
import pytest
import requests

from tests import corpus
from tests.server import GunicornServer

pytestmark = pytest.mark.server


def counted(url: str, status: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("convnet_http_requests_total{")
        and 'model="scenes"' in line
        and f'status="{status}"' in line
    )


def test_an_engine_failure_is_a_counted_json_500_and_the_worker_lives(tmp_path):
    white = corpus.png(np.full((32, 32, 3), 255, np.uint8))
    photo = corpus.png(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    headers = {"Content-Type": "image/png"}
    with GunicornServer(tmp=tmp_path, workers=1, app="tests.faulty_app:create()") as srv:
        pids = srv.worker_pids()
        for _ in range(3):
            r = requests.post(f"{srv.url}/predict/scenes", data=white, headers=headers, timeout=30)
            assert r.status_code == 500
            assert r.headers["Content-Type"] == "application/json"
            assert r.json() == {
                "error": {"code": "internal", "message": "internal server error", "status": 500}
            }
            assert "planted" not in r.text  # no traceback or internals leak
        ok = requests.post(f"{srv.url}/predict/scenes", data=photo, headers=headers, timeout=30)
        assert ok.status_code == 200
        assert counted(srv.url, "500") == 3 and counted(srv.url, "200") == 1
        assert srv.worker_pids() == pids  # the same worker, not a restarted one
        assert "planted engine failure" in srv.log()  # the traceback is in the log instead
