"""The LiteRT engine built from each SavedModel answers like the SavedModel itself: probabilities
within 1e-5, each layer's activations within 1e-5 of that layer's largest (at least 1), the
distance within a relative 1e-4. The cache: keyed by the SavedModel and the converter, private,
complete only with the layers' weights file beside the engine."""

from __future__ import annotations

import numpy as np
import pytest

from service import engines
from service.registry import find_versions
from tests.server import MODELS_DIR

MODELS = find_versions(MODELS_DIR)


@pytest.fixture(scope="module")
def engine_files(tmp_path_factory):
    return engines.prepare(MODELS, tmp_path_factory.mktemp("engines"))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_litert_engine_matches_the_savedmodel(name, engine_files):
    metadata = engines.read_metadata(MODELS[name])
    reference = engines.TensorFlowEngine(MODELS[name], metadata)
    litert = engines.LiteRTEngine(engine_files[name], metadata, threads=1)
    rng = np.random.default_rng(0)
    for batch in (1, 7):
        x = rng.random((batch, *metadata["input"]["shape"]), dtype=np.float32)
        got, want = litert.predict(x), reference.predict(x)
        assert set(got) == set(want) == {"probabilities", "distance"}
        np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-5)
        # A distance is a sum over the embedding: float32 rounding grows with its size.
        np.testing.assert_allclose(got["distance"], want["distance"], rtol=1e-4)
        got, want = litert.features(x), reference.features(x)
        assert set(got) >= {row["name"] for row in metadata["layers"]}
        for row in metadata["layers"]:
            scale = max(1.0, float(np.abs(want[row["name"]]).max()))
            np.testing.assert_allclose(got[row["name"]], want[row["name"]], atol=1e-5 * scale)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_litert_gradcam_matches_the_savedmodel(name, engine_files):
    """Grad-CAM's engine (gradient ops rewritten into builtins) gives the signature's heat map,
    on noise, on a blank image (every max-pooling window tied) and for every class."""
    metadata = engines.read_metadata(MODELS[name])
    reference = engines.TensorFlowEngine(MODELS[name], metadata)
    litert = engines.LiteRTEngine(engine_files[name], metadata, threads=1)
    rng = np.random.default_rng(1)
    shape = metadata["input"]["shape"]
    images = np.concatenate([rng.random((3, *shape), dtype=np.float32), np.zeros((1, *shape))])
    for index in range(len(metadata["classes"])):
        classes = np.full(len(images), index, np.int32)
        got = litert.gradcam(images.astype(np.float32), classes)
        want = reference.gradcam(images.astype(np.float32), classes)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_engines_converted_elsewhere_serve_without_tensorflow(engine_files, monkeypatch):
    """The runtime image has no TensorFlow: it loads the engines its build stage converted,
    whose key names that stage's converter, and says what to do when there are none."""
    name = sorted(MODELS)[0]
    cache = engine_files[name].parent
    monkeypatch.setattr(engines, "can_convert", lambda: False)
    monkeypatch.setattr(engines, "converter_versions", lambda: "ai-edge-litert==0")
    assert engines.prepare({name: MODELS[name]}, cache) == {name: engine_files[name]}
    with pytest.raises(RuntimeError, match=r"TensorFlow is not installed to convert one"):
        engines.prepare({name: MODELS[name]}, cache.parent / "empty")


def test_an_entry_without_its_weights_file_converts_again(tmp_path, engine_files, monkeypatch):
    """A cache entry written before weights files existed is incomplete: with TensorFlow it
    converts again, without it is no engine to serve."""
    import shutil

    name = "mnist"
    old = tmp_path / "old"
    engines.check_cache(old)
    engine = old / engine_files[name].name
    for source in (engine_files[name], engines.gradcam_path(engine_files[name])):
        shutil.copy2(source, old / source.name)
    assert engines.weights_path(engine_files[name]).exists()
    assert not engines.weights_path(engine).exists()
    with monkeypatch.context() as m:
        m.setattr(engines, "can_convert", lambda: False)
        with pytest.raises(RuntimeError, match="TensorFlow is not installed"):
            engines.prepare({name: MODELS[name]}, old)
    assert engines.prepare({name: MODELS[name]}, old) == {name: engine}
    with (
        np.load(engines.weights_path(engine)) as written,
        np.load(engines.weights_path(engine_files[name])) as first,
    ):
        assert written.files == first.files and "conv1/kernel" in written.files
        for key in written.files:
            np.testing.assert_array_equal(written[key], first[key])


@pytest.mark.parametrize(
    "version",
    sorted(
        p.parent.relative_to(MODELS_DIR).as_posix() for p in MODELS_DIR.glob("*/*/saved_model.pb")
    ),
)
def test_every_committed_version_has_its_weights(version):
    """The image's build stage converts every version: older layer tables (format 1, a chain
    without `inputs`) imply the same shapes as the variables' too."""
    from service import saved_weights, weights

    metadata = engines.read_metadata(MODELS_DIR / version)
    arrays = weights.validate(saved_weights.layer_arrays(MODELS_DIR / version, metadata), metadata)
    weighted = [r["name"] for r in metadata["layers"] if r["type"] in weights.PARAMETERS]
    assert list(arrays) == weighted
    if version.startswith("mnist/"):
        assert arrays["conv2"]["kernel"].shape == (5, 5, 6, 16)
        assert arrays["fc1"]["kernel"].shape == (400, 120)


def test_a_batch_norm_epsilon_other_than_the_models_fails_the_conversion(monkeypatch):
    """Epsilon is no variable: the scale written is proved against the SavedModel's own batch
    norm activations, so a layer built with another epsilon cannot serve wrong scales."""
    from service import saved_weights, weights

    metadata = engines.read_metadata(MODELS["scenes"])
    arrays = saved_weights.layer_arrays(MODELS["scenes"], metadata)
    assert {"bn1/scale", "bn1/offset", "fc/kernel", "fc/bias"} <= set(arrays)
    monkeypatch.setattr(saved_weights, "BATCH_NORM_EPSILON", 0.1)
    with pytest.raises(weights.WeightsError, match=r"batch norm bn1 with epsilon 0\.1 is off"):
        saved_weights.layer_arrays(MODELS["scenes"], metadata)


def test_engine_cache_is_keyed_by_the_savedmodel(tmp_path, engine_files, monkeypatch):
    name = sorted(MODELS)[0]
    before = engine_files[name].stat()

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again although the engine was cached")

    monkeypatch.setattr(engines.subprocess, "run", no_conversion)
    again = engines.prepare({name: MODELS[name]}, engine_files[name].parent)
    assert again[name] == engine_files[name]
    after = engine_files[name].stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert engines.engine_key(MODELS[name]) in engine_files[name].name


def test_engine_key_changes_with_the_converter_version(monkeypatch):
    """An upgraded TensorFlow or LiteRT converts again instead of loading a stale engine."""
    name = sorted(MODELS)[0]
    key = engines.engine_key(MODELS[name])
    assert "ai-edge-litert==" in engines.converter_versions()
    monkeypatch.setattr(engines, "converter_versions", lambda: "tensorflow==99.0")
    assert engines.engine_key(MODELS[name]) != key


def test_prepare_engines_command_uses_the_cache(engine_files):
    """`convnet-service prepare-engines`, as the Dockerfile runs it at build time."""
    import os
    import subprocess
    import sys

    cache = next(iter(engine_files.values())).parent
    env = {**os.environ, "CONVNET_ENGINE_CACHE": str(cache), "CONVNET_MODELS_DIR": str(MODELS_DIR)}
    out = subprocess.run(
        [sys.executable, "-m", "service.cli", "prepare-engines"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    ).stdout
    assert {line.split(": ")[0]: line.split(": ")[1] for line in out.splitlines()} == {
        name: str(path) for name, path in engine_files.items()
    }


def test_a_failed_conversion_says_why(tmp_path):
    """/readyz and the log carry the converter's reason, not only its exit status."""
    import shutil

    broken = tmp_path / "mnist" / "1"
    shutil.copytree(MODELS["mnist"], broken)
    (broken / "saved_model.pb").write_bytes(b"not a protobuf")
    with pytest.raises(RuntimeError, match=r"to LiteRT failed .*Cannot parse file"):
        engines.prepare({"mnist": broken}, tmp_path / "cache")


def test_the_engine_cache_is_private_and_a_shared_one_is_refused(tmp_path):
    """A cache others can write to would let them plant the engine a worker loads."""
    import os
    import stat

    fresh = tmp_path / "cache"
    engines.check_cache(fresh)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    assert engines.default_cache().name == f"convnet-engines-{os.getuid()}"
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(RuntimeError, match="others could write"):
        engines.prepare(MODELS, shared)
    link = tmp_path / "link"
    link.symlink_to(fresh)
    with pytest.raises(RuntimeError, match="not a plain folder"):
        engines.check_cache(link)
