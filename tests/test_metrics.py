"""/metrics under the real Gunicorn: exact counts summed over workers, bounded labels, no lost counts.

Counters are compared as deltas around a known batch of requests, so the shared session server
can have served other tests before.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import requests
from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.parser import text_string_to_metric_families

from tests import corpus
from tests.server import GunicornServer, NginxProxy, find_nginx

pytestmark = pytest.mark.server

Sample = tuple[str, tuple[tuple[str, str], ...]]

DIGIT_PNG = corpus.encode(corpus.digit(7, size=28), "PNG")
# PNG magic, then garbage: sniffed as PNG, fails to decode (422).
BROKEN_PNG = b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 8
PREDICT = "/predict/<model>"
SERVED_MODELS = {"mnist", "scenes"}


def scrape(url: str) -> dict[Sample, float]:
    """Every sample on /metrics, keyed by name and sorted labels."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    out: dict[Sample, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict[Sample, float], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, lbls), v in samples.items() if n == name and want <= set(lbls))


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


def post(url: str, path: str, body: bytes, content_type: str) -> int:
    # No session: a fresh connection per request spreads them over the workers.
    r = requests.post(f"{url}{path}", data=body, headers={"Content-Type": content_type}, timeout=60)
    return r.status_code


# The known batch: (path, body, content type, expected status), reused by test_monitoring.
MIX = [
    *[("/predict/mnist", DIGIT_PNG, "image/png", 200)] * 3,
    *[("/predict/no-such-model", DIGIT_PNG, "image/png", 404)] * 2,
    *[("/predict/mnist", b"just some text", "text/plain", 415)] * 2,
    *[("/predict/mnist", BROKEN_PNG, "image/png", 422)] * 2,
]


def send_mix(url: str) -> None:
    for path, body, ctype, status in MIX:
        assert post(url, path, body, ctype) == status, path
    assert requests.get(f"{url}/no/such/page", timeout=10).status_code == 404


def test_counts_are_exact_across_workers(server):
    before = scrape(server.url)
    send_mix(server.url)
    after = scrape(server.url)

    def requests_delta(**labels: str) -> float:
        return delta(before, after, "convnet_http_requests_total", **labels)

    assert requests_delta(endpoint=PREDICT, model="mnist", status="200") == 3
    assert requests_delta(endpoint=PREDICT, model="unknown", status="404") == 2
    assert requests_delta(endpoint=PREDICT, model="mnist", status="415") == 2
    assert requests_delta(endpoint=PREDICT, model="mnist", status="422") == 2
    assert requests_delta(endpoint="unmatched", model="", status="404") == 1
    assert requests_delta() == 10  # scrapes of /metrics are not counted

    def d(name: str, **labels: str) -> float:
        return delta(before, after, name, **labels)

    latency = "convnet_http_request_duration_seconds_count"
    assert d(latency, endpoint=PREDICT, model="mnist") == 7
    assert d(latency, endpoint=PREDICT, model="unknown") == 2
    assert d(latency, endpoint=PREDICT, model="mnist", status="200") == 3  # what the SLO counts
    assert d("convnet_http_request_body_bytes_count", endpoint=PREDICT) == 9
    assert d("convnet_http_request_body_bytes_sum", endpoint=PREDICT) == sum(
        len(body) for _, body, _, _ in MIX
    )
    # Images are counted once the body parsed: 3 good + 2 undecodable, not the 415s.
    assert d("convnet_images_per_request_count", endpoint=PREDICT, model="mnist") == 5
    assert d("convnet_image_preprocess_seconds_count", model="mnist") == 3
    assert d("convnet_inference_seconds_count", model="mnist", signature="predict") == 3
    assert d("convnet_inference_batch_size_sum", model="mnist", signature="predict") == 3
    assert d("convnet_predictions_total", model="mnist") == 3
    assert d("convnet_prediction_confidence_count", model="mnist") == 3
    # Every histogram's +Inf bucket equals its count.
    assert d("convnet_http_request_duration_seconds_bucket", le="+Inf") == d(latency)

    assert total(after, "convnet_http_requests_in_flight") == 0
    assert total(after, "convnet_worker_ready") == server.workers
    assert {dict(lbls)["model"] for n, lbls in after if n == "convnet_model_info"} == SERVED_MODELS


def test_concurrent_counts_are_exact_and_both_workers_served_part(server):
    """The exactness above means something only if the requests were spread over the workers:
    each worker's own metric file (prometheus-client's per-pid file) must hold some of them."""
    from concurrent.futures import ThreadPoolExecutor

    from prometheus_client.mmap_dict import MmapedDict

    def mine(pid: int) -> float:
        path = server.metrics_dir / f"counter_{pid}.db"
        if not path.exists():
            return 0.0
        return sum(
            value
            for key, value, _ts, _pos in MmapedDict.read_all_values_from_file(str(path))
            if '"convnet_http_requests_total"' in key and '"status": "200"' in key
        )

    pids = server.worker_pids()
    assert len(pids) == 2
    before = scrape(server.url)
    own_before = {pid: mine(pid) for pid in pids}
    with ThreadPoolExecutor(8) as pool:
        codes = list(
            pool.map(
                lambda _: post(server.url, "/predict/mnist", DIGIT_PNG, "image/png"), range(80)
            )
        )
    assert codes == [200] * 80
    after = scrape(server.url)
    assert delta(before, after, "convnet_http_requests_total", model="mnist", status="200") == 80
    served = {pid: mine(pid) - own_before[pid] for pid in pids}
    assert sum(served.values()) == 80 and all(n > 0 for n in served.values()), served


def test_stage_histograms_resolve_a_lenet_call(server):
    # A LeNet call takes some 20-60 us: buckets starting at 0.5 ms put every call in the first
    # one, and the dashboard's p99 would read the same whatever the model did.
    before = scrape(server.url)
    for _ in range(5):
        assert post(server.url, "/predict/mnist", DIGIT_PNG, "image/png") == 200
    after = scrape(server.url)
    calls = dict(model="mnist", signature="predict")
    assert delta(before, after, "convnet_inference_seconds_count", **calls) == 5
    assert delta(before, after, "convnet_inference_seconds_bucket", le="0.00025", **calls) >= 1
    edges = {
        float(dict(lbls)["le"])
        for n, lbls in after
        if n == "convnet_image_preprocess_seconds_bucket" and dict(lbls)["le"] != "+Inf"
    }
    assert min(edges) < 0.0001


def label_values(samples: dict[Sample, float], label: str) -> set[str]:
    return {dict(lbls)[label] for _, lbls in samples if label in dict(lbls)}


def test_random_urls_and_unknown_models_create_no_series(server):
    def junk_round() -> None:
        for _ in range(15):
            name = uuid.uuid4().hex
            assert post(server.url, f"/predict/{name}", DIGIT_PNG, "image/png") == 404
            assert post(server.url, f"/features/{name}", DIGIT_PNG, "image/png") == 404
            assert requests.get(f"{server.url}/{name}/{name}", timeout=10).status_code == 404
            assert requests.get(f"{server.url}/models/{name}", timeout=10).status_code == 404

    junk_round()
    first = scrape(server.url)
    junk_round()
    second = scrape(server.url)

    def series(samples: dict[Sample, float]) -> set[Sample]:
        # Per-worker gauges carry a pid label; pids are bounded by the worker count, not by input.
        return {k for k in samples if "pid" not in dict(k[1])}

    assert series(second) == series(first), "a second round of random names added series"
    assert label_values(second, "model") <= SERVED_MODELS | {"unknown", ""}
    routes = {"/predict/<model>", "/features/<model>", "/gradcam/<model>", "/models/<model>"}
    routes |= {"/", "/models", "/livez", "/readyz", "/openapi.json", "unmatched"}
    routes |= {"/docs", "/docs/<name>", "/convolve", "/snapshots/<model>"}
    routes |= {"/models/<model>/weights", "/models/<model>/snapshots"}
    endpoints = label_values(second, "endpoint")
    assert endpoints <= routes | {r for r in endpoints if r.startswith("/explorer")}
    assert not any(len(v) == 32 for lbl in ("endpoint", "model") for v in label_values(second, lbl))


def ready_pids(metrics_dir: Path) -> set[int]:
    """Ready workers, read from the multiprocess files themselves: no request, so no recycling."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(metrics_dir))
    return {
        int(s.labels["pid"])
        for family in registry.collect()
        if family.name == "convnet_worker_ready"
        for s in family.samples
        if s.value == 1
    }


def wait_all_ready(srv: GunicornServer, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert srv.proc.poll() is None, srv.log()
        pids = set(srv.worker_pids())
        if len(pids) == srv.workers and pids <= ready_pids(srv.metrics_dir):
            return
        assert time.monotonic() < deadline, f"workers not ready after {timeout} s:\n{srv.log()}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def recycling_server(tmp_path_factory):
    """Workers recycled every 20-25 requests (Gunicorn's max_requests), the way production may run."""
    srv = GunicornServer(
        tmp=tmp_path_factory.mktemp("recycling"),
        workers=2,
        env={"GUNICORN_MAX_REQUESTS": "20", "GUNICORN_MAX_REQUESTS_JITTER": "5"},
    )
    try:
        # Not srv.wait_ready(): its polling of /metrics would itself recycle the workers.
        srv.start(wait_ready=False)
        wait_all_ready(srv)
        yield srv
    finally:
        srv.stop()


def metric_pids(samples: dict[Sample, float]) -> set[int]:
    return {int(dict(lbls)["pid"]) for n, lbls in samples if n == "convnet_worker_ready"}


def test_recycled_workers_lose_no_counts(recycling_server):
    srv = recycling_server
    pids_before = set(srv.worker_pids())
    before = scrape(srv.url)
    # Cheap requests, then real predictions; a fresh worker may answer 503 while its models load,
    # so the client's own tally by status is what the counters must match.
    sent: Counter[tuple[str, str, int]] = Counter()
    deadline = time.monotonic() + 120
    for i in range(60):  # ~30 per worker: each passes max_requests (20-25) at least once
        assert time.monotonic() < deadline, "recycling test ran out of time"
        if i % 3:
            status = requests.get(f"{srv.url}/livez", timeout=30).status_code
            sent["/livez", "", status] += 1
        else:
            status = post(srv.url, "/predict/mnist", DIGIT_PNG, "image/png")
            sent[PREDICT, "mnist", status] += 1
    wait_all_ready(srv)
    after = scrape(srv.url)

    pids_after = set(srv.worker_pids())
    assert pids_before - pids_after, "no worker was recycled; max_requests did not apply"
    for (endpoint, model, status), n in sent.items():
        got = delta(
            before,
            after,
            "convnet_http_requests_total",
            endpoint=endpoint,
            model=model,
            status=str(status),
        )
        assert got == n, (endpoint, model, status)
    assert delta(before, after, "convnet_http_requests_total") == sum(sent.values())
    # mark_process_dead dropped the recycled workers' live gauges.
    assert metric_pids(after) == pids_after
    assert total(after, "convnet_http_requests_in_flight") == 0


def test_killed_worker_loses_no_counts(recycling_server):
    srv = recycling_server
    wait_all_ready(srv)
    for _ in range(8):
        assert post(srv.url, "/predict/mnist", DIGIT_PNG, "image/png") in (200, 503)
    before = scrape(srv.url)
    # A worker that has counted requests (its counter file exists), so there is something to lose.
    victims = [p for p in srv.worker_pids() if (srv.metrics_dir / f"counter_{p}.db").exists()]
    assert victims, f"no worker has counted anything: {sorted(os.listdir(srv.metrics_dir))}"
    os.kill(victims[0], signal.SIGKILL)

    deadline = time.monotonic() + 120
    while victims[0] in srv.worker_pids():
        assert time.monotonic() < deadline, "the killed worker was not reaped"
        time.sleep(0.2)
    wait_all_ready(srv)
    after = scrape(srv.url)

    assert victims[0] not in srv.worker_pids()
    for name in ("convnet_http_requests_total", "convnet_http_request_duration_seconds_count"):
        assert total(after, name) == total(before, name), name
    assert victims[0] not in metric_pids(after)
    assert total(after, "convnet_http_requests_in_flight") == 0


def test_metrics_dir_is_wiped_on_start(tmp_path):
    """on_starting empties PROMETHEUS_MULTIPROC_DIR: counts of a previous run never leak in."""
    stale = tmp_path / "metrics" / "counter_999999.db"
    stale.parent.mkdir()
    stale.write_bytes(b"\x00" * 64)
    # The operator's own files in the folder stay: only prometheus-client's are removed.
    theirs = tmp_path / "metrics" / "notes.txt"
    theirs.write_text("keep me")
    srv = GunicornServer(tmp=tmp_path, workers=1)
    try:
        srv.start(wait_ready=False)
        deadline = time.monotonic() + 60
        while stale.exists():
            assert srv.proc.poll() is None, srv.log()
            assert time.monotonic() < deadline, "the stale metrics file was never removed"
            time.sleep(0.1)
    finally:
        srv.stop()
    assert not Path(stale).exists()
    assert theirs.read_text() == "keep me"


def test_a_metrics_dir_the_config_made_up_is_removed_at_exit(tmp_path):
    """Without PROMETHEUS_MULTIPROC_DIR, on_starting makes a temporary directory; on_exit removes
    it, so that every start does not leave one behind in /tmp."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    srv = GunicornServer(
        tmp=tmp_path, workers=1, env={"PROMETHEUS_MULTIPROC_DIR": "", "TMPDIR": str(tmpdir)}
    )
    try:
        srv.start()
        (made,) = tmpdir.glob("convnet-metrics-*")
        assert any(made.glob("*.db")), "the workers wrote no metrics there"
    finally:
        status = srv.stop()  # an assert here would hide the failure that got us here
    assert status == 0, srv.log()
    assert not made.exists()


def test_a_scrape_never_overlaps_the_archiving_of_a_dead_worker(tmp_path, monkeypatch):
    """The master folds a dead worker's files into the archive just after a scrape listed them:
    that scrape must neither fail on the deleted file nor count the worker twice."""
    from service.metrics import Metrics, archive_dead_worker

    worker = subprocess.run(
        [sys.executable, "-c", WORKER_THAT_COUNTS],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    pid = int(worker.stdout)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    metrics = Metrics()
    read_files = multiprocess.MultiProcessCollector.merge
    archivers: list[threading.Thread] = []

    def archive_between_listing_and_reading(files, accumulate=True):
        archiver = threading.Thread(target=archive_dead_worker, args=(str(tmp_path), pid))
        archiver.start()
        archiver.join(timeout=1.0)  # done at once unless the scrape holds it off
        archivers.append(archiver)
        return read_files(files, accumulate)

    monkeypatch.setattr(
        multiprocess.MultiProcessCollector,
        "merge",
        staticmethod(archive_between_listing_and_reading),
    )
    during = metrics.render()
    monkeypatch.setattr(multiprocess.MultiProcessCollector, "merge", staticmethod(read_files))
    archivers[0].join(timeout=10)
    after = metrics.render()

    def counted(text: bytes) -> float:
        families = text_string_to_metric_families(text.decode())
        return sum(
            s.value for f in families for s in f.samples if s.name == "convnet_test_events_total"
        )

    assert counted(during) == counted(after) == 3
    assert not (tmp_path / f"counter_{pid}.db").exists()  # folded into the archive after all
    assert (tmp_path / "counter_archive.db").exists()


WORKER_THAT_COUNTS = (
    "import os\n"
    "from prometheus_client import Counter\n"
    "Counter('convnet_test_events', 'Events.').inc(3)\n"
    "print(os.getpid())\n"
)


def test_the_wait_for_a_worker_is_measured_behind_nginx(server, tmp_path):
    """nginx stamps X-Request-Start; the service observes the wait before a worker took it. A
    request straight to Gunicorn carries no stamp and adds no sample."""
    if find_nginx() is None:
        pytest.skip("nginx is not installed (apt-get install -y nginx)")
    queued = "convnet_http_request_queue_seconds_count"
    with NginxProxy(tmp_path, server.port).running() as proxy:
        before = scrape(server.url)
        for _ in range(3):
            assert post(proxy.url, "/predict/mnist", DIGIT_PNG, "image/png") == 200
        through_nginx = scrape(server.url)
        assert post(server.url, "/predict/mnist", DIGIT_PNG, "image/png") == 200
        direct = scrape(server.url)
    # +1: the proxy's own /livez poll when it started may have landed in `before` or not.
    assert 3 <= delta(before, through_nginx, queued) <= 4
    assert delta(through_nginx, direct, queued) == 0
    waited = delta(before, through_nginx, "convnet_http_request_queue_seconds_sum")
    # Three requests on loopback wait milliseconds: seconds would be a units slip (ms counted
    # as s) or a clock read wrong; 3 s leaves room for a loaded machine.
    assert 0 <= waited < 3


NOW = 1_700_000_001.0


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("t=1700000000.250", 0.75),  # nginx's ${msec}: seconds with milliseconds
        ("t=1700000000250", 0.75),  # milliseconds
        ("1700000000250000", 0.75),  # microseconds, no t=
        ("t=1700000001.5", 0.0),  # the proxy's clock a little ahead: no wait, not a negative one
        ("t=1700005000", None),  # far ahead: not a wait
        ("t=-3", None),
        ("t=soon", None),
        ("", None),
        (None, None),
    ],
)
def test_queued_seconds_reads_the_proxys_stamp(header, expected):
    from service.instrumentation import queued_seconds

    waited = queued_seconds(header, now=NOW)
    assert waited == (None if expected is None else pytest.approx(expected, abs=1e-6))
