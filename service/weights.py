"""A model's learned parameters, read from its LiteRT engine file: no TensorFlow needed.

The converter keeps each weighted layer's constants as tensors named after the Keras layer
(`.../conv1_1/convolution`, `.../fc1_1/MatMul`, `.../bn1_1/batchnorm/mul`), in LiteRT's layouts:
conv kernels (out, h, w, in), dense kernels (out, in). They are matched to the layer table by
those names and checked against its shapes, then returned in Keras's layouts: conv kernels
(h, w, in, out), dense kernels (in, out). tests/test_weights.py compares every array with the
SavedModel's own variables, so a converter that names or lays out tensors differently fails there.

Batch norm at inference is one multiply and one add per channel; the engine holds exactly those
two vectors (gamma / sqrt(var + eps) and beta - mean * that), returned as `scale` and `offset`.

The converter may fold a constant factor into a kernel: scenes' `flip_mean` halves the sum of two
rows, and the engine's `fc` kernel holds half the trained weights. So every layer is checked
against the engine's own activations for a probe image: a kernel off by one factor is rescaled
by it, and any other disagreement is an error rather than wrong numbers served.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from service.convolve import conv2d
from service.errors import BadRequest

# The layer types with parameters, and the arrays each has (y = x * kernel + bias, or for batch
# norm y = x * scale + offset).
PARAMETERS = {
    "conv": ("kernel", "bias"),
    "dense": ("kernel", "bias"),
    "batchnorm": ("scale", "offset"),
}


class WeightsError(Exception):
    """The engine file's tensors do not match the layer table (a converter that names or lays
    out tensors differently from the one tested)."""


def _owner_segments(name: str) -> list[list[str]]:
    """A tensor name's scopes: 'a/conv1_1/BiasAdd;a/conv1_1/convolution' -> [[a, conv1_1,
    BiasAdd], [a, conv1_1, convolution]] (the converter joins fused ops' names with ';')."""
    return [part.split("/") for part in name.split(";")]


def _belongs(segments: list[list[str]], layer: str) -> bool:
    # Keras 3 traces a layer under its name plus a call counter: conv1 -> conv1_1.
    pattern = re.compile(rf"{re.escape(layer)}(_\d+)?")
    return any(pattern.fullmatch(seg) for part in segments for seg in part)


def _last(segments: list[list[str]]) -> set[str]:
    return {part[-1] for part in segments}


def _input_size(row: dict[str, Any], rows: dict[str, dict[str, Any]], image_shape: list[int]):
    """The shape of what `row` takes in (its first input's output, or the image)."""
    source = (row.get("inputs") or [None])[0]
    return rows[source]["output_shape"] if source in rows else image_shape


def read(engine_file: Path, metadata: dict[str, Any]) -> dict[str, dict[str, np.ndarray | None]]:
    """Every weighted layer's arrays, in the layer table's order, Keras layouts; a layer built
    without a bias (a conv followed by batch norm) has bias None."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(engine_file))
    constants = []
    for detail in interpreter.get_tensor_details():
        try:
            value = interpreter.get_tensor(detail["index"])
        except ValueError:  # an activation: no buffer until the graph runs
            continue
        if value.dtype == np.float32 and value.size > 1:
            constants.append((_owner_segments(detail["name"]), np.array(value)))

    rows = {row["name"]: row for row in metadata["layers"]}
    image_shape = metadata["input"]["shape"]
    out: dict[str, dict[str, np.ndarray | None]] = {}
    for row in metadata["layers"]:
        if row["type"] not in PARAMETERS:
            continue
        mine = [(segs, v) for segs, v in constants if _belongs(segs, row["name"])]
        fan_in = _input_size(row, rows, image_shape)
        out[row["name"]] = _layer_arrays(row, fan_in, mine)
    return out


def _one(found: list[np.ndarray], what: str, optional: bool = False) -> np.ndarray | None:
    if len(found) == 1:
        return found[0]
    if not found and optional:
        return None
    raise WeightsError(f"{len(found)} tensors look like {what} in the engine file (want 1)")


def _layer_arrays(row: dict[str, Any], fan_in: list[int], mine: list) -> dict:
    name, kind = row["name"], row["type"]
    if kind == "conv":
        kh, kw = row["kernel_size"]
        want = (row["filters"], kh, kw, fan_in[-1])
        kernel = _one([v for _, v in mine if v.shape == want], f"{name}'s kernel {list(want)}")
        bias = _one(
            [v for s, v in mine if v.shape == (want[0],) and "BiasAdd" in _segments_flat(s)],
            f"{name}'s bias",
            optional=True,
        )
        return {"kernel": kernel.transpose(1, 2, 3, 0), "bias": bias}
    if kind == "dense":
        want = (row["units"], math.prod(fan_in))
        kernel = _one([v for _, v in mine if v.shape == want], f"{name}'s kernel {list(want)}")
        bias = _one(
            [v for s, v in mine if v.shape == (want[0],) and "BiasAdd" in _segments_flat(s)],
            f"{name}'s bias",
            optional=True,
        )
        return {"kernel": kernel.T, "bias": bias}
    channels = (row["output_shape"][-1],)
    scale = _one(
        [v for s, v in mine if v.shape == channels and "mul" in _last(s)], f"{name}'s scale"
    )
    offset = _one(
        [v for s, v in mine if v.shape == channels and "sub" in _last(s)], f"{name}'s offset"
    )
    return {"scale": scale, "offset": offset}


def _segments_flat(segments: list[list[str]]) -> set[str]:
    return {seg for part in segments for seg in part}


def _layer_output(row: dict[str, Any], arrays: dict, x: np.ndarray) -> np.ndarray:
    """What the layer computes from its input `x` (no batch axis) with `arrays`."""
    if row["type"] == "batchnorm":
        return x * arrays["scale"] + arrays["offset"]
    if row["type"] == "conv":
        y = conv2d(x, arrays["kernel"], tuple(row.get("stride") or (1, 1)), row["padding"])
    else:
        y = x.reshape(-1).astype(np.float64) @ arrays["kernel"]
    return y if arrays["bias"] is None else y + arrays["bias"]


def check(
    weights: dict[str, dict], metadata: dict[str, Any], activations: dict[str, np.ndarray]
) -> dict[str, dict]:
    """`weights` checked against `activations` (every layer's output for one probe image, no
    batch axis, and "image": the probe), kernels rescaled where the converter folded a factor
    into them. Raises WeightsError for a layer that does not reproduce its activation."""
    rows = {row["name"]: row for row in metadata["layers"]}
    for name, arrays in weights.items():
        row = rows[name]
        x = activations[(row.get("inputs") or ["image"])[0]]
        y = activations[name].astype(np.float64)
        relu = row.get("activation") == "relu"
        if "kernel" in arrays:
            bias = 0.0 if arrays["bias"] is None else arrays["bias"]
            z = _layer_output(row, {**arrays, "bias": None}, x)
            used = y > 0 if relu else np.ones(y.shape, bool)  # a ReLU hides the rest
            factor = float(np.sum((y - bias) * z * used) / max(np.sum(z * z * used), 1e-30))
            if abs(factor - 1) > 1e-4:
                arrays["kernel"] = (arrays["kernel"] * factor).astype(np.float32)
        got = _layer_output(row, arrays, x)
        if relu:
            got = np.maximum(got, 0)
        error = float(np.max(np.abs(got - y)))
        if error > 1e-4 * max(1.0, float(np.max(np.abs(y)))):
            raise WeightsError(f"{name}'s weights reproduce its activations only within {error:g}")
    return weights


class WeightStore:
    """Each model version's weights, read from its engine file and checked once per process."""

    def __init__(self) -> None:
        self._cache: dict[Path, dict[str, dict[str, np.ndarray | None]]] = {}
        self._lock = threading.Lock()

    def get(self, engine_file: Path, metadata: dict[str, Any], features) -> dict:
        """`features(batch)`: the engine's every layer output, as Model.features returns."""
        with self._lock:
            if engine_file not in self._cache:
                self._cache[engine_file] = check(
                    read(engine_file, metadata), metadata, probe_activations(metadata, features)
                )
            return self._cache[engine_file]


def probe_activations(metadata: dict[str, Any], features) -> dict[str, np.ndarray]:
    """Every layer's output for a fixed random image in the input's range (0..1)."""
    probe = np.random.default_rng(0).random((1, *metadata["input"]["shape"]), np.float32)
    acts = {name: np.asarray(v)[0] for name, v in features(probe).items()}
    acts["image"] = probe[0]
    return acts


def select(weights: dict[str, dict], metadata: dict[str, Any], requested: str | None) -> list[str]:
    """The weighted layers named in `requested` (comma-separated), in network order; all of
    them when it names none. Unknown names and layers without weights are a 400."""
    names = [n.strip() for n in (requested or "").split(",") if n.strip()]
    if not names:
        return list(weights)
    known = {row["name"]: row["type"] for row in metadata["layers"]}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise BadRequest(
            f"unknown layer(s) {unknown} for model {metadata['name']}; layers with weights: "
            f"{list(weights)}"
        )
    plain = [f"{n} ({known[n]})" for n in names if n not in weights]
    if plain:
        raise BadRequest(f"layer(s) {plain} have no weights; layers with weights: {list(weights)}")
    return [n for n in weights if n in names]


def body(
    model: str,
    version: str,
    metadata: dict[str, Any],
    weights: dict[str, dict],
    names: Iterable[str],
    encode,
) -> dict:
    """The /models/<name>/weights response: each layer's arrays through `encode`."""
    kinds = {row["name"]: row["type"] for row in metadata["layers"]}
    layers = []
    for name in names:
        arrays = weights[name]
        entry: dict[str, Any] = {"name": name, "type": kinds[name]}
        for key in PARAMETERS[kinds[name]]:
            entry[key] = None if arrays[key] is None else encode(arrays[key])
        layers.append(entry)
    return {"model": model, "version": version, "layers": layers}
