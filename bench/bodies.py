"""The request bodies the benchmark sends, made fresh in a folder for each run.

digit28.png         a 28x28 digit, white on black, like an MNIST image
digits16.form       16 such digits in one multipart/form-data request (field `image`)
scene32.png         a 32x32 RGB picture, like a CIFAR image
photo1024.jpg       a 1024x768 JPEG photo
phone12mp.jpg       a 12 MP phone photo, about 2 MB, stored sideways with an EXIF orientation
digit28.v2bytes     the digit as an Open Inference Protocol BYTES tensor, binary both ways
digit28.v2fp32      the digit preprocessed, an FP32 [1, 32, 32, 1] tensor, binary both ways
digit28.tfserving.json  the digit as TF Serving's {"instances": [{"b64": ...}]}

A body that needs more headers than its Content-Type has them in <name>.headers.
"""

from __future__ import annotations

import base64
import io
import json
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def _phone_photo() -> Image.Image:
    # A 12 MP frame with sensor-like noise (so it compresses like a photo, about 2 MB), which the
    # EXIF tag says to turn upright: how a phone sends it.
    size = (4032, 3024)
    base = Image.effect_mandelbrot(size, (-2.2, -1.2, 1.0, 1.2), 64)
    noise = Image.effect_noise(size, 24)
    return Image.merge("RGB", (Image.blend(base, noise, 0.3), base, Image.blend(base, noise, 0.15)))


BOUNDARY = "convnet-bench"


def _digit(shift: int = 0) -> Image.Image:
    img = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(img).line([(8 + shift // 4, 6), (20, 6), (12 + shift, 23)], fill=255, width=2)
    return img


def _png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def _multipart(files: list[bytes], boundary: str) -> bytes:
    """A multipart/form-data body with each file in the field `image`, as curl -F sends it."""
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{i}.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
        for i, data in enumerate(files)
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def _v2_binary(name: str, datatype: str, shape: list[int], raw: bytes) -> tuple[bytes, str]:
    """A V2 request with one binary input, outputs asked in binary (tritonclient's default):
    the body and its Inference-Header-Content-Length header."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": shape,
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return header + raw, f"Inference-Header-Content-Length: {len(header)}\n"


def _preprocessed_digit(png: bytes) -> np.ndarray:
    """The digit as the served mnist model's input, preprocessed by the service itself."""
    from service import engines, images
    from service.registry import find_versions
    from tests.server import MODELS_DIR

    preprocessing = engines.read_metadata(find_versions(MODELS_DIR)["mnist"])["preprocessing"]
    limits = images.Limits(max_pixels=10**6, max_request_pixels=10**6)
    return images.load(png, preprocessing, limits, images.PixelBudget(limits))


def _write_v2(path: Path, body_and_headers: tuple[bytes, str]) -> None:
    body, headers = body_and_headers
    path.write_bytes(body)
    path.with_name(path.name + ".headers").write_text(headers)


# Each body as a table names it (bench/report.py).
LABELS = {
    "digit28.png": "one 28x28 PNG",
    "digits16.form": "16 digits, multipart",
    "scene32.png": "one 32x32 PNG",
    "photo1024.jpg": "1024x768 JPEG",
    "phone12mp.jpg": "12 MP phone photo",
    "digit28.v2bytes": "one 28x28 PNG, V2 BYTES (binary)",
    "digit28.v2fp32": "one digit, V2 FP32 tensor (binary)",
    "digit28.tfserving.json": "one 28x28 PNG, TF Serving b64",
}


def make_bodies(folder: Path, names: set[str] | None = None) -> dict[str, Path]:
    """The request bodies, written into `folder`: all of them, or only `names`."""
    digit = _digit()
    png = _png(digit)
    photo = Image.effect_mandelbrot((1024, 768), (-2.2, -1.2, 1.0, 1.2), 64).convert("RGB")
    batch = _multipart([_png(_digit(shift)) for shift in range(-8, 8)], BOUNDARY)
    rotated = Image.Exif()
    rotated[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    files = {
        "digit28.png": lambda p: digit.save(p, "PNG"),
        "scene32.png": lambda p: photo.resize((32, 32)).save(p, "PNG"),
        "photo1024.jpg": lambda p: photo.save(p, "JPEG", quality=90),
        "phone12mp.jpg": lambda p: _phone_photo().save(p, "JPEG", quality=90, exif=rotated),
        "digits16.form": lambda p: p.write_bytes(batch),
        "digit28.v2bytes": lambda p: _write_v2(
            p, _v2_binary("image_bytes", "BYTES", [1], struct.pack("<I", len(png)) + png)
        ),
        "digit28.v2fp32": lambda p: _write_v2(
            p,
            _v2_binary(
                "image", "FP32", [1, 32, 32, 1], _preprocessed_digit(png).astype("<f4").tobytes()
            ),
        ),
        "digit28.tfserving.json": lambda p: p.write_text(
            json.dumps({"instances": [{"b64": base64.b64encode(png).decode()}]})
        ),
    }
    out = {}
    for name, save in files.items():
        if names is None or name in names:
            save(folder / name)
            out[name] = folder / name
    return out
