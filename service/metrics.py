"""Every metric, defined in one place, correct with N Gunicorn workers.

Under Gunicorn, PROMETHEUS_MULTIPROC_DIR is set by gunicorn.conf.py before any worker imports
prometheus_client: each worker writes its samples to memory-mapped files there, and `/metrics`
(served by whichever worker) merges them all with the MultiProcessCollector. Without it (unit
tests, a plain Flask run) the app's own registry is used.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics import MetricWrapperBase

# Sub-millisecond (a cached 404) to seconds (a 12 MP photo through the scenes net).
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.004,
    0.006,
    0.008,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
)
# One stage of one request: a LeNet call takes 20-60 us and a digit's decode + preprocess about
# 100, so the request buckets above (from 0.5 ms) would put every sample in their first bucket.
STAGE_BUCKETS = (
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
)
BYTES_BUCKETS = (256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216)
IMAGES_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
CONFIDENCE_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


@contextlib.contextmanager
def archive_lock(path: str, exclusive: bool) -> Iterator[None]:
    """Scrapes (shared) against the master folding a dead worker's files (exclusive).

    The collector lists the files, then reads them: a file deleted in between fails the scrape
    (a 500), and a scrape that reads the archive after the fold but the dead file before its
    delete counts the worker twice, which Prometheus takes for a counter reset. The lock file's
    name does not end in .db, so the collector never reads it.
    """
    with open(os.path.join(path, "archive.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def archive_dead_worker(path: str, pid: int) -> None:
    """Fold a dead worker's counter and histogram files into `counter_archive.db` and
    `histogram_archive.db`, then delete them (and its max-mode gauge file).

    prometheus-client keeps a dead worker's files forever (its totals must survive it), so with
    max_requests recycling the directory gains ~3 files per recycled worker and every scrape reads
    them all. /metrics merges the archive like any worker's file: counters and histogram samples
    are summed across files, so the totals are unchanged. Only the master writes the archive, one
    worker exit at a time, and no scrape runs meanwhile (`archive_lock`).
    """
    from prometheus_client.mmap_dict import MmapedDict

    with archive_lock(path, exclusive=True):
        for kind in ("counter", "histogram"):
            dead = os.path.join(path, f"{kind}_{pid}.db")
            if not os.path.exists(dead):
                continue
            archive = MmapedDict(os.path.join(path, f"{kind}_archive.db"))
            try:
                for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(dead):
                    total, _ = archive.read_value(key)
                    archive.write_value(key, total + value, timestamp)
            finally:
                archive.close()
            os.remove(dead)
        # model_info (max across workers): the live workers report the same models.
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(path, f"gauge_max_{pid}.db"))


class Metrics:
    def __init__(self) -> None:
        # Labelled children by (metric, label values). labels() validates and takes a lock on
        # every call; the label sets are bounded (routes x models x classes), so is this.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        # In multiprocess mode metrics live in files there, not in a registry; see `render`.
        self.multiprocess_path = multiprocess_dir()
        self.registry = CollectorRegistry()
        reg = None if self.multiprocess_path else self.registry
        if not self.multiprocess_path:
            ProcessCollector(registry=self.registry)

        self.requests = Counter(
            "convnet_http_requests_total",
            "HTTP requests answered.",
            ["endpoint", "model", "status"],
            registry=reg,
        )
        self.latency = Histogram(
            "convnet_http_request_duration_seconds",
            "Time to answer an HTTP request.",
            # status: a latency SLO is kept on successful answers; fast 4xx/503s would hide slow 200s.
            ["endpoint", "model", "status"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.queue = Histogram(
            "convnet_http_request_queue_seconds",
            "Time from the proxy taking a request (its X-Request-Start header) to a worker "
            "starting on it: the wait for a free worker, which the request's own duration omits.",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.in_flight = Gauge(
            "convnet_http_requests_in_flight",
            "Requests being handled now.",
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.body_bytes = Histogram(
            "convnet_http_request_body_bytes",
            "Size of request bodies.",
            ["endpoint"],
            buckets=BYTES_BUCKETS,
            registry=reg,
        )
        self.images = Histogram(
            "convnet_images_per_request",
            "Images in one request.",
            ["endpoint", "model"],
            buckets=IMAGES_BUCKETS,
            registry=reg,
        )
        self.preprocess = Histogram(
            "convnet_image_preprocess_seconds",
            "Decoding and preprocessing one image.",
            ["model"],
            buckets=STAGE_BUCKETS,
            registry=reg,
        )
        self.inference = Histogram(
            "convnet_inference_seconds",
            "One model call (a whole batch).",
            ["model", "signature"],
            buckets=STAGE_BUCKETS,
            registry=reg,
        )
        self.batch_size = Histogram(
            "convnet_inference_batch_size",
            "Images in one model call.",
            ["model", "signature"],
            buckets=IMAGES_BUCKETS,
            registry=reg,
        )
        self.predictions = Counter(
            "convnet_predictions_total",
            "Predicted (top-1) class per image.",
            ["model", "class"],
            registry=reg,
        )
        self.confidence = Histogram(
            "convnet_prediction_confidence",
            "Probability of the top-1 class per image.",
            ["model"],
            buckets=CONFIDENCE_BUCKETS,
            registry=reg,
        )
        self.uncertain = Counter(
            "convnet_uncertain_predictions_total",
            "Predictions flagged uncertain per image: the model does not know the image (a "
            "low confidence, or features far from every class).",
            ["model"],
            registry=reg,
        )
        self.model_info = Gauge(
            "convnet_model_info",
            "Models loaded (value 1), by name and version.",
            ["model", "version"],
            multiprocess_mode="max",
            registry=reg,
        )
        self.worker_rss = Gauge(
            "convnet_worker_resident_memory_bytes",
            "Resident memory of this worker process (a pid label per worker).",
            multiprocess_mode="liveall",
            registry=reg,
        )
        self.worker_cpu = Gauge(
            "convnet_worker_cpu_seconds",
            "CPU time used by each worker process so far.",
            multiprocess_mode="liveall",
            registry=reg,
        )
        self.worker_ready = Gauge(
            "convnet_worker_ready",
            "1 when the worker has loaded and warmed up every model.",
            multiprocess_mode="liveall",
            registry=reg,
        )

    def child(self, metric: MetricWrapperBase, *labels: str) -> Any:
        """`metric.labels(*labels)`, looked up once per label set."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def sample_process(self) -> None:
        """This worker's memory and CPU; ProcessCollector cannot cross processes."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.worker_cpu.set(usage.ru_utime + usage.ru_stime)
        try:
            with open("/proc/self/statm") as f:
                rss_pages = int(f.read().split()[1])
            self.worker_rss.set(rss_pages * os.sysconf("SC_PAGE_SIZE"))
        except OSError:
            self.worker_rss.set(usage.ru_maxrss * 1024)

    def start_sampler(self, interval: float = 5.0) -> None:
        def loop() -> None:
            while True:
                self.sample_process()
                time.sleep(interval)

        threading.Thread(target=loop, name="metrics-sampler", daemon=True).start()

    def render(self) -> bytes:
        self.sample_process()
        path = self.multiprocess_path
        if path:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path)
            with archive_lock(path, exclusive=False):
                return generate_latest(registry)
        return generate_latest(self.registry)
