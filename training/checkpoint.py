"""A trained model and its figures on disk, between training and export.

Training takes an hour; export (calibration, signatures, metadata) takes seconds and changes more
often. A checkpoint lets a model be exported again without training it again.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras

from service.metadata import SNAPSHOTS_FOLDER
from service.saved_weights import variable_key
from training import snapshots
from training.recipes import Recipe
from training.train import TrainResult

MODEL_FILE = "model.keras"
RESULT_FILE = "result.json"


class CheckpointError(Exception):
    """The checkpoint folder is missing a file or holds one that does not load."""


def save(result: TrainResult, folder: Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    result.model.save(folder / MODEL_FILE)
    figures = {
        "history": result.history,
        "evaluation": result.evaluation,
        "training": result.training,
        "snapshots": snapshots.save(result.snapshots, folder) if result.snapshots else [],
    }
    (folder / RESULT_FILE).write_text(json.dumps(figures, indent=2) + "\n")


def from_saved_model(version_dir: Path, recipe: Recipe) -> TrainResult:
    """A model exported before checkpoints existed: the recipe's architecture with the weights
    read from the SavedModel's variables (`_matching`), and the figures from its
    report. Used to give an existing version calibration without training it again."""
    import tensorflow as tf

    version_dir = Path(version_dir)
    try:
        figures = json.loads((version_dir / "report" / "figures.json").read_text())
        loaded = tf.saved_model.load(str(version_dir))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{version_dir}: not a readable export ({exc})") from exc
    model = recipe.build(len(recipe.classes), recipe.dropout)
    matched = _matching(loaded.variables, model, version_dir)
    for variable, value in zip(model.weights, matched, strict=True):
        variable.assign(value.numpy())
    # The version the weights come from, by name: where they were trained and how.
    figures["training"] = {
        **figures["training"],
        "weights_from": f"{recipe.name} v{version_dir.name}",
    }
    snapshots = version_dir / SNAPSHOTS_FOLDER
    return TrainResult(
        model=model, snapshot_dir=snapshots if snapshots.is_dir() else None, **figures
    )


def _matching(saved: list, model: keras.Model, version_dir: Path) -> list:
    """The SavedModel's variable for each of the model's weights. Exports track the variables in
    the model's own order, named "<layer>/<variable>" (older exports prefix the model's name),
    with others between them (dropout's seed state): each weight is the next variable of its
    layer, name and shape."""
    remaining = iter(saved)
    matched = []
    for weight in model.weights:
        want = variable_key(weight.path)  # "conv1/kernel"
        for value in remaining:
            if variable_key(value.name) == want:
                break
        else:
            raise CheckpointError(f"{version_dir}: no variable {want!r} where the recipe has one")
        if tuple(value.shape) != tuple(weight.shape):
            raise CheckpointError(f"{version_dir}: {want!r} has shape {value.shape}")
        matched.append(value)
    return matched


def load(folder: Path, recipe: Recipe) -> TrainResult:
    """A checkpoint folder, or an exported version (which holds saved_model.pb)."""
    folder = Path(folder)
    if (folder / "saved_model.pb").exists():
        return from_saved_model(folder, recipe)
    try:
        figures = json.loads((folder / RESULT_FILE).read_text())
        # The model's own layers only; safe_mode refuses Lambda layers' pickled code.
        saved = keras.saving.load_model(folder / MODEL_FILE, compile=False)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder}: not a readable checkpoint ({exc})") from exc
    # The recipe's architecture, freshly built, with the saved weights: a Sequential rebuilt by
    # load_model has layer outputs of another graph than its inputs', which export cannot trace.
    model = recipe.build(len(recipe.classes), recipe.dropout)
    try:
        model.set_weights(saved.get_weights())
    except ValueError as exc:
        raise CheckpointError(f"{folder}: not the {recipe.name} recipe's network ({exc})") from exc
    # Checkpoints made before snapshots existed have none.
    infos = figures.pop("snapshots", [])
    taken = snapshots.load(infos, folder) if infos else []
    return TrainResult(model=model, snapshots=taken, **figures)
