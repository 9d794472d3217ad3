"""Coverage-guided fuzzing (atheris + libFuzzer) of the image intake: `service.images.load`.

Every input is bytes as a client would upload them; `load` must either return the model input
(a finite float32 array of the model's shape) or raise one of the service's ApiErrors (answered
as JSON 4xx). For a digit, the answer with the C steps (the normalisation, and the grey PNG
route's unfilter) must equal the Python reference's through Pillow.
Anything else (another exception, a mismatch, a hang, runaway memory, a crash in C) is a finding.

    # seeds: small valid images of every format + the hostile corpus of tests/hostile_corpus.py
    python fuzz/fuzz_images.py --make-corpus fuzz/corpus
    # run (CI runs 20 s of this in tests/test_fuzz_images.py); longer on demand, e.g. an hour:
    python fuzz/fuzz_images.py fuzz/corpus -max_total_time=3600 -timeout=10 -rss_limit_mb=3072 \
        -artifact_prefix=fuzz/findings/
    # replay one finding without fuzzing:
    python fuzz/fuzz_images.py fuzz/findings/crash-<sha1>

A finding goes into fuzz/regressions/ (the file as is); tests/test_fuzz_images.py replays every
file there through `check` on each test run.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from service.engines import read_metadata  # noqa: E402
from service.registry import find_versions  # noqa: E402

# The preprocessing of every committed model, as its metadata declares it.
SPECS = tuple(read_metadata(p)["preprocessing"] for p in find_versions(ROOT / "models").values())


def _setup():
    import warnings

    from service import images
    from service.errors import ApiError

    images.register_plugins()
    warnings.simplefilter("ignore")  # Pillow warns on odd but readable files; that is not a bug
    return images, ApiError, images.Limits()


def check(data: bytes, _state: list = []) -> None:  # noqa: B006 (a lazily set module cache)
    """The property: ApiError or a well-formed model input, for each model's preprocessing."""
    if not _state:
        _state.extend(_setup())
    images, api_error, limits = _state
    for spec in SPECS:  # every input through every model's preprocessing
        _check_one(images, api_error, limits, data, spec)


def _check_one(images, api_error, limits, data: bytes, spec: dict) -> None:
    try:
        arr = images.load(data, spec, limits)
    except api_error as exc:
        assert 400 <= exc.status < 500, exc
        return
    channels = 1 if spec["color_mode"] == "grayscale" else 3
    assert arr.shape == (spec["height"], spec["width"], channels), arr.shape
    assert arr.dtype == np.float32 and np.isfinite(arr).all()
    if (
        spec["resize"] == "mnist_digit"
        and images.normalize_digit is not images.normalize_digit_python
    ):
        # The C (service/_digit.c: the digit normalisation, and the grey PNG route's unfilter)
        # agrees with the Python reference and Pillow.
        native = images.normalize_digit, images.unfilter_png
        images.normalize_digit, images.unfilter_png = images.normalize_digit_python, None
        try:
            reference = images.load(data, spec, limits)
        finally:
            images.normalize_digit, images.unfilter_png = native
        assert np.array_equal(arr, reference)


def make_corpus(directory: Path) -> int:
    import hashlib

    from tests.hostile_corpus import seeds

    directory.mkdir(parents=True, exist_ok=True)
    for data in seeds():
        (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)
    return len(list(directory.iterdir()))


def main(argv: list[str]) -> None:
    if len(argv) == 3 and argv[1] == "--make-corpus":
        print(f"{make_corpus(Path(argv[2]))} seeds in {argv[2]}")
        return
    import atheris

    # Instrument our code and Pillow's Python plugins (the C decoders are not instrumented, but
    # their Python-side parsing of headers and chunks is where most format logic lives).
    with atheris.instrument_imports(include=["service", "PIL", "pillow_heif"]):
        import PIL.Image  # noqa: F401

        _setup()
    check(b"")  # warm the cache before fuzzing starts
    atheris.Setup(argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
