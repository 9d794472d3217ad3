"""Supply chain: pip-audit over the installed environment and over pyproject's lower bounds; the
lock files (requirements/*.txt) hashed, within pyproject's bounds, and what CI installed.

pip-audit asks PyPI's vulnerability API (the advisories of the PyPA advisory database and
GitHub's). Where that API cannot be reached, or answers for no package (a registry mirror without
the per-version JSON endpoints), the tests skip and say so: nothing audited is not a pass.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ROOT / "requirements"
# The packages whose behaviour the code leans on (Gunicorn's hooks, prometheus-client's
# multiprocess mode, Flask's and Werkzeug's request handling, Pillow's decoders): a new major
# version must be a decision, not an accident of `pip install`.
UPPER_BOUNDED = ("gunicorn", "prometheus-client", "flask", "werkzeug", "pillow")


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirements(extra: str | None = None) -> list[Requirement]:
    """pyproject's requirements: the serving ones, or an extra's (the extras it names included)."""
    if extra is None:
        return [Requirement(r) for r in project()["dependencies"]]
    out = []
    for r in map(Requirement, project()["optional-dependencies"][extra]):
        if r.name == project()["name"]:
            out += [x for e in sorted(r.extras) for x in requirements(e)]
        else:
            out.append(r)
    return out


def locked(name: str) -> dict[str, str]:
    """{package: version} pinned by requirements/<name>.txt, each with its hashes."""
    pins = {}
    for entry in re.split(r"\n(?=\S)", (LOCKS / f"{name}.txt").read_text()):
        if entry.startswith("#") or not entry.strip():
            continue
        match = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", entry)
        assert match, f"requirements/{name}.txt: not an exact pin: {entry[:80]}"
        assert "--hash=sha256:" in entry, f"requirements/{name}.txt: {match[1]} has no hash"
        pins[canonicalize_name(match[1])] = match[2]
    return pins


def test_the_code_s_dependencies_have_next_major_upper_bounds():
    bounds = {canonicalize_name(r.name): r.specifier for r in requirements()}
    for name in UPPER_BOUNDED:
        lower = next(s for s in bounds[name] if s.operator == ">=")
        upper = [s for s in bounds[name] if s.operator == "<"]
        v = Version(lower.version)
        # Semantic versioning's "next major": for 0.x, where minor releases may break, 0.(x+1).
        nxt = str(v.major + 1) if v.major else f"0.{v.minor + 1}"
        assert [s.version for s in upper] == [nxt], bounds[name]


@pytest.mark.parametrize(
    ("lock", "extras"), [("serve", []), ("convert", ["convert"]), ("dev", ["dev"])]
)
def test_each_lock_pins_what_pyproject_asks_within_its_bounds(lock, extras):
    pins = locked(lock)
    wanted = requirements() + [r for e in extras for r in requirements(e)]
    for r in wanted:
        if r.marker is None or r.marker.evaluate():
            version = pins.get(canonicalize_name(r.name))
            assert version, f"requirements/{lock}.txt lacks {r.name}"
            assert r.specifier.contains(version, prereleases=True), (lock, r, version)
    # The build backend is locked too: the project installs with --no-build-isolation.
    assert "setuptools" in pins


def test_serving_locks_no_training_packages_and_every_lock_agrees():
    """The runtime image installs serve.txt: TensorFlow, Keras and matplotlib are training's
    (and the converter's) only. One version of each package across the locks."""
    serve, convert, dev = locked("serve"), locked("convert"), locked("dev")
    assert not {"tensorflow", "tensorflow-cpu", "keras", "matplotlib"} & set(serve)
    assert "tensorflow-cpu" in convert and "matplotlib" not in convert  # keras: TensorFlow needs it
    for pins in (serve, convert):
        assert {name: dev[name] for name in pins} == pins


def test_the_environment_is_the_locked_one():
    """CI installs requirements/dev.txt (make install): what the tests run on is what is locked."""
    drift = {}
    for name, version in locked("dev").items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if name not in ("pip", "setuptools", "wheel") and installed != version:
            drift[name] = (version, installed)
    assert not drift, f"installed packages differ from requirements/dev.txt: {drift}"


def _needs_pip_audit() -> None:
    pytest.importorskip("pip_audit", reason="pip-audit not installed (pip install -e '.[dev]')")


# The packages that parse untrusted input or speak HTTP: their floors must be patched releases.
EXPOSED = ("pillow", "pillow-heif", "werkzeug", "gunicorn", "flask")


def audit(*args: str) -> list[dict]:
    _needs_pip_audit()
    run = subprocess.run(
        [sys.executable, "-m", "pip_audit", "--progress-spinner", "off", "-f", "json", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    try:
        report = json.loads(run.stdout)
    except json.JSONDecodeError:
        pytest.skip(f"pip-audit could not run (offline?): {run.stderr.strip()[-500:]}")
    deps = report["dependencies"]
    audited = [d for d in deps if "skip_reason" not in d]
    if not audited:
        reason = deps[0]["skip_reason"] if deps else run.stderr.strip()[-300:]
        pytest.skip(f"pip-audit audited no package (vulnerability service unreachable?): {reason}")
    return audited


def lower_bounds() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    bounds = {}
    for requirement in project["dependencies"]:
        match = re.fullmatch(
            r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)(\s*,\s*<\s*[0-9][0-9A-Za-z.]*)?",
            requirement,
        )
        assert match, f"every dependency has a plain lower bound (and an upper): {requirement}"
        bounds[match[1].lower()] = match[2]
    return bounds


def test_the_exposed_packages_have_lower_bounds():
    assert set(EXPOSED) <= set(lower_bounds())


def test_installed_environment_has_no_known_vulnerabilities():
    audited = audit("--skip-editable")
    vulnerable = {
        f"{d['name']} {d['version']}": [v["id"] for v in d["vulns"]] for d in audited if d["vulns"]
    }
    print(f"\npip-audit: {len(audited)} installed packages audited")
    assert not vulnerable, vulnerable


def test_lower_bounds_are_not_known_vulnerable(tmp_path):
    """The oldest releases pyproject allows of the exposed packages: no known advisory."""
    bounds = lower_bounds()
    requirements = tmp_path / "floors.txt"
    requirements.write_text("".join(f"{name}=={bounds[name]}\n" for name in EXPOSED))
    audited = audit("-r", str(requirements), "--no-deps", "--disable-pip")
    vulnerable = {
        f"{d['name']} {d['version']}": [v["id"] for v in d["vulns"]] for d in audited if d["vulns"]
    }
    assert not vulnerable, f"raise these lower bounds in pyproject.toml: {vulnerable}"
