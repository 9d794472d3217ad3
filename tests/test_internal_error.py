"""The 500 path: an engine failure is a JSON 500, counted under status="500", and the worker
goes on serving; a real Prometheus shows it in the dashboard's error panels and the 5xx alert."""

from __future__ import annotations

import time

import numpy as np
import pytest
import requests

from tests import corpus
from tests.prometheus import PROMETHEUS, dashboard_queries, grafana_substitute, start_prometheus
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


@pytest.mark.slow
@pytest.mark.skipif(PROMETHEUS is None, reason="no `prometheus` binary: apt-get install prometheus")
def test_the_500s_show_in_the_dashboards_error_panels_and_raise_the_5xx_alert(tmp_path):
    white = corpus.png(np.full((32, 32, 3), 255, np.uint8))
    headers = {"Content-Type": "image/png"}
    panels = dict(dashboard_queries())
    by_status = grafana_substitute(panels["Errors by status code [A]"], {})
    ratio = grafana_substitute(panels["5xx ratio [A]"], {})
    (tmp_path / "srv").mkdir()
    (tmp_path / "prom").mkdir()
    server = GunicornServer(tmp=tmp_path / "srv", workers=1, app="tests.faulty_app:create()")
    with server as srv, start_prometheus(f"127.0.0.1:{server.port}", tmp_path / "prom") as prom:
        # Two scrapes around the failures: a rate needs a sample before them.
        for _ in range(2):
            for _ in range(5):
                r = requests.post(
                    f"{srv.url}/predict/scenes", data=white, headers=headers, timeout=30
                )
                assert r.status_code == 500
            prom.wait_for_scrape_after(time.time())
        statuses = {r["metric"]["status"]: float(r["value"][1]) for r in prom.query(by_status)}
        assert statuses.get("500", 0) > 0, statuses
        assert prom.value(ratio) > 0.5  # every /predict failed; /metrics scrapes are not counted
        deadline = time.monotonic() + 30  # rules are evaluated every second
        while True:
            alerts = requests.get(f"{prom.url}/api/v1/alerts", timeout=10).json()["data"]
            names = {a["labels"]["alertname"]: a["state"] for a in alerts["alerts"]}
            # Pending until its `for` (5 minutes) has passed.
            if names.get("ConvnetHighServerErrorRatio") in ("pending", "firing"):
                break
            assert time.monotonic() < deadline, f"the 5xx alert stayed quiet: {names}"
            time.sleep(0.5)
