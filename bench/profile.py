"""Where a worker's time goes under load: py-spy on the live server, top frames by own time.

    python -m bench.profile                    # /predict/mnist, 1 worker, 10 s
    python -m bench.profile --path "/features/mnist?encoding=base64" --env CONVNET_ENGINE=tensorflow

Starts the service (real Gunicorn, one worker so the profile is one process), loads it with wrk
from bench.run, samples the worker with py-spy (Python frames plus native, idle excluded), and
prints the functions where samples land, grouped by area (HTTP, decode, inference, encode, metrics).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from bench.bodies import make_bodies
from bench.run import WRK_SCRIPT, run_wrk
from tests.server import GunicornServer

AREAS = [  # first match wins: (area, substring of the frame's file or function)
    ("metrics", "prometheus_client"),
    ("metrics", "service/instrumentation"),
    ("inference", "ai_edge_litert"),
    ("inference", "tensorflow"),
    ("decode+preprocess", "PIL/"),
    ("decode+preprocess", "service/images"),
    ("encode (JSON)", "json"),
    ("encode (JSON)", "service/codecs"),
    ("HTTP (gunicorn/werkzeug/flask)", "gunicorn"),
    ("HTTP (gunicorn/werkzeug/flask)", "werkzeug"),
    ("HTTP (gunicorn/werkzeug/flask)", "flask"),
]


def area_of(stack: list[str]) -> str:
    for frame in reversed(stack):  # innermost first
        for area, needle in AREAS:
            if needle in frame:
                return area
    return "other"


def _records(raw: str) -> list[str]:
    """py-spy's raw lines, `frame;frame;... count`. A frame's name can hold newlines (the repr of
    a Werkzeug proxy outside a request), so a record ends only at a line ending in a count."""
    records, pending = [], ""
    for line in raw.splitlines():
        pending += line
        if line.rpartition(" ")[2].isdigit():
            records.append(pending)
            pending = ""
    return records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.profile", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--path", default="/predict/mnist")
    p.add_argument("--body", default="digit28.png")
    p.add_argument("--mime", default="image/png")
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--env", nargs="*", default=[], help="KEY=VALUE settings for the service")
    p.add_argument("--top", type=int, default=15)
    p.add_argument(
        "--gil",
        action="store_true",
        help="count only the thread holding the GIL: where Python spends CPU, without the "
        "samples of threads waiting to get the GIL back",
    )
    args = p.parse_args(argv)
    # Installed with `pip install -e ".[bench]"`: next to this interpreter, or on PATH.
    py_spy = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or shutil.which("py-spy")
    if not py_spy:
        sys.exit('py-spy not found: pip install -e ".[bench]"')

    with tempfile.TemporaryDirectory(prefix="profile-") as tmp_name:
        tmp = Path(tmp_name)
        bodies = make_bodies(tmp, {args.body})
        script = tmp / "post.lua"
        script.write_text(WRK_SCRIPT)
        env = dict(kv.split("=", 1) for kv in args.env)
        server = GunicornServer(tmp=tmp, workers=1, env=env).start()
        try:
            (pid,) = server.worker_pids()
            out = tmp / "stacks.txt"
            print(
                f"profiling worker {pid} for {args.duration} s under wrk -c{args.connections} ...",
                file=sys.stderr,
            )
            load = threading.Thread(
                target=run_wrk,
                args=(
                    server.url + args.path,
                    bodies[args.body],
                    args.mime,
                    args.connections,
                    args.duration + 2,
                    script,
                ),
            )
            load.start()
            subprocess.run(
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--duration",
                    str(args.duration),
                    "--rate",
                    "200",
                    "--format",
                    "raw",
                    "--output",
                    str(out),
                    "--nonblocking",
                    *(["--gil"] if args.gil else []),
                ],
                check=True,
                capture_output=True,
            )
            load.join()
        finally:
            server.stop()
        frames: collections.Counter[str] = collections.Counter()
        areas: collections.Counter[str] = collections.Counter()
        total = 0
        for record in _records(out.read_text()):
            stack_text, _, count = record.rpartition(" ")
            stack = stack_text.split(";")
            n = int(count)
            total += n
            frames[stack[-1]] += n
            areas[area_of(stack)] += n
    print(f"\n{args.path}: {total} samples of busy threads")
    print("\nby area (innermost matching frame):")
    for area, n in areas.most_common():
        print(f"  {100 * n / total:5.1f}%  {area}")
    print(f"\ntop {args.top} frames by own time:")
    for frame, n in frames.most_common(args.top):
        print(f"  {100 * n / total:5.1f}%  {frame[:110]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
