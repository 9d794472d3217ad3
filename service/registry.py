"""Which models exist and their loaded signatures: models/<name>/<version>/ in TF Serving's layout.

The highest numbered version of each model is served. Everything the service knows about a model
(classes, input, preprocessing, layer table) comes from the metadata written at export time.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

METADATA_PATH = Path("assets.extra") / "metadata.json"


@dataclass
class Model:
    name: str
    version: int
    path: Path
    metadata: dict[str, Any]
    predict_fn: Any
    features_fn: Any
    gradcam_fn: Any | None

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

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Softmax probabilities, (N, classes), for a float32 batch (N, H, W, C)."""
        import tensorflow as tf

        out = self.predict_fn(image=tf.constant(batch, dtype=tf.float32))
        return out[self.metadata["signatures"]["predict"]["output"]].numpy()

    def features(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every named layer's output for a float32 batch, in the layer table's order."""
        import tensorflow as tf

        out = self.features_fn(image=tf.constant(batch, dtype=tf.float32))
        return {row["name"]: out[row["name"]].numpy() for row in self.layers}

    def gradcam(self, batch: np.ndarray, class_index: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        out = self.gradcam_fn(
            image=tf.constant(batch, dtype=tf.float32),
            class_index=tf.constant(class_index, dtype=tf.int32),
        )
        return out["heatmap"].numpy()


def find_versions(models_dir: Path) -> dict[str, Path]:
    """The newest exported version of each model: {name: models_dir/name/version}."""
    found = {}
    for model_dir in sorted(Path(models_dir).iterdir()) if Path(models_dir).is_dir() else []:
        versions = (
            [
                p
                for p in model_dir.iterdir()
                if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").exists()
            ]
            if model_dir.is_dir()
            else []
        )
        if versions:
            found[model_dir.name] = max(versions, key=lambda p: int(p.name))
    return found


def load_model(path: Path) -> Model:
    import tensorflow as tf

    metadata = json.loads((path / METADATA_PATH).read_text())
    loaded = tf.saved_model.load(str(path))
    sigs = metadata["signatures"]
    gradcam = sigs.get("gradcam", {}).get("name")
    model = Model(
        name=metadata["name"],
        version=int(metadata["version"]),
        path=path,
        metadata=metadata,
        predict_fn=loaded.signatures[sigs["predict"]["name"]],
        features_fn=loaded.signatures[sigs["features"]["name"]],
        gradcam_fn=loaded.signatures.get(gradcam),
    )
    model._loaded = loaded  # keep the SavedModel's resources alive with its signatures
    return model


def warm_up(model: Model) -> None:
    """One call through every signature, so the first real request pays no tracing cost."""
    zeros = np.zeros((1, *model.input_shape), np.float32)
    model.predict(zeros)
    model.features(zeros)
    if model.gradcam_fn is not None:
        model.gradcam(zeros, np.zeros(1, np.int32))


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
    models: dict[str, Model] = field(default_factory=dict)
    ready: threading.Event = field(default_factory=threading.Event)
    error: str | None = None
    load_seconds: float | None = None

    def get(self, name: str) -> Model | None:
        return self.models.get(name)

    def load_all(self, tf_threads: int, on_ready: Callable[[], None] | None = None) -> None:
        started = time.monotonic()
        try:
            configure_tensorflow(tf_threads)
            paths = find_versions(self.models_dir)
            if not paths:
                raise FileNotFoundError(f"no SavedModel under {self.models_dir}/<name>/<version>/")
            for name, path in paths.items():
                model = load_model(path)
                warm_up(model)
                self.models[name] = model
                log.info("loaded %s version %s from %s", name, model.version, path)
            self.load_seconds = time.monotonic() - started
            if on_ready:
                on_ready()
            self.ready.set()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("loading models failed")
            raise

    def start_loading(
        self, tf_threads: int, on_ready: Callable[[], None] | None = None
    ) -> threading.Thread:
        def run() -> None:
            try:
                self.load_all(tf_threads, on_ready)
            except Exception:
                pass  # recorded in self.error; /readyz reports it

        thread = threading.Thread(target=run, name="model-loader", daemon=True)
        thread.start()
        return thread
