"""Fixtures: an in-process app for unit tests, and the real Gunicorn server for HTTP tests."""

from __future__ import annotations

import os

import pytest

from tests.server import MODELS_DIR, GunicornServer

# Under CI=1 a skip fails the run unless its reason holds one of these: what no CI machine of
# ours can change. Everything else the suite needs, .ci/run installs, so a skip there means a
# test that silently stopped testing.
ALLOWED_SKIPS = (
    # pip-audit asks a vulnerability service (PyPI's, OSV) that CI's network may not reach.
    "vulnerability service unreachable",
    "pip-audit could not run (offline?)",
    # The training data is never committed: the data tests run where ../shared/data exists.
    "training data not found at",
    "MNIST not found at",
    # schemathesis: an operation with no parameter or body has nothing to make invalid.
    "no parameters or body to make invalid",
    # tests/test_docker.py: a machine without a Docker engine cannot build or run the image
    # (.ci/run starts dockerd where it is installed).
    "no Docker engine",
)
_skipped: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped.append((report.nodeid, reason))


def _unexpected_skips() -> list[tuple[str, str]]:
    if not os.environ.get("CI"):
        return []
    return [(n, r) for n, r in _skipped if not any(allowed in r for allowed in ALLOWED_SKIPS)]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _unexpected_skips():
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:
    unexpected = _unexpected_skips()
    if unexpected:
        terminalreporter.section("skips CI does not allow (tests/conftest.py)", red=True)
        for node, reason in unexpected:
            terminalreporter.line(f"{node}: {reason}")


def _require_models() -> None:
    # The models are committed: their absence is a broken checkout, not a reason to skip.
    if not any(MODELS_DIR.glob("*/*/saved_model.pb")):
        pytest.fail(f"no SavedModels under {MODELS_DIR}; train them or check out models/")


@pytest.fixture(scope="session")
def app():
    _require_models()
    from service.app import create_app

    return create_app(models_dir=MODELS_DIR, load_in_background=False)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The real service: Gunicorn, 2 workers, the committed models, a free loopback port."""
    _require_models()
    srv = GunicornServer(tmp=tmp_path_factory.mktemp("server"), workers=2)
    srv.start()
    yield srv
    srv.stop()
