"""service/metric_values.py writes the files prometheus-client's own multiprocess values write."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.mmap_dict import MmapedDict

from service import metric_values
from service.metrics import STAGE_BUCKETS


def _record(directory: Path, value_class: type, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same metrics and writes, whichever value class stores them."""
    monkeypatch.setattr(values, "ValueClass", value_class)
    requests = Counter("requests", "Requests.", ["endpoint", "status"], registry=None)
    latency = Histogram(
        "latency_seconds", "Latency.", ["endpoint"], buckets=STAGE_BUCKETS, registry=None
    )
    in_flight = Gauge("in_flight", "In flight.", multiprocess_mode="livesum", registry=None)
    ready = Gauge("ready", "Ready.", multiprocess_mode="liveall", registry=None)
    info = Gauge("info", "Info.", ["version"], multiprocess_mode="max", registry=None)
    for i in range(2000):  # label sets enough to grow each file past its first 64 KiB
        endpoint = f"/route/{i % 700}/" + "x" * (i % 13)
        in_flight.inc()
        requests.labels(endpoint, str(200 + i % 3)).inc()
        latency.labels(endpoint).observe(i * 1e-5)
        in_flight.dec()
    ready.set(1)
    info.labels("3").set(1)
    # A timestamp, as the mostrecent gauge modes write one.
    value_class("gauge", "stamped", "stamped", (), (), "Stamped.", "mostrecent").set(4.0, 12.5)


def test_in_place_values_write_the_files_prometheus_client_writes(tmp_path, monkeypatch):
    stock, ours = tmp_path / "stock", tmp_path / "ours"
    stock.mkdir(), ours.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(stock))
    _record(stock, values.MultiProcessValue(), monkeypatch)
    _record(ours, metric_values.value_class(str(ours)), monkeypatch)

    files = sorted(p.name for p in stock.iterdir())
    assert files == sorted(p.name for p in ours.iterdir())
    assert {"counter", "histogram", "gauge_livesum", "gauge_mostrecent"} <= {
        name.rsplit("_", 1)[0] for name in files
    }
    for name in files:  # byte for byte: the same entries, values, timestamps and file size
        assert (ours / name).read_bytes() == (stock / name).read_bytes(), name
    assert (ours / f"counter_{os.getpid()}.db").stat().st_size > 1 << 16  # it grew

    def scrape(directory: Path) -> bytes:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, str(directory))
        return generate_latest(registry)

    assert scrape(ours) == scrape(stock)
    assert b'requests_total{endpoint="/route/0/",status="200"}' in scrape(ours)


def test_a_value_continues_from_a_file_this_process_wrote(tmp_path):
    first = metric_values.value_class(str(tmp_path))("counter", "c", "c_total", (), (), "C.")
    first.inc(3)
    again = metric_values.value_class(str(tmp_path))("counter", "c", "c_total", (), (), "C.")
    assert again.get() == 3
    again.inc(2)
    other = metric_values.value_class(str(tmp_path))("counter", "d", "d_total", (), (), "D.")
    other.inc(1)  # a new key is appended after the ones read, not over them
    assert first.get() == 5 and other.get() == 1


def test_a_file_that_cannot_grow_leaves_every_value_writable(tmp_path, monkeypatch):
    cls = metric_values.value_class(str(tmp_path))
    value = cls("counter", "c", "c_total", (), (), "C.")
    value.inc(1)

    def no_memory(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")

    with monkeypatch.context() as patch:
        patch.setattr(metric_values.mmap, "mmap", no_memory)
        with pytest.raises(OSError, match="Cannot allocate"):
            for i in range(2000):  # past the file's first 64 KiB
                cls("counter", "c", "c_total", ("i",), (str(i),), "C.")
        value.inc(1)  # the old mapping is still there
    more = [cls("counter", "c", "c_total", ("i",), (str(i),), "C.") for i in range(2000)]
    more[-1].inc(3)
    value.inc(1)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, str(tmp_path))
    assert registry.get_sample_value("c_total") == 3
    assert registry.get_sample_value("c_total", {"i": "1999"}) == 3


def test_threads_lose_no_increment(tmp_path):
    value = metric_values.value_class(str(tmp_path))("counter", "c", "c_total", (), (), "C.")

    def add() -> None:
        for _ in range(20_000):
            value.inc(1)

    threads = [threading.Thread(target=add) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert value.get() == 80_000


def test_a_forked_child_writes_its_own_files(tmp_path):
    value = metric_values.value_class(str(tmp_path))("counter", "c", "c_total", (), (), "C.")
    value.inc(1)
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        status = 1  # a failure in the child is its exit status, which the parent checks
        try:
            value.inc(5)
            status = 0
        finally:
            os._exit(status)
    assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0, "the child's inc failed"
    value.inc(1)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, str(tmp_path))
    assert registry.get_sample_value("c_total") == 7
    child_file = MmapedDict.read_all_values_from_file(str(tmp_path / f"counter_{child}.db"))
    assert [v for _, v, _, _ in child_file] == [5.0]  # from zero, not the parent's 1
