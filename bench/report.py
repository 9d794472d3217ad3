"""A `python -m bench.run` result as docs/performance.md shows it: the goals, one table, one chart.

    python -m bench.report artifacts/bench.json                      # markdown on stdout
    python -m bench.report artifacts/bench.json --chart docs/bench.png

With several rounds (`bench.run --repeat N`) every figure is the median of its cell over the
rounds, and req/s also shows the range. The goals are the performance issue's, judged against the
baselines of the same run (never against figures from another hour: the machine's speed varies).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.bodies import LABELS

MNIST = ("/predict/mnist", "digit28.png")


@dataclass(frozen=True)
class Cell:
    """One (target, request, concurrency) over every round of a run."""

    target: str
    path: str
    body: str
    concurrency: int
    rounds: int
    rps: float
    rps_low: float
    rps_high: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    cpu_us: float
    rss_mb: int  # the largest worker's, in any round
    wrk_pct: float
    ready_s: float  # the slowest start


def cells(rows: list[dict]) -> dict[tuple[str, str, str, int], Cell]:
    groups: dict[tuple[str, str, str, int], list[dict]] = {}
    for row in rows:
        key = (row["target"], row["path"], row["body"], row["concurrency"])
        groups.setdefault(key, []).append(row)
    out = {}
    for key, group in groups.items():
        rps = [r["rps"] for r in group]

        def median(field: str, group: list[dict] = group) -> float:
            return statistics.median(r[field] for r in group)

        out[key] = Cell(
            *key,
            rounds=len(group),
            rps=statistics.median(rps),
            rps_low=min(rps),
            rps_high=max(rps),
            p50_ms=median("p50_ms"),
            p90_ms=median("p90_ms"),
            p99_ms=median("p99_ms"),
            errors=sum(r["errors"] for r in group),
            cpu_us=median("cpu_us_per_request"),
            rss_mb=max(max(r["worker_rss_mb"]) for r in group),
            wrk_pct=median("wrk_cpu_pct"),
            ready_s=max(r["ready_s"] for r in group),
        )
    return out


@dataclass(frozen=True)
class Goal:
    what: str
    goal: str
    measured: str  # "" when the run lacks the cells it needs
    met: bool | None  # None: nothing to judge (a figure to report, or cells missing)


def _get(table: dict, target: str, case: tuple[str, str], c: int) -> Cell | None:
    return table.get((target, *case, c))


# The ways the service itself serves, each judged against the goals (the other service+ targets
# are a proxy in front, another engine, or upper bounds that are not ways to serve).
JUDGED = ("service", "service+batching")


def goals(
    table: dict[tuple[str, str, str, int], Cell], concurrency: int = 16, target: str = "service"
) -> list[Goal]:
    """The performance issue's goals for one target, from the cells of one run."""
    c = concurrency
    service = _get(table, target, MNIST, c)
    out = []
    if service:
        out.append(
            Goal(
                f"`/predict/mnist`, one 28x28 PNG, {c} clients",
                ">= 2,500 req/s, p99 <= 20 ms",
                f"{service.rps:,.0f} req/s, p99 {service.p99_ms:.1f} ms",
                service.rps >= 2500 and service.p99_ms <= 20,
            )
        )
    # Against the baselines of the same run: a share of the ceiling, a multiple of the tutorial.
    for name, what, floor in (
        ("hello", "... against the hello-world ceiling", 0.65),
        ("keras", "... against `model.predict()` per request", 100),
    ):
        base = _get(table, name, MNIST, c)
        if service and base:
            ratio = service.rps / base.rps
            if floor < 1:
                shown, asked = f"{ratio * 100:.0f} %", f">= {floor * 100:.0f} %"
            else:
                shown, asked = f"{ratio:.0f}x", f">= {floor}x"
            measured = f"{shown} ({name} {base.rps:,.0f} req/s)"
            out.append(Goal(what, asked, measured, ratio >= floor))
    for case, what, floor in (
        (("/predict/scenes", "scene32.png"), "`/predict/scenes`, one 32x32 PNG", 1000),
        (("/predict/scenes", "photo1024.jpg"), "`/predict/scenes`, 1024x768 JPEG", None),
        (("/features/mnist?encoding=base64", "digit28.png"), "`/features/mnist`, base64", 500),
    ):
        cell = _get(table, target, case, c)
        if cell:
            measured = f"{cell.rps:,.0f} req/s, p99 {cell.p99_ms:.1f} ms"
            if floor is None:
                out.append(Goal(what, "report it", measured, None))
            else:
                out.append(Goal(what, f">= {floor:,} req/s", measured, cell.rps >= floor))
    served = [cell for cell in table.values() if cell.target == target]
    if served:
        rss = max(cell.rss_mb for cell in served)
        ready = max(cell.ready_s for cell in served)
        out.append(Goal("memory per worker", "<= 500 MB", f"{rss} MB at most", rss <= 500))
        out.append(Goal("ready after start", "<= 10 s", f"{ready:.1f} s at most", ready <= 10))
    return out


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "**not met**", None: ""}[met]


def goals_markdown(table: dict[tuple[str, str, str, int], Cell]) -> str:
    """One row per goal, a measured column and a verdict for each judged target in the run."""
    judged = {t: goals(table, target=t) for t in JUDGED}
    judged = {t: found for t, found in judged.items() if found}
    rows: dict[tuple[str, str], dict[str, Goal]] = {}
    for target, found in judged.items():
        for g in found:
            rows.setdefault((g.what, g.goal), {})[target] = g
    header = ["goal", "asked", *(name for t in judged for name in (_name(t), ""))]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---|---|" * len(judged)]
    for (what, asked), by_target in rows.items():
        cells = [
            f"{g.measured} | {_verdict(g.met)}" if (g := by_target.get(t)) else " | "
            for t in judged
        ]
        lines.append(f"| {what} | {asked} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _name(target: str) -> str:
    return f"**{target}**" if target == "service" else target


def overview_markdown(table: dict[tuple[str, str, str, int], Cell]) -> str:
    """One row per target and request, one column per concurrency: req/s, then p99 in ms."""
    levels = sorted({cell.concurrency for cell in table.values()})
    rows: dict[tuple[str, str, str], dict[int, Cell]] = {}
    for cell in table.values():
        rows.setdefault((cell.target, cell.path, cell.body), {})[cell.concurrency] = cell
    lines = [
        "| target | request | " + " | ".join(f"c={c}" for c in levels) + " |",
        "|---|---|" + "---|" * len(levels),
    ]
    for (target, path, body), by_c in rows.items():
        figures = [
            f"{by_c[c].rps:,.0f} / {by_c[c].p99_ms:.1f}" if c in by_c else "" for c in levels
        ]
        lines.append(
            f"| {_name(target)} | `{path}` {LABELS.get(body, body)} | " + " | ".join(figures) + " |"
        )
    return "\n".join(lines) + "\n"


def markdown(table: dict[tuple[str, str, str, int], Cell]) -> str:
    rounds = max(cell.rounds for cell in table.values())
    lines = [
        goals_markdown(table),
        f"Every figure: the median of its cell over {rounds} round{'s' * (rounds > 1)}"
        + (", req/s with its range below." if rounds > 1 else "."),
        "",
        "req/s / p99 ms, by concurrent clients:",
        "",
        overview_markdown(table),
        "| target | request | c | req/s | p50 ms | p90 ms | p99 ms | errors | CPU/req | RSS/worker | wrk CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in table.values():
        rps = f"{cell.rps:,.0f}"
        if cell.rounds > 1:
            rps += f" ({cell.rps_low:,.0f}-{cell.rps_high:,.0f})"
        name = _name(cell.target)
        request = f"`{cell.path}` {LABELS.get(cell.body, cell.body)}"
        lines.append(
            f"| {name} | {request} | {cell.concurrency} | {rps} | {cell.p50_ms:.2f} | "
            f"{cell.p90_ms:.2f} | {cell.p99_ms:.2f} | {cell.errors} | {cell.cpu_us:,.0f} us | "
            f"{cell.rss_mb} MB | {cell.wrk_pct:.0f} % |"
        )
    return "\n".join(lines) + "\n"


def chart(table: dict[tuple[str, str, str, int], Cell], path: Path) -> None:
    """Top: every target on the one-digit request, req/s and p99 by concurrency (log scales).
    Bottom: each request the service was sent, at each concurrency."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(13, 9))
    grid = fig.add_gridspec(2, 2)
    ax_rps, ax_p99 = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    ax_cases = fig.add_subplot(grid[1, :])
    targets = list(dict.fromkeys(cell.target for cell in table.values()))
    for target in targets:
        series = sorted(
            (cell for key, cell in table.items() if key[0] == target and key[1:3] == MNIST),
            key=lambda cell: cell.concurrency,
        )
        if not series:
            continue
        xs = [cell.concurrency for cell in series]
        style = {"linewidth": 2.5} if target == "service" else {"linewidth": 1.5}
        ax_rps.errorbar(
            xs,
            [cell.rps for cell in series],
            yerr=[
                [cell.rps - cell.rps_low for cell in series],
                [cell.rps_high - cell.rps for cell in series],
            ],
            marker="o",
            capsize=3,
            label=target,
            **style,
        )
        ax_p99.plot(xs, [cell.p99_ms for cell in series], marker="o", label=target, **style)
    ax_rps.set(title="/predict/mnist, one 28x28 PNG", xlabel="concurrent clients", ylabel="req/s")
    ax_rps.set_yscale("log")
    ax_p99.set(title="p99 latency, same requests", xlabel="concurrent clients", ylabel="ms")
    ax_p99.set_yscale("log")
    levels = sorted({cell.concurrency for cell in table.values()})
    for ax in (ax_rps, ax_p99):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.minorticks_off()
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)

    cases = list(
        dict.fromkeys((cell.path, cell.body) for cell in table.values() if cell.target == "service")
    )
    width = 0.8 / max(len(levels), 1)
    for i, c in enumerate(levels):
        heights = [
            table[("service", *case, c)].rps if ("service", *case, c) in table else 0
            for case in cases
        ]
        xs = [j + (i - (len(levels) - 1) / 2) * width for j in range(len(cases))]
        ax_cases.bar(xs, heights, width, label=f"{c} client{'s' * (c > 1)}")
    ax_cases.set_xticks(
        range(len(cases)),
        [f"{path.split('?')[0]}\n{LABELS.get(body, body)}" for path, body in cases],
        fontsize=8,
    )
    ax_cases.set(title="service: every request it was sent, by concurrent clients", ylabel="req/s")
    ax_cases.set_yscale("log")
    ax_cases.set_ylim(
        top=3 * max((cell.rps for cell in table.values() if cell.target == "service"), default=1)
    )
    ax_cases.grid(True, axis="y", which="both", alpha=0.3)
    ax_cases.legend(fontsize=8, loc="upper right", ncols=len(levels))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n")[0])
    p.add_argument("result", type=Path, help="the JSON that `python -m bench.run --out` wrote")
    p.add_argument("--chart", type=Path, help="also draw the figures into this PNG")
    args = p.parse_args(argv)
    table = cells(json.loads(args.result.read_text()))
    if not table:
        print(f"{args.result} holds no measured cell", file=sys.stderr)
        return 1
    sys.stdout.write(markdown(table))
    if args.chart:
        chart(table, args.chart)
        print(f"\nwrote {args.chart}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
