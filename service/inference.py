"""The request path without HTTP: images -> preprocess -> model call -> response bodies.

Nothing here knows about Flask; the blueprints decode the request, call these, and encode.
"""

from __future__ import annotations

import time

import numpy as np

from service import codecs, images
from service.errors import BadRequest, TooLarge
from service.metrics import Metrics
from service.registry import Model


def prepare(
    model: Model, payloads: list[bytes], limits: images.Limits, metrics: Metrics
) -> np.ndarray:
    """Decode and preprocess every image: a float32 batch (N, H, W, C) in request order."""
    arrays = []
    budget = images.PixelBudget(limits)
    for data in payloads:
        started = time.perf_counter()
        arrays.append(images.load(data, model.preprocessing, limits, budget))
        metrics.child(metrics.preprocess, model.name).observe(time.perf_counter() - started)
    # Most requests carry one image: a view with a batch axis, not np.stack's five numpy calls.
    return arrays[0][np.newaxis] if len(arrays) == 1 else np.stack(arrays)


def _timed(metrics: Metrics, model: Model, signature: str, batch: np.ndarray, call):
    started = time.perf_counter()
    out = call()
    metrics.child(metrics.inference, model.name, signature).observe(time.perf_counter() - started)
    metrics.child(metrics.batch_size, model.name, signature).observe(len(batch))
    return out


def describe(model: Model, outputs: dict[str, np.ndarray], metrics: Metrics | None) -> list[dict]:
    """The model's outputs -> prediction bodies, counted by class and confidence unless
    `metrics` is None. `uncertain` follows the export's rule (training/calibration.py): a
    confidence below its threshold, or an embedding too far from every class; None where the
    version was exported without a rule."""
    out = []
    rule = model.uncertainty
    distances = outputs["distance"].tolist() if rule and "distance" in outputs else None
    # tolist(): Python floats in one call, not one float() per class; the top class from the
    # list (the first of equal maxima, as argmax), without one more numpy call per row.
    for i, values in enumerate(outputs["probabilities"].tolist()):
        top = values.index(max(values))
        label = model.classes[top]
        uncertain = None
        if rule is not None:
            uncertain = values[top] < rule["min_confidence"] or (
                distances is not None and distances[i] > rule["max_distance"]
            )
        if metrics is not None:
            metrics.child(metrics.predictions, model.name, label).inc()
            metrics.child(metrics.confidence, model.name).observe(values[top])
            if uncertain is not None:  # 0 too: the share's denominator needs the series
                metrics.child(metrics.uncertain, model.name).inc(int(uncertain))
        out.append(
            {
                "label": label,
                "confidence": values[top],
                "uncertain": uncertain,
                "probabilities": dict(zip(model.classes, values, strict=True)),
            }
        )
    return out


def check_tensor(model: Model, tensor: np.ndarray, max_batch: int) -> np.ndarray:
    """A client's already preprocessed input (the standard protocols' FP32 tensors): a float32
    batch (N, *input_shape), 1 <= N <= max_batch, every value finite."""
    shape = tuple(tensor.shape)
    want = (-1, *model.input_shape)
    if len(shape) != len(want) or shape[1:] != want[1:]:
        raise BadRequest(
            f"tensor shape {list(shape)} does not match model {model.name}'s input "
            f"{list(want)} (the batch first)"
        )
    if shape[0] < 1:
        raise BadRequest("the tensor holds no image (batch size 0)")
    if shape[0] > max_batch:
        raise TooLarge(f"{shape[0]} images; at most {max_batch} per request")
    if tensor.dtype.kind not in "iuf":
        raise BadRequest(f"tensor values must be numbers, not {tensor.dtype}")
    batch = np.ascontiguousarray(tensor, dtype=np.float32)
    if not np.isfinite(batch).all():
        raise BadRequest("tensor values must be finite (no NaN or infinity)")
    return batch


def infer(
    model: Model,
    inputs: list[bytes] | np.ndarray,
    limits: images.Limits,
    metrics: Metrics,
) -> dict[str, np.ndarray]:
    """The model's outputs (see Model.predict) for encoded images, decoded and preprocessed as
    the model's metadata says, or for a float32 batch already checked by `check_tensor`."""
    if isinstance(inputs, np.ndarray):
        make, size = (lambda: inputs), len(inputs)
    else:
        make, size = (lambda: prepare(model, inputs, limits, metrics)), len(inputs)
    if model.batcher is None:
        batch = make()
        return _timed(metrics, model, "predict", batch, lambda: model.predict(batch))
    # The batching thread decodes and preprocesses too, then records each shared model call.
    return model.batcher.run(make, size=size)


def predict(model: Model, payloads: list[bytes], limits: images.Limits, metrics: Metrics) -> dict:
    """Decode, preprocess and predict every image: the /predict response body."""
    outputs = infer(model, payloads, limits, metrics)
    return {
        "model": model.name,
        "version": str(model.version),
        "predictions": describe(model, outputs, metrics),
    }


def select_layers(model: Model, requested: str | None) -> list[dict]:
    """The layer table rows named in `requested` (comma-separated), in network order; every
    layer when it names none (absent, empty, or only commas and spaces)."""
    names = [n.strip() for n in (requested or "").split(",") if n.strip()]
    if not names:
        return model.layers
    known = {row["name"] for row in model.layers}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise BadRequest(
            f"unknown layer(s) {unknown} for model {model.name}; known: {[r['name'] for r in model.layers]}"
        )
    return [row for row in model.layers if row["name"] in names]


def features(
    model: Model, batch: np.ndarray, layers: list[dict], encoding: str, metrics: Metrics
) -> dict:
    if encoding not in codecs.ENCODINGS:
        raise BadRequest(f"unknown encoding {encoding!r}; use one of {', '.join(codecs.ENCODINGS)}")
    acts = _timed(metrics, model, "features", batch, lambda: model.features(batch))
    outputs = {"probabilities": acts[model.layers[-1]["name"]]}
    if "distance" in acts:
        outputs["distance"] = acts["distance"]
    return {
        "model": model.name,
        "version": str(model.version),
        "prediction": describe(model, outputs, metrics)[0],
        "input": codecs.encode_array(batch[0], encoding),
        "layers": [
            {
                "name": row["name"],
                "type": row["type"],
                **codecs.encode_array(acts[row["name"]][0], encoding),
            }
            for row in layers
        ],
    }


def gradcam(
    model: Model, batch: np.ndarray, class_name: str | None, encoding: str, metrics: Metrics
) -> dict:
    if not model.has_gradcam:
        raise BadRequest(f"model {model.name} was exported without a Grad-CAM signature")
    if encoding not in codecs.ENCODINGS:
        raise BadRequest(f"unknown encoding {encoding!r}; use one of {', '.join(codecs.ENCODINGS)}")
    if class_name is not None and class_name not in model.classes:
        raise BadRequest(f"unknown class {class_name!r}; classes: {model.classes}")
    # The engine itself, not model.predict: with batching on, the batcher would record this call
    # a second time, and one image has nothing to share a call with.
    outputs = _timed(metrics, model, "predict", batch, lambda: model.engine.predict(batch))
    # Not counted as a prediction: the explorer sends each image to /features and /gradcam, and
    # the class and confidence panels would count it twice.
    prediction = describe(model, outputs, None)[0]
    class_name = class_name or prediction["label"]
    index = np.array([model.classes.index(class_name)], np.int32)
    heatmap = _timed(metrics, model, "gradcam", batch, lambda: model.gradcam(batch, index))
    return {
        "model": model.name,
        "version": str(model.version),
        "class": class_name,
        "layer": model.metadata["signatures"]["gradcam"]["layer"],
        "prediction": prediction,
        "heatmap": codecs.encode_array(heatmap[0], encoding),
        "input": codecs.encode_array(batch[0], encoding),
    }
