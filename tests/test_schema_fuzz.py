"""Schema-driven fuzzing: schemathesis generates requests from the live server's /openapi.json.

Every operation is called with generated (valid and invalid) parameters and bodies; the answers
must never be 5xx and must match the document: a declared status, a declared Content-Type and a
body that validates against the declared schema. The budget is bounded and deterministic for CI;
`SCHEMA_FUZZ_EXAMPLES=500 pytest tests/test_schema_fuzz.py` runs a longer, randomised campaign.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.api.docs import build_openapi

pytestmark = [pytest.mark.server, pytest.mark.slow]

EXAMPLES = int(os.environ.get("SCHEMA_FUZZ_EXAMPLES", "15"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


# Operations at collection time, from the same builder the server uses; the test checks the live
# document has exactly these, then fuzzes each one as the live document describes it.
OPERATIONS = [
    (method.upper(), path)
    for path, ops in build_openapi(["mnist", "scenes"])["paths"].items()
    for method in ops
]


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json", timeout=10)


def test_the_live_document_has_every_operation(api_schema):
    live = {(r.ok().method.upper(), r.ok().path) for r in api_schema.get_all_operations()}
    assert live == set(OPERATIONS)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_api_never_5xx_and_conforms_to_its_schema(api_schema, server, method, path, mode):
    operation = api_schema[path][method]
    if mode is GenerationMode.NEGATIVE and method == "GET" and "{" not in path:
        pytest.skip("no parameters or body to make invalid")

    @given(case=operation.as_strategy(mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,  # wall time is bounded by the example budget and the request timeout
        derandomize="SCHEMA_FUZZ_EXAMPLES" not in os.environ,  # CI: the same cases every run
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    def run(case) -> None:
        response = case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=30)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    statuses: dict[int, int] = {}
    run()
    print(
        f"{method} {path}: {sum(statuses.values())} calls, statuses {dict(sorted(statuses.items()))}"
    )
    assert statuses and max(statuses) < 500


def test_gradcam_png_encoding_regression(server):
    """Found by this fuzz run: /gradcam?encoding=png answered 500 (a 2-D heat map had no tiles)."""
    import requests

    from tests import corpus

    r = requests.post(
        f"{server.url}/gradcam/mnist?encoding=png",
        data=corpus.encode(corpus.digit(7, 64), "PNG"),
        headers={"Content-Type": "image/png"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    heatmap = r.json()["heatmap"]
    assert heatmap["media_type"] == "image/png" and heatmap["grid"] == {"rows": 1, "cols": 1}
