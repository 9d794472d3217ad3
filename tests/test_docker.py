"""The image and the compose stack, built and run for real: the Dockerfile builds, the image is
small and has no TensorFlow, it serves every endpoint read-only as non-root, and compose runs
several replicas behind nginx with Prometheus scraping each of them.

Needs a Docker engine and the base images (.ci/run starts dockerd and, where Docker Hub cannot be
reached, builds local stand-ins). Without an engine the tests skip and say so.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest
import requests

from tests import corpus
from tests.server import wait_for_ok

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "convnet-service:ci"
PROJECT = "convnet-ci"
MAX_IMAGE_BYTES = 600 * 10**6
REPLICAS = 3

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    out = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and out.returncode:
        raise AssertionError(f"docker {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout.strip()


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("docker") is None:
        pytest.skip("no Docker engine: the docker command is not installed")
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode:
        pytest.skip("no Docker engine: `docker info` gets no answer (start dockerd)")
    docker("build", "--tag", IMAGE, str(ROOT), timeout=900)
    return IMAGE


def wait_ready(url: str, seconds: float = 120) -> None:
    wait_for_ok(f"{url}/readyz", seconds)


def check_every_endpoint(url: str) -> None:
    """A prediction per model, its features, Grad-CAM and weights, and the explorer page."""
    models = requests.get(f"{url}/models", timeout=10).json()
    names = sorted(m["name"] for m in models["models"])
    assert names == sorted(p.name for p in (ROOT / "models").iterdir() if p.is_dir())
    for name in names:
        image = corpus.encode(corpus.digit(7, 64) if name == "mnist" else corpus.photo(), "PNG")
        headers = {"Content-Type": "image/png"}
        for route in ("predict", "features", "gradcam"):
            r = requests.post(f"{url}/{route}/{name}", data=image, headers=headers, timeout=60)
            assert r.status_code == 200, f"/{route}/{name}: {r.status_code} {r.text[:300]}"
        # Written beside the engine by the build stage: the runtime has no TensorFlow to read them.
        r = requests.get(f"{url}/models/{name}/weights", params={"encoding": "base64"}, timeout=60)
        assert r.status_code == 200 and r.json()["layers"], f"{name}'s weights: {r.text[:300]}"
    for page in ("/", "/docs"):  # the explorer, Swagger UI
        r = requests.get(f"{url}{page}", timeout=10)
        assert r.status_code == 200 and "text/html" in r.headers["Content-Type"], page
    assert requests.get(f"{url}/openapi.json", timeout=10).json()["paths"]


def check_every_version(url: str) -> None:
    """Each committed version, the older ones loaded on demand: their engines were converted at
    build time (the runtime has no TensorFlow to convert them)."""
    digit = base64.b64encode(corpus.encode(corpus.digit(7, 64), "PNG")).decode()
    photo = base64.b64encode(corpus.encode(corpus.photo(), "PNG")).decode()
    for version in sorted((ROOT / "models").glob("*/[0-9]*/saved_model.pb")):
        name, number = version.parent.parent.name, version.parent.name
        body = {"instances": [{"b64": digit if name == "mnist" else photo}]}
        r = requests.post(
            f"{url}/v1/models/{name}/versions/{number}:predict", json=body, timeout=60
        )
        assert r.status_code == 200, f"{name} v{number}: {r.status_code} {r.text[:300]}"


def test_the_image_is_small_and_has_no_tensorflow_or_compiler(image):
    size = int(docker("image", "inspect", "--format", "{{.Size}}", image))
    assert size <= MAX_IMAGE_BYTES, f"{image} is {size / 1e6:.0f} MB"
    probe = (
        "import importlib.util as u, shutil; "
        "print(u.find_spec('tensorflow'), u.find_spec('service._digit') is not None, "
        "shutil.which('gcc'))"
    )
    assert docker("run", "--rm", image, "python", "-c", probe).split() == ["None", "True", "None"]


def test_the_image_serves_every_endpoint_read_only_as_non_root(image):
    container = docker(
        "run", "--detach", "--read-only", "--tmpfs", "/tmp", "--publish", "127.0.0.1::8000", image
    )
    try:
        port = docker("port", container, "8000/tcp").splitlines()[0].rsplit(":", 1)[1]
        url = f"http://127.0.0.1:{port}"
        wait_ready(url)
        assert docker("exec", container, "id", "-u") != "0"
        check_every_endpoint(url)
        check_every_version(url)
        logs = subprocess.run(["docker", "logs", container], capture_output=True, text=True)
        assert "Traceback" not in logs.stdout + logs.stderr, logs.stderr[-2000:]
    finally:
        docker("rm", "--force", container, check=False)


def test_a_digit_kernel_that_cannot_build_fails_the_build_naming_the_cause(image):
    """Without Python's C headers setuptools' own error blames the compiler; the Dockerfile's
    install step (CONVNET_REQUIRE_DIGIT_KERNEL=1) stops instead and names the package to add."""
    docker("build", "--target", "deps", "--tag", f"{IMAGE}-deps", str(ROOT), timeout=900)
    script = (
        "mkdir /tmp/b && cp -r /src/pyproject.toml /src/setup.py /src/README.md /src/service "
        "/src/training /tmp/b && cd /tmp/b && rm -f service/*.so "
        '&& rm "$(python -c \'import sysconfig; print(sysconfig.get_paths()["include"])\')/Python.h" '
        "&& CONVNET_REQUIRE_DIGIT_KERNEL=1 pip install --no-deps --no-build-isolation -e ."
    )
    run = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--volume",
            f"{ROOT}:/src:ro",
            f"{IMAGE}-deps",
            "sh",
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode != 0, run.stdout[-2000:]
    assert "Python.h is missing" in run.stdout + run.stderr, (run.stdout + run.stderr)[-3000:]
    assert "python3-dev" in run.stdout + run.stderr


def compose(*args: str, timeout: float = 300) -> str:
    """docker-compose (v1, Debian's package) or `docker compose` (v2), whichever is here."""
    v1 = shutil.which("docker-compose")
    command = [v1] if v1 else ["docker", "compose"]
    out = subprocess.run(
        [*command, "--project-name", PROJECT, "--file", str(ROOT / "docker-compose.yml"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert out.returncode == 0, f"compose {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def replica_addresses() -> list[str]:
    ids = docker(
        "ps",
        "--quiet",
        "--filter",
        f"label=com.docker.compose.project={PROJECT}",
        "--filter",
        "label=com.docker.compose.service=service",
    ).split()
    return sorted(
        docker("inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", i)
        for i in ids
    )


def predictions_counted(address: str) -> float:
    """The replica's own count of /predict/mnist requests, from its /metrics."""
    text = requests.get(f"http://{address}:8000/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if (
            line.startswith("convnet_http_requests_total{")
            and 'endpoint="/predict/<model>"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_compose_spreads_requests_over_replicas_and_prometheus_scrapes_each(image):
    env_image = docker("image", "inspect", "--format", "{{.Id}}", image)
    assert env_image
    docker("tag", image, "convnet-service:latest")
    services = ["service", "proxy", "prometheus"]  # Grafana has no local stand-in
    try:
        compose("up", "--detach", "--no-build", "--scale", f"service={REPLICAS}", *services)
        proxy = "http://127.0.0.1:8080"
        wait_ready(proxy, seconds=180)
        addresses = replica_addresses()
        assert len(addresses) == REPLICAS, addresses
        before = {a: predictions_counted(a) for a in addresses}
        digit = corpus.encode(corpus.digit(4, 64), "PNG")
        statuses = [
            requests.post(
                f"{proxy}/predict/mnist",
                data=digit,
                headers={"Content-Type": "image/png"},
                timeout=30,
            ).status_code
            for _ in range(60)
        ]
        assert statuses == [200] * 60
        served = {a: predictions_counted(a) - before[a] for a in addresses}
        assert all(n > 0 for n in served.values()), served
        assert sum(served.values()) == 60, served
        # nginx keeps the metrics to the network inside.
        assert requests.get(f"{proxy}/metrics", timeout=10).status_code == 404
        check_every_endpoint(proxy)
        # Prometheus finds every replica by DNS and has their samples.
        query = urllib.parse.quote('up{job="convnet-service"}')
        deadline = time.monotonic() + 90
        while True:
            result = requests.get(
                f"http://127.0.0.1:9090/api/v1/query?query={query}", timeout=10
            ).json()["data"]["result"]
            up = sorted(r["metric"]["instance"] for r in result if r["value"][1] == "1")
            if len(up) == REPLICAS or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert [re.sub(r":8000$", "", i) for i in up] == addresses, json.dumps(result)
    finally:
        compose("down", "--volumes", "--timeout", "10")
