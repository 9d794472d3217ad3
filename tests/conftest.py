"""Fixtures: an in-process app for unit tests, and the real Gunicorn server for HTTP tests."""

from __future__ import annotations

import pytest

from tests.server import MODELS_DIR, GunicornServer


def pytest_configure(config):
    if not any(MODELS_DIR.glob("*/*/saved_model.pb")):
        raise pytest.UsageError(f"no SavedModels under {MODELS_DIR}; train them or check out models/")


@pytest.fixture(scope="session")
def app():
    from service.app import create_app

    return create_app(models_dir=MODELS_DIR, load_in_background=False)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The real service: Gunicorn, 2 workers, the committed models, a free loopback port."""
    srv = GunicornServer(tmp=tmp_path_factory.mktemp("server"), workers=2)
    srv.start()
    yield srv
    srv.stop()
