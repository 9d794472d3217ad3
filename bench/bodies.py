"""The request bodies the benchmark sends, made fresh in a folder for each run.

digit28.png         a 28x28 digit, white on black, like an MNIST image
digits16.form       16 such digits in one multipart/form-data request (field `image`)
scene32.png         a 32x32 RGB picture, like a CIFAR image
photo1024.jpg       a 1024x768 JPEG photo
phone12mp.jpg       a 12 MP phone photo, about 2 MB, stored sideways with an EXIF orientation
"""

from __future__ import annotations

import io
from pathlib import Path

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


# Each body as a table names it (bench/report.py).
LABELS = {
    "digit28.png": "one 28x28 PNG",
    "digits16.form": "16 digits, multipart",
    "scene32.png": "one 32x32 PNG",
    "photo1024.jpg": "1024x768 JPEG",
    "phone12mp.jpg": "12 MP phone photo",
}


def make_bodies(folder: Path, names: set[str] | None = None) -> dict[str, Path]:
    """The request bodies, written into `folder`: all of them, or only `names`."""
    digit = _digit()
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
    }
    out = {}
    for name, save in files.items():
        if names is None or name in names:
            save(folder / name)
            out[name] = folder / name
    return out
