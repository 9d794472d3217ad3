"""Export a trained model as a TensorFlow SavedModel in TF Serving's layout, with its metadata.

    models/<name>/<version>/saved_model.pb, variables/     the SavedModel
    models/<name>/<version>/assets.extra/metadata.json     everything the service needs to know
    models/<name>/<version>/report/                        curves, confusion matrix, figures

Signatures:
    serving_default: image float32 (N, H, W, C) -> {"probabilities": (N, classes)}
    features:        image float32 (N, H, W, C) -> {<layer name>: that layer's output}
    gradcam:         image, class_index int32 (N,) -> {"heatmap": (N, h, w) in [0, 1],
                     "probabilities"}: Grad-CAM (Selvaraju et al. 2017) on the last spatial ReLU
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from training.recipes import Recipe

METADATA_FORMAT = 1
METADATA_PATH = Path("assets.extra") / "metadata.json"
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
}


def _layer_type(layer: keras.layers.Layer) -> str | None:
    """The layer's public type, or None for layers that do nothing at inference (dropout)."""
    if isinstance(layer, keras.layers.Dropout):
        return None
    for cls, name in _LAYER_TYPES.items():
        if isinstance(layer, cls):
            return name
    raise TypeError(f"layer {layer.name!r} of type {type(layer).__name__} has no public type")


def layer_table(model: keras.Model) -> list[dict[str, Any]]:
    table = []
    for layer in model.layers:
        kind = _layer_type(layer)
        if kind is None:
            continue
        row: dict[str, Any] = {
            "name": layer.name,
            "type": kind,
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
        table.append(row)
    return table


def gradcam_fn(model: keras.Model, layer_name: str, logits_name: str):
    """Grad-CAM: weight each feature map of `layer_name` by the mean gradient of the class logit."""
    grad_model = keras.Model(
        model.inputs,
        [model.get_layer(layer_name).output, model.get_layer(logits_name).output, model.outputs[0]],
    )

    def gradcam(image: tf.Tensor, class_index: tf.Tensor) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            maps, logits, probs = grad_model(image, training=False)
            score = tf.gather(logits, class_index, batch_dims=1)
        grads = tape.gradient(score, maps)
        weights = tf.reduce_mean(grads, axis=(1, 2))
        cam = tf.nn.relu(tf.einsum("nhwc,nc->nhw", maps, weights))
        cam = cam / (tf.reduce_max(cam, axis=(1, 2), keepdims=True) + 1e-12)
        return {"heatmap": cam, "probabilities": probs}

    return gradcam


def next_version(model_dir: Path) -> int:
    # ASCII digits only, as the service reads version names ("²" is str.isdigit(), not int()).
    versions = [
        int(p.name)
        for p in model_dir.glob("*")
        if p.is_dir() and p.name.isascii() and p.name.isdigit()
    ]
    return max(versions, default=0) + 1


def export(
    model: keras.Model,
    recipe: Recipe,
    out_dir: Path,
    version: int | None,
    training: dict[str, Any],
    evaluation: dict[str, Any],
) -> Path:
    """Write the model as `out_dir/<name>/<version>` and return that path. With `version` None,
    the version is the next free one when the export is renamed into place, so runs that end
    side by side each get their own."""
    model_dir = Path(out_dir) / recipe.name
    if version is not None and (model_dir / str(version)).exists():
        raise FileExistsError(
            f"{model_dir / str(version)} already exists; versions are immutable, pick another"
        )
    table = layer_table(model)
    features_model = keras.Model(
        model.inputs, {row["name"]: model.get_layer(row["name"]).output for row in table}
    )
    spec = tf.TensorSpec((None, *recipe.input_shape), tf.float32, name="image")

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        PREDICT_SIGNATURE,
        lambda image: {"probabilities": model(image, training=False)},
        input_signature=[spec],
    )
    archive.add_endpoint(
        FEATURES_SIGNATURE,
        lambda image: features_model(image, training=False),
        input_signature=[spec],
    )
    # Grad-CAM looks at the last spatial ReLU, against the logits just before the softmax.
    cam_layer = [r["name"] for r in table if r["type"] == "relu" and len(r["output_shape"]) == 3][
        -1
    ]
    logits_layer = table[-2]["name"]
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
            "predict": {"name": PREDICT_SIGNATURE, "output": "probabilities"},
            "features": {"name": FEATURES_SIGNATURE},
            "gradcam": {"name": GRADCAM_SIGNATURE, "layer": cam_layer, "logits": logits_layer},
        },
        "layers": table,
        "parameters": int(model.count_params()),
        "training": training,
        "evaluation": evaluation,
    }
    (staging / METADATA_PATH).parent.mkdir(parents=True, exist_ok=True)
    chosen = version if version is not None else next_version(model_dir)
    while True:
        metadata["version"] = chosen
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
