"""images.grey_png, the route around Pillow for plain 8-bit greyscale PNGs, answers only what
Pillow answers: the same pixels whenever it takes an image, and every other image (other layouts,
extra chunks, broken files) left to Pillow, whose pixels and errors then hold."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from service import images
from service.errors import TooLarge, UndecodableImage
from tests import corpus
from training.recipes import MNIST

LIMITS = images.Limits()
DIGIT = MNIST.preprocessing

pytestmark = pytest.mark.skipif(
    images.unfilter_png is None, reason="service._digit was not built: every PNG takes Pillow"
)


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(
    width: int,
    height: int,
    scanlines: bytes,
    layout: tuple[int, ...] = (8, 0, 0, 0, 0),
    extra: list[bytes] = (),
    idat_parts: int = 1,
) -> bytes:
    """A PNG from raw scanlines (filter byte + pixels each), `extra` chunks before the image
    data, the zlib stream split over `idat_parts` IDAT chunks."""
    stream = zlib.compress(scanlines)
    step = -(-len(stream) // idat_parts)
    idats = [chunk(b"IDAT", stream[i : i + step]) for i in range(0, len(stream), step)]
    ihdr = chunk(b"IHDR", struct.pack(">II", width, height) + bytes(layout))
    return b"\x89PNG\r\n\x1a\n" + ihdr + b"".join(extra) + b"".join(idats) + chunk(b"IEND", b"")


def pillow_pixels(data: bytes) -> tuple[int, int, bytes]:
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.mode == "L"
    return img.width, img.height, img.tobytes()


def general_route(data: bytes) -> np.ndarray:
    draft = images.DRAFT_FACTOR["mnist_digit"] * 32
    return images.preprocess(images.decode(data, LIMITS, draft_size=draft), DIGIT)


def random_scanlines(rng: np.random.Generator, width: int, height: int) -> bytes:
    """Any bytes after a defined filter type are valid filtered data: every filter, every
    wrap-around of its arithmetic."""
    lines = rng.integers(0, 256, (height, width + 1), dtype=np.uint8)
    lines[:, 0] = rng.integers(0, 5, height)
    return lines.tobytes()


def test_pillow_written_digits_of_every_size_take_the_route_and_match():
    rng = np.random.default_rng(20261207)
    for i in range(120):
        w, h = (int(v) for v in rng.integers(1, images.DIGIT_WORK_SIDE + 1, 2))
        img = Image.new("L", (w, h), int(rng.integers(0, 256)))
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            draw.line([tuple(int(v) for v in rng.integers(0, max(w, h), 2)) for _ in range(3)],
                      fill=int(rng.integers(0, 256)), width=int(rng.integers(1, 6)))  # fmt: skip
        if i % 3 == 0:  # noise: every filter type Pillow's encoder picks
            noise = rng.integers(0, 40, (h, w))
            img = Image.fromarray(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8))
        data = corpus.encode(img, "PNG")
        assert images.grey_png(data, images.DIGIT_WORK_SIDE) == (w, h, img.tobytes()), (w, h)
        got = images.load(data, DIGIT, LIMITS)
        assert got.tobytes() == general_route(data).tobytes(), (w, h)


def test_every_filter_type_and_split_image_data_match_pillow():
    rng = np.random.default_rng(7)
    for w, h in [(1, 1), (1, 9), (9, 1), (28, 28), (31, 17), (256, 256)]:
        for parts in (1, 3):
            data = png(w, h, random_scanlines(rng, w, h), idat_parts=parts)
            assert images.grey_png(data, 256) == pillow_pixels(data), (w, h, parts)


def _rotated_by_exif() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return chunk(b"eXIf", exif.tobytes())


PLAIN = (8, 0, 0, 0, 0)
# name -> (width, height, layout, extra chunks, how the file is changed afterwards)
LEFT_TO_PILLOW = {
    "16-bit": (8, 8, (16, 0, 0, 0, 0), [], None),
    "rgb": (8, 8, (8, 2, 0, 0, 0), [], None),
    "palette": (8, 8, (8, 3, 0, 0, 0), [chunk(b"PLTE", bytes(range(256)) * 3)], None),
    "grey+alpha": (8, 8, (8, 4, 0, 0, 0), [], None),
    "interlaced": (8, 8, (8, 0, 0, 0, 1), [], None),
    "colour key": (8, 8, PLAIN, [chunk(b"tRNS", b"\x00\x00")], None),
    "exif rotation": (8, 4, PLAIN, [_rotated_by_exif()], None),
    "text": (8, 8, PLAIN, [chunk(b"tEXt", b"Comment\x00hello")], None),
    "physical size": (8, 8, PLAIN, [chunk(b"pHYs", bytes(9))], None),
    "past the working side": (257, 3, PLAIN, [], None),
    "bad IHDR crc": (8, 8, PLAIN, [], lambda d: d[:29] + bytes([d[29] ^ 1]) + d[30:]),
    "bad IEND crc": (8, 8, PLAIN, [], lambda d: d[:-1] + bytes([d[-1] ^ 1])),
    "data after IEND": (8, 8, PLAIN, [], lambda d: d + b"\x00"),
    "no IEND": (8, 8, PLAIN, [], lambda d: d[:-12]),
    "cut short": (8, 8, PLAIN, [], lambda d: d[: len(d) // 2]),
}


@pytest.mark.parametrize("name", sorted(LEFT_TO_PILLOW))
def test_anything_but_a_plain_greyscale_png_is_left_to_pillow(name):
    width, height, layout, extra, change = LEFT_TO_PILLOW[name]
    samples = 3 if layout[1] == 2 else 2 if layout[1] == 4 else 1
    lines = b"".join(
        b"\x00" + bytes(i % 256 for i in range(width * samples * layout[0] // 8))
        for _ in range(height)
    )
    data = png(width, height, lines, layout, extra)
    data = change(data) if change else data
    assert images.grey_png(data, images.DIGIT_WORK_SIDE) is None


@pytest.mark.parametrize(
    "scanlines",
    [
        pytest.param(b"\x00" * 9 * 7, id="fewer lines"),
        pytest.param(b"\x00" * 9 * 9, id="more lines"),
        pytest.param(b"\x05" + bytes(8) + b"\x00" * 9 * 7, id="filter type 5"),
    ],
)
def test_image_data_that_is_not_exactly_the_lines_is_left_to_pillow(scanlines):
    assert images.grey_png(png(8, 8, scanlines), 256) is None


def test_a_zlib_stream_with_data_after_its_end_is_left_to_pillow():
    stream = zlib.compress(b"\x00" * 9 * 8) + b"junk"
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, *PLAIN))
    data += chunk(b"IDAT", stream) + chunk(b"IEND", b"")
    assert images.grey_png(data, 256) is None


def test_what_pillow_then_does_still_holds():
    # A rotated digit is turned upright, a broken header refused, as on the general route.
    lines = b"".join(b"\x00" + bytes([255 * (x == 1) for x in range(8)]) for _ in range(4))
    rotated = png(8, 4, lines, extra=[_rotated_by_exif()])
    assert images.load(rotated, DIGIT, LIMITS).tobytes() == general_route(rotated).tobytes()
    upright = png(8, 4, lines)
    assert (
        images.load(rotated, DIGIT, LIMITS).tobytes()
        != images.load(upright, DIGIT, LIMITS).tobytes()
    )
    _, _, _, _, change = LEFT_TO_PILLOW["bad IHDR crc"]
    with pytest.raises(UndecodableImage):
        images.load(change(upright), DIGIT, LIMITS)


def test_the_limits_and_the_request_budget_hold_on_the_route():
    data = corpus.encode(Image.new("L", (28, 28), 0), "PNG")
    with pytest.raises(TooLarge):
        images.load(data, DIGIT, images.Limits(max_pixels=28 * 28 - 1))
    with pytest.raises(TooLarge):
        images.load(data, DIGIT, images.Limits(max_side=27))
    budget = images.PixelBudget(images.Limits(max_request_pixels=28 * 28 * 2))
    images.load(data, DIGIT, LIMITS, budget)
    images.load(data, DIGIT, LIMITS, budget)
    with pytest.raises(TooLarge):
        images.load(data, DIGIT, LIMITS, budget)


def test_without_the_c_steps_every_png_takes_pillow(monkeypatch):
    data = corpus.encode(Image.new("L", (28, 28), 0), "PNG")
    monkeypatch.setattr(images, "unfilter_png", None)
    assert images.grey_png(data, 256) is None


@settings(max_examples=300, deadline=None)
@given(
    width=st.integers(1, 40),
    height=st.integers(1, 40),
    layout=st.sampled_from(
        [PLAIN, PLAIN, PLAIN, (8, 0, 0, 0, 1), (16, 0, 0, 0, 0), (8, 4, 0, 0, 0)]
    ),
    extra=st.sampled_from([[], [], [chunk(b"tRNS", b"\x00\x07")], [chunk(b"gAMA", bytes(4))]]),
    lines_delta=st.integers(-2, 2),
    parts=st.integers(1, 3),
    data=st.data(),
)
def test_whatever_the_route_answers_pillow_answers_the_same(
    width, height, layout, extra, lines_delta, parts, data
):
    samples = 2 if layout[1] == 4 else 1
    row = 1 + width * samples * layout[0] // 8
    size = max(0, (height + lines_delta) * row)
    lines = data.draw(st.binary(min_size=size, max_size=size))
    lines = bytes(b if i % row else b % 6 for i, b in enumerate(lines))  # filter types 0..5
    image = png(width, height, lines, layout, extra, idat_parts=parts)
    if data.draw(st.booleans()):  # one byte anywhere changed, its chunk's CRC left as it was
        at = data.draw(st.integers(8, len(image) - 1))
        image = image[:at] + bytes([image[at] ^ data.draw(st.integers(1, 255))]) + image[at + 1 :]
    found = images.grey_png(image, images.DIGIT_WORK_SIDE)
    if found is not None:
        assert found == pillow_pixels(image)
    plain = layout == PLAIN and not extra and lines_delta == 0 and max(lines[::row] or b"\x00") < 5
    if plain and image == png(width, height, lines, layout, extra, idat_parts=parts):
        assert found is not None  # a valid plain PNG is never sent round
