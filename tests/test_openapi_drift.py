"""/openapi.json cannot drift from the app: every route and method the app serves is in it, every
request content type the image routes take, and the error statuses each route really answers."""

from __future__ import annotations

import re

import pytest

# Pages for people, not API operations: the explorer, the spec, and their pages' files.
EXPLORER = {"/", "/explorer", "/explorer/", "/explorer/<path:filename>"}
PAGES = EXPLORER | {"/openapi.json", "/docs", "/docs/<name>"}
IMAGE_ROUTES = ("/predict/{model}", "/features/{model}", "/gradcam/{model}", "/snapshots/{model}")


@pytest.fixture(scope="module")
def spec(app) -> dict:
    return app.test_client().get("/openapi.json").get_json()


def test_every_route_and_method_is_in_the_spec(app, spec):
    missing = []
    for rule in app.url_map.iter_rules():
        if rule.rule in PAGES or rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            if method.lower() not in spec["paths"].get(path, {}):
                missing.append(f"{method} {path}")
    assert not missing, missing
    # And nothing in the spec that the app does not serve.
    served = {re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", r.rule) for r in app.url_map.iter_rules()}
    assert set(spec["paths"]) <= served


def test_image_routes_document_every_body_they_take(client, spec):
    from tests import corpus

    digit = corpus.encode(corpus.digit(7, 28), "PNG")
    for path in IMAGE_ROUTES:
        content = spec["paths"][path]["post"]["requestBody"]["content"]
        assert {"application/octet-stream", "multipart/form-data", "application/json"} <= set(
            content
        )
        assert {"image/png", "image/jpeg", "image/heic", "image/avif"} <= set(content)
    # What the spec says is taken is taken: the octet-stream body too.
    r = client.post("/predict/mnist", data=digit, content_type="application/octet-stream")
    assert r.status_code == 200, r.get_json()


def test_each_error_status_a_route_answers_is_documented(client, spec):
    """Provoke the errors and check the answered statuses against the route's documented ones."""
    cases = [
        ("get", "/predict/mnist", "/predict/{model}", {}),  # 405
        ("post", "/predict/nosuchmodel", "/predict/{model}", {"data": b"x"}),  # 404
        (
            "post",
            "/predict/mnist",
            "/predict/{model}",
            {"data": b"hello", "content_type": "text/plain"},
        ),  # 415
        (
            "post",
            "/predict/mnist",
            "/predict/{model}",
            {"data": b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "content_type": "image/png"},
        ),  # 422
        ("post", "/models/mnist", "/models/{model}", {}),  # 405
        ("get", "/models/nosuchmodel", "/models/{model}", {}),  # 404
        (
            "post",
            "/v2/models/mnist/infer",
            "/v2/models/{model}/infer",
            {"data": b"{", "content_type": "application/json"},
        ),  # 400
        ("get", "/v2/models/mnist/infer", "/v2/models/{model}/infer", {}),  # 405
        (
            "post",
            "/v1/models/mnist:predict",
            "/v1/models/{model}:predict",
            {"data": b"{}", "content_type": "application/json"},
        ),  # 400
    ]
    for method, url, path, kwargs in cases:
        r = getattr(client, method)(url, **kwargs)
        assert r.status_code >= 400, (url, r.status_code)
        documented = {status for op in spec["paths"][path].values() for status in op["responses"]}
        assert str(r.status_code) in documented, (method, url, r.status_code, sorted(documented))
        assert r.is_json, (url, r.data[:200])


def test_the_image_formats_are_one_list_in_the_decoder_the_spec_and_the_readme(spec):
    from service.images import ALLOWED_FORMATS, MEDIA_TYPES
    from tests.server import ROOT

    assert tuple(MEDIA_TYPES) == ALLOWED_FORMATS
    for path in IMAGE_ROUTES:
        content = spec["paths"][path]["post"]["requestBody"]["content"]
        images = {t for t in content if t.startswith("image/")}
        assert images == set(MEDIA_TYPES.values()), path
    readme = (ROOT / "README.md").read_text()
    listed = re.search(r"The format comes from the file's bytes \(([^)]*)\)", readme).group(1)
    named = {name.strip().upper().replace("HEIC", "HEIF") for name in listed.split(",")}
    assert named == set(ALLOWED_FORMATS)
