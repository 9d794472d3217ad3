"""The network while it learned: a version's training snapshots (training/snapshots.py), each a
small LiteRT engine taking the served model's preprocessed input and returning probabilities.

Read from `<version>/snapshots/` (service/metadata.py's schema), loaded on first use, once per
process: the explorer shows one image through each, from random weights to trained.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from service.metadata import SNAPSHOT_OUTPUT, SNAPSHOT_SIGNATURE, SNAPSHOTS_FOLDER, read_snapshots


class SnapshotSet:
    """One version's snapshots; `index` is None when the version has none."""

    def __init__(self, model_path: Path) -> None:
        self.folder = Path(model_path) / SNAPSHOTS_FOLDER
        self.index = read_snapshots(model_path)
        self._runners: dict[str, Any] = {}
        self._lock = threading.Lock()  # one interpreter each, not thread-safe: one call at a time

    @property
    def entries(self) -> list[dict[str, Any]]:
        return self.index["snapshots"] if self.index else []

    def _runner(self, entry: dict[str, Any]):
        if entry["name"] not in self._runners:
            from ai_edge_litert.interpreter import Interpreter

            interpreter = Interpreter(model_path=str(self.folder / entry["file"]))
            self._runners[entry["name"]] = interpreter.get_signature_runner(SNAPSHOT_SIGNATURE)
        return self._runners[entry["name"]]

    def probabilities(self, batch: np.ndarray) -> list[np.ndarray]:
        """Each snapshot's probabilities (N, classes) for a preprocessed batch, in index order."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        with self._lock:
            return [self._runner(e)(image=batch)[SNAPSHOT_OUTPUT] for e in self.entries]


class SnapshotStore:
    """Each model version's snapshot set, by version folder."""

    def __init__(self) -> None:
        self._sets: dict[Path, SnapshotSet] = {}
        self._lock = threading.Lock()

    def get(self, model_path: Path) -> SnapshotSet:
        with self._lock:
            if model_path not in self._sets:
                self._sets[model_path] = SnapshotSet(model_path)
            return self._sets[model_path]
