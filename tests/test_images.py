"""Image intake: formats, EXIF, modes, alpha, resize policy and MNIST-style digit normalisation."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from service import images
from service.errors import TooLarge, UndecodableImage, UnsupportedMediaType
from tests import corpus, hostile_corpus
from training.recipes import MNIST, SCENES

LIMITS = images.Limits()
# The specs as training exports them into each model's metadata.
RGB = SCENES.preprocessing
DIGIT = MNIST.preprocessing


@pytest.fixture(scope="module", autouse=True)
def plugins():
    images.register_plugins()


@pytest.mark.parametrize("fmt", sorted(corpus.FORMATS))
def test_every_format_decodes_to_the_same_picture(fmt):
    reference = images.load(corpus.encode(corpus.photo(), "PNG"), RGB, LIMITS)
    data, _ = corpus.in_format(corpus.photo(), fmt)
    got = images.load(data, RGB, LIMITS)
    assert got.shape == (32, 32, 3) and got.dtype == np.float32
    # Lossy formats and GIF's palette differ a little, never wholesale.
    assert np.abs(got - reference).mean() < 0.05


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(orientation):
    upright = images.load(corpus.with_orientation(corpus.photo(48, 48), 1), RGB, LIMITS)
    rotated = images.load(corpus.with_orientation(corpus.photo(48, 48), orientation), RGB, LIMITS)
    assert np.abs(rotated - upright).mean() < 0.03
    assert rotated[1, 1, 0] > 0.8 and rotated[1, 1, 1] < 0.3  # the red block is back top-left


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_orientation_is_applied_in_every_container_that_carries_it(fmt):
    rotated = images.load(corpus.with_orientation(corpus.photo(48, 48), 6, fmt), RGB, LIMITS)
    assert rotated[1, 1, 0] > 0.8 and rotated[1, 1, 1] < 0.3


def test_xmp_orientation_is_applied():
    stored = corpus.photo(48, 48).transpose(Image.Transpose.ROTATE_90)
    xmp = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
        b'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    )
    rotated = images.load(corpus.encode(stored, "JPEG", quality=95, xmp=xmp), RGB, LIMITS)
    assert rotated[1, 1, 0] > 0.8 and rotated[1, 1, 1] < 0.3


def test_transparent_png_is_composited_onto_white_not_black():
    img = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    ImageDraw.Draw(img).rectangle([10, 10, 29, 29], fill=(0, 0, 255, 255))
    got = images.load(corpus.encode(img, "PNG"), RGB, LIMITS)
    assert got[0, 0].tolist() == [1.0, 1.0, 1.0]
    assert got[16, 16].tolist() == [0.0, 0.0, 1.0]


def test_palette_with_transparency_and_greyscale_alpha():
    p = Image.new("P", (20, 20), 0)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.info["transparency"] = 0
    ImageDraw.Draw(p).rectangle([5, 5, 14, 14], fill=1)
    got = images.load(corpus.encode(p, "PNG", transparency=0), RGB, LIMITS)
    assert got[0, 0].tolist() == [1.0, 1.0, 1.0] and got[16, 16].tolist() == [1.0, 0.0, 0.0]
    la = Image.new("LA", (20, 20), (0, 0))
    got = images.load(corpus.encode(la, "PNG"), RGB, LIMITS)
    assert got.min() == 1.0


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_a_colour_key_is_transparency_too(mode):
    # PNG's tRNS chunk on an RGB or greyscale image: the keyed colour is transparent, as a
    # browser shows it, and goes onto the background like an alpha channel would.
    img = Image.new("RGB", (40, 40), (0, 0, 0))
    ImageDraw.Draw(img).rectangle([10, 10, 29, 29], fill=(0, 0, 255))
    img = img.convert(mode)
    key = (0, 0, 0) if mode == "RGB" else 0
    got = images.load(corpus.encode(img, "PNG", transparency=key), RGB, LIMITS)
    as_rgba = images.load(corpus.encode(img.convert("RGBA"), "PNG"), RGB, LIMITS)
    assert got[0, 0].tolist() == [1.0, 1.0, 1.0]
    assert np.abs(got[16, 16] - as_rgba[16, 16]).max() == 0


def _png_16_bit(rows: list[bytes], colour: bool, key: bytes) -> bytes:
    """An 8x8 16-bit grey or RGB PNG with a tRNS colour key (Pillow writes neither)."""
    ihdr = struct.pack(">IIBBBBB", 8, 8, 16, 2 if colour else 0, 0, 0, 0)
    idat = zlib.compress(b"".join(b"\x00" + row for row in rows))
    chunks = ((b"IHDR", ihdr), (b"tRNS", key), (b"IDAT", idat), (b"IEND", b""))
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        for kind, body in chunks
    )


@pytest.mark.parametrize("colour", [False, True], ids=["grey", "rgb"])
def test_a_16_bit_colour_key_is_transparency_too(colour):
    # Top half the keyed 0x8000, bottom half 0x2000: the key goes onto white, the rest stays.
    per_pixel = 3 if colour else 1
    rows = [b"\x80\x00" * 8 * per_pixel] * 4 + [b"\x20\x00" * 8 * per_pixel] * 4
    data = _png_16_bit(rows, colour, b"\x80\x00" * per_pixel)
    got = images.load(data, {**RGB, "height": 8, "width": 8}, LIMITS)
    assert got[:4].min() == 1.0
    assert got[4:].max() == pytest.approx(0x20 / 255)
    if not colour:  # grey keeps its 16 bits: 0x80ff is not the key 0x8000
        near = _png_16_bit([b"\x80\xff" * 8] * 8, colour, b"\x80\x00")
        assert images.load(near, {**RGB, "height": 8, "width": 8}, LIMITS).max() < 0.6


def test_a_large_transparent_digit_keeps_its_ink():
    # 4000x4000 white strokes on transparent: the background tone is judged on a reduced copy
    # (at full size it took 256 MB of floats), and still comes out black under white ink, as for
    # the same drawing at 250 px.
    rgba = Image.new("RGBA", (4000, 4000), (255, 255, 255, 0))
    ImageDraw.Draw(rgba).line([(1100, 900), (2900, 900), (1700, 3300)], fill="white", width=300)
    got = images.load(corpus.encode(rgba, "PNG"), DIGIT, LIMITS)
    small = images.load(corpus.encode(rgba.resize((250, 250), Image.BOX), "PNG"), DIGIT, LIMITS)
    assert got.max() > 0.9 and got[0, 0, 0] == 0
    assert np.abs(got - small).mean() < 0.02


@pytest.mark.parametrize("spec", [RGB, DIGIT], ids=["scenes", "mnist"])
def test_a_cielab_tiff_is_converted_through_rgb(spec):
    # Pillow opens CIELab TIFFs as mode LAB and converts LAB to RGB only (LAB -> L raises).
    photo = corpus.photo(48, 48)
    lab = Image.frombytes("LAB", photo.size, _to_lab(photo))
    buf = io.BytesIO()
    lab.save(buf, "TIFF")
    assert Image.open(io.BytesIO(buf.getvalue())).mode == "LAB"
    got = images.load(buf.getvalue(), spec, LIMITS)
    want = images.load(corpus.encode(lab.convert("RGB"), "PNG"), spec, LIMITS)
    assert got.tobytes() == want.tobytes()


def _to_lab(img: Image.Image) -> bytes:
    from PIL import ImageCms

    transform = ImageCms.buildTransform(
        ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB"
    )
    return ImageCms.applyTransform(img.convert("RGB"), transform).tobytes()


@pytest.mark.parametrize("spec", [RGB, DIGIT], ids=["scenes", "mnist"])
def test_a_tiff_with_associated_alpha_is_composited_like_any_alpha(spec):
    # Grey + premultiplied alpha (TIFF ExtraSamples = 1) opens as Pillow's mode La, which Pillow
    # converts to LA only; it gave a 500.
    la = Image.new("LA", (40, 40), (0, 0))
    ImageDraw.Draw(la).rectangle([10, 10, 29, 29], fill=(200, 255))
    tiff = bytearray(corpus.encode(la, "TIFF"))
    ifd = struct.unpack("<I", tiff[4:8])[0]
    for i in range(struct.unpack("<H", tiff[ifd : ifd + 2])[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack("<H", tiff[entry : entry + 2])[0] == 338:  # ExtraSamples
            tiff[entry + 8 : entry + 10] = struct.pack("<H", 1)  # associated alpha
    assert Image.open(io.BytesIO(bytes(tiff))).mode == "La"
    got = images.load(bytes(tiff), spec, LIMITS)
    assert got.tobytes() == images.load(corpus.encode(la, "PNG"), spec, LIMITS).tobytes()


def test_an_image_pillow_cannot_convert_is_undecodable_not_a_500(monkeypatch):
    def cannot(*args):
        raise ValueError("conversion from XY to L not supported")

    monkeypatch.setattr(images, "to_mode", cannot)
    with pytest.raises(UndecodableImage, match="could not be converted"):
        images.load(corpus.encode(corpus.photo(), "PNG"), RGB, LIMITS)


def test_an_avif_that_names_the_generic_brand_first_is_still_avif():
    # The ftyp box may give `mif1` as the major brand and `avif` only among the compatible
    # ones; the HEVC-only HEIF decoder cannot read it, so it must go to the AVIF decoder.
    data = corpus.encode(corpus.photo(), "AVIF", quality=95)
    assert data[4:12] == b"ftypavif" and b"avif" in data[16:32]
    generic = data[:8] + b"mif1" + data[12:]
    reference = images.load(data, RGB, LIMITS)
    assert images.load(generic, RGB, LIMITS).tobytes() == reference.tobytes()


def test_one_request_decodes_at_most_its_pixel_budget():
    limits = images.Limits(max_request_pixels=3 * 64 * 48)
    budget = images.PixelBudget(limits)
    png = corpus.encode(corpus.photo(64, 48), "PNG")
    for _ in range(3):
        images.load(png, RGB, limits, budget)
    with pytest.raises(TooLarge, match="more than 9216 pixels together"):
        images.load(png, RGB, limits, budget)
    # A fresh request has its own budget.
    images.load(png, RGB, limits, images.PixelBudget(limits))


def test_a_jpeg_spends_its_reduced_size_from_the_budget():
    # 16 phone photos in one request fit: each decodes at 1/8 (DCT scaling), not at 12 MP.
    photo = corpus.encode(corpus.photo(64, 48).resize((4000, 3000)), "JPEG", quality=80)
    budget = images.PixelBudget(images.Limits())
    for _ in range(16):
        images.load(photo, RGB, LIMITS, budget)
    assert LIMITS.max_request_pixels - budget.left == 16 * 500 * 375


def test_an_mpo_is_drafted_like_any_jpeg():
    # A JPEG with an MPF segment (many phones write one) opens as Pillow's MPO, still a JPEG.
    big = corpus.photo(64, 48).resize((4000, 3000))
    mpo = corpus.encode(big, "MPO", save_all=True, append_images=[big.resize((400, 300))])
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    assert images.decode(mpo, LIMITS, draft_size=128).size == (500, 375)
    budget = images.PixelBudget(LIMITS)
    images.load(mpo, RGB, LIMITS, budget)
    # Its reduced size, and one more scan (the cheap count sees the second image's) at 1/64.
    assert LIMITS.max_request_pixels - budget.left == 2 * 500 * 375


def test_a_48_mp_phone_jpeg_is_limited_at_its_reduced_size():
    # 8064x6048 passes the 40 MP limit at 1/8 a side; without DCT scaling, or progressive
    # (whose decoder holds the full size's coefficients), it does not.
    img = corpus.photo(64, 48).resize((8064, 6048))
    data = corpus.encode(img, "JPEG", quality=85)
    assert images.decode(data, LIMITS, draft_size=128).size == (1008, 756)
    assert images.load(data, RGB, LIMITS).shape == (32, 32, 3)
    with pytest.raises(TooLarge):
        images.decode(data, LIMITS)
    with pytest.raises(TooLarge):
        images.load(corpus.encode(img, "JPEG", quality=85, progressive=True), RGB, LIMITS)
    with pytest.raises(TooLarge):  # past 4x the limit from its header alone
        small = images.Limits(max_pixels=1_000_000)
        images.load(hostile_corpus.jpeg_claiming(2100, 2000), RGB, small)


def test_a_jpeg_with_too_many_scans_is_refused_before_decoding():
    # Each repeat of the last scan makes libjpeg read the whole image again (minutes at 36 MP).
    data = hostile_corpus.jpeg_scan_bomb(side=64, repeats=200)
    with pytest.raises(UndecodableImage, match="more than 100 scans"):
        images.load(data, RGB, LIMITS)
    # 0xFFDA outside the first image's scans (a motion photo's trailing video) is not a scan.
    photo = corpus.encode(corpus.photo(), "JPEG", progressive=True)
    assert images.load(photo + b"\xff\xda\x00" * 500, RGB, LIMITS).shape == (32, 32, 3)


def test_each_scan_of_a_jpeg_is_spent_from_the_budget():
    # Every scan is read at full size: 50 scans of 4000x4000 cost more than 50 decodes at 1/8.
    data = hostile_corpus.jpeg_scan_bomb(side=4000, repeats=44)
    budget = images.PixelBudget(LIMITS)
    images.load(data, RGB, LIMITS, budget)
    assert LIMITS.max_request_pixels - budget.left == 500 * 500 + 49 * 4000 * 4000 // 64


def test_16_bit_greyscale_is_scaled_not_clipped():
    arr = np.full((20, 20), 32768, np.uint16)  # mid grey in 16 bits
    got = images.load(corpus.encode(Image.fromarray(arr), "PNG"), RGB, LIMITS)
    assert got.mean() == pytest.approx(0.5, abs=0.01)


def test_cmyk_jpeg_becomes_the_right_colour():
    cmyk = Image.new("CMYK", (20, 20), (0, 255, 255, 0))  # pure red in CMYK
    got = images.load(corpus.encode(cmyk, "JPEG", quality=95), RGB, LIMITS)
    assert got[..., 0].mean() > 0.9 and got[..., 1].mean() < 0.15


def test_gif_first_frame_only():
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "blue", "green")]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    got = images.load(buf.getvalue(), RGB, LIMITS)
    assert got[..., 0].mean() > 0.9 and got[..., 2].mean() < 0.1


def test_center_crop_keeps_aspect_ratio():
    # A wide image: left and right thirds black, centre white. The crop keeps only the centre.
    img = Image.new("RGB", (300, 100), "black")
    ImageDraw.Draw(img).rectangle([100, 0, 199, 99], fill="white")
    got = images.load(corpus.encode(img, "PNG"), RGB, LIMITS)
    assert got.mean() > 0.97


@pytest.mark.parametrize("offset", [0.0, -0.5])
def test_pixels_are_scaled_exactly_as_the_metadata_says(offset):
    # Every byte value, at the input's own size (the resize is then the identity): the input is
    # pixel * scale + offset computed in float32, bit for bit, with or without an offset.
    pixels = np.arange(32 * 32 * 3, dtype=np.uint32).astype(np.uint8).reshape(32, 32, 3)
    spec = {**RGB, "offset": offset}
    got = images.load(corpus.encode(Image.fromarray(pixels), "PNG"), spec, LIMITS)
    want = pixels.astype(np.float32) * np.float32(spec["scale"]) + np.float32(offset)
    assert got.dtype == np.float32 and got.shape == (32, 32, 3)
    assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("offset", [0.0, -0.5])
def test_a_digit_is_scaled_exactly_as_the_metadata_says(offset):
    # The digit kernel writes the floats itself: they are its placed bytes * scale + offset in
    # float32, bit for bit, as numpy computes them for photos.
    digit = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(digit).line([(8, 6), (20, 6), (12, 23)], fill=255, width=2)
    spec = {**DIGIT, "offset": offset}
    got = images.load(corpus.encode(digit, "PNG"), spec, LIMITS)
    placed = np.frombuffer(
        images.normalize_digit(digit.tobytes(), 28, 28, 20, 28, 32, 32), np.uint8
    ).reshape(32, 32, 1)
    want = placed.astype(np.float32) * np.float32(spec["scale"]) + np.float32(offset)
    assert got.dtype == np.float32 and got.shape == (32, 32, 1)
    assert len(np.unique(placed)) > 10  # grey levels from the resize, not just ink and paper
    assert got.tobytes() == want.tobytes()


def test_large_jpeg_photo_is_resized_with_antialiasing():
    # Fine stripes alias into bands without a low-pass filter; with one they average to grey.
    arr = np.zeros((2400, 3200, 3), np.uint8)
    arr[:, ::2] = 255
    got = images.load(corpus.encode(Image.fromarray(arr), "PNG"), RGB, LIMITS)
    assert got.std() < 0.05 and got.mean() == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize(
    ("spec", "size"), [(RGB, (1024, 768)), (RGB, (4032, 3024)), (MNIST.preprocessing, (1200, 1200))]
)
def test_drafted_jpeg_decode_matches_a_full_decode(spec, size):
    # DCT scaling decodes a big JPEG at 1/2..1/8 size; the model must barely see the difference.
    # Measured: 1024x768 max 1/255 (mean 0.13/255); 12 MP 4/255; the digit (8x) 5/255, where 4x
    # would give 34/255.
    if spec["resize"] == "mnist_digit":
        img = corpus.digit(4, size=size[1]).convert("RGB")
    else:
        img = corpus.photo(*size).filter(ImageFilter.GaussianBlur(1))
    data = corpus.encode(img, "JPEG", quality=92)
    draft = images.DRAFT_FACTOR[spec["resize"]] * 32
    assert max(images.decode(data, LIMITS, draft_size=draft).size) < max(size)  # it did scale
    drafted = images.load(data, spec, LIMITS)
    full = images.preprocess(images.decode(data, LIMITS), spec)
    assert np.abs(drafted - full).max() <= 5 / 255 and np.abs(drafted - full).mean() < 0.25 / 255


def _com(arr: np.ndarray) -> tuple[float, float]:
    a = arr[..., 0]
    ys, xs = np.mgrid[0 : a.shape[0], 0 : a.shape[1]]
    return float((ys * a).sum() / a.sum()), float((xs * a).sum() / a.sum())


@pytest.mark.parametrize(
    "source",
    [
        "paper",
        "small",
        "canvas_transparent",
        "white_ink_on_transparent",
        "sheet_with_transparent_margin",
        "mnist",
    ],
)
def test_digit_is_normalised_like_mnist(source):
    if source == "paper":  # dark ink on white paper, large, off-centre
        img = Image.new("L", (600, 400), 235)
        img.paste(corpus.digit(7, 200).convert("L"), (20, 150))
        data = corpus.encode(img, "JPEG")
    elif source == "small":
        data = corpus.encode(corpus.digit(7, 40), "PNG")
    elif source == "canvas_transparent":
        rgba = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
        ImageDraw.Draw(rgba).line([(80, 60), (200, 60), (120, 230)], fill=(0, 0, 0, 255), width=22)
        data = corpus.encode(rgba, "PNG")
    elif source == "white_ink_on_transparent":
        rgba = Image.new("RGBA", (280, 280), (255, 255, 255, 0))
        ImageDraw.Draw(rgba).line([(80, 60), (200, 60), (120, 230)], fill="white", width=22)
        data = corpus.encode(rgba, "PNG")
    elif source == "sheet_with_transparent_margin":  # the margin is paper, not the ink's colour
        rgba = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
        ImageDraw.Draw(rgba).rectangle([4, 4, 275, 275], fill="white")
        ImageDraw.Draw(rgba).line([(80, 60), (200, 60), (120, 230)], fill="black", width=22)
        data = corpus.encode(rgba, "PNG")
    else:
        data = corpus.encode(corpus.mnist_like(7), "PNG")
    got = images.load(data, DIGIT, LIMITS)
    assert got.shape == (32, 32, 1)
    ink = got[..., 0] > 0.2
    rows, cols = np.nonzero(ink)
    # Bright ink on black, in a box of at most 20x20 (+antialiasing), inside the 2-px padding.
    assert got[0].max() == 0 and got[:, 0].max() == 0
    assert got.max() > 0.9 and got.mean() < 0.3
    assert max(rows.max() - rows.min(), cols.max() - cols.min()) in range(17, 22)
    cy, cx = _com(got)
    assert abs(cy - 16) < 1.0 and abs(cx - 16) < 1.0


def test_blank_canvas_is_a_black_input():
    got = images.load(corpus.encode(Image.new("RGB", (100, 100), "white"), "PNG"), DIGIT, LIMITS)
    assert got.max() == 0


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", UndecodableImage),
        (b"hello world, not an image", UnsupportedMediaType),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", UnsupportedMediaType),
        (b"8BPS" + b"\x00" * 40, UnsupportedMediaType),  # PSD
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, UndecodableImage),
    ],
    ids=["empty", "text", "eps", "psd", "broken-png"],
)
def test_rejections(data, error):
    with pytest.raises(error):
        images.load(data, RGB, LIMITS)


def test_truncated_files_of_each_format_are_rejected():
    for name in corpus.FORMATS:
        data, _ = corpus.in_format(corpus.photo(200, 150), name)
        with pytest.raises((UndecodableImage, UnsupportedMediaType)):
            images.load(data[: len(data) // 3], RGB, LIMITS)


def test_pixel_bomb_is_refused_before_decoding():
    # A valid PNG header claiming 100000 x 100000 pixels: refused from the header alone.
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(TooLarge):
        images.load(png, RGB, LIMITS)
