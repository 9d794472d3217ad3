"""A real Prometheus (Debian's package) on a free loopback port, with deploy/'s config rewritten
to scrape one test server every second and nothing else; and the dashboard's queries as Grafana
would send them."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml

from tests.server import ROOT, free_port, stop_process, wait_for_ok

PROMETHEUS = shutil.which("prometheus")
DEPLOY = ROOT / "deploy"
JOB = "convnet-service"


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen
    log_path: Path

    def query(self, expr: str) -> list[dict]:
        r = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert body.get("status") == "success", f"{expr}: {body}"
        return body["data"]["result"]

    def value(self, expr: str) -> float:
        """A query's single value; 0 when it has no series (a counter never incremented)."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr} gave {len(result)} series"
        return float(result[0]["value"][1]) if result else 0.0

    def last_scrape(self) -> float:
        """Start time of the latest successful scrape (timestamp() of a plain selector is the
        sample's own time; of an expression it would be the evaluation time)."""
        result = self.query(f'timestamp(up{{job="{JOB}"}})')
        if not result or self.value(f'up{{job="{JOB}"}}') != 1:
            return 0.0
        return float(result[0]["value"][1])

    def wait_for_scrape_after(self, t: float, timeout: float = 30) -> None:
        """Until a successful scrape started after `t` (so it saw everything done before)."""
        deadline = time.monotonic() + timeout
        while self.last_scrape() <= t:
            assert time.monotonic() < deadline, f"no scrape after {t}:\n{self.log()}"
            time.sleep(0.25)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def prometheus_config(target: str, rules: Path) -> dict:
    """deploy/prometheus/prometheus.yml, pointed at the test server and scraping every second."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(rules)]
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == JOB]
    assert len(jobs) == 1, f"prometheus.yml has no single {JOB} job"
    jobs[0].pop("dns_sd_configs", None)  # compose's replicas, found by DNS: here, one server
    jobs[0]["static_configs"] = [{"targets": [target]}]
    jobs[0]["scrape_timeout"] = "1s"
    config["scrape_configs"] = jobs
    config.pop("alerting", None)
    return config


@contextmanager
def start_prometheus(target: str, tmp: Path) -> Iterator[Prometheus]:
    """deploy/'s Prometheus with its alert rules, scraping `target` every second."""
    config = tmp / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(prometheus_config(target, DEPLOY / "prometheus" / "alerts.yml"))
    )
    port = free_port()
    log_path = tmp / "prometheus.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    prom = Prometheus(url=f"http://127.0.0.1:{port}", proc=proc, log_path=log_path)
    try:

        def exited() -> str | None:
            return None if proc.poll() is None else f"prometheus exited:\n{prom.log()}"

        wait_for_ok(f"{prom.url}/-/ready", 60, exited)
        yield prom
    finally:
        stop_process(proc, 15)


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "convnet-service.json").read_text())
    panels = []
    for panel in dashboard["panels"]:
        panels += [panel, *panel.get("panels", [])]
    return [
        (f"{p['title']} [{t['refId']}]", t["expr"]) for p in panels for t in p.get("targets", [])
    ]


def grafana_substitute(expr: str, variables: dict[str, str]) -> str:
    """What Grafana sends Prometheus: its interval macros and our variables replaced."""
    macros = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h", **variables}
    for name in sorted(macros, key=len, reverse=True):
        expr = expr.replace(f"${{{name}}}", macros[name]).replace(f"${name}", macros[name])
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def rules(prometheus: Prometheus) -> list[dict]:
    groups = requests.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    return [r for g in groups for r in g["rules"]]
