"""Adaptive batching: results go back to the right caller, batches form only under load."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.batching import Batcher


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
