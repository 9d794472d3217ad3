"""A trained model and its figures on disk, between training and export.

Training takes an hour; export (calibration, signatures, metadata) takes seconds and changes more
often. A checkpoint lets a model be exported again without training it again.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras

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
    }
    (folder / RESULT_FILE).write_text(json.dumps(figures, indent=2) + "\n")


def from_saved_model(version_dir: Path, recipe: Recipe) -> TrainResult:
    """A model exported before checkpoints existed: the recipe's architecture with the weights
    read from the SavedModel's variables (by layer and variable name), and the figures from its
    report. Used to give an existing version calibration without training it again."""
    import tensorflow as tf

    version_dir = Path(version_dir)
    try:
        figures = json.loads((version_dir / "report" / "figures.json").read_text())
        loaded = tf.saved_model.load(str(version_dir))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{version_dir}: not a readable export ({exc})") from exc
    saved = {v.name.removesuffix(":0").split("/", 1)[-1]: v for v in loaded.variables}
    model = recipe.build(len(recipe.classes), recipe.dropout)
    for variable in model.weights:
        key = variable.path.split("/", 1)[-1] if variable.path.count("/") > 1 else variable.path
        if key not in saved:
            raise CheckpointError(f"{version_dir}: no variable {key!r} (has {sorted(saved)})")
        if tuple(saved[key].shape) != tuple(variable.shape):
            raise CheckpointError(f"{version_dir}: {key!r} has shape {saved[key].shape}")
        variable.assign(saved[key].numpy())
    # The version the weights come from, by name: where they were trained and how.
    figures["training"] = {
        **figures["training"],
        "weights_from": f"{recipe.name} v{version_dir.name}",
    }
    return TrainResult(model=model, **figures)


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
    return TrainResult(model=model, **figures)
