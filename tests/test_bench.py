"""The benchmark harnesses themselves: one short real run each, so they cannot rot.

No figure is asserted (speed is shown by the benchmark, never by tests); only that every cell ran,
every request succeeded, and the table holds what docs/performance.md says it does.
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
@pytest.mark.parametrize("target", ["service+nginx", "service+batching+nginx"])
def test_bench_drives_the_service_through_the_deployed_nginx(tmp_path, target):
    [row] = run_bench(
        tmp_path,
        "--concurrency",
        "4",
        "--only",
        target,
        "--path",
        "/predict/mnist",
        "--body",
        "digit28",
    )[0]
    assert row["target"] == target and row["errors"] == 0, row
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
    and Pillow for every PNG, as a compiler-less install does, and answers the same."""
    from bench.ablations import service_with_python_digit
    from service import images

    digit = corpus.encode(corpus.digit(7, 90), "PNG")
    want = app.test_client().post("/predict/mnist", data=digit, content_type="image/png")
    for name in ("normalize_digit", "unfilter_png"):  # put back after
        monkeypatch.setattr(images, name, getattr(images, name))
    baseline = service_with_python_digit()
    assert images.normalize_digit is images.normalize_digit_python
    assert images.unfilter_png is None
    got = baseline.test_client().post("/predict/mnist", data=digit, content_type="image/png")
    assert got.status_code == want.status_code == 200
    assert got.get_json() == want.get_json()


def _row(target, path, body, c, rps, p99=5.0, round_=1, rss=(90, 95), ready=0.6):
    return {
        "target": target,
        "path": path,
        "body": body,
        "concurrency": c,
        "round": round_,
        "rps": rps,
        "p50_ms": p99 / 3,
        "p90_ms": p99 / 2,
        "p99_ms": p99,
        "errors": 0,
        "cpu_us_per_request": 700,
        "worker_rss_mb": list(rss),
        "wrk_cpu_pct": 20,
        "ready_s": ready,
    }


def test_the_report_judges_each_goal_against_the_same_runs_baselines():
    from bench.report import cells, goals, markdown

    mnist = ("/predict/mnist", "digit28.png")
    rows = [
        _row("hello", *mnist, 16, 5000, round_=1),
        _row("hello", *mnist, 16, 6000, round_=2),
        _row("hello", *mnist, 16, 5500, round_=3),
        _row("keras", *mnist, 16, 20),
        _row("service", *mnist, 16, 2600, p99=21.0, round_=1),
        _row("service", *mnist, 16, 2400, p99=9.0, round_=2),
        _row("service", *mnist, 16, 2700, p99=10.0, round_=3),
        _row("service", "/predict/scenes", "scene32.png", 16, 999, rss=(90, 501), ready=10.5),
        _row("service", "/features/mnist?encoding=base64", "digit28.png", 16, 800),
        _row("service+batching", *mnist, 16, 3300, p99=12.0),
        _row("service+nginx", *mnist, 16, 2500),  # a proxy in front: not judged
    ]
    table = cells(rows)
    service = table[("service", *mnist, 16)]
    # Medians per field, not the round with the median req/s: 2,600 req/s, p99 10 ms.
    assert (service.rps, service.rps_low, service.rps_high, service.p99_ms) == (
        2600,
        2400,
        2700,
        10,
    )
    judged = {g.what: (g.measured, g.met) for g in goals(table)}
    assert judged == {
        "`/predict/mnist`, one 28x28 PNG, 16 clients": ("2,600 req/s, p99 10.0 ms", True),
        "... against the hello-world ceiling": ("47 % (hello 5,500 req/s)", False),
        "... against `model.predict()` per request": ("130x (keras 20 req/s)", True),
        "`/predict/scenes`, one 32x32 PNG": ("999 req/s, p99 5.0 ms", False),
        "`/features/mnist`, base64": ("800 req/s, p99 5.0 ms", True),
        "memory per worker": ("501 MB at most", False),
        "ready after start": ("10.5 s at most", False),
    }
    # Each way the service serves is judged on what the run measured of it, side by side.
    batching = {g.what: (g.measured, g.met) for g in goals(table, target="service+batching")}
    assert batching == {
        "`/predict/mnist`, one 28x28 PNG, 16 clients": ("3,300 req/s, p99 12.0 ms", True),
        "... against the hello-world ceiling": ("60 % (hello 5,500 req/s)", False),
        "... against `model.predict()` per request": ("165x (keras 20 req/s)", True),
        "memory per worker": ("95 MB at most", True),
        "ready after start": ("0.6 s at most", True),
    }
    text = markdown(table)
    assert "| goal | asked | **service** |  | service+batching |  |" in text
    assert (
        "| `/predict/scenes`, one 32x32 PNG | >= 1,000 req/s | 999 req/s, p99 5.0 ms | **not met** |  |  |"
        in text
    )
    assert "service+nginx |  |" not in text.split("\n\n")[0]
    assert "| **service** | `/predict/mnist` one 28x28 PNG | 16 | 2,600 (2,400-2,700) |" in text
    assert "| hello | `/predict/mnist` one 28x28 PNG | 16 | 5,500 (5,000-6,000) |" in text
    assert "| **service** | `/predict/mnist` one 28x28 PNG | 2,600 / 10.0 |" in text  # overview
    # No JPEG cell in this run: that goal is left out rather than reported empty.
    assert "1024x768" not in text


@pytest.mark.server
@needs_wrk
def test_the_report_renders_a_real_run(tmp_path):
    run_bench(tmp_path, "--concurrency", "1", "2", "--only", "hello", "service", "--body", "28")
    chart = tmp_path / "bench.png"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.report", str(tmp_path / "bench.json"), "--chart", str(chart)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    table = [ln for ln in proc.stdout.splitlines() if ln.startswith("| ") and " us |" in ln]
    # hello's one request and each service case with the digit (/predict, /features and the
    # standard protocols' routes), each at 1 and 2 clients.
    from bench.run import SERVICE_CASES

    digit_cases = [c for c in SERVICE_CASES if "28" in c.body]
    assert len(digit_cases) >= 5
    assert len(table) == 2 * (1 + len(digit_cases)), proc.stdout
    assert "| `/predict/mnist`, one 28x28 PNG, 16 clients |" not in proc.stdout  # no c=16 cell
    assert chart.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_the_profile_reads_py_spy_records_whose_frame_names_span_lines():
    from bench.profile import _records, area_of

    # py-spy --gil names a Werkzeug proxy by its repr, which holds an error message with newlines.
    raw = (
        "run (gunicorn/arbiter.py:1);decode (service/images.py:80) 7\n"
        "wsgi_app (flask/app.py:1);__package__ (__doc__:3); (Working outside of\n"
        "\n"
        "application context.);inc (prometheus_client/values.py:115) 2\n"
    )
    records = _records(raw)
    assert [r.rpartition(" ")[2] for r in records] == ["7", "2"]
    assert [area_of(r.rpartition(" ")[0].split(";")) for r in records] == [
        "decode+preprocess",
        "metrics",
    ]
