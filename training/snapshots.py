"""The network while it learns: its weights at a few moments of training, served beside the final
model so that the explorer can show one image's probabilities moving from random to right.

Kept in memory by a callback during training, saved with the checkpoint, and exported into the
version folder as `snapshots/snapshots.json` plus one small LiteRT flatbuffer per moment.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from service.metadata import (
    SNAPSHOT_OUTPUT,
    SNAPSHOT_SIGNATURE,
    SNAPSHOTS_FILE,
    SNAPSHOTS_FOLDER,
    validate_snapshots,
)

WEIGHTS_FILE = "snapshots.npz"  # in a checkpoint folder


@dataclass
class Snapshot:
    name: str
    label: str
    epoch: float  # epochs completed when taken
    step: int  # optimizer steps taken
    weights: list[np.ndarray]

    def info(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "weights"}


class SnapshotRecorder(keras.callbacks.Callback):
    """Copies the weights before training, after the first step, after epochs 1 and 5, and at
    the end: the moments where the seed post's "putting it all together" changes most."""

    def __init__(self, final: bool = True) -> None:
        super().__init__()
        self.final = final  # False when training stops early on purpose (a replay)
        self.snapshots: list[Snapshot] = []
        self._steps = 0
        self._epoch = 0

    def _take(self, name: str, label: str, epoch: float) -> None:
        weights = [np.array(w) for w in self.model.get_weights()]
        self.snapshots.append(Snapshot(name, label, epoch, self._steps, weights))

    def on_train_begin(self, logs=None) -> None:
        self._take("init", "before training (random weights)", 0)

    def on_train_batch_end(self, batch, logs=None) -> None:
        self._steps += 1
        if self._steps == 1:
            self._take("step1", "after one step (one batch)", 0)

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self._epoch = epoch

    def on_epoch_end(self, epoch, logs=None) -> None:
        if epoch in (0, 4):
            self._take(
                f"epoch{epoch + 1}", f"after {epoch + 1} epoch{'s' * (epoch > 0)}", epoch + 1
            )

    def on_train_end(self, logs=None) -> None:
        if not self.final:
            return
        if self.snapshots and self.snapshots[-1].step == self._steps:
            self.snapshots.pop()  # the last epoch was epoch 1 or 5: one snapshot, named final
        self._take("final", "trained", self._epoch + 1)


def save(snapshots: list[Snapshot], folder: Path) -> list[dict[str, Any]]:
    """Into a checkpoint folder: the weights in one .npz; returns the infos for result.json."""
    arrays = {f"{s.name}/{i}": w for s in snapshots for i, w in enumerate(s.weights)}
    np.savez_compressed(Path(folder) / WEIGHTS_FILE, **arrays)
    return [s.info() for s in snapshots]


def load(infos: list[dict[str, Any]], folder: Path) -> list[Snapshot]:
    with np.load(Path(folder) / WEIGHTS_FILE) as saved:
        out = []
        for info in infos:
            count = sum(1 for k in saved.files if k.startswith(f"{info['name']}/"))
            weights = [saved[f"{info['name']}/{i}"] for i in range(count)]
            out.append(Snapshot(**info, weights=weights))
        return out


def _engine(model: keras.Model) -> bytes:
    """The network as a LiteRT flatbuffer with one signature: image -> probabilities."""
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        SNAPSHOT_SIGNATURE,
        lambda image: {SNAPSHOT_OUTPUT: model(image, training=False)},
        input_signature=[tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="image")],
    )
    with tempfile.TemporaryDirectory() as tmp:
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, [SNAPSHOT_SIGNATURE])
        # Weights stored as float16 (computed in float32): half the size, five of them per version.
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
        return converter.convert()


def export(
    snapshots: list[Snapshot],
    build: Any,
    history: dict[str, list[float]],
    version_dir: Path,
    served: Callable[[keras.Model], keras.Model] | None = None,
) -> None:
    """Write `snapshots/` into an export: `build()` makes the recipe's network, untrained;
    `served(network)`, when given, the graph it is served in (its test-time views), so that the
    trained snapshot answers as the version does before its temperature."""
    folder = Path(version_dir) / SNAPSHOTS_FOLDER
    folder.mkdir()
    entries = []
    for snap in snapshots:
        model = build()
        model.set_weights(snap.weights)
        if served is not None:
            model = served(model)
        file = f"{snap.name}.tflite"
        (folder / file).write_bytes(_engine(model))
        entries.append({**snap.info(), "file": file})
    index = {
        "format": 1,
        "snapshots": entries,
        "history": {
            k: history[k] for k in ("loss", "val_loss", "accuracy", "val_accuracy") if k in history
        },
    }
    validate_snapshots(json.loads(json.dumps(index)), f"{version_dir}'s snapshots")
    (folder / SNAPSHOTS_FILE).write_text(json.dumps(index, indent=2) + "\n")


class ReplayError(Exception):
    """The replayed epochs did not retrace the version's recorded training."""


def replay(recipe: Any, version_dir: Path, data_dir: Path, epochs: int = 5) -> Path:
    """Snapshots for a version trained before they existed: its training run again, with its
    seed and schedule, for the first `epochs` epochs only (training is deterministic on CPU), then
    checked against the version's recorded history; its own weights are the final snapshot."""
    from training import checkpoint
    from training.export import served_graph
    from training.train import train

    version_dir = Path(version_dir)
    recorded = checkpoint.load(version_dir, recipe)
    run = recorded.training
    replayed = train(
        recipe, data_dir, run["seed"], run["epochs"], run.get("max_batches"), stop_after=epochs
    )
    for key, values in replayed.history.items():
        want = recorded.history[key][:epochs]
        if not np.allclose(values, want, rtol=1e-3):
            raise ReplayError(f"{key}: replayed {values}, recorded {want}")
    per_epoch = next(s.step for s in replayed.snapshots if s.name == "epoch1")
    final = Snapshot(
        "final", "trained", run["epochs"], per_epoch * run["epochs"], recorded.model.get_weights()
    )
    export(
        [*replayed.snapshots, final],
        lambda: recipe.build(len(recipe.classes), recipe.dropout),
        recorded.history,
        version_dir,
        served_graph(recipe),
    )
    return version_dir / SNAPSHOTS_FOLDER
