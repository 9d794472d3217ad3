"""A trained model and its figures on disk, between training and export.

Training takes an hour; export (calibration, signatures, metadata) takes seconds and changes more
often. A checkpoint lets a model be exported again without training it again.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras

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


def load(folder: Path) -> TrainResult:
    folder = Path(folder)
    try:
        figures = json.loads((folder / RESULT_FILE).read_text())
        # The model's own layers only; safe_mode refuses Lambda layers' pickled code.
        model = keras.saving.load_model(folder / MODEL_FILE, compile=False)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder}: not a readable checkpoint ({exc})") from exc
    return TrainResult(model=model, **figures)
