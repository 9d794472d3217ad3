"""What the service relies on from prometheus-client's own multiprocess values (the workers use
them unchanged: `PROMETHEUS_MULTIPROC_DIR` is set by the master before any worker imports
prometheus_client). The counts across real workers are checked in tests/test_metrics.py."""

from __future__ import annotations

import os
import signal
import threading

from prometheus_client import CollectorRegistry, Counter, multiprocess, values


def scrape_total(directory: str, name: str) -> float | None:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, directory)
    return registry.get_sample_value(name)


def test_threads_of_one_worker_lose_no_increment(tmp_path, monkeypatch):
    """The batching worker records from several threads into one process's values."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    value = values.MultiProcessValue()("counter", "c", "c_total", (), (), "C.")

    def add() -> None:
        for _ in range(20_000):
            value.inc(1)

    threads = [threading.Thread(target=add) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert value.get() == 80_000
    assert scrape_total(str(tmp_path), "c_total") == 80_000


def test_a_worker_killed_outright_keeps_what_it_counted(tmp_path, monkeypatch):
    """Each increment is in the worker's file at once: a SIGKILL loses nothing counted."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())
    requests = Counter("requests", "Requests.", ["status"], registry=None)
    child = os.fork()
    if child == 0:  # pragma: no cover (the child: counts, then dies without any cleanup)
        requests.labels("200").inc(7)
        os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(child, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert os.path.exists(tmp_path / f"counter_{child}.db")
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, str(tmp_path))
    assert registry.get_sample_value("requests_total", {"status": "200"}) == 7
