"""Benchmark the service against its baselines in one run, side by side.

    python -m bench.run                       # everything, 10 s per cell
    python -m bench.run --duration 5 --concurrency 1 8 --only service
    python -m bench.run --repeat 5 --concurrency 16 --only hello service   # median of 5 rounds

Starts each server itself (real Gunicorn, the project's config, 2 workers), drives it with wrk on
loopback, and prints one table: req/s, p50/p90/p99 latency, errors, CPU and RSS per worker. wrk is
written in C and uses one thread here; its own CPU use is reported so that one can see it is not
the bottleneck. `service+nginx` puts deploy/nginx/convnet.conf (the compose file's proxy) in front,
on the same cores: what a deployment behind it gets; nginx's own CPU is the `proxy%` column.

One run on a shared machine can be several per cent off the next. `--repeat N` runs every target
N times, interleaved, each round with fresh servers, and ends with each cell's median and range.

`cpu us` is the workers' CPU per answered request. For the service, `app us`, `prep` and `model`
are means read from its own histograms on /metrics over the cell: the request inside Flask, decode
+ preprocess per image, and one engine call, as they cost inside the loaded worker.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from bench.bodies import BOUNDARY, make_bodies
from tests.server import GunicornServer, NginxProxy

ROOT = Path(__file__).resolve().parents[1]
WRK_SCRIPT = """
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_MIME")
for name, value in (os.getenv("BENCH_HEADERS") or ""):gmatch("([^:\\n]+): ([^\\n]*)") do
  wrk.headers[name] = value
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "p50": %d, "p90": %d, "p99": %d, '
    .. '"errors": %d, "non2xx": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), e.connect + e.read + e.write + e.timeout, e.status))
end
"""


@dataclass
class Case:
    target: str  # which server
    path: str
    body: str  # name of a generated body file
    mime: str


SERVICE_CASES = [
    Case("service", "/predict/mnist", "digit28.png", "image/png"),
    # 16 digits in one request: req/s x 16 images/s.
    Case(
        "service",
        "/predict/mnist",
        "digits16.form",
        f"multipart/form-data; boundary={BOUNDARY}",
    ),
    Case("service", "/predict/scenes", "scene32.png", "image/png"),
    Case("service", "/predict/scenes", "photo1024.jpg", "image/jpeg"),
    Case("service", "/predict/scenes", "phone12mp.jpg", "image/jpeg"),
    Case("service", "/features/mnist?encoding=base64", "digit28.png", "image/png"),
    # The standard protocols (docs/protocols.md), the same digit: V2 with binary tensors (as
    # tritonclient sends them), encoded and preprocessed; TF Serving with base64.
    Case("service", "/v2/models/mnist/infer", "digit28.v2bytes", "application/octet-stream"),
    Case("service", "/v2/models/mnist/infer", "digit28.v2fp32", "application/octet-stream"),
    Case("service", "/v1/models/mnist:predict", "digit28.tfserving.json", "application/json"),
]
BASELINE_CASES = [
    Case("hello", "/predict/mnist", "digit28.png", "image/png"),
    Case("signature", "/predict/mnist", "digit28.png", "image/png"),
    Case("keras", "/predict/mnist", "digit28.png", "image/png"),
]
TARGETS = {
    "service": {"app": None, "env": {}},
    "service+batching": {"app": None, "env": {"CONVNET_BATCHING": "1"}},
    # The same service calling the SavedModel through TensorFlow instead of the LiteRT engine.
    "service+tensorflow": {"app": None, "env": {"CONVNET_ENGINE": "tensorflow"}},
    # The other worker model: 4 threads per process (Gunicorn's gthread) instead of sync.
    "service+gthread": {"app": None, "env": {"GUNICORN_WORKER_CLASS": "gthread"}},
    # The deployed shape: the compose file's nginx in front, wrk talking to nginx.
    "service+nginx": {"app": None, "env": {}, "nginx": True},
    "service+batching+nginx": {"app": None, "env": {"CONVNET_BATCHING": "1"}, "nginx": True},
    # Upper bounds (bench/ablations.py): the service with decode + preprocess free, then also
    # without metrics.
    "service+free-prep": {"app": "bench.ablations:service_without('preprocess')", "env": {}},
    "service+free-prep+no-metrics": {
        "app": "bench.ablations:service_without('preprocess', 'metrics')",
        "env": {},
    },
    # The same service on the versions served before the current ones (PREVIOUS_VERSIONS): the
    # cost of a new model, measured in the same run.
    "service+previous-models": {"app": None, "env": {"CONVNET_MODELS_DIR": "<previous>"}},
    # The service before service/_digit.c: digit normalisation in numpy (the reference).
    "service+python-digit": {"app": "bench.ablations:service_with_python_digit()", "env": {}},
    # The service from another checkout (--checkout DIR, e.g. `git worktree add DIR <commit>`):
    # a change measured against the code before it, in the same run.
    "service+checkout": {"app": None, "env": {}, "checkout": True},
    "hello": {"app": "bench.baselines:hello()", "env": {}},
    "hello+gthread": {
        "app": "bench.baselines:hello()",
        "env": {"GUNICORN_WORKER_CLASS": "gthread"},
    },
    "signature": {"app": "bench.baselines:signature()", "env": {}},
    "keras": {"app": "bench.baselines:keras_predict()", "env": {}},
}


# mnist v6: v7's weights in one view, so the two rows show what the shifts cost.
PREVIOUS_VERSIONS = {"mnist": "6", "scenes": "2"}


def previous_models(tmp: Path) -> Path:
    """A models folder holding only PREVIOUS_VERSIONS (links into models/)."""
    folder = tmp / "previous-models"
    for name, version in PREVIOUS_VERSIONS.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / version).symlink_to(ROOT / "models" / name / version)
    return folder


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _headers(body: Path) -> dict[str, str]:
    """The extra headers a body needs ("Name: value" lines in <body>.headers), for wrk."""
    sidecar = body.with_name(body.name + ".headers")
    return {"BENCH_HEADERS": sidecar.read_text()} if sidecar.exists() else {}


def run_wrk(url: str, body: Path, mime: str, connections: int, duration: int, script: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "BENCH_BODY": str(body), "BENCH_MIME": mime, **_headers(body)},
        timeout=duration + 60,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    result = json.loads(line[6:])
    result["wrk_cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return result


# The service's own histograms whose mean cost per observation the table shows (sum / count,
# summed over workers): what a stage costs inside the live worker, next to bench.inprocess's loop.
STAGES = {
    "app_us": "convnet_http_request_duration_seconds",  # request hooks to response, in Flask
    "prep_us": "convnet_image_preprocess_seconds",  # decode + preprocess, per image
    "model_us": "convnet_inference_seconds",  # one engine call
}


def stage_totals(server: GunicornServer) -> dict[str, tuple[float, float]]:
    """(sum, count) of each STAGES histogram from the service's live /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    r = requests.get(f"{server.url}/metrics", timeout=10)
    r.raise_for_status()
    found = {name: [0.0, 0.0] for name in STAGES.values()}
    for family in text_string_to_metric_families(r.text):
        if family.name in found:
            for sample in family.samples:
                if sample.name.endswith("_sum"):
                    found[family.name][0] += sample.value
                elif sample.name.endswith("_count"):
                    found[family.name][1] += sample.value
    return {key: tuple(found[name]) for key, name in STAGES.items()}


def measure(
    server: GunicornServer,
    case: Case,
    bodies: dict,
    conc: int,
    duration: int,
    script: Path,
    proxy: NginxProxy | None = None,
) -> dict:
    pids = server.worker_pids()
    proxy_pids = proxy.pids() if proxy else []
    is_service = case.target == "service"  # the baselines have no histograms to read
    before = stage_totals(server) if is_service else {}
    cpu0 = {p: proc_cpu_seconds(p) for p in pids + proxy_pids}
    url = (proxy.url if proxy else server.url) + case.path
    r = run_wrk(url, bodies[case.body], case.mime, conc, duration, script)
    seconds = r["duration_us"] / 1e6
    cpu = {p: proc_cpu_seconds(p) - cpu0[p] for p in pids}
    proxy_cpu = sum(proc_cpu_seconds(p) - cpu0[p] for p in proxy_pids)
    stages = dict.fromkeys(STAGES)
    for key, (total, count) in (stage_totals(server) if is_service else {}).items():
        if count > before[key][1]:
            stages[key] = round((total - before[key][0]) / (count - before[key][1]) * 1e6)
    return {
        "target": case.target,
        "path": case.path,
        "body": case.body,
        "concurrency": conc,
        "rps": r["requests"] / seconds,
        "p50_ms": r["p50"] / 1000,
        "p90_ms": r["p90"] / 1000,
        "p99_ms": r["p99"] / 1000,
        "errors": r["errors"] + r["non2xx"],
        "worker_cpu_pct": [round(100 * cpu[p] / seconds) for p in pids],
        # Every worker's CPU (user + system) over the requests answered: the cost of one request.
        "cpu_us_per_request": round(sum(cpu.values()) / max(r["requests"], 1) * 1e6),
        "worker_rss_mb": [round(proc_rss_mb(p)) for p in pids],
        "wrk_cpu_pct": round(100 * r["wrk_cpu_s"] / seconds),
        "proxy_cpu_pct": round(100 * proxy_cpu / seconds) if proxy else None,
        **stages,
    }


def print_row(row: dict) -> None:
    print(
        f"{row['target']:<17} {row['path']:<33} {row['body']:<13} {row['concurrency']:>3} "
        f"{row['rps']:>8.0f} {row['p50_ms']:>7.2f} {row['p90_ms']:>7.2f} {row['p99_ms']:>7.2f} "
        f"{row['errors']:>6} {'/'.join(map(str, row['worker_cpu_pct'])):>9} "
        f"{'/'.join(map(str, row['worker_rss_mb'])):>9} {row['wrk_cpu_pct']:>4} "
        f"{'-' if row['proxy_cpu_pct'] is None else row['proxy_cpu_pct']:>6} "
        f"{row['cpu_us_per_request']:>7} "
        + " ".join(f"{'-' if row[k] is None else row[k]:>6}" for k in STAGES),
        flush=True,
    )


HEADER = (
    f"{'target':<17} {'path':<33} {'body':<13} {'c':>3} {'req/s':>8} {'p50 ms':>7} {'p90 ms':>7} "
    f"{'p99 ms':>7} {'errors':>6} {'cpu %':>9} {'rss MB':>9} {'wrk%':>4} {'proxy%':>6} {'cpu us':>7} "
    f"{'app us':>6} {'prep':>6} {'model':>6}"
)


def run_target(
    target: str,
    cases: list[Case],
    args: argparse.Namespace,
    tmp: Path,
    bodies: dict[str, Path],
    script: Path,
    progress: Callable[[str], None],
) -> Iterator[dict]:
    """Start one target's server (and its proxy), measure every case at every concurrency, and
    yield each row as soon as it is measured."""
    spec = TARGETS[target]
    with contextlib.ExitStack() as running:
        started = time.monotonic()
        env = dict(spec["env"])
        if env.get("CONVNET_MODELS_DIR") == "<previous>":
            env["CONVNET_MODELS_DIR"] = str(
                previous_models(tmp / f"{target}-{time.monotonic_ns()}")
            )
        elsewhere = (
            {"cwd": args.checkout, "config": args.checkout / "service" / "gunicorn.conf.py"}
            if spec.get("checkout")
            else {}
        )
        server = GunicornServer(
            tmp=tmp, workers=args.workers, app=spec["app"], env=env, **elsewhere
        )
        running.callback(server.stop)  # also when the start itself fails
        server.start(timeout=120)
        ready_s = time.monotonic() - started
        proxy = None
        if spec.get("nginx"):
            folder = tmp / f"nginx-{server.port}"
            folder.mkdir()
            proxy = running.enter_context(NginxProxy(folder, server.port).running())
        for case in cases:
            for conc in args.concurrency:
                progress(f"{target} {case.path} c={conc}")
                row = measure(server, case, bodies, conc, args.duration, script, proxy)
                row["target"] = target
                row["ready_s"] = round(ready_s, 1)
                yield row


def print_medians(rows: list[dict]) -> None:
    """One line per cell over the rounds: the median and the range of req/s and of p99."""
    cells: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["target"], row["path"], row["body"], row["concurrency"])
        cells.setdefault(key, []).append(row)
    n = max(len(v) for v in cells.values())
    print(f"\nover {n} rounds: median (min-max)")
    print(f"{'target':<17} {'path':<33} {'body':<13} {'c':>3} {'req/s':>20} {'p99 ms':>20}")
    for (target, path, body, conc), group in cells.items():
        rps = sorted(r["rps"] for r in group)
        p99 = sorted(r["p99_ms"] for r in group)
        print(
            f"{target:<17} {path:<33} {body:<13} {conc:>3} "
            f"{f'{statistics.median(rps):.0f} ({rps[0]:.0f}-{rps[-1]:.0f})':>20} "
            f"{f'{statistics.median(p99):.2f} ({p99[0]:.2f}-{p99[-1]:.2f})':>20}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--duration", type=int, default=10, help="seconds per cell (default: %(default)s)"
    )
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 16, 32])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--path", default="", help="only cases whose path contains this")
    p.add_argument("--body", default="", help="only cases whose body file's name contains this")
    p.add_argument("--only", nargs="+", choices=sorted(TARGETS), default=sorted(TARGETS))
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds over all targets, each with fresh servers; then the median of each cell",
    )
    p.add_argument("--out", type=Path, default=ROOT / "artifacts" / "bench.json")
    p.add_argument(
        "--checkout", type=Path, help="another checkout of this repository: service+checkout"
    )
    args = p.parse_args(argv)
    if args.checkout is None:
        if "--only" in (argv or sys.argv) and "service+checkout" in args.only:
            p.error("service+checkout needs --checkout DIR")
        args.only = [t for t in args.only if not TARGETS[t].get("checkout")]
    else:
        args.checkout = args.checkout.resolve()

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp_name:
        tmp = Path(tmp_name)
        script = tmp / "post.lua"
        script.write_text(WRK_SCRIPT)
        plan = {
            t: [
                c
                for c in (SERVICE_CASES if t.startswith("service") else BASELINE_CASES)
                if c.target == t.split("+")[0] and args.path in c.path and args.body in c.body
            ]
            for t in args.only
        }
        bodies = make_bodies(tmp, {c.body for cases in plan.values() for c in cases})
        total = sum(map(len, plan.values())) * len(args.concurrency) * args.repeat
        done = 0

        def progress(cell: str) -> None:
            nonlocal done
            done += 1
            print(f"  [{done}/{total}] {cell} ...", end="\r", file=sys.stderr, flush=True)

        print(
            f"{total} cells x {args.duration} s; {args.workers} workers; wrk on loopback",
            flush=True,
        )
        print(HEADER, flush=True)
        rows = []
        for round_ in range(1, args.repeat + 1):
            # Rounds interleave the targets, so a drift in the machine's speed hits them all.
            for target, cases in plan.items():
                for row in run_target(target, cases, args, tmp, bodies, script, progress):
                    row["round"] = round_
                    rows.append(row)
                    print_row(row)
    if args.repeat > 1:
        print_medians(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    ready: dict[str, set[float]] = {}
    for row in rows:
        ready.setdefault(row["target"], set()).add(row["ready_s"])
    print(
        f"\nwrote {args.out}; ready after start: "
        + ", ".join(
            f"{t} {'-'.join(map(str, sorted({min(v), max(v)})))} s" for t, v in ready.items()
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
