"""Bytes in, model input out: sniff, allowlisted decode, EXIF, modes, alpha, resize, normalise.

The steps after decoding follow the `preprocessing` block of the model's metadata, so the same
code serves any model the training package exports.

Resize policies:
- `center_crop` (photos): keep the aspect ratio, crop the centred square, downsample with an
  antialiasing filter (a box reduction, then bicubic). CIFAR images are centred square crops of
  photos, so a large photo reaches the model looking like what it was trained on.
- `mnist_digit` (digits): find the ink, scale its bounding box into box_size x box_size keeping the
  aspect ratio, centre it by its centre of mass in canvas_size x canvas_size, pad to the input
  size, ink bright on dark: how the MNIST digits themselves were made.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin

from service.errors import TooLarge, UndecodableImage, UnsupportedMediaType

# The one list of image formats: the Pillow decoders we allow (nothing else ever runs: no
# EPS/Ghostscript, PSD, ...), each with the media type the OpenAPI spec and the docs name.
MEDIA_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "HEIF": "image/heic",
    "AVIF": "image/avif",
}
ALLOWED_FORMATS = tuple(MEDIA_TYPES)


def _sniff(data: bytes) -> str | None:
    """The container format from the magic bytes, or None: we never trust names or Content-Type."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"BM":
        return "BMP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data[4:8] == b"ftyp":
        return _sniff_ftyp(data)
    return None


_AVIF_BRANDS = {b"avif", b"avis"}
_HEVC_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis"}


def _sniff_ftyp(data: bytes) -> str | None:
    """AVIF or HEIF from an ISO-BMFF ftyp box: its major brand, then its compatible brands (an
    AVIF may name the generic image brand `mif1` first and `avif` only among the compatible)."""
    major = data[8:12]
    size = min(int.from_bytes(data[:4], "big"), len(data), 256)
    compatible = {data[i : i + 4] for i in range(16, size - 3, 4)}  # after the minor version
    if major in _AVIF_BRANDS:
        return "AVIF"
    if major in _HEVC_BRANDS:
        return "HEIF"
    if compatible & _AVIF_BRANDS:
        return "AVIF"
    if major in (b"mif1", b"msf1") or compatible & _HEVC_BRANDS:
        return "HEIF"
    return None


@dataclass(frozen=True)
class Limits:
    # Per image as decoded: a JPEG at its DCT-scaled size, so a 48 or 50 MP phone photo
    # (8064x6048, 8160x6120) passes, decoded at 1/8 a side (0.76 MP).
    max_pixels: int = 40_000_000
    max_side: int = 20_000
    # All the images of one request together, as decoded (a JPEG at its DCT-scaled size): 64
    # images of 40 MP would hold a worker for minutes, past Gunicorn's timeout.
    max_request_pixels: int = 100_000_000


def fits(width: int, height: int, limits: Limits) -> bool:
    return width * height <= limits.max_pixels and max(width, height) <= limits.max_side


class PixelBudget:
    """The pixels one request may still decode: Limits.max_request_pixels, spent image by image
    before each one's pixels are read."""

    def __init__(self, limits: Limits) -> None:
        self.limit = self.left = limits.max_request_pixels

    def spend(self, pixels: int) -> None:
        if pixels > self.left:
            raise TooLarge(
                f"the request's images hold more than {self.limit} pixels together; "
                "send fewer or smaller images per request"
            )
        self.left -= pixels


# A sequential JPEG streams through libjpeg a few rows at a time, so its header may claim more
# than max_pixels as long as its DCT-scaled size fits (draft divides each side by up to 8). A
# progressive one keeps every coefficient of its full size in memory (456 MB at 144 MP), so not.
JPEG_HEADER_FACTOR = 4

# libjpeg decodes every scan of a progressive JPEG over the whole image, however few bytes the
# scan takes: 59 bytes repeated held a core 20 ms each at 36 MP. Real ones have about 10 scans.
MAX_JPEG_SCANS = 100

# Where a scan's entropy-coded data ends: 0xFF (and fill 0xFFs) before a byte that is not a
# stuffed zero or a restart marker, which the decoder reads inside the scan.
_MARKER_IN_SCAN = re.compile(rb"\xff+[^\x00\xd0-\xd7\xff]")


def _jpeg_scans(data: bytes) -> int:
    """How many scans (SOS markers) libjpeg reads in the first image: the cheap count of
    0xFFDA where it is small; else a walk of the segments up to the first EOI, since an EXIF
    thumbnail, an MPO's further images or a motion photo's video may hold 0xFFDA too."""
    upper = data.count(b"\xff\xda")
    if upper <= MAX_JPEG_SCANS:
        return upper
    scans, pos = 0, 2  # after SOI
    while pos + 1 < len(data):
        if data[pos] != 0xFF:  # stray bytes: libjpeg skips on to the next marker
            pos = data.find(b"\xff", pos)
            if pos < 0:
                break
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte before the marker
            pos += 1
        elif marker == 0xD9:  # EOI: nothing after it is decoded
            break
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
            if marker == 0xDA:
                scans += 1
                found = _MARKER_IN_SCAN.search(data, pos)
                if found is None:
                    break
                pos = found.end() - 2
    return scans


def register_plugins() -> None:
    """HEIC support comes from pillow-heif; AVIF is built into Pillow."""
    from pillow_heif import register_heif_opener

    register_heif_opener()


def decode(
    data: bytes,
    limits: Limits,
    draft_size: int | None = None,
    budget: PixelBudget | None = None,
) -> Image.Image:
    """Decode the first frame of an allowlisted image, checking its size (and the request's
    `budget`) before any pixel is read."""
    if not data:
        raise UndecodableImage("the image is empty (0 bytes)")
    fmt = _sniff(data)
    if fmt is None:
        raise UnsupportedMediaType(
            "not an image in a supported format; send JPEG, PNG, GIF, WebP, BMP, TIFF, HEIC or AVIF"
        )
    # pillow-heif reads AVIF too; give Pillow's own AVIF plugin the first try.
    formats = ["AVIF", "HEIF"] if fmt == "AVIF" else [fmt]
    scans = _jpeg_scans(data) if fmt == "JPEG" else 1
    if scans > MAX_JPEG_SCANS:
        raise UndecodableImage(
            f"the JPEG has more than {MAX_JPEG_SCANS} scans; a progressive JPEG has about 10"
        )
    try:
        # Our own pixel limit below is the check that counts. Pillow only warns past its
        # MAX_IMAGE_PIXELS (89 MP) and raises past twice that, above our header limits.
        img = Image.open(io.BytesIO(data), formats=[f for f in formats if f in ALLOWED_FORMATS])
        w, h = img.size
        if w < 1 or h < 1:
            raise UndecodableImage(f"the image has no pixels ({w}x{h})")
        # An MPO (a JPEG with an MPF segment: many phone photos) is a JPEG to the decoder.
        jpeg = isinstance(img, JpegImagePlugin.JpegImageFile)
        header_limit = limits.max_pixels
        if jpeg and draft_size and not img.info.get("progressive"):
            header_limit *= JPEG_HEADER_FACTOR
        if w * h > header_limit or max(w, h) > limits.max_side:
            raise TooLarge(
                f"the image is {w}x{h} pixels; the limit is {header_limit} pixels "
                f"and {limits.max_side} per side"
            )
        if draft_size and jpeg:
            # DCT scaling in the JPEG decoder: a 12 MP photo decodes at 1/8 size, far faster.
            img.draft(img.mode, (draft_size, draft_size))
        dw, dh = img.size
        if dw * dh > limits.max_pixels:
            raise TooLarge(
                f"the image is {w}x{h} pixels, {dw}x{dh} at its reduced size; the limit is "
                f"{limits.max_pixels} pixels"
            )
        if budget is not None:
            # After draft: the pixels that will be decoded. Each further scan of a JPEG is read
            # over the full size, costing about a 1/8-size decode (34 ms a scan at 64 MP).
            budget.spend(dw * dh + max(scans - 1, 0) * (w * h // 64))
        _png_16_bit_key(img, data)
        img.load()  # first frame only for GIF/WebP/TIFF; later frames are never decoded
        return img
    except (TooLarge, UndecodableImage):
        raise
    except Image.DecompressionBombError as exc:
        raise TooLarge(f"the image claims too many pixels ({exc})") from exc
    except Exception as exc:  # Pillow raises many types on broken files; none may escape as a 500
        raise UndecodableImage(f"the {fmt} image could not be decoded: {exc}") from exc


def _png_16_bit_key(img: Image.Image, data: bytes) -> None:
    """Pillow reads a 16-bit RGB PNG as 8-bit (the high bytes) but leaves its colour key in 16
    bits, where it matches nothing: bring the key to the pixels' 8 bits. (16-bit grey keeps
    its 16 bits; _to_8bit applies its key.)"""
    key = img.info.get("transparency")
    if img.format == "PNG" and img.mode == "RGB" and isinstance(key, tuple) and data[24] == 16:
        img.info["transparency"] = tuple(v >> 8 for v in key)  # data[24]: IHDR's bit depth


# Where Pillow finds an orientation: EXIF (its own block, or TIFF tags) or XMP. Without any of
# these, getexif() would parse nothing at a cost; most PNGs and many JPEGs carry none.
_ORIENTATION_SOURCES = ("exif", "Raw profile type exif", "xmp", "XML:com.adobe.xmp")


def _exif_transpose(img: Image.Image) -> Image.Image:
    if img.format != "TIFF" and not any(k in img.info for k in _ORIENTATION_SOURCES):
        return img
    try:
        if img.getexif().get(0x0112, 1) in (0, 1):  # no rotation: skip exif_transpose's copy
            return img
        return ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not lose an otherwise good image
        return img


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey images scaled into 0..255 (Pillow's convert would clip them), a
    colour key (16-bit PNG's tRNS) kept as alpha; premultiplied grey + alpha un-premultiplied."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = np.clip(arr.astype(np.float64) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        key = img.info.get("transparency")
        if isinstance(key, int):  # the key matches the 16-bit values, not the scaled ones
            alpha = np.where(arr == key, 0, 255).astype(np.uint8)
            return Image.fromarray(np.dstack((grey, alpha)), "LA")
        return Image.fromarray(grey, "L")
    if img.mode == "F":
        arr = np.asarray(img).astype(np.float64)
        top = 1.0 if arr.max() <= 1.0 else 255.0
        return Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "La":  # a TIFF's associated alpha: Pillow converts La only to LA
        return img.convert("LA")
    return img


# Modes with an alpha channel. Palette, greyscale and RGB images may carry a colour key instead
# (PNG's tRNS chunk, a GIF's transparent index): "transparency" in their info.
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa")


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in _ALPHA_MODES or "transparency" in img.info


def _flatten_alpha(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Composite transparency onto `background` (black would turn a transparent PNG into night)."""
    if _has_alpha(img):
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")  # a colour key becomes alpha
        canvas = Image.new("RGB", img.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB") if img.mode == "P" else img


def _background_for(img: Image.Image, default: tuple[int, int, int]) -> tuple[int, int, int]:
    """For digits: strokes drawn in white on a transparent canvas go onto black, not white."""
    if not _has_alpha(img):
        return default
    rgba = img if img.mode == "RGBA" else img.convert("RGBA")
    if max(rgba.size) > 256:
        # The alpha-weighted tone survives a box reduction (Pillow averages RGBA premultiplied);
        # at full size a 40 MP image would take 640 MB of floats and seconds.
        rgba = ImageOps.contain(rgba, (256, 256), method=Image.Resampling.BOX)
    pixels = np.asarray(rgba, dtype=np.float32)
    alpha = pixels[..., 3] / 255.0
    if alpha.sum() < 1 or alpha.min() > 0.99:
        return default
    if alpha.mean() > 0.5:  # mostly opaque: a sheet with a transparent margin, which is paper too
        paper = np.median(pixels[alpha > 0.5][:, :3], axis=0)  # the ink is the minority
        return tuple(int(v + 0.5) for v in paper)
    tone = (pixels[..., :3].mean(axis=2) * alpha).sum() / alpha.sum()
    default_tone = sum(default) / 3
    if abs(tone - default_tone) < 64:  # ink the colour of the background: use the opposite
        return (0, 0, 0) if default_tone > 127 else (255, 255, 255)
    return default


def to_mode(img: Image.Image, color_mode: str, background: tuple[int, int, int]) -> Image.Image:
    img = _flatten_alpha(img, background)
    if img.mode in ("LAB", "HSV"):  # Pillow converts these to RGB only (a CIELab TIFF)
        img = img.convert("RGB")
    target = {"grayscale": "L", "rgb": "RGB"}[color_mode]
    # CMYK, YCbCr, 1-bit, palette: Pillow's conversions (JPEG's Adobe CMYK inversion included).
    return img if img.mode == target else img.convert(target)


def center_crop(img: Image.Image, height: int, width: int) -> Image.Image:
    w, h = img.size
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    return img.resize((width, height), Image.Resampling.BICUBIC, box=box, reducing_gap=2.0)


def find_ink_python(
    pixels: bytes, width: int, height: int
) -> tuple[int, int, int, int, bytes] | None:
    """The digit's ink, bright on dark and stretched to 0..255, cropped to its bounding box:
    (left, top, width, height, pixels), or None when nothing looks like ink.

    The reference for service/_digit.c's find_ink, which must return the same bytes.
    """
    a = np.frombuffer(pixels, np.uint8).reshape(height, width).astype(np.float32)
    # One sort of the border pixels gives the statistics (np.median/percentile cost far more).
    border = np.concatenate((a[0], a[-1], a[:, 0], a[:, -1]))
    border.sort()
    n = len(border)
    if border[n // 2] > 127:  # dark ink on light paper -> bright ink on dark, like MNIST
        a = 255.0 - a
        border = 255.0 - border[::-1]
    # The paper's tone: the 90th percentile of the border pixels that are paper, not ink. Ink
    # that touches the edge (a tight crop, a scan cut at the stroke) is brighter than halfway
    # from the border's median to the brightest pixel; counted as paper, it would be removed.
    paper = border[2 * border <= border[n // 2] + a.max()]
    a -= paper[int(0.9 * (len(paper) - 1))]
    # Remove the paper's own tone (grey paper, shadows) and stretch the ink to full range.
    np.maximum(a, 0, out=a)
    peak = float(a.max())
    if peak < 32:  # nothing that looks like ink
        return None
    a *= 255.0 / peak
    ink = a > 64
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    box = a[top:bottom, left:right].astype(np.uint8).tobytes()
    return left, top, right - left, bottom - top, box


def place_digit_python(
    pixels: bytes, width: int, height: int, canvas_size: int, out_width: int, out_height: int
) -> bytes:
    """A scaled digit centred by its centre of mass in a canvas_size square (as the original
    MNIST preparation did), that square centred in out_width x out_height.

    The reference for service/_digit.c's place_digit, which must return the same bytes.
    """
    if max(width, height) > canvas_size or canvas_size > min(out_width, out_height):
        raise ValueError(
            f"a {width}x{height} digit does not fit a {canvas_size} canvas "
            f"in a {out_width}x{out_height} output"
        )
    digit = np.frombuffer(pixels, np.uint8).reshape(height, width)
    by_row = digit.sum(axis=1, dtype=np.float64)
    by_col = digit.sum(axis=0, dtype=np.float64)
    total = float(by_row.sum())
    cy = float(by_row @ np.arange(height)) / total if total else height / 2
    cx = float(by_col @ np.arange(width)) / total if total else width / 2
    y0 = min(max(round(canvas_size / 2 - cy), 0), canvas_size - height)
    x0 = min(max(round(canvas_size / 2 - cx), 0), canvas_size - width)
    y0 += (out_height - canvas_size) // 2
    x0 += (out_width - canvas_size) // 2
    out = np.zeros((out_height, out_width), np.uint8)
    out[y0 : y0 + height, x0 : x0 + width] = digit
    return out.tobytes()


def normalize_digit_python(
    pixels: bytes,
    width: int,
    height: int,
    box_size: int,
    canvas_size: int,
    out_width: int,
    out_height: int,
    scale: float | None = None,
) -> bytes:
    """A greyscale digit, MNIST style: the ink found, scaled into a box_size square keeping the
    aspect ratio, then placed (out_height * out_width bytes, all 0 when there is no ink). With a
    scale, those bytes times float32(scale) as native float32s instead: the model's input.

    The reference for service/_digit.c's normalize_digit, which must return the same bytes.
    """
    if scale is not None:
        placed = normalize_digit_python(
            pixels, width, height, box_size, canvas_size, out_width, out_height
        )
        scaled = np.multiply(np.frombuffer(placed, np.uint8), np.float32(scale), dtype=np.float32)
        return scaled.tobytes()
    if not 1 <= box_size <= canvas_size <= min(out_width, out_height):
        raise ValueError(
            f"a {box_size} box does not fit a {canvas_size} canvas "
            f"in a {out_width}x{out_height} output"
        )
    found = find_ink_python(pixels, width, height)
    if found is None:  # a blank canvas is a black input
        return bytes(out_width * out_height)
    _, _, ink_width, ink_height, ink = found
    scale = box_size / max(ink_width, ink_height)
    new_w, new_h = max(1, round(ink_width * scale)), max(1, round(ink_height * scale))
    crop = Image.frombuffer("L", (ink_width, ink_height), ink, "raw", "L", 0, 1)
    scaled = crop.resize((new_w, new_h), Image.Resampling.LANCZOS).tobytes()
    return place_digit_python(scaled, new_w, new_h, canvas_size, out_width, out_height)


try:  # the same in C, built by pip install: one call instead of some 30 numpy and Pillow calls
    from service._digit import normalize_digit
except ImportError:  # a compiler-less install: the same answers, slower
    normalize_digit = normalize_digit_python


# The largest side a digit is normalised at: a 12 MP photo of a digit needs no more for a 20 px box.
DIGIT_WORK_SIDE = 256


def mnist_digit(
    img: Image.Image, height: int, width: int, digit: dict[str, Any], scale: float
) -> np.ndarray:
    """A greyscale image of a digit -> (height, width) float32 array of its bytes times `scale`,
    MNIST style."""
    if max(img.size) > DIGIT_WORK_SIDE:
        img = img.copy()
        img.thumbnail((DIGIT_WORK_SIDE, DIGIT_WORK_SIDE), Image.Resampling.BOX)
    return _digit_floats(img.tobytes(), img.width, img.height, height, width, digit, scale)


def _digit_floats(
    pixels: bytes,
    pixels_width: int,
    pixels_height: int,
    height: int,
    width: int,
    digit: dict[str, Any],
    scale: float,
) -> np.ndarray:
    """A digit's greyscale pixels -> the (height, width) float32 input, MNIST style.

    normalize_digit is service/_digit.c's where it was built, else the reference above;
    tests/test_digit_kernel.py holds them to the same bytes. It scales to floats itself: a numpy
    pass over the pixels costs more than the C loop under load (README, Performance)."""
    placed = normalize_digit(
        pixels,
        pixels_width,
        pixels_height,
        digit["box_size"],
        digit["canvas_size"],
        width,
        height,
        scale,
    )
    return np.frombuffer(placed, np.float32).reshape(height, width)


try:  # built by pip install with service._digit
    from service._digit import unfilter_png
except ImportError:  # a compiler-less install: every PNG through Pillow
    unfilter_png = None

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# IHDR's bit depth, colour type, compression, filter method and interlace: 8-bit greyscale,
# deflate, adaptive filtering, not interlaced.
_PLAIN_GREY = (8, 0, 0, 0, 0)


def grey_png(data: bytes, max_side: int) -> tuple[int, int, bytes] | None:
    """(width, height, pixels) of a PNG Pillow would decode to exactly these bytes, with nothing
    left for preprocess to apply; None for every other image, which takes the general route.

    The commonest digit upload, an MNIST image as Pillow, OpenCV or numpy tools write it, is an
    8-bit greyscale PNG of a few hundred bytes, where Pillow's Python (opening, parsing chunks,
    setting up its decoder, tobytes) costs more than the pixels (README, Performance). Taken only
    for such a PNG, not interlaced, at most max_side a side, with no chunk but IHDR, IDAT and IEND
    (so no transparency, and no EXIF or XMP orientation), every CRC good, and a zlib stream of
    exactly its scanlines. Anything else, a broken file included, goes to Pillow, which then
    decides: the pixels and the errors are Pillow's either way (tests/test_grey_png.py).
    """
    if unfilter_png is None or not data.startswith(PNG_SIGNATURE) or "PNG" not in ALLOWED_FORMATS:
        return None
    pos, width, height, idat = len(PNG_SIGNATURE), 0, 0, []
    while pos + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if end > len(data):
            return None
        body = data[pos + 8 : end - 4]
        if zlib.crc32(body, zlib.crc32(kind)) != int.from_bytes(data[end - 4 : end], "big"):
            return None
        if not width:  # the first chunk, which must be the header
            if kind != b"IHDR" or length != 13:
                return None
            width, height, *layout = struct.unpack(">IIBBBBB", body)
            if tuple(layout) != _PLAIN_GREY or not (
                0 < width <= max_side and 0 < height <= max_side
            ):
                return None
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND" and idat and end == len(data):
            expected = height * (width + 1)  # a filter-type byte before each line
            inflate = zlib.decompressobj()
            try:  # at most one byte more than expected: a longer stream is not inflated further
                scanlines = inflate.decompress(b"".join(idat), expected + 1)
            except zlib.error:
                return None
            if len(scanlines) != expected or not inflate.eof or inflate.unused_data:
                return None
            try:
                return width, height, unfilter_png(scanlines, width, height)
            except ValueError:  # a filter type PNG does not define
                return None
        else:
            return None
        pos = end
    return None


def preprocess(img: Image.Image, spec: dict[str, Any]) -> np.ndarray:
    """A decoded image -> float32 (H, W, C) exactly as the model's metadata describes."""
    h, w = spec["height"], spec["width"]
    background = tuple(spec.get("alpha_background", (255, 255, 255)))
    try:  # a mode or file Pillow cannot convert is a client's image, not a 500
        img = _to_8bit(_exif_transpose(img))
        if spec["resize"] == "mnist_digit":
            background = _background_for(img, background)
        img = to_mode(img, spec["color_mode"], background)
    except (ValueError, OSError) as exc:
        raise UndecodableImage(
            f"the {img.format or 'image'} could not be converted: {exc}"
        ) from exc
    # Pixels times the scale in float32: uint8 -> float32 is exact, so every route to it (one
    # numpy ufunc, not astype, * and +; or the digit kernel's own loop) gives the same floats.
    if spec["resize"] == "mnist_digit":
        out = mnist_digit(img, h, w, spec["digit"], spec["scale"])
    elif spec["resize"] == "center_crop":
        out = np.multiply(
            np.asarray(center_crop(img, h, w)), np.float32(spec["scale"]), dtype=np.float32
        )
    else:
        raise ValueError(f"unknown resize policy {spec['resize']!r} in the model's metadata")
    return _with_offset(out, spec)


def _with_offset(out: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    if spec["offset"]:  # x + 0.0 is x: the models here have no offset (and out may be read-only)
        out = out + np.float32(spec["offset"])
    return out.reshape(spec["height"], spec["width"], -1)


# How much larger than the model's input a JPEG is decoded (DCT scaling, see decode). For a centre
# crop, 4x stays within 1/255 per pixel of a full decode on a 1024x768 photo, which then costs a
# third less than at 8x; a digit is normalised at up to 256 px (mnist_digit) and needs 8x.
DRAFT_FACTOR = {"center_crop": 4, "mnist_digit": 8}


def load(
    data: bytes, spec: dict[str, Any], limits: Limits, budget: PixelBudget | None = None
) -> np.ndarray:
    """Decode and preprocess one image for a model: bytes -> float32 (H, W, C)."""
    if spec["resize"] == "mnist_digit" and spec["color_mode"] == "grayscale":
        found = grey_png(data, DIGIT_WORK_SIDE)
        # Past the limits (set that low), decode refuses it with its reasons.
        if found is not None and fits(found[0], found[1], limits):
            width, height, pixels = found
            if budget is not None:
                budget.spend(width * height)
            digit = _digit_floats(
                pixels, width, height, spec["height"], spec["width"], spec["digit"], spec["scale"]
            )
            return _with_offset(digit, spec)
    draft = DRAFT_FACTOR.get(spec["resize"], 8) * max(spec["height"], spec["width"])
    return preprocess(decode(data, limits, draft_size=draft, budget=budget), spec)
