"""Service settings: defaults, overridden by CONVNET_* environment variables or by create_app()."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from service.engines import ENGINES, default_cache


@dataclass(frozen=True)
class Settings:
    models_dir: Path = Path("models")
    max_body_bytes: int = 20 * 1024 * 1024  # a 12 MP phone JPEG/HEIC is 2-8 MB
    max_pixels: int = 40_000_000  # per image
    max_request_pixels: int = 100_000_000  # all of one request's images, as decoded
    max_batch: int = 64  # images per /predict request
    # litert: a LiteRT engine converted from each SavedModel at start (fast, small workers);
    # tensorflow: the SavedModel's signatures through TensorFlow. See service/engines.py.
    engine: str = "litert"
    engine_cache: Path = field(default_factory=default_cache)  # private to this user
    tf_threads: int = 1  # inference threads per worker: workers x threads ~ cores
    # Adaptive batching of /predict calls inside a worker (see service/batching.py and README).
    batching: bool = False
    max_batch_size: int = 32
    batch_timeout_micros: int = 0  # 0: batch only what is already queued; never wait for more
    load_in_background: bool = True  # /livez answers while models load; /readyz waits for them
    # After SIGTERM, /readyz answers 503 for this long before the worker stops accepting.
    drain_seconds: float = 0.0

    def __post_init__(self) -> None:
        # A zero or negative limit would start a server that refuses everything, or fails
        # to load its models, instead of one error line at start.
        for name, least in _MINIMUM.items():
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"CONVNET_{name.upper()} must be a finite number, not {value!r}")
            if value < least:
                raise ValueError(f"CONVNET_{name.upper()} must be at least {least}, not {value!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"CONVNET_ENGINE must be one of {ENGINES}, not {self.engine!r}")

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        values = {}
        for f in fields(cls):
            raw = os.environ.get(f"CONVNET_{f.name.upper()}")
            if raw is None:
                continue
            if f.type in ("bool", bool):
                values[f.name] = raw.lower() in ("1", "true", "yes", "on")
            elif f.type in ("Path", Path):
                values[f.name] = Path(raw)
            elif (number := _NUMBERS.get(getattr(f.type, "__name__", f.type))) is not None:
                parse, what = number
                try:
                    values[f.name] = parse(raw)
                except ValueError:
                    raise ValueError(
                        f"CONVNET_{f.name.upper()} must be {what}, not {raw!r}"
                    ) from None
            else:
                values[f.name] = raw
        return replace(cls(**values), **overrides)


def usable_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup CPU quota (`docker run
    --cpus 2`), which os.cpu_count() ignores: a container on a 64-core host would start 64
    workers, each with its own copy of the models, and share 2 cores among them."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for quota_file, period_file in (
        ("cpu.max", None),
        ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us"),
    ):
        try:
            words = (cgroup / quota_file).read_text().split()
            if period_file:  # cgroup v1: -1 for no quota
                words += (cgroup / period_file).read_text().split()
            quota, period = words[0], words[1]
            if quota not in ("max", "-1"):
                return max(1, min(cores or 1, math.ceil(int(quota) / int(period))))
        except (OSError, ValueError, IndexError):
            continue
    return cores or 1


# How a number setting is read, and what to call it when it does not read.
_NUMBERS = {"int": (int, "a whole number"), "float": (float, "a number of seconds")}

_MINIMUM = {
    "max_body_bytes": 1,
    "max_pixels": 1,
    "max_request_pixels": 1,
    "max_batch": 1,
    "tf_threads": 1,
    "max_batch_size": 1,
    "batch_timeout_micros": 0,
    "drain_seconds": 0.0,
}
