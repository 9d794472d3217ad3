"""Execution engines for a SavedModel: LiteRT (TFLite) built from it at start, or TensorFlow itself.

The SavedModel stays the artifact. With the default `litert` engine, each model's predict and
features signatures are converted to a LiteRT flatbuffer once, in a subprocess (only it imports
TensorFlow), and cached under a key made of the SavedModel's fingerprint. Gunicorn's master does
this before forking (gunicorn.conf.py), so workers only load the flatbuffer: they never import
TensorFlow, start in about a second, use a sixth of the memory, and a LeNet call takes about a
tenth of the time (README, Performance). tests/test_engines.py shows both engines agree within 1e-5.

The gradcam signature becomes an engine of its own, its gradient ops rewritten into LiteRT's
builtin ops (service/gradcam_graph.py): no worker imports TensorFlow, and an image that carries
converted engines (the Dockerfile's) runs without TensorFlow installed at all. Beside each engine,
conversion writes the layers' trained parameters read from the SavedModel's variables
(service/saved_weights.py), which `GET /models/<name>/weights` serves (service/weights.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from service import metadata

ENGINES = ("litert", "tensorflow")
GRADCAM_SUFFIX = ".gradcam.tflite"
WEIGHTS_SUFFIX = ".weights.npz"
GRADCAM_SIGNATURE = "gradcam"  # the Grad-CAM engine's one signature (service/gradcam_graph.py)

log = logging.getLogger(__name__)


def read_metadata(model_path: Path) -> dict[str, Any]:
    """The version's metadata, validated against service/metadata.py's schema."""
    return metadata.read(model_path)


def prediction_outputs(metadata: dict[str, Any]) -> dict[str, str]:
    """What the predict signature returns, {key: output name}: "probabilities", and "distance"
    (the feature distance the `uncertain` flag uses) where the export has it."""
    sig = metadata["signatures"]["predict"]
    outputs = {"probabilities": sig["output"]}
    if "distance" in sig:
        outputs["distance"] = sig["distance"]
    return outputs


class TensorFlowEngine:
    """The SavedModel's own signatures, through TensorFlow (imported on first use)."""

    def __init__(self, model_path: Path, metadata: dict[str, Any]) -> None:
        import tensorflow as tf

        self._tf = tf
        self._loaded = tf.saved_model.load(str(model_path))  # keeps the signatures' resources alive
        sigs = metadata["signatures"]
        self._outputs = prediction_outputs(metadata)
        self._predict = self._loaded.signatures[sigs["predict"]["name"]]
        self._features = self._loaded.signatures[sigs["features"]["name"]]
        gradcam = sigs.get("gradcam", {}).get("name")
        self._gradcam = self._loaded.signatures.get(gradcam) if gradcam else None

    def predict(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        out = self._predict(image=self._tf.constant(batch))
        return {key: out[name].numpy() for key, name in self._outputs.items()}

    def features(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in self._features(image=self._tf.constant(batch)).items()}

    @property
    def has_gradcam(self) -> bool:
        return self._gradcam is not None

    def gradcam(self, batch: np.ndarray, class_index: np.ndarray) -> np.ndarray:
        out = self._gradcam(
            image=self._tf.constant(batch),
            class_index=self._tf.constant(class_index, self._tf.int32),
        )
        return out["heatmap"].numpy()


class LiteRTEngine:
    """A LiteRT interpreter over the flatbuffer converted from the SavedModel."""

    def __init__(self, engine_path: Path, metadata: dict[str, Any], threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        sigs = metadata["signatures"]
        self._outputs = prediction_outputs(metadata)
        # An interpreter is not thread-safe: one per signature, each behind a lock.
        self._runners = {}
        for key in ("predict", "features"):
            interpreter = Interpreter(model_path=str(engine_path), num_threads=threads)
            self._runners[key] = (
                interpreter.get_signature_runner(sigs[key]["name"]),
                threading.Lock(),
            )
        if "gradcam" in sigs:
            interpreter = Interpreter(
                model_path=str(gradcam_path(engine_path)), num_threads=threads
            )
            self._runners["gradcam"] = (
                interpreter.get_signature_runner(GRADCAM_SIGNATURE),
                threading.Lock(),
            )

    def _run(self, key: str, batch: np.ndarray) -> dict[str, np.ndarray]:
        runner, lock = self._runners[key]
        with lock:
            return runner(image=np.ascontiguousarray(batch, dtype=np.float32))

    def predict(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        out = self._run("predict", batch)
        return {key: out[name] for key, name in self._outputs.items()}

    def features(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self._run("features", batch)

    def gradcam(self, batch: np.ndarray, class_index: np.ndarray) -> np.ndarray:
        """The heat maps of a batch, one image at a time: the engine's batch is fixed at one."""
        runner, lock = self._runners["gradcam"]
        maps = []
        for image, index in zip(batch, class_index, strict=True):
            with lock:
                out = runner(
                    image=np.ascontiguousarray(image[None], dtype=np.float32),
                    class_index=np.array([index], np.int32),
                )
            maps.append(out["heatmap"][0])
        return np.stack(maps)


def converter_versions() -> str:
    """The versions of what makes and runs an engine file (TensorFlow's converter, LiteRT), read
    from the installed packages' metadata: an upgrade of either must not reuse old engines."""
    found = []
    for package in ("tensorflow-cpu", "tensorflow", "ai-edge-litert"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{package}=={importlib.metadata.version(package)}")
    return ";".join(found)


def model_key(model_path: Path) -> str:
    """Changes whenever the SavedModel's graph or weights change."""
    h = hashlib.sha256()
    for f in sorted(Path(model_path).rglob("*")):
        if f.is_file() and f.parts[-2] != "report":
            h.update(f.relative_to(model_path).as_posix().encode())
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def engine_key(model_path: Path) -> str:
    """The SavedModel's key and the converter's: either changing converts again."""
    converter = hashlib.sha256(converter_versions().encode()).hexdigest()[:8]
    return f"{model_key(model_path)}-{converter}"


def engine_path(model_path: Path, cache_dir: Path) -> Path:
    md = read_metadata(model_path)
    return Path(cache_dir) / f"{md['name']}-{md['version']}-{engine_key(model_path)}.tflite"


def gradcam_path(engine_file: Path) -> Path:
    """The Grad-CAM engine beside a model's engine file."""
    return Path(engine_file).with_suffix(GRADCAM_SUFFIX)


def weights_path(engine_file: Path) -> Path:
    """The layers' weights file beside a model's engine file."""
    return Path(engine_file).with_suffix(WEIGHTS_SUFFIX)


def is_complete(engine_file: Path) -> bool:
    """`convert` writes the engine file last, so it vouches for the files written before it; a
    cache entry older than weights files has none, and converts again."""
    return Path(engine_file).exists() and weights_path(engine_file).exists()


def can_convert() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def converted_elsewhere(model_path: Path, cache_dir: Path) -> Path:
    """Without TensorFlow nothing converts: an engine of this very SavedModel that a converter
    elsewhere wrote (the Dockerfile's build stage), whichever converter version it was."""
    md = read_metadata(model_path)
    prefix = f"{md['name']}-{md['version']}-{model_key(model_path)}-"
    found = [
        f
        for f in Path(cache_dir).glob(f"{prefix}*.tflite")
        if not f.name.endswith(GRADCAM_SUFFIX)
        and is_complete(f)
        and (not md["signatures"].get("gradcam") or gradcam_path(f).exists())
    ]
    if not found:
        raise RuntimeError(
            f"no LiteRT engine for {model_path} in {cache_dir}, and TensorFlow is not installed "
            "to convert one: pip install 'convnet-service[convert]', or run "
            "`convnet-service prepare-engines` where it is and copy the cache"
        )
    return max(found, key=lambda f: f.stat().st_mtime)


def convert(model_path: Path, out: Path) -> None:
    """SavedModel -> LiteRT flatbuffers: the predict and features signatures in `out`, Grad-CAM
    in gradcam_path(out), and the layers' weights in weights_path(out) (imports TF). `out` is
    written last: it marks the entry complete."""
    import tensorflow as tf

    from service import saved_weights

    md = read_metadata(model_path)
    sigs = md["signatures"]
    if sigs.get("gradcam"):
        from service import gradcam_graph

        _write_atomically(gradcam_path(out), gradcam_graph.convert(model_path))
    _write_atomically(weights_path(out), saved_weights.npz_bytes(model_path, md))
    converter = tf.lite.TFLiteConverter.from_saved_model(
        str(model_path), signature_keys=[sigs["predict"]["name"], sigs["features"]["name"]]
    )
    _write_atomically(out, converter.convert())


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # a reader never sees half a file


def default_cache() -> Path:
    """This user's own folder under the temporary directory: a shared one (/tmp/convnet-engines)
    would let another local user plant an engine file the workers load."""
    return Path(tempfile.gettempdir()) / f"convnet-engines-{os.getuid()}"


def check_cache(cache_dir: Path) -> None:
    """Create the cache folder private (0700) when missing; refuse one that someone other than
    this user (or root) owns or can write to, or that is a symbolic link."""
    cache_dir = Path(cache_dir)
    if not cache_dir.exists() and not cache_dir.is_symlink():
        cache_dir.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            cache_dir.mkdir(mode=0o700)
    st = os.lstat(cache_dir)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise RuntimeError(f"engine cache {cache_dir} is not a plain folder: refusing to use it")
    if st.st_uid not in (os.getuid(), 0) or st.st_mode & 0o022:
        raise RuntimeError(
            f"engine cache {cache_dir} is owned by uid {st.st_uid} with mode "
            f"{stat.S_IMODE(st.st_mode):o}: others could write engine files the workers load. "
            "Use a folder of your own (CONVNET_ENGINE_CACHE), not writable by group or others."
        )


def prepare(model_paths: dict[str, Path], cache_dir: Path, timeout: float = 600) -> dict[str, Path]:
    """The engine file of every model, converting (in a subprocess) those not yet cached."""
    if Path(cache_dir).exists() or Path(cache_dir).is_symlink():
        check_cache(cache_dir)  # before trusting a file in it
    targets = {name: engine_path(path, cache_dir) for name, path in model_paths.items()}
    missing = {name: t for name, t in targets.items() if not is_complete(t)}
    if not missing:  # all cached: nothing to write (the cache may sit on a read-only filesystem)
        return targets
    if not can_convert():
        return {
            name: t if is_complete(t) else converted_elsewhere(model_paths[name], cache_dir)
            for name, t in targets.items()
        }
    check_cache(cache_dir)
    with open(Path(cache_dir) / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one converter at a time, across processes
        # Another process may have converted some meanwhile. One subprocess converts the rest:
        # importing TensorFlow is most of the time a conversion takes.
        pairs = [(str(model_paths[n]), str(t)) for n, t in missing.items() if not is_complete(t)]
        if pairs:
            done = subprocess.run(
                [sys.executable, "-m", "service.engines", *(arg for pair in pairs for arg in pair)],
                timeout=timeout,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            if done.returncode != 0:
                # The converter's last words are the reason (a corrupt SavedModel, an op LiteRT
                # lacks): /readyz and the log show them, not just an exit status.
                tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
                raise RuntimeError(
                    f"converting {', '.join(p for p, _ in pairs)} to LiteRT failed "
                    f"(exit {done.returncode}): {tail[0][:500]}"
                )
    return targets


if __name__ == "__main__":  # python -m service.engines SAVEDMODEL OUT.tflite [SAVEDMODEL OUT ...]
    args = sys.argv[1:]
    for model_path, out in zip(args[::2], args[1::2], strict=True):
        convert(Path(model_path), Path(out))
