"""The schema of `assets.extra/metadata.json`: what training writes and the service reads.

training/export.py validates what it writes against `ModelMetadata`, and the service validates
every version it loads, so a missing or mistyped key is an error naming the key at export or at
load, not a KeyError in a request. Format 1 (before calibration, `uncertain` and layer `inputs`)
still loads: its versions are served without an `uncertain` rule.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

METADATA_PATH = Path("assets.extra") / "metadata.json"
# Optional, beside the SavedModel: the network at a few moments of its training (training/snapshots.py).
SNAPSHOTS_FOLDER = "snapshots"
SNAPSHOTS_FILE = "snapshots.json"
# Each snapshot engine's one signature and its output (the softmax); its input is "image".
SNAPSHOT_SIGNATURE = "serving_default"
SNAPSHOT_OUTPUT = "probabilities"
FORMATS = (1, 2)
# images.py implements each; adding a policy is one entry here and one branch there.
RESIZE_POLICIES = ("mnist_digit", "center_crop")
LAYER_TYPES = (
    "conv",
    "batchnorm",
    "relu",
    "pool",
    "flatten",
    "dense",
    "softmax",
    "add",
    "global_pool",
    "scale",
    "views",
    "view_mean",
    # scenes v5 and before: their mirror-image layers, "views" and "view_mean" since.
    "flip",
    "flip_mean",
)


class MetadataError(Exception):
    """A version's metadata is missing, unreadable or does not follow the schema."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Input(_Strict):
    name: str
    shape: list[int] = Field(min_length=3, max_length=3)
    dtype: Literal["float32"]


class DigitSpec(_Strict):
    box_size: int = Field(ge=1)
    canvas_size: int = Field(ge=1)
    ink: Literal["bright_on_dark"]


class Preprocessing(_Strict):
    color_mode: Literal["grayscale", "rgb"]
    height: int = Field(ge=1)
    width: int = Field(ge=1)
    scale: float
    offset: float
    alpha_background: list[int] = Field(min_length=3, max_length=3)
    resize: Literal[RESIZE_POLICIES]
    filter: str | None = None
    digit: DigitSpec | None = None


class PredictSignature(_Strict):
    name: str
    output: str
    distance: str | None = None  # the feature distance of the `uncertain` rule (format 2)


class FeaturesSignature(_Strict):
    name: str
    distance: str | None = None


class GradcamSignature(_Strict):
    name: str
    layer: str
    logits: str


class Signatures(_Strict):
    predict: PredictSignature
    features: FeaturesSignature
    gradcam: GradcamSignature | None = None


class Layer(_Strict):
    name: str
    type: Literal[LAYER_TYPES]
    inputs: list[str] | None = None  # format 2: the rows (or "image") it takes input from
    output_shape: list[int]
    kernel_size: list[int] | None = None
    stride: list[int] | None = None
    padding: Literal["same", "valid"] | None = None
    filters: int | None = None
    units: int | None = None
    activation: str | None = None
    scale: float | None = None


class Calibration(BaseModel):
    model_config = ConfigDict(extra="allow")  # figures for people: ECE, NLL, reliability bins
    method: Literal["temperature scaling"]
    temperature: float = Field(gt=0)


class Uncertainty(BaseModel):
    model_config = ConfigDict(extra="allow")  # figures for people: coverage, accuracy
    min_confidence: float = Field(ge=0, le=1)
    max_distance: float = Field(gt=0)


class ModelMetadata(_Strict):
    format_version: Literal[FORMATS]
    name: str
    version: int = Field(ge=0)
    description: str
    created: str
    classes: list[str] = Field(min_length=2)
    input: Input
    preprocessing: Preprocessing
    signatures: Signatures
    layers: list[Layer] = Field(min_length=1)
    parameters: int
    training: dict[str, Any]
    evaluation: dict[str, Any]
    calibration: Calibration | None = None
    uncertainty: Uncertainty | None = None


class Snapshot(_Strict):
    name: str = Field(pattern=r"^[a-z0-9]+$")
    label: str
    epoch: float = Field(ge=0)
    step: int = Field(ge=0)
    file: str = Field(pattern=r"^[a-z0-9]+\.tflite$")  # a LiteRT flatbuffer in the same folder


class Snapshots(_Strict):
    """`snapshots/snapshots.json`: each snapshot's engine takes the served model's input and has
    one signature, `serving_default`, whose output `probabilities` is the softmax."""

    format: Literal[1]
    snapshots: list[Snapshot] = Field(min_length=1)
    history: dict[str, list[float]]  # per epoch: loss, val_loss, accuracy, val_accuracy


def validate(metadata: Any, source: str) -> dict[str, Any]:
    """`metadata` itself when it follows the schema; else MetadataError naming each bad key."""
    return _validated(ModelMetadata, metadata, source)


def validate_snapshots(index: Any, source: str) -> dict[str, Any]:
    return _validated(Snapshots, index, source)


def _validated(schema: type[BaseModel], data: Any, source: str) -> dict[str, Any]:
    try:
        schema.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()
        )
        raise MetadataError(f"{source}: {problems}") from None
    return data


def read(model_path: Path) -> dict[str, Any]:
    """A version's metadata, validated."""
    path = Path(model_path) / METADATA_PATH
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MetadataError(f"{path}: not readable JSON ({exc})") from exc
    return validate(raw, str(path))


def read_snapshots(model_path: Path) -> dict[str, Any] | None:
    """A version's snapshot index, validated; None when the version has none."""
    path = Path(model_path) / SNAPSHOTS_FOLDER / SNAPSHOTS_FILE
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MetadataError(f"{path}: not readable JSON ({exc})") from exc
    return validate_snapshots(raw, str(path))
