"""The API's bodies as pydantic models: they validate requests and build responses, and
`/openapi.json` is generated from them, so the documentation cannot drift from the code."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ImagesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    images: list[str] = Field(
        min_length=1,
        description="Images as base64 strings or data URLs (data:image/png;base64,...).",
    )


class Prediction(BaseModel):
    label: str = Field(description="The most probable class.")
    confidence: float = Field(description="Probability of `label` (calibrated).")
    uncertain: bool | None = Field(
        description="True when the model does not know: its confidence is below the model's "
        "`uncertainty.min_confidence`, or the image's features lie farther than "
        "`uncertainty.max_distance` from every class (an image of none of the classes). Null "
        "for versions exported without an uncertainty rule."
    )
    probabilities: dict[str, float] = Field(
        description="Softmax probability per class, in the model's class order."
    )


class PredictResponse(BaseModel):
    model: str
    version: str
    predictions: list[Prediction] = Field(description="One entry per image, in request order.")


class Tensor(BaseModel):
    shape: list[int]
    encoding: Literal["json", "base64", "png"]
    data: Any = Field(
        description="json: nested lists; base64: little-endian float32 bytes; "
        "png: a base64 PNG grid of the feature maps, scaled by the layer's min and max."
    )
    dtype: str | None = None
    byteorder: str | None = None
    min: float | None = None
    max: float | None = None
    grid: dict[str, int] | None = None
    media_type: str | None = None


class LayerActivation(Tensor):
    name: str
    type: str


class FeaturesResponse(BaseModel):
    model: str
    version: str
    prediction: Prediction
    input: Tensor = Field(description="The preprocessed input, exactly as the model saw it.")
    layers: list[LayerActivation] = Field(description="Requested layers in network order.")


class GradcamResponse(BaseModel):
    model: str
    version: str
    class_name: str = Field(alias="class", description="The class the heat map explains.")
    layer: str = Field(description="The layer whose feature maps are weighted.")
    prediction: Prediction
    heatmap: Tensor = Field(description="Grad-CAM in [0, 1] at the layer's resolution.")
    input: Tensor


class LayerInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    type: str
    output_shape: list[int]
    kernel_size: list[int] | None = None
    stride: list[int] | None = None


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    version: str
    description: str | None = None
    classes: list[str]
    input: dict[str, Any]
    preprocessing: dict[str, Any]
    layers: list[LayerInfo]
    evaluation: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = Field(
        default=None, description="Temperature scaling and its expected calibration error."
    )
    uncertainty: dict[str, Any] | None = Field(
        default=None,
        description="The `uncertain` rule: min_confidence, max_distance, and its coverage and "
        "accuracy on the held-out split.",
    )


class ModelList(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: Literal["alive", "ready", "loading", "failed", "draining"]
    models: dict[str, str] = Field(default_factory=dict, description="name -> version loaded")
    detail: str | None = None


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable, e.g. unsupported_media_type.")
    message: str
    status: int


class ErrorResponse(BaseModel):
    error: ErrorDetail
