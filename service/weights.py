"""A model's learned parameters, from the file written beside its engine: numpy only.

When the service converts a SavedModel to its LiteRT engine (service/engines.py), it also writes
every weighted layer's arrays, read from the SavedModel's own variables (service/saved_weights.py),
into a `.weights.npz` file beside the engine. Here that file is read and checked against the
metadata's layer table (which layers have weights, each array's shape), and the arrays are served
in Keras's layouts: conv kernels (h, w, in, out), dense kernels (in, out). For batch norm the file
holds what inference computes with, `scale` = gamma / sqrt(var + eps) and `offset` = beta - mean *
scale. tests/test_weights.py compares every array with the SavedModel's variables.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import BadRequest

# The layer types with parameters, and the arrays each has (y = x * kernel + bias, or for batch
# norm y = x * scale + offset).
PARAMETERS = {
    "conv": ("kernel", "bias"),
    "dense": ("kernel", "bias"),
    "batchnorm": ("scale", "offset"),
}
# A conv followed by batch norm is built without a bias: it would only shift the mean.
OPTIONAL = {"bias"}

Weights = dict[str, dict[str, np.ndarray | None]]


class WeightsError(Exception):
    """A weights file (or a SavedModel's variables) that does not match the layer table."""


def sources(metadata: dict[str, Any]) -> dict[str, str]:
    """Each layer's (first) input: a row's `inputs`, or in a table without them (format 1, a
    chain) the row before it; "image" for the first."""
    out, previous = {}, "image"
    for row in metadata["layers"]:
        out[row["name"]] = (row.get("inputs") or [previous])[0]
        previous = row["name"]
    return out


def expected_shapes(metadata: dict[str, Any]) -> dict[str, dict[str, tuple[int, ...]]]:
    """Each weighted layer's arrays and their shapes, in the layer table's order, as its rows
    (kernel size, filters, units, the input's shape) imply them."""
    rows = {row["name"]: row for row in metadata["layers"]}
    inputs = sources(metadata)
    out: dict[str, dict[str, tuple[int, ...]]] = {}
    for row in metadata["layers"]:
        name, kind = row["name"], row["type"]
        if kind not in PARAMETERS:
            continue
        source = inputs[name]
        fan_in = rows[source]["output_shape"] if source in rows else metadata["input"]["shape"]
        if kind == "conv":
            filters = row["filters"]
            out[name] = {"kernel": (*row["kernel_size"], fan_in[-1], filters), "bias": (filters,)}
        elif kind == "dense":
            out[name] = {"kernel": (math.prod(fan_in), row["units"]), "bias": (row["units"],)}
        else:
            channels = (row["output_shape"][-1],)
            out[name] = {"scale": channels, "offset": channels}
    return out


def validate(arrays: dict[str, np.ndarray], metadata: dict[str, Any]) -> Weights:
    """`arrays` by "<layer>/<array>" ("conv1/kernel"), checked against the layer table: every
    array there (a bias may be missing: None), float32 of its shape, nothing else."""
    shapes = expected_shapes(metadata)
    known = {f"{layer}/{array}" for layer, wanted in shapes.items() for array in wanted}
    unexpected = sorted(set(arrays) - known)
    if unexpected:
        raise WeightsError(f"arrays {unexpected} belong to no weighted layer of the layer table")
    out: Weights = {}
    for layer, wanted in shapes.items():
        out[layer] = {}
        for array, shape in wanted.items():
            value = arrays.get(f"{layer}/{array}")
            if value is None and array not in OPTIONAL:
                raise WeightsError(f"no {layer}/{array} where the layer table has one")
            if value is not None and (value.shape != shape or value.dtype != np.float32):
                raise WeightsError(
                    f"{layer}/{array} is {value.dtype} {list(value.shape)}, "
                    f"the layer table implies float32 {list(shape)}"
                )
            out[layer][array] = value
    return out


def read(weights_file: Path, metadata: dict[str, Any]) -> Weights:
    """Every weighted layer's arrays, in the layer table's order; a layer built without a bias
    has bias None."""
    try:
        with np.load(weights_file, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in stored.files}
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{weights_file} is not a readable weights file ({exc})") from exc
    return validate(arrays, metadata)


class WeightStore:
    """Each model version's weights, read once per process."""

    def __init__(self) -> None:
        self._cache: dict[Path, Weights] = {}
        self._lock = threading.Lock()

    def get(self, weights_file: Path, metadata: dict[str, Any]) -> Weights:
        with self._lock:
            if weights_file not in self._cache:
                self._cache[weights_file] = read(weights_file, metadata)
            return self._cache[weights_file]


def select(weights: Weights, metadata: dict[str, Any], requested: str | None) -> list[str]:
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
    weights: Weights,
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
