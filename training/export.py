"""Export a trained model as a TensorFlow SavedModel in TF Serving's layout, with its metadata.

    models/<name>/<version>/saved_model.pb, variables/     the SavedModel
    models/<name>/<version>/assets.extra/metadata.json     everything the service needs to know
    models/<name>/<version>/report/                        curves, confusion matrix, figures

The exported network is the trained one with two additions fitted on held-out images
(training/calibration.py): a `temperature` layer between the logits and the softmax, and a
`distance` head on the embedding that feeds the logits.

Signatures:
    serving_default: image float32 (N, H, W, C) -> {"probabilities": (N, classes),
                     "distance": (N,)}
    features:        image float32 (N, H, W, C) -> {<layer name>: that layer's output,
                     "distance": (N,)}
    gradcam:         image, class_index int32 (N,) -> {"heatmap": (N, h, w) in [0, 1],
                     "probabilities"}: Grad-CAM (Selvaraju et al. 2017) on the last spatial ReLU
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from service.metadata import METADATA_PATH, SNAPSHOTS_FOLDER, validate
from training.architectures import ViewBatch, ViewMean
from training.calibration import ChannelMeans, DistanceHeads, FeatureDistance
from training.recipes import Recipe
from training.snapshots import Snapshot
from training.snapshots import export as write_snapshots

METADATA_FORMAT = 2  # 2: calibration, uncertainty and the distance output
PREDICT_SIGNATURE = "serving_default"
FEATURES_SIGNATURE = "features"
GRADCAM_SIGNATURE = "gradcam"

_LAYER_TYPES = {
    keras.layers.Conv2D: "conv",
    keras.layers.BatchNormalization: "batchnorm",
    keras.layers.ReLU: "relu",
    keras.layers.MaxPooling2D: "pool",
    keras.layers.Flatten: "flatten",
    keras.layers.Dense: "dense",
    keras.layers.Softmax: "softmax",
    keras.layers.Add: "add",
    keras.layers.GlobalAveragePooling2D: "global_pool",
    keras.layers.Rescaling: "scale",
    ViewBatch: "views",
    ViewMean: "view_mean",
}
DISTANCE_OUTPUT = "distance"


def _layer_type(layer: keras.layers.Layer) -> str | None:
    """The layer's public type, or None for layers that are not part of the layer table: the
    input, dropout (nothing at inference) and the distance head (an output of its own)."""
    skipped = keras.layers.Dropout | keras.layers.InputLayer | FeatureDistance | ChannelMeans
    if isinstance(layer, skipped):
        return None
    for cls, name in _LAYER_TYPES.items():
        if isinstance(layer, cls):
            return name
    raise TypeError(f"layer {layer.name!r} of type {type(layer).__name__} has no public type")


def _inbound(model: keras.Model) -> dict[str, list[str]]:
    """{layer name: names of the layers it takes its input(s) from}, from the functional
    model's public config (each input tensor's `keras_history` names its layer)."""

    def names(node: Any) -> list[str]:
        if isinstance(node, dict):
            history = node.get("config", {}).get("keras_history") if "config" in node else None
            if history:
                return [history[0]]
            return [n for v in node.values() for n in names(v)]
        if isinstance(node, list | tuple):
            return [n for v in node for n in names(v)]
        return []

    if isinstance(model, keras.Sequential):  # a chain: each layer takes the one before
        chain = [model.inputs[0].name] + [layer.name for layer in model.layers]
        return {name: chain[i - 1 : i] for i, name in enumerate(chain)}
    return {row["name"]: names(row["inbound_nodes"]) for row in model.get_config()["layers"]}


def layer_table(model: keras.Model) -> list[dict[str, Any]]:
    """One row per public layer, in network order. `inputs` names the rows (or the input,
    "image") each takes its input from: a residual `add` takes two."""
    inbound = _inbound(model)
    kinds = {layer.name: _layer_type(layer) for layer in model.layers}

    def public(name: str) -> list[str]:
        # Through layers that are not in the table (dropout) to the nearest that is.
        if kinds.get(name) is not None or not inbound.get(name):  # a table row, or the input
            return [name]
        return [n for source in inbound[name] for n in public(source)]

    table = []
    for layer in model.layers:
        kind = _layer_type(layer)
        if kind is None:
            continue
        row: dict[str, Any] = {
            "name": layer.name,
            "type": kind,
            "inputs": [n for source in inbound[layer.name] for n in public(source)],
            "output_shape": [int(d) for d in layer.output.shape[1:]],
        }
        if kind in ("conv", "pool"):
            size = layer.kernel_size if kind == "conv" else layer.pool_size
            row["kernel_size"] = [int(k) for k in size]
            row["stride"] = [int(s) for s in layer.strides]
            row["padding"] = layer.padding
        if kind == "conv":
            row["filters"] = int(layer.filters)
        if kind == "dense":
            row["units"] = int(layer.units)
            row["activation"] = layer.activation.__name__
        if kind == "scale":
            row["scale"] = float(layer.scale)
        table.append(row)
    if table[-1]["type"] != "softmax":
        raise ValueError(f"the last layer must be the softmax, not {table[-1]['name']!r}")
    return table


def logits_and_embedding(model: keras.Model) -> tuple[keras.layers.Layer, keras.layers.Layer]:
    """The class layer (the Dense before the final softmax) and the layer that feeds it."""
    if not isinstance(model.layers[-1], keras.layers.Softmax):
        raise ValueError(f"{model.name} must end in a Softmax layer")
    logits = model.layers[-2]
    if not isinstance(logits, keras.layers.Dense):
        raise ValueError(f"{model.name}: the layer before the softmax must be Dense")
    before = [
        layer
        for layer in model.layers[: model.layers.index(logits)]
        if not isinstance(layer, keras.layers.Dropout)
    ]
    return logits, before[-1]


def view_averaged(model: keras.Model, views: tuple[str, ...]) -> keras.Model:
    """Test-time augmentation in the graph: the network runs on each image and its views
    (`views`: its mirror image, or its shifts by one pixel), averages their embeddings
    (`view_mean`) and classifies the mean; the class layer being linear, that is the mean of
    their logits. Every layer keeps its name and weights."""
    logits, embedding = logits_and_embedding(model)
    backbone = keras.Model(model.inputs, embedding.output)
    image = keras.Input(shape=tuple(model.inputs[0].shape[1:]), name="image")
    inbound = _inbound(backbone)
    # The backbone replayed on the larger batch with copies of its layers (same names, same
    # weights): a layer object called twice would have two outputs, and no single `/features` row.

    def copy_of(layer: keras.layers.Layer, inputs):
        copy = layer.__class__.from_config(layer.get_config())
        out = copy(inputs)
        copy.set_weights(layer.get_weights())
        return out

    tensors = {backbone.inputs[0].name: ViewBatch(views, name="views")(image)}
    for layer in backbone.layers:
        if not isinstance(layer, keras.layers.InputLayer):
            sources = [tensors[name] for name in inbound[layer.name]]
            tensors[layer.name] = copy_of(layer, sources if len(sources) > 1 else sources[0])
    mean = ViewMean(len(views), name="view_mean")(tensors[embedding.name])
    probabilities = copy_of(model.layers[-1], copy_of(logits, mean))  # class layer, softmax
    return keras.Model(image, probabilities, name=model.name)


def served_graph(recipe: Recipe) -> Callable[[keras.Model], keras.Model] | None:
    """The recipe's network as it is served (its test-time views), for its snapshots; None
    when it is served as trained."""
    if not recipe.test_time_views:
        return None
    return lambda model: view_averaged(model, recipe.test_time_views)


def distance_inputs(model: keras.Model, layers: tuple[str, ...] | list[str]) -> list:
    """The distance heads' features in the model's graph: its embedding, then the channel means
    of each named feature map (training/calibration.py)."""
    _, embedding = logits_and_embedding(model)
    batch = [layer for layer in model.layers if isinstance(layer, ViewBatch)]
    views = len(batch[0].views) if batch else 0
    means = [
        ChannelMeans(views, name=f"channel_means_{name}")(model.get_layer(name).output)
        for name in layers
    ]
    return [embedding.output, *means]


def served_model(model: keras.Model, temperature: float, heads: DistanceHeads) -> keras.Model:
    """The trained model with the calibration temperature before its softmax and the distance
    heads: outputs [probabilities, distance]."""
    logits, _ = logits_and_embedding(model)
    scaled = keras.layers.Rescaling(1.0 / temperature, name="temperature")(logits.output)
    probabilities = keras.layers.Softmax(name="softmax")(scaled)
    features = distance_inputs(model, heads.layers[1:])
    distance = FeatureDistance(heads, name=DISTANCE_OUTPUT)(
        features if len(features) > 1 else features[0]
    )
    return keras.Model(model.inputs, [probabilities, distance], name=model.name)


def gradcam_fn(model: keras.Model, layer_name: str, logits_name: str):
    """Grad-CAM: weight each feature map of `layer_name` by the mean gradient of the class logit."""
    grad_model = keras.Model(
        model.inputs,
        [model.get_layer(layer_name).output, model.get_layer(logits_name).output, model.outputs[0]],
    )  # outputs[0]: the probabilities

    def gradcam(image: tf.Tensor, class_index: tf.Tensor) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            maps, logits, probs = grad_model(image, training=False)
            score = tf.gather(logits, class_index, batch_dims=1)
        grads = tape.gradient(score, maps)
        # With test-time views the maps hold each image and then its views: the map of the image
        # as sent is the first N.
        n = tf.shape(logits)[0]
        maps, grads = maps[:n], grads[:n]
        weights = tf.reduce_mean(grads, axis=(1, 2))
        cam = tf.nn.relu(tf.einsum("nhwc,nc->nhw", maps, weights))
        cam = cam / (tf.reduce_max(cam, axis=(1, 2), keepdims=True) + 1e-12)
        return {"heatmap": cam, "probabilities": probs}

    return gradcam


@dataclass(frozen=True)
class Calibrated:
    """What training/calibration.py fitted on the held-out images."""

    temperature: float
    heads: DistanceHeads
    calibration: dict[str, Any]
    uncertainty: dict[str, Any]


def next_version(model_dir: Path) -> int:
    # ASCII digits only, as the service reads version names ("²" is str.isdigit(), not int()).
    versions = [
        int(p.name)
        for p in model_dir.glob("*")
        if p.is_dir() and p.name.isascii() and p.name.isdigit()
    ]
    return max(versions, default=0) + 1


def export(
    trained: keras.Model,
    recipe: Recipe,
    out_dir: Path,
    version: int | None,
    training: dict[str, Any],
    evaluation: dict[str, Any],
    calibrated: Calibrated,
    snapshots: list[Snapshot] = (),
    history: dict[str, list[float]] | None = None,
    snapshot_dir: Path | None = None,
) -> Path:
    """Write the model as `out_dir/<name>/<version>` and return that path. With `version` None,
    the version is the next free one when the export is renamed into place, so runs that end
    side by side each get their own."""
    model_dir = Path(out_dir) / recipe.name
    if version is not None and (model_dir / str(version)).exists():
        raise FileExistsError(
            f"{model_dir / str(version)} already exists; versions are immutable, pick another"
        )
    logits_layer = logits_and_embedding(trained)[0].name
    model = served_model(trained, calibrated.temperature, calibrated.heads)
    table = layer_table(model)
    features_model = keras.Model(
        model.inputs,
        {
            **{row["name"]: model.get_layer(row["name"]).output for row in table},
            DISTANCE_OUTPUT: model.outputs[1],
        },
    )
    spec = tf.TensorSpec((None, *recipe.input_shape), tf.float32, name="image")

    archive = keras.export.ExportArchive()
    archive.track(model)

    def predict(image: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities, distance = model(image, training=False)
        return {"probabilities": probabilities, DISTANCE_OUTPUT: distance}

    archive.add_endpoint(PREDICT_SIGNATURE, predict, input_signature=[spec])
    archive.add_endpoint(
        FEATURES_SIGNATURE,
        lambda image: features_model(image, training=False),
        input_signature=[spec],
    )
    # Grad-CAM looks at the last spatial ReLU, against the logits just before the softmax.
    cam_layer = [r["name"] for r in table if r["type"] == "relu" and len(r["output_shape"]) == 3][
        -1
    ]
    archive.add_endpoint(
        GRADCAM_SIGNATURE,
        gradcam_fn(model, cam_layer, logits_layer),
        input_signature=[spec, tf.TensorSpec((None,), tf.int32, name="class_index")],
    )
    # Written beside its final place, then renamed into it: a server scanning the models folder
    # never sees a half-written version (the leading dot and the suffix are not a version name).
    # The pid keeps runs side by side out of each other's staging folder.
    staging = model_dir / f".{os.getpid()}.partial"
    shutil.rmtree(staging, ignore_errors=True)  # left by a dead run that had our pid
    archive.write_out(str(staging), verbose=False)
    if snapshots:
        write_snapshots(
            list(snapshots),
            lambda: recipe.build(len(recipe.classes), recipe.dropout),
            history or {},
            staging,
            served_graph(recipe),
        )
    elif snapshot_dir is not None:  # the same weights as the version they were taken with
        shutil.copytree(snapshot_dir, staging / SNAPSHOTS_FOLDER)

    metadata = {
        "format_version": METADATA_FORMAT,
        "name": recipe.name,
        "version": None,  # set just before the rename
        "description": recipe.description,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "classes": recipe.classes,
        "input": {"name": "image", "shape": list(recipe.input_shape), "dtype": "float32"},
        "preprocessing": recipe.preprocessing,
        "signatures": {
            "predict": {
                "name": PREDICT_SIGNATURE,
                "output": "probabilities",
                "distance": DISTANCE_OUTPUT,
            },
            "features": {"name": FEATURES_SIGNATURE, "distance": DISTANCE_OUTPUT},
            "gradcam": {"name": GRADCAM_SIGNATURE, "layer": cam_layer, "logits": logits_layer},
        },
        "layers": table,
        "parameters": int(model.count_params()),
        "training": training,
        "evaluation": evaluation,
        "calibration": calibrated.calibration,
        "uncertainty": calibrated.uncertainty,
    }
    (staging / METADATA_PATH).parent.mkdir(parents=True, exist_ok=True)
    chosen = version if version is not None else next_version(model_dir)
    while True:
        metadata["version"] = chosen
        # The service validates what it loads against the same schema: check it here first.
        validate(json.loads(json.dumps(metadata)), f"{recipe.name} v{chosen}'s metadata")
        (staging / METADATA_PATH).write_text(json.dumps(metadata, indent=2) + "\n")
        target = model_dir / str(chosen)
        try:
            _rename_new(staging, target)
            return target
        except FileExistsError:
            if version is not None:
                raise FileExistsError(
                    f"{target} was exported by another run meanwhile; this export is in {staging}"
                ) from None
            chosen = max(chosen + 1, next_version(model_dir))  # another run took it: the next


def _rename_new(source: Path, target: Path) -> None:
    """Rename a folder to a name that must not exist yet, atomically: rename(2) would replace an
    empty folder, so the name is first claimed with mkdir (FileExistsError if taken)."""
    target.mkdir()
    try:
        source.rename(target)
    except OSError:
        target.rmdir()
        raise
