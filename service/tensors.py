"""Tensor wire formats of the standard protocols <-> arrays and image payloads.

- Open Inference Protocol (KServe V2, Triton): a JSON header, then (the binary tensor data
  extension) raw little-endian tensor bytes, the header's length in `Inference-Header-Content-Length`;
  BYTES elements in binary are each prefixed with their length (4 bytes, little-endian), in JSON
  they are strings (here: base64 or data URLs, since image files are not text).
- TF Serving's REST API: `instances` (rows) or `inputs` (columns); an image is `{"b64": "..."}`.

Nothing here knows about the model or HTTP: `service/api/v2.py` and `service/api/tfserving.py` use
these to turn a request into what `inference.infer` takes (image bytes or a float32 batch).
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from service import codecs
from service.errors import BadRequest, TooLarge


def parse_json(schema: type[BaseModel], raw: bytes, what: str):
    """A JSON body validated by its pydantic schema; a 400 naming every problem otherwise."""
    try:
        return schema.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise BadRequest(f"invalid {what}: {problems}") from None


HEADER_LENGTH = "Inference-Header-Content-Length"

# V2 datatypes this service reads or writes, and their numpy types.
DTYPES = {"FP32": np.dtype("<f4"), "BYTES": np.dtype(object)}


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """A V2 request body -> (JSON header, the binary tensor data after it)."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        n = int(header_length)
    except ValueError:
        n = -1
    if not 0 < n <= len(body):
        raise BadRequest(
            f"{HEADER_LENGTH} must be the JSON header's length, 1 to {len(body)} bytes, "
            f"not {header_length!r}"
        )
    view = memoryview(body)
    return body[:n], view[n:]


def element_count(shape: list[int], name: str) -> int:
    if any(d < 0 for d in shape):
        raise BadRequest(f"input {name!r}: shape {shape} has a negative dimension")
    count = 1
    for d in shape:
        count *= d
    return count


class BinarySection:
    """The binary tensor data, handed out to the inputs in request order."""

    def __init__(self, data: memoryview) -> None:
        self._data = data
        self._offset = 0

    def take(self, size: Any, name: str) -> memoryview:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadRequest(f"input {name!r}: binary_data_size must be a whole number of bytes")
        if self._offset + size > len(self._data):
            raise BadRequest(
                f"input {name!r}: binary_data_size {size} runs past the end of the body "
                f"({len(self._data) - self._offset} bytes of binary data left)"
            )
        chunk = self._data[self._offset : self._offset + size]
        self._offset += size
        return chunk

    def check_consumed(self) -> None:
        left = len(self._data) - self._offset
        if left:
            raise BadRequest(f"{left} bytes of binary data after the last input's")


def fp32_tensor(name: str, shape: list[int], data: Any, raw: memoryview | None) -> np.ndarray:
    """An FP32 input as an array of `shape`, from raw little-endian bytes or JSON numbers (flat
    in row-major order, or nested)."""
    count = element_count(shape, name)
    if raw is not None:
        if len(raw) != count * 4:
            raise BadRequest(
                f"input {name!r}: {len(raw)} bytes of binary data for shape {shape}, "
                f"which needs {count * 4} (FP32)"
            )
        return np.frombuffer(raw, dtype="<f4").reshape(shape)
    if data is None:
        raise BadRequest(f"input {name!r} has neither 'data' nor binary_data_size")
    arr = numbers(data, f"input {name!r}: 'data'")
    if arr.size != count:
        raise BadRequest(f"input {name!r}: {arr.size} values for shape {shape} ({count})")
    return arr.reshape(shape)


def numbers(data: Any, where: str) -> np.ndarray:
    """JSON numbers (nested lists of one shape) as an array; strings, booleans, nulls and
    ragged lists refused. The array is float64 or int: float32 values, printed as JSON, come
    back exact when the caller converts it to float32."""
    try:
        arr = np.array(data)
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"{where} must be numbers in lists of one shape ({exc})") from None
    if arr.dtype.kind not in "iuf":
        raise BadRequest(f"{where} must be numbers in lists of one shape")
    return arr


def bytes_tensor(
    name: str, shape: list[int], data: Any, raw: memoryview | None, max_elements: int
) -> list[bytes]:
    """A BYTES input's elements in row-major order: length-prefixed in binary, base64 strings
    (or data URLs) in JSON. More than `max_elements` is refused before any is decoded."""

    count = element_count(shape, name)
    if count > max_elements:
        raise TooLarge(f"{count} images; at most {max_elements} per request")
    if raw is not None:
        items = split_bytes_elements(raw, name, count)
    elif data is None:
        raise BadRequest(f"input {name!r} has neither 'data' nor binary_data_size")
    else:
        texts = _flatten(data)
        if not all(isinstance(t, str) for t in texts):
            raise BadRequest(f"input {name!r}: BYTES 'data' must be strings (base64 images)")
        if len(texts) > max_elements:
            raise TooLarge(f"{len(texts)} images; at most {max_elements} per request")
        items = [codecs.decode_base64(t, f"input {name!r}[{i}]") for i, t in enumerate(texts)]
    if len(items) != count:
        raise BadRequest(f"input {name!r}: {len(items)} elements for shape {shape} ({count})")
    return items


def _flatten(data: Any) -> list:
    if not isinstance(data, list):
        return [data]
    out: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def split_bytes_elements(raw: memoryview, name: str, count: int) -> list[bytes]:
    """The `count` length-prefixed elements of `raw`; more or fewer is an error (a body of
    millions of empty elements is refused after `count`, not split into a list first)."""
    items = []
    offset, end = 0, len(raw)
    while offset < end:
        if len(items) == count:
            raise BadRequest(f"input {name!r}: more BYTES elements than its shape holds ({count})")
        if offset + 4 > end:
            raise BadRequest(f"input {name!r}: a BYTES element's 4-byte length is cut short")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > end:
            raise BadRequest(
                f"input {name!r}: a BYTES element of {length} bytes runs past its binary data"
            )
        items.append(bytes(raw[offset : offset + length]))
        offset += length
    return items


def join_bytes_elements(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def output_tensor(
    name: str, values: np.ndarray | list[bytes], shape: list[int], binary: bool
) -> tuple[dict, bytes | None]:
    """One V2 output: its JSON object, and its raw bytes when sent in binary."""
    if isinstance(values, np.ndarray) and values.dtype == np.bool_:
        datatype = "BOOL"  # one byte per element in binary, as Triton sends it
        raw = values.astype(np.uint8).tobytes() if binary else None
        data = None if binary else values.ravel().tolist()
    elif isinstance(values, np.ndarray):
        datatype = "FP32"
        values = np.ascontiguousarray(values, dtype="<f4")
        raw = values.tobytes() if binary else None
        # tolist(): each float32 as the Python float of the same value, so JSON keeps it exact.
        data = None if binary else values.ravel().tolist()
    else:
        datatype = "BYTES"
        raw = join_bytes_elements(values) if binary else None
        data = None if binary else [v.decode() for v in values]
    out: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
    if binary:
        out["parameters"] = {"binary_data_size": len(raw)}
    else:
        out["data"] = data
    return out, raw


def classification(
    probabilities: np.ndarray, classes: list[str], k: int
) -> tuple[list[bytes], list[int]]:
    """Triton's classification extension: the top `k` of each row as "score:index:label",
    best first (the first of equal scores first, as argmax); its elements and shape."""
    k = min(k, len(classes))
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    items = [
        f"{probabilities[row, i]:f}:{i}:{classes[i]}".encode()
        for row in range(len(probabilities))
        for i in order[row].tolist()
    ]
    return items, [len(probabilities), k]


# TF Serving ------------------------------------------------------------------------------------


def tfserving_instances(instances: Any, input_name: str, where: str) -> list[bytes] | np.ndarray:
    """TF Serving rows -> image payloads (`{"b64": ...}` each) or one numeric array (a row of the
    input's shape each). A row may name the input: `{"image": ...}`. One kind per request."""
    if not isinstance(instances, list) or not instances:
        raise BadRequest(f"{where} must be a non-empty list, one entry per image")
    rows = [_unwrap(row, input_name, f"{where}[{i}]") for i, row in enumerate(instances)]
    images = [isinstance(r, dict) for r in rows]
    if all(images):
        return [codecs.decode_base64(r["b64"], f"{where}[{i}].b64") for i, r in enumerate(rows)]
    if any(images):
        raise BadRequest(
            f"{where}: every entry must be an image ({{'b64': ...}}) or every a tensor"
        )
    return numbers(rows, where)


def _unwrap(row: Any, input_name: str, where: str) -> Any:
    if isinstance(row, dict) and set(row) == {input_name}:
        row = row[input_name]
    if isinstance(row, dict):
        if set(row) != {"b64"} or not isinstance(row["b64"], str):
            raise BadRequest(
                f"{where}: an image is {{'b64': '<base64>'}}, a named input "
                f"{{'{input_name}': ...}}; got keys {sorted(row)}"
            )
        return row
    if not isinstance(row, list):
        raise BadRequest(f"{where}: expected a tensor (nested lists) or {{'b64': ...}}")
    return row
