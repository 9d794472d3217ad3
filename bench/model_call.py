"""The model call alone: one image through each version's LiteRT engine, on one thread.

    python -m bench.model_call                         # every version under models/
    python -m bench.model_call models/scenes/2 models/scenes/5 --calls 2000

Each version is converted as the service converts it (service/engines.py, a cache under /tmp) and
timed in turn, in one process, with the same random input: the median and 90th percentile of
`--calls` predict calls of one image after 50 warm-up calls, and the engine file's size.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from service import engines

ROOT = Path(__file__).resolve().parents[1]


def time_calls(engine: engines.LiteRTEngine, x: np.ndarray, calls: int) -> list[float]:
    for _ in range(50):
        engine.predict(x)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        engine.predict(x)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs="*", type=Path)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "convnet-bench-engines"
    )
    args = parser.parse_args()
    versions = args.versions or sorted(
        (p for p in (ROOT / "models").glob("*/*") if (p / "saved_model.pb").exists()),
        key=lambda p: (p.parent.name, int(p.name)),
    )
    files = engines.prepare({f"{v.parent.name}/{v.name}": v for v in versions}, args.cache)
    print(f"{'version':<12} {'median ms':>10} {'p90 ms':>8} {'engine MB':>10}")
    for key, path in files.items():
        version = next(v for v in versions if f"{v.parent.name}/{v.name}" == key)
        metadata = engines.read_metadata(version)
        engine = engines.LiteRTEngine(path, metadata, threads=1)
        x = np.random.default_rng(0).random((1, *metadata["input"]["shape"]), dtype=np.float32)
        times = sorted(time_calls(engine, x, args.calls))
        p90 = times[int(0.9 * len(times))]
        print(
            f"{key:<12} {statistics.median(times) * 1e3:10.3f} {p90 * 1e3:8.3f} "
            f"{path.stat().st_size / 1e6:10.2f}"
        )


if __name__ == "__main__":
    main()
