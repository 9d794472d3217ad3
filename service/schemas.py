"""The API's bodies as pydantic models: they validate requests and build responses, and
`/openapi.json` is generated from them, so the documentation cannot drift from the code."""

from __future__ import annotations

from typing import Annotated, Any, Literal

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


class LayerWeights(BaseModel):
    name: str
    type: Literal["conv", "dense", "batchnorm"]
    kernel: Tensor | None = Field(
        default=None,
        description="conv: (kh, kw, in, out); dense: (in, out): Keras's layouts. As PNG, a conv "
        "kernel is one tile per (input channel, filter) pair, the filter fastest.",
    )
    bias: Tensor | None = Field(
        default=None, description="(out,); null for a layer built without one (before batch norm)."
    )
    scale: Tensor | None = Field(
        default=None, description="batchnorm: gamma / sqrt(variance + epsilon), per channel."
    )
    offset: Tensor | None = Field(
        default=None,
        description="batchnorm: beta - mean * scale, per channel (y = x * scale + offset).",
    )


class WeightsResponse(BaseModel):
    model: str
    version: str
    layers: list[LayerWeights] = Field(
        description="Requested layers with weights, in network order."
    )


# The explorer applies 3x3 kernels to a 32x32 input; the bounds leave room and cap the work.
MAX_CONVOLVE_SIDE = 64
MAX_KERNEL_SIDE = 7
Finite = Annotated[float, Field(allow_inf_nan=False)]


class ConvolveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    image: list[Annotated[list[Finite], Field(min_length=1, max_length=MAX_CONVOLVE_SIDE)]] = Field(
        min_length=1,
        max_length=MAX_CONVOLVE_SIDE,
        description=f"Rows of a grey image (at most {MAX_CONVOLVE_SIDE}x{MAX_CONVOLVE_SIDE}), "
        "finite numbers, every row the same length.",
    )
    kernel: list[Annotated[list[Finite], Field(min_length=1, max_length=MAX_KERNEL_SIDE)]] = Field(
        min_length=1,
        max_length=MAX_KERNEL_SIDE,
        description=f"Rows of the kernel (at most {MAX_KERNEL_SIDE}x{MAX_KERNEL_SIDE}), applied "
        "as a ConvNet does: the sum of the window times the kernel, not flipped.",
    )
    padding: Literal["same", "valid"] = Field(
        default="same", description="same: zeros around the image, the output as large as it."
    )


class ConvolveResponse(BaseModel):
    shape: list[int]
    encoding: Literal["json"]
    data: list[list[float]]
    min: float
    max: float


class SnapshotInfo(BaseModel):
    name: str = Field(description="init, step1, epoch1, epoch5, final (as exported).")
    label: str = Field(description="When it was taken, in words.")
    epoch: float = Field(description="Epochs completed when it was taken.")
    step: int = Field(description="Optimizer steps taken when it was taken.")


class SnapshotList(BaseModel):
    model: str
    version: str
    snapshots: list[SnapshotInfo] = Field(
        description="In training order; empty when the version was exported without them."
    )
    history: dict[str, list[float]] = Field(
        description="Per epoch: loss, val_loss, accuracy, val_accuracy (those recorded)."
    )


class SnapshotPrediction(BaseModel):
    label: str
    confidence: float
    probabilities: dict[str, float]


class SnapshotResult(SnapshotInfo):
    prediction: SnapshotPrediction = Field(description="This snapshot's softmax, uncalibrated.")


class SnapshotsResponse(BaseModel):
    model: str
    version: str
    snapshots: list[SnapshotResult] = Field(description="The image through each snapshot.")


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


# The standard protocols' bodies: the Open Inference Protocol (KServe V2 / Triton HTTP) under /v2,
# TF Serving's REST API under /v1. Extra fields are allowed where the protocols' clients send them.


class V2Error(BaseModel):
    error: str = Field(description="What went wrong.")


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class V2ModelReady(BaseModel):
    name: str
    version: str | None = None
    ready: bool


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata] = Field(
        description="A request carries one of them: `image`, FP32 [-1, *input shape], "
        "preprocessed as `parameters.preprocessing` says, or `image_bytes`, BYTES [-1], "
        "encoded image files decoded and preprocessed as on /predict."
    )
    outputs: list[V2TensorMetadata]
    parameters: dict[str, Any] | None = None


class V2Tensor(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = Field(
        default=None,
        description="Row-major values (flat or nested); absent when "
        "`parameters.binary_data_size` places them after the JSON header. BYTES in JSON: "
        "base64 strings or data URLs.",
    )


class V2RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    parameters: dict[str, Any] | None = Field(
        default=None,
        description="`binary_data` (bool); `classification` (k): the top k as BYTES "
        "'score:index:label'.",
    )


class V2InferRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # kserve's client sends model_name too
    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        default=None, description="`binary_data_output` (bool): every output in binary."
    )
    inputs: list[V2Tensor] = Field(min_length=1, description="One input: `image` or `image_bytes`.")
    outputs: list[V2RequestedOutput] | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[V2Tensor]


class TFServingError(BaseModel):
    error: str


class TFServingVersionStatus(BaseModel):
    version: str
    state: str
    status: dict[str, str]


class TFServingModelStatus(BaseModel):
    model_version_status: list[TFServingVersionStatus]
    name: str = Field(description="KServe V1's model readiness fields, beside TF Serving's.")
    ready: bool


class TFServingMetadata(BaseModel):
    model_spec: dict[str, Any]
    metadata: dict[str, Any] = Field(description="`signature_def`, as TF Serving writes it.")


class TFServingPredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    signature_name: str | None = None
    instances: Any = Field(
        default=None,
        description="Rows, one per image: a float array of the input shape, or "
        '{"b64": "<encoded image>"}, optionally named {"image": ...}.',
    )
    inputs: Any = Field(default=None, description='Columns: the same list, or {"image": [...]}.')


class TFServingPredictResponse(BaseModel):
    predictions: list[list[float]] | None = None
    outputs: list[list[float]] | None = None


class TFServingClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    signature_name: str | None = None
    context: dict[str, Any] | None = None
    examples: list[Any] = Field(
        min_length=1, description='One per image: {"image": {"b64": ...}} or {"image": [...]}.'
    )


class TFServingClassifyResponse(BaseModel):
    results: list[list[tuple[str, float]]] = Field(
        description="Per example, every class and its probability, best first."
    )
