"""Write fuzz/regressions/: inputs at the edges where the image intake once failed or nearly did.

    .venv/bin/python fuzz/make_regressions.py

Deterministic: rerunning writes the same bytes. tests/test_fuzz_images.py replays every file
through the harness's property (fuzz_images.check) on each run.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parent / "regressions"


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def grey_png(
    width: int, height: int, scanlines: bytes, crc_ok: bool = True, tail: bytes = b""
) -> bytes:
    ihdr = chunk(b"IHDR", struct.pack(">II", width, height) + bytes((8, 0, 0, 0, 0)))
    idat = chunk(b"IDAT", zlib.compress(scanlines) + tail)
    if not crc_ok:
        idat = idat[:-4] + bytes(4)
    return b"\x89PNG\r\n\x1a\n" + ihdr + idat + chunk(b"IEND", b"")


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def digit_stroke() -> np.ndarray:
    """A '1'-like stroke, 0/255, cropped tight: black ink on white touching every edge."""
    a = np.full((20, 6), 255, np.uint8)
    a[:, 2:4] = 0
    a[0:3, 0:3] = 0
    return a


def files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    lines = b"".join(
        bytes([f]) + rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
        for f in range(5)
        for _ in range(4)
    )
    return {
        # Issue 28: a tight two-level crop was normalised into an all-black input.
        "digit_two_level_tight_crop.png": png(digit_stroke()),
        "digit_tight_crop_white_on_black.png": png(255 - digit_stroke()),
        # The grey PNG route (images.grey_png) and its C unfilter: every filter type, then
        # what it must leave to Pillow.
        "grey_png_every_filter.png": grey_png(16, 20, lines),
        "grey_png_bad_crc.png": grey_png(16, 20, lines, crc_ok=False),
        "grey_png_filter_type_5.png": grey_png(16, 1, bytes([5]) + bytes(16)),
        "grey_png_data_after_zlib_end.png": grey_png(16, 20, lines, tail=b"\x00garbage"),
        "grey_png_stream_one_line_short.png": grey_png(16, 20, lines[:-17]),
        "grey_png_1x1.png": grey_png(1, 1, b"\x00\x80"),
        # Headers that claim more than the file holds.
        "png_claims_0x0.png": grey_png(0, 0, b""),
        "png_claims_100000x100000.png": grey_png(100_000, 100_000, b"\x00"),
    }


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, data in files().items():
        (OUT / name).write_bytes(data)
    print(f"wrote {len(files())} files to {OUT}")


if __name__ == "__main__":
    main()
