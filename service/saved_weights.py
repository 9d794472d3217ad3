"""A SavedModel's trained parameters by layer, read from its own variables (imports TensorFlow).

Runs at conversion only (service/engines.py writes the result beside the engine), where
TensorFlow is installed; serving reads that file with numpy alone (service/weights.py). It lives
in service/ because conversion does: the Docker build stage that converts has service/ and
models/, not training/, and the service imports nothing from training/.

Keras 3 exports name each variable "<layer>/<weight>", older ones under the model's name
("lenet/conv1/kernel"); `variable_key` is that rule, the one training/checkpoint.py's `_matching`
follows (training may import it from here; service/ never imports training/). Which layers have
which arrays, and their shapes, come from the metadata's layer table, not from a Keras model:
older versions were trained with other architectures than today's recipes build.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from service import weights

# Batch norm's epsilon is no variable: Keras's default, which training/architectures.py keeps.
# `_check_batch_norm` proves it against the SavedModel's own activations at every conversion.
BATCH_NORM_EPSILON = 1e-3


def variable_key(name: str) -> str:
    """A SavedModel variable's layer and weight: 'lenet/conv1/kernel:0' -> 'conv1/kernel'."""
    return "/".join(name.removesuffix(":0").split("/")[-2:])


def layer_arrays(model_path: Path, metadata: dict[str, Any]) -> dict[str, np.ndarray]:
    """Every weighted layer's arrays by "<layer>/<array>", in Keras's layouts (the variables'
    own), batch norm as inference's scale and offset; checked against the layer table."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(model_path))
    saved: dict[str, np.ndarray] = {}
    for variable in loaded.variables:
        key = variable_key(variable.name)
        if key in saved:
            raise weights.WeightsError(f"{model_path}: two variables named {key!r}")
        saved[key] = variable.numpy()

    def variable(layer: str, weight: str) -> np.ndarray:
        if f"{layer}/{weight}" not in saved:
            raise weights.WeightsError(f"{model_path}: no variable {layer}/{weight}")
        return saved[f"{layer}/{weight}"]

    arrays: dict[str, np.ndarray] = {}
    for layer, wanted in weights.expected_shapes(metadata).items():
        if "scale" in wanted:
            gamma, beta, mean, var = (
                variable(layer, w).astype(np.float64)
                for w in ("gamma", "beta", "moving_mean", "moving_variance")
            )
            scale = gamma / np.sqrt(var + BATCH_NORM_EPSILON)
            arrays[f"{layer}/scale"] = scale.astype(np.float32)
            arrays[f"{layer}/offset"] = (beta - mean * scale).astype(np.float32)
            continue
        arrays[f"{layer}/kernel"] = variable(layer, "kernel")
        if f"{layer}/bias" in saved:
            arrays[f"{layer}/bias"] = saved[f"{layer}/bias"]
    weights.validate(arrays, metadata)
    _check_batch_norm(loaded, metadata, arrays)
    return arrays


def _check_batch_norm(loaded, metadata: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Each batch norm's input times scale plus offset is its output in the SavedModel's features
    signature, for a random image: a layer built with another epsilon fails the conversion."""
    import tensorflow as tf

    shape = metadata["input"]["shape"]
    probe = np.random.default_rng(0).random((1, *shape), np.float32)
    features = loaded.signatures[metadata["signatures"]["features"]["name"]]
    acts = {name: t.numpy()[0] for name, t in features(image=tf.constant(probe)).items()}
    inputs = weights.sources(metadata)
    for row in metadata["layers"]:
        if row["type"] != "batchnorm":
            continue
        name, source = row["name"], inputs[row["name"]]
        x = acts[source] if source in acts else probe[0]  # the image itself
        got = x * arrays[f"{name}/scale"] + arrays[f"{name}/offset"]
        error = float(np.max(np.abs(got - acts[name])))
        if error > 1e-4 * max(1.0, float(np.max(np.abs(acts[name])))):
            raise weights.WeightsError(
                f"batch norm {name} with epsilon {BATCH_NORM_EPSILON} is off its SavedModel's "
                f"activations by {error:g}"
            )


def npz_bytes(model_path: Path, metadata: dict[str, Any]) -> bytes:
    """The weights file's contents: `layer_arrays` as an uncompressed .npz."""
    buffer = io.BytesIO()
    np.savez(buffer, **layer_arrays(model_path, metadata))
    return buffer.getvalue()
