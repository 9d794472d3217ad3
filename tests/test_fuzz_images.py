"""The image intake under fuzzing: atheris for a bounded time, a hypothesis mutation fuzz, and the
regression files of past findings. See fuzz/fuzz_images.py for running it longer."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hostile_corpus import seeds

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "fuzz" / "fuzz_images.py"
REGRESSIONS = ROOT / "fuzz" / "regressions"
# Pillow warns about odd but readable files (corrupt EXIF, short tags): expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
FUZZ_SECONDS = int(os.environ.get("FUZZ_SECONDS", "20"))


def _harness():
    spec = importlib.util.spec_from_file_location("fuzz_images", HARNESS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check = _harness().check
SEEDS = seeds()


@pytest.mark.slow
def test_atheris_finds_nothing_in_a_bounded_run(tmp_path):
    pytest.importorskip("atheris", reason="atheris not installed (pip install -e '.[dev]')")
    corpus_dir, findings = tmp_path / "corpus", tmp_path / "findings"
    findings.mkdir()
    subprocess.run([sys.executable, HARNESS, "--make-corpus", corpus_dir], check=True, timeout=120)
    run = subprocess.run(
        [
            sys.executable,
            HARNESS,
            corpus_dir,
            f"-max_total_time={FUZZ_SECONDS}",
            "-timeout=10",  # one input taking longer is a finding (a decoder hang)
            "-rss_limit_mb=2048",  # so is runaway memory
            f"-artifact_prefix={findings}/",
            "-print_final_stats=1",
        ],
        capture_output=True,
        text=True,
        timeout=FUZZ_SECONDS + 120,
    )
    stats = [line for line in run.stderr.splitlines() if line.startswith(("Done", "stat::"))]
    print("\n".join(stats))
    found = sorted(p.name for p in findings.iterdir())
    assert run.returncode == 0 and not found, (
        f"atheris finding(s) {found}; copy them to fuzz/regressions/\n{run.stderr[-4000:]}"
    )


def test_past_findings_stay_fixed():
    """Every file in fuzz/regressions/ (a finding or an edge, kept as is) is answered properly
    now, and the folder holds what fuzz/make_regressions.py writes."""
    files = sorted(p for p in REGRESSIONS.glob("*") if p.suffix != ".md")
    assert len(files) >= 10, (
        f"fuzz/regressions/ holds {len(files)} inputs: the replay tests nothing"
    )
    spec = importlib.util.spec_from_file_location(
        "make_regressions", ROOT / "fuzz" / "make_regressions.py"
    )
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    for name, data in maker.files().items():
        assert (REGRESSIONS / name).read_bytes() == data, f"{name} differs from its generator"
    for path in files:
        check(path.read_bytes())


def test_tight_digit_crops_keep_their_ink():
    """The issue-28 finding: a tight two-level crop must not become an all-black input."""
    import numpy as np

    from service import images
    from service.engines import read_metadata
    from service.registry import find_versions

    spec = read_metadata(find_versions(ROOT / "models")["mnist"])["preprocessing"]
    for name in ("digit_two_level_tight_crop.png", "digit_tight_crop_white_on_black.png"):
        arr = images.load((REGRESSIONS / name).read_bytes(), spec, images.Limits())
        assert np.asarray(arr).max() > 0.5, name


def test_every_seed_is_answered():
    for data in SEEDS:
        check(data)


@st.composite
def mutated(draw) -> bytes:
    """A seed with a few byte edits, a truncation or an insertion (the fallback when atheris is
    absent, and a fast deterministic check in every run)."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(("flip", "set", "cut", "insert")))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from((0x00, 0xFF, 0x7F, 0x80)))
        elif op == "cut":
            del data[i:]
        else:
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")),
    deadline=None,
    database=None,
    derandomize="FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=list(HealthCheck),
)
@given(mutated())
def test_mutated_images_are_answered(data):
    check(data)
