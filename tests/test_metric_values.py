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


def test_a_dead_workers_files_fold_into_the_archive_with_its_totals(tmp_path, monkeypatch):
    """service/metrics.archive_dead_worker reads and writes prometheus-client's own files through
    its non-public MmapedDict: this fails if a release changes that format or API."""
    from service.metrics import archive_dead_worker

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())
    requests = Counter("requests", "Requests.", ["status"], registry=None)
    for count in (3, 4):  # two workers in turn, each exits
        child = os.fork()
        if child == 0:  # pragma: no cover
            requests.labels("200").inc(count)
            os._exit(0)
        os.waitpid(child, 0)
        archive_dead_worker(str(tmp_path), child)
        assert not (tmp_path / f"counter_{child}.db").exists()
    assert sorted(p.name for p in tmp_path.glob("counter_*.db")) == ["counter_archive.db"]
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, str(tmp_path))
    assert registry.get_sample_value("requests_total", {"status": "200"}) == 7
