"""Hostile and broken image payloads, generated on the fly (nothing binary is committed).

`payloads()` returns (kind, bytes, expected HTTP status, expected error code) for files a client
might upload: decompression bombs, truncated and corrupt files of every allowlisted format,
formats outside the allowlist, polyglots. tests/test_hostile_input.py posts them to the service;
fuzz/fuzz_images.py seeds its corpus with them (and with the good images of tests/corpus.py).
"""

from __future__ import annotations

import random
import struct
import zlib
from dataclasses import dataclass

from PIL import Image

from tests import corpus

ALLOWLISTED = ("jpeg", "png", "gif", "webp", "bmp", "tiff", "heic", "avif")


@dataclass(frozen=True)
class Payload:
    kind: str
    data: bytes
    status: int  # what the service must answer
    code: str | None  # the error code (None for a 200)
    mime: str = "image/jpeg"  # the (often wrong) Content-Type it is sent with


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int) -> bytes:
    """A valid-looking ~70-byte PNG whose header claims width x height 8-bit grey pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def gif_claiming(width: int, height: int) -> bytes:
    """A GIF whose logical screen and only frame claim width x height pixels."""
    head = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00" * 3 + b"\xff" * 3
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
    return head + frame + b"\x02\x02\x4c\x01\x00\x3b"


def bmp_claiming(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    pixels = b"\x00" * 64
    return b"BM" + struct.pack("<IHHI", 14 + 40 + len(pixels), 0, 0, 54) + info + pixels


def tiff_claiming(width: int, height: int) -> bytes:
    """A little-endian baseline TIFF, one uncompressed strip, claiming width x height grey."""
    entries = [
        (256, 4, 1, width),  # ImageWidth (LONG)
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: black is zero
        (273, 4, 1, 0),  # StripOffsets (patched below)
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, 64),  # StripByteCounts
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    data_offset = 8 + ifd_size
    out = [b"II*\x00", struct.pack("<I", 8), struct.pack("<H", len(entries))]
    for tag, typ, count, value in entries:
        value = data_offset if tag == 273 else value
        packed = struct.pack("<HI", value, 0)[:4] if typ == 3 else struct.pack("<I", value)
        out.append(struct.pack("<HHI", tag, typ, count) + packed)
    out.append(struct.pack("<I", 0))
    return b"".join(out) + b"\x00" * 64


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG with its SOF0 frame header patched to claim width x height."""
    data = bytearray(corpus.encode(corpus.photo(32, 32), "JPEG", quality=80))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png_real(width: int, height: int) -> bytes:
    """A real, fully valid bilevel PNG of width x height (10000 x 10000 is ~12 KB on the wire)."""
    return corpus.encode(Image.new("1", (width, height)), "PNG")


def png_text_bomb(megabytes: int = 64) -> bytes:
    """A valid PNG with a zTXt chunk that inflates to `megabytes` MB (~64 KB on the wire)."""
    png = valid("png")
    text = zlib.compress(b"\x00" * (megabytes << 20), 9)
    return png[:33] + _chunk(b"zTXt", b"Comment\x00\x00" + text) + png[33:]


def jpeg_scan_bomb(side: int = 4000, repeats: int = 3000) -> bytes:
    """A progressive JPEG whose last scan is repeated: each copy is 31 bytes, but the decoder
    reads the whole image for it, 11 ms at 16 MP (3000 copies: 33 s, near Gunicorn's timeout)."""
    data = corpus.encode(Image.new("L", (side, side), 128), "JPEG", quality=90, progressive=True)
    eoi = data.rindex(b"\xff\xd9")
    last_scan = data[data.rindex(b"\xff\xda", 0, eoi) : eoi]
    return data[:eoi] + last_scan * repeats + b"\xff\xd9"


def gif_frames(n: int) -> bytes:
    frames = [Image.new("L", (16, 16), (i * 37) % 256) for i in range(n)]
    return corpus.encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=1)


def valid(fmt: str) -> bytes:
    return corpus.in_format(corpus.photo(64, 48), fmt)[0]


def truncated(fmt: str) -> bytes:
    data = valid(fmt)
    return data[: len(data) // 2]


# How many leading bytes of each format to keep before replacing the rest with garbage: enough
# to be sniffed as that format, so the decoder itself must meet the garbage.
_HEADER = {"jpeg": 4, "png": 16, "gif": 6, "webp": 16, "bmp": 2, "tiff": 4, "heic": 24, "avif": 24}


def corrupt(fmt: str, seed: int = 0) -> bytes:
    data = valid(fmt)
    rng = random.Random(seed)
    return data[: _HEADER[fmt]] + rng.randbytes(max(256, len(data) - _HEADER[fmt]))


def foreign_formats() -> dict[str, bytes]:
    """Formats Pillow (or a browser) knows but the service must refuse: never decoded."""
    small = corpus.photo(16, 16)
    out = {
        "eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
        b"/Times findfont 12 scalefont setfont 0 0 moveto (pwned) show showpage\n%%EOF\n",
        "eps_dos_binary": b"\xc5\xd0\xd3\xc6"
        + struct.pack("<IIIIII", 30, 40, 0, 0, 0, 0)
        + b"\xff\xff"
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
        "pdf": b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n",
        "psd": b"8BPS\x00\x01"
        + b"\x00" * 6
        + struct.pack(">HIIHH", 3, 16, 16, 8, 3)
        + b"\x00" * 64,
        "svg": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" '
        b'height="10"><script>alert(1)</script></svg>',
        "html_with_png": b"<html><script>alert(1)</script></html>" + valid("png"),
        "zip": b"PK\x03\x04" + b"\x00" * 26 + b"image.png" + valid("png"),
        "ppm": corpus.encode(small, "PPM"),
        "pcx": corpus.encode(small, "PCX"),
        "tga": corpus.encode(small, "TGA"),
        "ico": corpus.encode(small, "ICO"),
        "qoi": corpus.encode(small, "QOI"),
        "jpeg2000": b"\x00\x00\x00\x0cjP  \r\n\x87\n\x00\x00\x00\x14ftypjp2 " + b"\x00" * 64,
        "heif_unknown_brand": b"\x00\x00\x00\x18ftypcrx " + b"\x00" * 64,
    }
    return out


def payloads() -> list[Payload]:
    """Every file-level case: (kind, bytes, status, code)."""
    rng = random.Random(8)
    cases = [
        Payload("png_claims_100000x100000", png_claiming(100_000, 100_000), 413, "too_large"),
        Payload("png_real_10000x10000", png_real(10_000, 10_000), 413, "too_large", "image/png"),
        Payload("gif_claims_65535x65535", gif_claiming(65_535, 65_535), 413, "too_large"),
        Payload("bmp_claims_100000x100000", bmp_claiming(100_000, 100_000), 413, "too_large"),
        Payload("tiff_claims_100000x100000", tiff_claiming(100_000, 100_000), 413, "too_large"),
        Payload("jpeg_claims_65500x65500", jpeg_claiming(65_500, 65_500), 413, "too_large"),
        Payload("png_ztxt_bomb_64MB", png_text_bomb(), 422, "undecodable_image", "image/png"),
        Payload("jpeg_last_scan_3000_times", jpeg_scan_bomb(), 422, "undecodable_image"),
        Payload("png_side_over_limit_1x20001", png_claiming(1, 20_001), 413, "too_large"),
        Payload("png_claims_0x0", png_claiming(0, 0), 422, "undecodable_image"),
        Payload("random_bytes", rng.randbytes(4096), 415, "unsupported_media_type"),
        Payload("text_as_image", b"hello world\n" * 10, 415, "unsupported_media_type"),
    ]
    for fmt in ALLOWLISTED:
        cases.append(Payload(f"truncated_{fmt}", truncated(fmt), 422, "undecodable_image"))
        cases.append(Payload(f"corrupt_{fmt}", corrupt(fmt), 422, "undecodable_image"))
    for kind, data in foreign_formats().items():
        cases.append(Payload(f"foreign_{kind}", data, 415, "unsupported_media_type"))
    return cases


def nasty_but_valid() -> list[Payload]:
    """Awkward inputs that are still images: answered 200 quickly, first frame only."""
    tiff = valid("tiff")
    gifar = valid("gif") + b"PK\x03\x04" + b"\x00" * 26 + b"Evil.class" + b"\xca\xfe\xba\xbe"
    return [
        Payload("gif_3000_frames", gif_frames(3000), 200, None, "image/gif"),
        Payload("png_1x20000", png_real(1, 20_000), 200, None, "image/png"),
        Payload("png_20000x2", png_real(20_000, 2), 200, None, "image/png"),
        Payload("png_1x1", png_real(1, 1), 200, None, "image/png"),
        Payload("tiff_sent_as_jpeg", tiff, 200, None, "image/jpeg"),
        Payload("polyglot_gif_plus_jar", gifar, 200, None, "image/gif"),
        Payload("png_with_trailing_html", valid("png") + b"<script>alert(1)</script>", 200, None),
    ]


def seeds() -> list[bytes]:
    """Fuzzing seeds: small valid images of every format and every hostile payload."""
    good = [valid(fmt) for fmt in ALLOWLISTED]
    good += [corpus.encode(corpus.digit(7, 40), "PNG"), corpus.with_orientation(corpus.photo(), 6)]
    bad = [p.data for p in payloads() if len(p.data) < 64 * 1024]
    return good + bad
