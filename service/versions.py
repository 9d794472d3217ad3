"""Every complete version of a model on disk, addressable by number (the standard protocols'
`/versions/{v}` routes): the served one from the registry, any other loaded on first use.

The registry serves one version of each model, pinned by the Gunicorn master. An older (or newer)
complete version under models/<name>/ is loaded on its first request, through the same engine
machinery (a LiteRT engine converted once and cached, as at start), in the worker that serves it.
At most MAX_LOADED such versions stay loaded per worker, the least recently used dropped first:
a client walking through old versions cannot grow a worker without bound. Smoke and tuning-split
runs are never served, so they are not addressable either.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path

from service import engines
from service.errors import ApiError, NotFound
from service.registry import (
    _VERSION_NAME,
    Model,
    Registry,
    _is_complete_version,
    _is_trial_run,
    warm_up,
)

log = logging.getLogger(__name__)

MAX_LOADED = 4  # other versions kept loaded per worker; each is a LiteRT engine of a few MB


def on_disk(models_dir: Path, name: str) -> dict[int, Path]:
    """The complete, servable versions of `name` under `models_dir`: {version: path}."""
    folder = Path(models_dir) / name
    if not folder.is_dir() or name.startswith("."):
        return {}
    return {
        int(p.name): p for p in folder.iterdir() if _is_complete_version(p) and not _is_trial_run(p)
    }


class Versions:
    """The model versions of one registry: the served ones, and others loaded on demand."""

    def __init__(self, registry: Registry, max_loaded: int = MAX_LOADED) -> None:
        self._registry = registry
        self._max_loaded = max_loaded
        self._loaded: OrderedDict[tuple[str, int], Model] = OrderedDict()
        self._lock = threading.Lock()

    def available(self, served: Model) -> list[int]:
        """Every addressable version of the served model's name, ascending."""
        found = set(on_disk(self._registry.models_dir, served.name))
        return sorted(found | {served.version})

    def get(self, served: Model, version: str | None) -> Model:
        """`served` itself when `version` is None or its number; else that version from disk."""
        if version is None:
            return served
        if _VERSION_NAME.fullmatch(version) is None:
            raise NotFound(f"no version {version!r} of model {served.name!r}")
        number = int(version)
        if number == served.version:
            return served
        with self._lock:  # one load at a time; a second request for it waits and reuses it
            key = (served.name, number)
            model = self._loaded.get(key)
            if model is not None:
                self._loaded.move_to_end(key)
                return model
            path = on_disk(self._registry.models_dir, served.name).get(number)
            if path is None:
                raise NotFound(
                    f"no version {version!r} of model {served.name!r}; "
                    f"available: {[str(v) for v in self.available(served)]}"
                )
            model = self._load(path)
            self._loaded[key] = model
            while len(self._loaded) > self._max_loaded:
                self._loaded.popitem(last=False)  # in-flight requests keep their reference
            return model

    def _load(self, path: Path) -> Model:
        registry = self._registry
        try:
            metadata = engines.read_metadata(path)
            if registry.engine == "litert":
                files = engines.prepare({path.parent.name: path}, registry.engine_cache)
                engine = engines.LiteRTEngine(files[path.parent.name], metadata, registry.threads)
            else:
                engine = engines.TensorFlowEngine(path, metadata)
            model = Model(metadata["name"], int(metadata["version"]), path, metadata, engine)
            warm_up(model)
        except Exception as exc:
            log.exception("loading %s failed", path)
            raise ApiError(
                f"version {path.name} of model {path.parent.name!r} failed to load: "
                f"{type(exc).__name__}",
                code="load_failed",
                status=500,
            ) from exc
        log.info("loaded %s version %s from %s on demand", model.name, model.version, path)
        return model
