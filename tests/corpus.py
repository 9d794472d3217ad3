"""Test images generated on the fly: every format, mode, orientation and size people send."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    if fmt in ("HEIF", "HEIC"):
        from pillow_heif import register_heif_opener

        register_heif_opener()
        fmt = "HEIF"
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png(arr) -> bytes:
    """A uint8 array (greyscale or RGB) as a PNG file."""
    return encode(Image.fromarray(arr), "PNG")


def digit(value: int = 7, size: int = 280, ink: str = "black", paper: str = "white") -> Image.Image:
    """A hand-drawn-looking digit: thick strokes, dark ink on white paper by default."""
    img = Image.new("RGB", (size, size), paper)
    d = ImageDraw.Draw(img)
    s = size / 28
    w = max(1, round(2.2 * s))
    strokes = {
        1: [[(14, 5), (14, 23)]],
        7: [[(8, 6), (20, 6), (12, 23)]],
        0: None,
        4: [[(17, 23), (17, 5), (7, 17), (21, 17)]],
    }[value]
    if strokes is None:
        d.ellipse([9 * s, 5 * s, 19 * s, 23 * s], outline=ink, width=w)
    else:
        for line in strokes:
            d.line([(x * s, y * s) for x, y in line], fill=ink, width=w, joint="curve")
    return img


def mnist_like(value: int) -> Image.Image:
    """The digit as MNIST itself stores it: 28x28, bright ink on black."""
    return Image.eval(digit(value, 28).convert("L"), lambda v: 255 - v)


def photo(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    """A smooth colourful 'photo' with an asymmetric feature, so orientation mistakes show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 128 + 100 * np.sin(x / width * 3 + rng.random())
    g = 128 + 100 * np.cos(y / height * 4)
    b = 255 * (x / width)
    arr = np.stack([r, g, b], axis=-1).clip(0, 255).astype(np.uint8)
    arr[: height // 4, : width // 4] = (255, 0, 0)  # a red block top-left
    return Image.fromarray(arr, "RGB")


def with_orientation(img: Image.Image, orientation: int, fmt: str = "JPEG") -> bytes:
    """An image whose pixels are stored rotated, with the EXIF tag that undoes it (like a phone)."""
    # Orientation tag value -> the transform the camera applied to the stored pixels.
    t = Image.Transpose
    stored = {
        1: img,
        2: img.transpose(t.FLIP_LEFT_RIGHT),  # mirrored
        3: img.transpose(t.ROTATE_180),
        4: img.transpose(t.FLIP_TOP_BOTTOM),  # mirrored
        5: img.transpose(t.TRANSPOSE),  # mirrored
        6: img.transpose(t.ROTATE_90),  # viewer rotates 90 clockwise to show
        7: img.transpose(t.TRANSVERSE),  # mirrored
        8: img.transpose(t.ROTATE_270),
    }[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    if fmt == "TIFF":  # TIFF keeps the orientation as one of its own tags
        return encode(stored, "TIFF", tiffinfo={0x0112: orientation})
    return encode(stored, fmt, quality=95, exif=exif.tobytes())


FORMATS = {
    # format -> (Pillow save format, kwargs, mime type)
    "png": ("PNG", {}, "image/png"),
    "jpeg": ("JPEG", {"quality": 95}, "image/jpeg"),
    "gif": ("GIF", {}, "image/gif"),
    "webp": ("WEBP", {"lossless": True}, "image/webp"),
    "bmp": ("BMP", {}, "image/bmp"),
    "tiff": ("TIFF", {}, "image/tiff"),
    "heic": ("HEIF", {"quality": 95}, "image/heic"),
    "avif": ("AVIF", {"quality": 95}, "image/avif"),
}


def in_format(img: Image.Image, name: str) -> tuple[bytes, str]:
    fmt, kwargs, mime = FORMATS[name]
    return encode(img, fmt, **kwargs), mime
