"""Supply chain: pip-audit over the installed environment and over pyproject's lower bounds.

pip-audit asks PyPI's vulnerability API (the advisories of the PyPA advisory database and
GitHub's). Where that API cannot be reached, or answers for no package (a registry mirror without
the per-version JSON endpoints), the tests skip and say so: nothing audited is not a pass.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytest.importorskip("pip_audit", reason="pip-audit not installed (pip install -e '.[dev]')")

ROOT = Path(__file__).resolve().parents[1]
# The packages that parse untrusted input or speak HTTP: their floors must be patched releases.
EXPOSED = ("pillow", "pillow-heif", "werkzeug", "gunicorn", "flask")


def audit(*args: str) -> list[dict]:
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
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)", requirement)
        assert match, f"every dependency has a plain lower bound: {requirement}"
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
