"""service/_digit.c returns exactly what its reference in service/images.py returns.

The C normalisation serves every digit request, so it is compared with the reference (numpy for
finding and placing the ink, Pillow for the resize) byte for byte on generated digits (every tone
of paper and ink, noise, shadows, every shape from 1x1 to 256x256), on arbitrary bytes
(hypothesis), on real MNIST digits when ../shared/data is there, and on the error cases, where both
must refuse the same inputs. Its resize is compared with Pillow's on every kind of shape change.
A build with AddressSanitizer and UBSan checks every memory access the C makes on thousands of
random images.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from service import images

try:
    from service import _digit
except ImportError:  # built without a compiler: only the first test speaks, the rest skip
    _digit = None

needs_c = pytest.mark.skipif(_digit is None, reason="service._digit was not built (no compiler)")
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DIGIT = {"box_size": 20, "canvas_size": 28}


def compiler_found() -> bool:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) is not None


@pytest.mark.skipif(not compiler_found(), reason="no C compiler: pip install used numpy only")
def test_the_installed_service_uses_the_c_steps():
    # With a compiler, pip install builds the extension (a silent fallback costs req/s: README).
    from service import _digit

    assert images.normalize_digit is _digit.normalize_digit


def drawn_digit(rng: np.random.Generator) -> Image.Image:
    """Strokes of one tone on paper of another, sometimes with noise or a shadow gradient."""
    w, h = (int(v) for v in rng.integers(1, 257, 2))
    paper = int(rng.integers(0, 256))
    contrast = int(rng.integers(0, 256)) if rng.random() < 0.1 else int(rng.integers(48, 256))
    ink = paper - contrast if paper > 127 else paper + contrast  # clipped below
    img = Image.new("L", (w, h), paper)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 5)) if rng.random() < 0.95 else 0):
        points = [tuple(int(v) for v in rng.integers(-5, max(w, h) + 5, 2)) for _ in range(3)]
        draw.line(
            points,
            fill=min(max(ink, 0), 255),
            width=int(rng.integers(1, max(2, min(w, h) // 4) + 1)),
        )
    a = np.asarray(img, np.int16)
    if rng.random() < 0.3:
        a = a + rng.integers(-40, 41, a.shape)
    if rng.random() < 0.3:
        a = a + np.linspace(-60, 60, w)[None, :].astype(np.int16)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L")


def both_ways(img: Image.Image, monkeypatch: pytest.MonkeyPatch) -> tuple[np.ndarray, np.ndarray]:
    """mnist_digit with the C normalisation, then with the reference."""
    with monkeypatch.context() as m:
        m.setattr(images, "normalize_digit", _digit.normalize_digit)
        native = images.mnist_digit(img, 32, 32, DIGIT, 1 / 255)
    with monkeypatch.context() as m:
        m.setattr(images, "normalize_digit", images.normalize_digit_python)
        reference = images.mnist_digit(img, 32, 32, DIGIT, 1 / 255)
    return native, reference


@needs_c
def test_drawn_digits_of_every_tone_and_shape_match(monkeypatch):
    rng = np.random.default_rng(20261201)
    inked = 0
    for _ in range(1500):
        img = drawn_digit(rng)
        pixels = img.tobytes()
        found = _digit.find_ink(pixels, img.width, img.height)
        assert found == images.find_ink_python(pixels, img.width, img.height), img.size
        native, reference = both_ways(img, monkeypatch)
        np.testing.assert_array_equal(native, reference)
        inked += found is not None
    assert 900 < inked < 1500  # both digits and blank pages (seeded: 985 hold ink)


@needs_c
@settings(max_examples=300, deadline=None)
@given(width=st.integers(1, 40), height=st.integers(1, 40), data=st.data())
def test_find_ink_matches_on_arbitrary_pixels(width, height, data):
    pixels = data.draw(st.binary(min_size=width * height, max_size=width * height))
    assert _digit.find_ink(pixels, width, height) == images.find_ink_python(pixels, width, height)


@needs_c
@settings(max_examples=300, deadline=None)
@given(
    width=st.integers(1, 28),
    height=st.integers(1, 28),
    canvas=st.integers(28, 40),
    extra=st.tuples(st.integers(0, 9), st.integers(0, 9)),
    data=st.data(),
)
def test_place_digit_matches_on_arbitrary_pixels(width, height, canvas, extra, data):
    pixels = data.draw(st.binary(min_size=width * height, max_size=width * height))
    args = (pixels, width, height, canvas, canvas + extra[0], canvas + extra[1])
    assert _digit.place_digit(*args) == images.place_digit_python(*args)


def pillow_lanczos(pixels: bytes, width: int, height: int, out_width: int, out_height: int):
    img = Image.frombytes("L", (width, height), pixels)
    return img.resize((out_width, out_height), Image.Resampling.LANCZOS).tobytes()


@needs_c
def test_resize_matches_pillow_on_every_kind_of_shape_change():
    # Up, down, one side only, the height shrinking faster than the width (Pillow 13 then runs
    # its vertical pass first) or not, and the 256 px bound down to a 1 px stroke.
    rng = np.random.default_rng(20261202)
    sizes = [(w, h, nw, nh) for w in (1, 2, 7, 40) for h in (1, 3, 40) for nw in (1, 5, 40, 61)
             for nh in (1, 4, 40, 57)]  # fmt: skip
    sizes += [(256, 256, 20, 20), (256, 9, 20, 1), (9, 256, 1, 20), (1, 1, 20, 20)]
    sizes += [tuple(int(v) for v in rng.integers(1, 120, 4)) for _ in range(1500)]
    for w, h, nw, nh in sizes:
        a = rng.integers(0, 256, (h, w), dtype=np.uint8)
        if rng.random() < 0.5:  # hard edges, where Lanczos overshoots and the clipping counts
            a = np.where(a > 127, 255, 0).astype(np.uint8)
        args = (a.tobytes(), w, h, nw, nh)
        assert _digit.resize_lanczos(*args) == pillow_lanczos(*args), (w, h, nw, nh)


@needs_c
def test_resize_gives_the_same_bytes_with_remembered_weights():
    # The C keeps the weights of recent size pairs in a small table: pairs met again after
    # hundreds of others have evicted them, and a pair right after itself, still resize as Pillow.
    rng = np.random.default_rng(20261207)
    pairs = [tuple(int(v) for v in rng.integers(1, 90, 4)) for _ in range(300)]
    for w, h, nw, nh in pairs + pairs[::-1] + [pairs[0]] * 3:
        a = rng.integers(0, 256, (h, w), dtype=np.uint8).tobytes()
        assert _digit.resize_lanczos(a, w, h, nw, nh) == pillow_lanczos(a, w, h, nw, nh)


@needs_c
@settings(max_examples=300, deadline=None)
@given(size=st.tuples(*[st.integers(1, 48)] * 4), data=st.data())
def test_resize_matches_pillow_on_arbitrary_pixels(size, data):
    w, h, nw, nh = size
    pixels = data.draw(st.binary(min_size=w * h, max_size=w * h))
    assert _digit.resize_lanczos(pixels, w, h, nw, nh) == pillow_lanczos(pixels, w, h, nw, nh)


@needs_c
@settings(max_examples=300, deadline=None)
@given(width=st.integers(1, 60), height=st.integers(1, 60), data=st.data())
def test_normalize_digit_matches_on_arbitrary_pixels(width, height, data):
    pixels = data.draw(st.binary(min_size=width * height, max_size=width * height))
    args = (pixels, width, height, 20, 28, 32, 32)
    assert _digit.normalize_digit(*args) == images.normalize_digit_python(*args)
    # Scaled to float32, as the service calls it: any finite scale, the same bits.
    scale = data.draw(st.floats(-1e3, 1e3, allow_nan=False) | st.just(1 / 255))
    floats = _digit.normalize_digit(*args, scale)
    assert floats == images.normalize_digit_python(*args, scale)
    placed = np.frombuffer(_digit.normalize_digit(*args), np.uint8)
    assert np.array_equal(np.frombuffer(floats, np.float32), placed * np.float32(scale))


@needs_c
def test_place_digit_with_no_ink_centres_the_box():
    # A box of zeros has no centre of mass; both fall back to the box's own centre.
    args = (bytes(20 * 10), 10, 20, 28, 32, 32)
    assert _digit.place_digit(*args) == images.place_digit_python(*args) == bytes(32 * 32)


@needs_c
@pytest.mark.parametrize(
    "args",
    [
        (b"\x00" * 27, 28, 1),  # too few bytes for the size
        (b"\x00" * 29, 28, 1),  # too many
        (b"", 0, 0),  # no pixels
        (b"\x00" * 4, -2, -2),
    ],
)
def test_find_ink_refuses_a_buffer_that_is_not_the_image(args):
    with pytest.raises(ValueError):
        _digit.find_ink(*args)


@needs_c
@pytest.mark.parametrize(
    ("step", "args"),
    [
        ("place_digit", (bytes(29 * 10), 29, 10, 28, 32, 32)),  # wider than the canvas
        ("place_digit", (bytes(20 * 10), 20, 10, 28, 27, 32)),  # the canvas wider than the output
        ("place_digit", (bytes(20 * 10), 20, 10, 28, 32, 27)),
        ("place_digit", (bytes(20 * 10 - 1), 20, 10, 28, 32, 32)),  # a short buffer
        ("normalize_digit", (bytes(100), 10, 10, 0, 28, 32, 32)),  # no box
        ("normalize_digit", (bytes(100), 10, 10, 29, 28, 32, 32)),  # the box larger than the canvas
        ("normalize_digit", (bytes(100), 10, 10, 20, 28, 27, 32)),  # canvas larger than output
        ("normalize_digit", (bytes(99), 10, 10, 20, 28, 32, 32)),  # a short buffer
    ],
)
def test_the_c_and_the_reference_refuse_what_does_not_fit(step, args):
    with pytest.raises(ValueError):
        getattr(_digit, step)(*args)
    with pytest.raises(ValueError):
        getattr(images, f"{step}_python")(*args)


@needs_c
@pytest.mark.parametrize(
    "args",
    [
        (bytes(4), 2, 2, 0, 2),  # no pixels out
        (bytes(4), 2, 2, 2, -1),
        (bytes(4), 2, 2, 4097, 2),  # past the size bound
        (bytes(5000 * 1), 5000, 1, 20, 1),
        (bytes(3), 2, 2, 2, 2),  # a short buffer
    ],
)
def test_resize_refuses_bad_sizes(args):
    with pytest.raises(ValueError):
        _digit.resize_lanczos(*args)


@needs_c
def test_kernels_take_any_bytes_like_object_and_nothing_else():
    a = np.full((5, 6), 200, np.uint8)
    a[1:4, 2:4] = 0
    expected = images.find_ink_python(a.tobytes(), 6, 5)
    assert _digit.find_ink(memoryview(a.tobytes()), 6, 5) == expected
    assert _digit.find_ink(bytearray(a.tobytes()), 6, 5) == expected
    assert _digit.find_ink(a, 6, 5) == expected  # a contiguous array, through the buffer protocol
    with pytest.raises(TypeError):
        _digit.find_ink("not bytes", 6, 5)
    with pytest.raises(ValueError, match="contiguous"):
        _digit.find_ink(a[:, ::2], 3, 5)  # not contiguous: refused, never read past its end
    normalized = images.normalize_digit_python(a.tobytes(), 6, 5, 20, 28, 32, 32)
    assert _digit.normalize_digit(memoryview(a), 6, 5, 20, 28, 32, 32) == normalized
    with pytest.raises(TypeError):  # a scale is a number
        _digit.normalize_digit(a, 6, 5, 20, 28, 32, 32, "1/255")
    assert _digit.resize_lanczos(bytearray(a.tobytes()), 6, 5, 3, 9) == pillow_lanczos(
        a.tobytes(), 6, 5, 3, 9
    )


@needs_c
@pytest.mark.skipif(
    not (SHARED_DATA / "mnist-train.npz").exists(),
    reason=f"MNIST not found at {SHARED_DATA} (see ../shared/data/README.md)",
)
def test_real_mnist_digits_match_as_stored_and_as_drawn_on_paper(monkeypatch):
    x = np.load(SHARED_DATA / "mnist-train.npz")["x"][:: 60000 // 1000]
    for digit in x:
        for img in (
            Image.fromarray(digit, "L"),  # bright on dark, as MNIST stores them
            Image.fromarray(255 - digit, "L").resize((112, 112)),  # dark on paper, larger
        ):
            native, reference = both_ways(img, monkeypatch)
            np.testing.assert_array_equal(native, reference)


# Run in a separate interpreter with AddressSanitizer and UBSan preloaded: every read and write
# the C steps make on random sizes, tones and bad arguments is checked, and any mismatch with the
# reference fails too. (A one-byte overread made as a test of this test was reported at once.)
ASAN_DRIVER = """
import importlib.util, sys, zlib
import numpy as np
from service import images
spec = importlib.util.spec_from_file_location("service._digit", sys.argv[1])
kernel = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kernel)
rng = np.random.default_rng(7)
for i in range(5000):
    w, h = (int(v) for v in rng.integers(1, 80, 2))
    a = rng.integers(0, 256, (h, w), dtype=np.uint8)
    if i % 2:  # mostly paper: a small box of ink
        a = np.where(rng.random((h, w)) < 0.9, a.max(), a).astype(np.uint8)
    assert kernel.find_ink(a.tobytes(), w, h) == images.find_ink_python(a.tobytes(), w, h)
    dw, dh = (int(v) for v in rng.integers(1, 29, 2))
    canvas = int(rng.integers(28, 34))
    args = (rng.integers(0, 256, dw * dh, dtype=np.uint8).tobytes(), dw, dh, canvas,
            canvas + int(rng.integers(0, 5)), canvas + int(rng.integers(0, 5)))
    assert kernel.place_digit(*args) == images.place_digit_python(*args)
    args = (a.tobytes(), w, h, 20, 28, 32, 32)
    assert kernel.normalize_digit(*args) == images.normalize_digit_python(*args)
    assert kernel.normalize_digit(*args, 1 / 255) == images.normalize_digit_python(*args, 1 / 255)
    nw, nh = (int(v) for v in rng.integers(1, 100, 2))
    got = kernel.resize_lanczos(a.tobytes(), w, h, nw, nh)
    assert got == images.Image.frombytes("L", (w, h), a.tobytes()).resize(
        (nw, nh), images.Image.Resampling.LANCZOS).tobytes()
    lines = rng.integers(0, 256, (h, w + 1), dtype=np.uint8)
    lines[:, 0] = rng.integers(0, 5, h)
    assert kernel.unfilter_png(lines.tobytes(), w, h) == images.Image.frombytes(
        "L", (w, h), zlib.compress(lines.tobytes()), "zip", "L").tobytes()
for call, args in [
    (kernel.find_ink, (b"\\0" * 3, 2, 2)), (kernel.find_ink, (b"", 1, 1)),
    (kernel.place_digit, (bytes(60), 30, 2, 28, 32, 32)),
    (kernel.place_digit, (bytes(4), 2, 2, 28, 5000, 5000)),
    (kernel.place_digit, (bytes(3), 2, 2, 28, 32, 32)),
    (kernel.resize_lanczos, (bytes(4), 2, 2, 0, 2)),
    (kernel.resize_lanczos, (bytes(3), 2, 2, 2, 2)),
    (kernel.unfilter_png, (bytes(5), 2, 2)), (kernel.unfilter_png, (bytes(2), 1, 0)),
    (kernel.unfilter_png, (b"\\x05\\0\\0" * 2, 2, 2)),
    (kernel.normalize_digit, (bytes(4), 2, 2, 29, 28, 32, 32)),
    (kernel.normalize_digit, (bytes(3), 2, 2, 20, 28, 32, 32)),
]:
    try:
        call(*args)
    except ValueError:
        continue
    raise SystemExit(f"accepted {args[1:]}")
print("clean")
"""


@pytest.mark.slow
def test_the_c_steps_are_memory_safe_under_sanitizers(tmp_path):
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not found: AddressSanitizer needs it")
    runtimes = [
        subprocess.run(
            [gcc, f"-print-file-name={lib}"], capture_output=True, text=True
        ).stdout.strip()
        for lib in ("libasan.so", "libubsan.so")
    ]
    if not all(Path(r).is_absolute() and Path(r).exists() for r in runtimes):
        pytest.skip("gcc has no sanitizer runtimes (libasan, libubsan)")
    source = Path(images.__file__).with_name("_digit.c")
    built = tmp_path / "_digit.so"
    subprocess.run(
        [gcc, "-shared", "-fPIC", "-O1", "-g", "-fno-omit-frame-pointer",
         "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
         f"-I{sysconfig.get_paths()['include']}", str(source), "-o", str(built)],
        check=True,
    )  # fmt: skip
    env = {
        **os.environ,
        "LD_PRELOAD": ":".join(runtimes),
        "ASAN_OPTIONS": "detect_leaks=0",  # CPython keeps objects alive at exit by design
        # Every allocation through malloc, where ASan sees it: pymalloc's arenas hide small
        # buffers (the bytes passed in, the C's PyMem_Malloc scratch) from it.
        "PYTHONMALLOC": "malloc",
    }
    run = subprocess.run(
        [sys.executable, "-c", ASAN_DRIVER, str(built)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=Path(images.__file__).parents[1],
    )
    assert run.returncode == 0 and run.stdout.strip() == "clean", run.stderr[-3000:]


def test_an_app_without_the_c_steps_says_so_and_answers_the_same(app, monkeypatch, caplog):
    from service.app import create_app
    from tests import corpus
    from tests.server import MODELS_DIR

    digit = corpus.encode(corpus.digit(4, 120), "PNG")
    want = app.test_client().post("/predict/mnist", data=digit, content_type="image/png")
    monkeypatch.setattr(images, "normalize_digit", images.normalize_digit_python)  # no compiler
    fallback = create_app(models_dir=MODELS_DIR, load_in_background=False)
    assert "service._digit was not built" in caplog.text
    got = fallback.test_client().post("/predict/mnist", data=digit, content_type="image/png")
    assert got.status_code == want.status_code == 200
    assert got.get_json() == want.get_json()
