"""Service settings: defaults, overridden by CONVNET_* environment variables or by create_app()."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    models_dir: Path = Path("models")
    max_body_bytes: int = 20 * 1024 * 1024  # a 12 MP phone JPEG/HEIC is 2-8 MB
    max_pixels: int = 40_000_000
    max_batch: int = 64  # images per /predict request
    tf_threads: int = 1  # TensorFlow threads per worker: workers x threads ~ cores
    load_in_background: bool = True  # /livez answers while models load; /readyz waits for them

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
            else:
                values[f.name] = int(raw)
        return replace(cls(**values), **overrides)
