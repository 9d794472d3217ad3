"""Adaptive batching: results go back to the right caller, batches form only under load."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from service.batching import Batcher
from tests import corpus
from tests.server import GunicornServer


def slow_double(x: np.ndarray) -> np.ndarray:
    time.sleep(0.02)  # a model call long enough for requests to queue behind it
    return x * 2


def test_concurrent_callers_get_their_own_results_in_shared_calls():
    calls: list[int] = []
    batcher = Batcher(slow_double, max_batch_size=8, on_call=lambda n, _s: calls.append(n))
    inputs = [np.full((1 + i % 3, 2), i, np.float32) for i in range(40)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(batcher, inputs))
    for x, y in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(y, x * 2)
    assert sum(calls) == sum(len(x) for x in inputs)
    assert max(calls) > 3, "requests queued behind a call should share the next one"
    assert max(calls) <= 8


def test_a_lone_request_is_not_delayed_and_runs_alone():
    calls: list[int] = []
    batcher = Batcher(lambda x: x + 1, max_batch_size=8, on_call=lambda n, _s: calls.append(n))
    for _ in range(5):
        batcher(np.zeros((1, 2), np.float32))
    assert calls == [1] * 5


def test_max_wait_collects_requests_arriving_within_the_window():
    calls: list[int] = []
    batcher = Batcher(
        lambda x: x, max_batch_size=4, max_wait=0.5, on_call=lambda n, _s: calls.append(n)
    )
    threads = [threading.Thread(target=batcher, args=(np.zeros((1, 1)),)) for _ in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.01)
    for t in threads:
        t.join(5)
    assert calls == [4]


def test_errors_reach_every_waiting_caller_and_the_batcher_survives():
    def fail_on_negative(x):
        time.sleep(0.01)
        if (x < 0).any():
            raise ValueError("negative")
        return x

    batcher = Batcher(fail_on_negative, max_batch_size=1)
    with pytest.raises(ValueError, match="negative"):
        batcher(np.array([[-1.0]]))
    np.testing.assert_array_equal(batcher(np.array([[1.0]])), [[1.0]])


def test_inputs_made_in_the_batching_thread_and_a_bad_one_fails_alone():
    made_in: list[str] = []

    def make(i: int):
        def build() -> np.ndarray:
            made_in.append(threading.current_thread().name)
            time.sleep(0.005)
            if i == 3:
                raise ValueError("undecodable")
            return np.full((1, 2), i, np.float32)

        return build

    batcher = Batcher(slow_double, max_batch_size=8, name="batcher-test")

    def call(i: int):
        try:
            return batcher.run(make(i), size=1)
        except ValueError as exc:
            return exc

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(8)))
    for i, result in enumerate(results):
        if i == 3:
            assert isinstance(result, ValueError), result
        else:
            np.testing.assert_array_equal(result, np.full((1, 2), 2 * i))
    assert set(made_in) == {"batcher-test"}


@pytest.mark.server
def test_the_served_batching_mode_answers_each_request_what_the_sync_server_does(server, tmp_path):
    """Real Gunicorn with CONVNET_BATCHING=1 (gthread): concurrent requests, one of them not an
    image, each get exactly the answer the default server gives."""
    digits = [corpus.encode(corpus.digit(v, 64), "PNG") for v in (0, 1, 4, 7)] * 4
    broken_png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40  # sniffed as PNG, fails in Pillow
    bodies = [*digits[:5], b"not an image", *digits[5:10], broken_png, *digits[10:]]

    def post(url: str, body: bytes) -> tuple[int, dict]:
        r = requests.post(
            f"{url}/predict/mnist", data=body, headers={"Content-Type": "image/png"}, timeout=30
        )
        return r.status_code, r.json()

    want = [post(server.url, b) for b in bodies]
    batching = GunicornServer(tmp=tmp_path, env={"CONVNET_BATCHING": "1"})
    try:
        batching.start()
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda b: post(batching.url, b), bodies))
        log = batching.log()
    finally:
        batching.stop()
    assert [status for status, _ in got] == [200] * 5 + [415] + [200] * 5 + [422] + [200] * 6
    # Error messages may name a per-process object; the status and the code must agree.
    for (status, body), (want_status, want_body) in zip(got, want, strict=True):
        assert status == want_status
        assert (
            body == want_body
            if status == 200
            else body["error"]["code"] == want_body["error"]["code"]
        )
    assert "Using worker: service.workers.BalancedThreadWorker" in log, log
