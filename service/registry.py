"""Which models exist and how to call them: models/<name>/<version>/ in TF Serving's layout.

The highest numbered version of each model is served, skipping smoke and tuning-split runs (their
metadata's `training` section says so). Everything the service knows about a model
(classes, input, preprocessing, layer table) comes from the metadata written at export time.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service import engines
from service.batching import Batcher
from service.metadata import METADATA_PATH

log = logging.getLogger(__name__)


@dataclass
class Model:
    name: str
    version: int
    path: Path
    metadata: dict[str, Any]
    engine: engines.LiteRTEngine | engines.TensorFlowEngine
    batcher: Batcher | None = None

    @property
    def classes(self) -> list[str]:
        return self.metadata["classes"]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.metadata["input"]["shape"])

    @property
    def preprocessing(self) -> dict[str, Any]:
        return self.metadata["preprocessing"]

    @property
    def layers(self) -> list[dict[str, Any]]:
        return self.metadata["layers"]

    @property
    def has_gradcam(self) -> bool:
        return "gradcam" in self.metadata["signatures"]

    @property
    def uncertainty(self) -> dict[str, Any] | None:
        """The export's `uncertain` rule (training/calibration.py); None for versions exported
        before it existed."""
        return self.metadata.get("uncertainty")

    def predict(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """For a float32 batch (N, H, W, C): "probabilities" (N, classes), calibrated, and
        "distance" (N,), the feature distance of the `uncertain` rule, where exported."""
        return self.batcher(batch) if self.batcher else self.engine.predict(batch)

    def enable_batching(
        self, max_batch_size: int, max_wait: float, on_call: Callable[[int, float], None]
    ) -> None:
        self.batcher = Batcher(
            self.engine.predict, max_batch_size, max_wait, on_call, name=f"batcher-{self.name}"
        )

    def features(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every named layer's output for a float32 batch, in the layer table's order, and the
        "distance" output where exported."""
        out = self.engine.features(batch)
        acts = {row["name"]: out[row["name"]] for row in self.layers}
        distance = self.metadata["signatures"]["features"].get("distance")
        if distance is not None:
            acts["distance"] = out[distance]
        return acts

    def gradcam(self, batch: np.ndarray, class_index: np.ndarray) -> np.ndarray:
        return self.engine.gradcam(batch, class_index)


# A version folder is a number in plain decimal: not "03" beside "3", not "²" (str.isdigit).
_VERSION_NAME = re.compile(r"0|[1-9][0-9]*")


def _is_complete_version(path: Path) -> bool:
    # The metadata is written last (and training/export.py renames a finished version into
    # place): a SavedModel without it is an export or a copy still under way.
    return (
        path.is_dir()
        and _VERSION_NAME.fullmatch(path.name) is not None
        and (path / "saved_model.pb").is_file()
        and (path / METADATA_PATH).is_file()
    )


def _is_trial_run(path: Path) -> bool:
    """A smoke run (`--max-batches`) or a `--tuning-split` run: never to be served."""
    try:  # only the trial flags, not the schema: loading the version reports a bad key
        metadata = json.loads((path / METADATA_PATH).read_text())
    except (OSError, ValueError):
        return False
    training = metadata.get("training") if isinstance(metadata, dict) else None
    if not isinstance(training, dict):
        return False
    trial = [k for k in ("smoke_run", "tuning_split") if training.get(k) is True]
    if trial:
        log.warning("skipping %s: its metadata marks it a %s", path, " and ".join(trial))
    return bool(trial)


def find_versions(models_dir: Path) -> dict[str, Path]:
    """The newest complete version of each model that is not a trial run:
    {name: models_dir/name/version}."""
    found = {}
    root = Path(models_dir)
    for model_dir in sorted(root.iterdir()) if root.is_dir() else []:
        if not model_dir.is_dir():
            continue
        versions = [
            p for p in model_dir.iterdir() if _is_complete_version(p) and not _is_trial_run(p)
        ]
        if versions:
            found[model_dir.name] = max(versions, key=lambda p: int(p.name))
    return found


# Set by the Gunicorn master (gunicorn.conf.py) to the versions it found at start or reload, and
# inherited by every worker it forks: a replacement worker then serves what the others serve,
# not a version exported since.
SERVED_VERSIONS_ENV = "CONVNET_SERVED_VERSIONS"


def pin_versions(models_dir: Path, versions: dict[str, Path]) -> None:
    os.environ[SERVED_VERSIONS_ENV] = json.dumps(
        {
            "models_dir": str(Path(models_dir).resolve()),
            "versions": {name: str(path.resolve()) for name, path in versions.items()},
        }
    )


def served_versions(models_dir: Path) -> dict[str, Path]:
    """The versions the master pinned for this models folder, else the newest on disk."""
    pinned = json.loads(os.environ.get(SERVED_VERSIONS_ENV) or "{}")
    if pinned.get("models_dir") == str(Path(models_dir).resolve()):
        return {name: Path(path) for name, path in pinned["versions"].items()}
    return find_versions(models_dir)


def warm_up(model: Model) -> None:
    """One call through each signature, so the first real request pays no set-up cost."""
    zeros = np.zeros((1, *model.input_shape), np.float32)
    model.engine.predict(zeros)
    model.features(zeros)


def configure_tensorflow(threads: int) -> None:
    """Limit TensorFlow's pools: each Gunicorn worker gets its share of the cores, not all of them."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # already initialised in this process (e.g. tests loading twice)
        pass


@dataclass
class Registry:
    """The models this process serves; filled by `load_all`, in the background or not."""

    models_dir: Path
    engine: str = "litert"
    engine_cache: Path = field(default_factory=engines.default_cache)
    threads: int = 1
    models: dict[str, Model] = field(default_factory=dict)
    ready: threading.Event = field(default_factory=threading.Event)
    error: str | None = None
    load_seconds: float | None = None

    def get(self, name: str) -> Model | None:
        return self.models.get(name)

    def _load(self, paths: dict[str, Path]) -> None:
        if self.engine == "litert":
            engine_files = engines.prepare(paths, self.engine_cache)
        else:
            configure_tensorflow(self.threads)
        for name, path in paths.items():
            metadata = engines.read_metadata(path)
            if self.engine == "litert":
                engine = engines.LiteRTEngine(engine_files[name], metadata, self.threads)
            else:
                engine = engines.TensorFlowEngine(path, metadata)
            model = Model(metadata["name"], int(metadata["version"]), path, metadata, engine)
            warm_up(model)
            self.models[name] = model
            log.info("loaded %s version %s from %s (%s)", name, model.version, path, self.engine)

    def load_all(self, on_ready: Callable[[], None] | None = None) -> None:
        started = time.monotonic()
        try:
            paths = served_versions(self.models_dir)
            if not paths:
                raise FileNotFoundError(f"no SavedModel under {self.models_dir}/<name>/<version>/")
            self._load(paths)
            self.load_seconds = time.monotonic() - started
            if on_ready:
                on_ready()
            self.ready.set()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("loading models failed")
            raise

    def start_loading(self, on_ready: Callable[[], None] | None = None) -> threading.Thread:
        def run() -> None:
            try:
                self.load_all(on_ready)
            except Exception:
                pass  # recorded in self.error; /readyz reports it

        thread = threading.Thread(target=run, name="model-loader", daemon=True)
        thread.start()
        return thread
