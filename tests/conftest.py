"""Fixtures: an in-process app for unit tests, and the real Gunicorn server for HTTP tests."""

from __future__ import annotations

import pytest

from tests.server import MODELS_DIR, GunicornServer


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
