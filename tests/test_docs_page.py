"""`/docs`, Swagger UI, in real headless Chromium against the real service: it renders every
operation of /openapi.json from the service's own files, and "Try it out" calls the live server.

The browser and page fixtures are the explorer's (tests/test_explorer.py): Debian's chromium,
console errors and every request the page makes recorded.
"""

from __future__ import annotations

import requests

from tests import corpus
from tests.test_explorer import assert_clean, browser, page, pytestmark, shot

__all__ = ["browser", "page", "pytestmark"]  # the fixtures and skip marks this module uses


def open_docs(page, url: str) -> dict:
    """Open /docs, wait until Swagger UI has rendered the spec, and return the spec."""
    spec = requests.get(f"{url}/openapi.json", timeout=30).json()
    page.goto(f"{url}/docs")
    page.wait_for_selector(".swagger-ui .opblock")
    return spec


def operation(page, method: str, path: str):
    return page.locator(f'.opblock-{method}:has(.opblock-summary-path[data-path="{path}"])')


def try_it_out(block) -> None:
    block.locator(".opblock-summary").click()
    block.locator("button.try-out__btn").click()


def execute(block) -> tuple[str, str]:
    """Run the request from the page; the live response's status and body as Swagger UI shows them."""
    block.locator("button.execute").click()
    live = block.locator(".live-responses-table .response")
    live.wait_for()
    return (
        live.locator(".response-col_status").inner_text().strip(),
        live.locator(".response-col_description pre").first.inner_text(),
    )


def test_docs_lists_every_operation_of_the_spec_from_the_service_itself(page, server):
    spec = open_docs(page, server.url)
    assert page.locator(".swagger-ui .info .title").inner_text().startswith(spec["info"]["title"])
    shown = {
        (
            block.get_attribute("class").split("opblock-")[1].split()[0],
            block.locator(".opblock-summary-path").get_attribute("data-path"),
        )
        for block in page.locator(".opblock").all()
    }
    documented = {(method, path) for path, ops in spec["paths"].items() for method in ops}
    assert shown == documented
    # Swagger UI 5, which reads OpenAPI 3.1: the spec's version badge shows it.
    assert "OAS 3.1" in page.locator(".swagger-ui .info").inner_text()
    shot(page, "docs")
    assert any(u == f"{server.url}/openapi.json" for u in page.urls)
    assert_clean(page, server.url)


def test_try_it_out_lists_the_models(page, server):
    open_docs(page, server.url)
    block = operation(page, "get", "/models")
    try_it_out(block)
    status, body = execute(block)
    assert status == "200"
    served = {m["name"] for m in requests.get(f"{server.url}/models", timeout=30).json()["models"]}
    assert all(f'"{name}"' in body for name in served)
    assert_clean(page, server.url)


def test_try_it_out_predicts_an_uploaded_image(page, server, tmp_path):
    open_docs(page, server.url)
    block = operation(page, "post", "/predict/{model}")
    try_it_out(block)
    block.locator('tr[data-param-name="model"] select').select_option("mnist")
    block.locator(".body-param-content-type select").select_option("image/png")
    image = tmp_path / "seven.png"
    image.write_bytes(corpus.encode(corpus.digit(7), "PNG"))
    block.locator('.opblock-body input[type="file"]').set_input_files(image)
    status, body = execute(block)
    shot(page, "docs-try-it-out")
    assert status == "200", body
    assert '"model": "mnist"' in body and '"predictions"' in body
    assert_clean(page, server.url)
