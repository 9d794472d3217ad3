"""The benchmark harnesses themselves: one short real run each, so they cannot rot.

No figure is asserted (speed is shown by the benchmark, never by tests); only that every cell ran,
every request succeeded, and the table holds what the README says it does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests import corpus
from tests.server import ROOT, find_nginx

needs_wrk = pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)"
)


def run_bench(tmp_path, *args: str) -> tuple[list[dict], str]:
    """`python -m bench.run` for 1 s cells: the rows it wrote, and what it printed."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--duration", "1", *args, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text()), proc.stdout


@pytest.mark.server
@needs_wrk
def test_bench_runs_the_service_and_its_ceiling_side_by_side(tmp_path):
    rows, printed = run_bench(
        tmp_path,
        "--concurrency",
        "1",
        "4",
        "--only",
        "hello",
        "service",
        "--path",
        "/predict/mnist",
        "--body",
        "digit28",
    )
    assert [(r["target"], r["concurrency"]) for r in rows] == [
        (t, c) for t in ("hello", "service") for c in (1, 4)
    ]
    for row in rows:
        assert row["path"] == "/predict/mnist" and row["errors"] == 0, row
        assert row["rps"] > 0 and 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert len(row["worker_rss_mb"]) == 2 and all(rss > 0 for rss in row["worker_rss_mb"])
        assert row["cpu_us_per_request"] > 0
        assert row["proxy_cpu_pct"] is None  # nothing in front of these
        if row["target"] == "hello":  # not the service: no stage histograms to read
            assert row["app_us"] is row["prep_us"] is row["model_us"] is None, row
        else:  # from the service's own /metrics: one image per request, so the stages fit inside
            assert 0 < row["prep_us"] + row["model_us"] < row["app_us"], row
    assert "req/s" in printed and "wrote" in printed


@pytest.mark.server
@needs_wrk
@pytest.mark.skipif(find_nginx() is None, reason="nginx is not installed (apt-get install nginx)")
def test_bench_drives_the_service_through_the_deployed_nginx(tmp_path):
    [row] = run_bench(
        tmp_path,
        "--concurrency",
        "4",
        "--only",
        "service+nginx",
        "--path",
        "/predict/mnist",
        "--body",
        "digit28",
    )[0]
    assert row["target"] == "service+nginx" and row["errors"] == 0, row
    # The requests went through nginx (it worked), and reached the service (its histograms moved).
    assert row["proxy_cpu_pct"] > 0 and row["rps"] > 0, row
    assert 0 < row["prep_us"] + row["model_us"] < row["app_us"], row


@pytest.mark.server
@needs_wrk
@pytest.mark.parametrize(
    ("body", "path", "images"),
    [("phone12mp.jpg", "/predict/scenes", 1), ("digits16.form", "/predict/mnist", 16)],
)
def test_bench_posts_a_phone_photo_and_a_batch_of_digits(tmp_path, body, path, images):
    rows, _ = run_bench(tmp_path, "--concurrency", "2", "--only", "service", "--body", body)
    [row] = rows
    assert (row["path"], row["body"]) == (path, body), row
    assert row["errors"] == 0 and row["rps"] > 0, row  # every image decoded, none refused
    # The request holds `images` images, each preprocessed, and one model call.
    assert 0 < images * row["prep_us"] + row["model_us"] < row["app_us"], row


@pytest.mark.server
@needs_wrk
def test_bench_repeats_rounds_and_reports_each_cells_median(tmp_path):
    rows, printed = run_bench(tmp_path, "--repeat", "2", "--concurrency", "2", "--only", "hello")
    assert [(r["target"], r["round"]) for r in rows] == [("hello", 1), ("hello", 2)]
    [line] = [ln for ln in printed.splitlines() if ln.startswith("hello ") and "(" in ln]
    low, high = sorted(r["rps"] for r in rows)
    median = (low + high) / 2
    assert f"{median:.0f} ({low:.0f}-{high:.0f})" in line, line


def test_inprocess_bench_times_every_stage_of_a_real_request():
    proc = subprocess.run(
        [sys.executable, "-m", "bench.inprocess", "200"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.endswith(" us")]
    assert [line.split("  ")[0] for line in lines] == [
        "hello (Flask)",
        "service /predict/mnist",
        "- decode + preprocess",
        "- model call, response body",
        "- reading the image",
        "- request metrics hooks",
    ]
    assert all(float(line.split()[-2]) > 0 for line in lines)


def test_the_upper_bounds_answer_what_the_service_answers(app, monkeypatch):
    """bench/ablations.py makes stages free, never changes an answer: the same image gets the
    same body from the service and from both ablated apps, also when served from the cache."""
    from bench.ablations import service_without
    from service import inference

    digit = corpus.encode(corpus.digit(4, 64), "PNG")

    def post(flask_app) -> dict:
        r = flask_app.test_client().post("/predict/mnist", data=digit, content_type="image/png")
        assert r.status_code == 200, r.get_data(as_text=True)
        return r.get_json()

    want = post(app)  # before the ablation replaces inference.prepare
    monkeypatch.setattr(inference, "prepare", inference.prepare)  # put back after the test
    free_prep = service_without("preprocess")
    no_metrics = service_without("preprocess", "metrics")
    for _ in range(2):  # the first request computes the input, the second reuses it
        assert post(free_prep) == want
        assert post(no_metrics) == want
    text = no_metrics.test_client().get("/metrics").get_data(as_text=True)
    assert 'convnet_http_requests_total{endpoint="/predict/<model>"' not in text
    assert 'convnet_http_requests_total{endpoint="/predict/<model>"' in (
        free_prep.test_client().get("/metrics").get_data(as_text=True)
    )


def test_the_python_digit_baseline_serves_the_numpy_reference(app, monkeypatch):
    """`service+python-digit` runs the Python reference where the service runs service/_digit.c,
    and answers the same."""
    from bench.ablations import service_with_python_digit
    from service import images

    digit = corpus.encode(corpus.digit(7, 90), "PNG")
    want = app.test_client().post("/predict/mnist", data=digit, content_type="image/png")
    monkeypatch.setattr(images, "normalize_digit", images.normalize_digit)  # put back after
    baseline = service_with_python_digit()
    assert images.normalize_digit is images.normalize_digit_python
    got = baseline.test_client().post("/predict/mnist", data=digit, content_type="image/png")
    assert got.status_code == want.status_code == 200
    assert got.get_json() == want.get_json()
