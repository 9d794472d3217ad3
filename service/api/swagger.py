"""`/docs`: Swagger UI 5 on `/openapi.json`, with "Try it out", served from a pip package.

The files come from swagger-ui-bundle-v2 (the maintained fork of spec-first's swagger-ui-bundle,
which stopped at Swagger UI 4; this one ships Swagger UI 5, which reads OpenAPI 3.1), through its
one public name, `swagger_ui_path`: the folder of the release's files. The page and the routes
for its assets are ours, a few lines. We chose it over swagger-ui-py's `api_doc` for what that
one costs: 30 MB installed (Swagger Editor and its source maps, PyYAML, packaging) against 12 MB
with nothing new beside Jinja2, which Flask already brings; a top-level `test` package that
shadows the standard library's where the image strips it; and a spec URL it only takes under its
own prefix (`/docs/../openapi.json`).

No file is fetched from anywhere but this service: `validatorUrl` is off, since Swagger UI would
otherwise send the spec's URL to an online validator for a badge.
"""

from __future__ import annotations

import json
import os

from flask import Blueprint, Response, send_from_directory, url_for
from swagger_ui_bundle import swagger_ui_path

from service.errors import NotFound

bp = Blueprint("swagger", __name__)

# What the page loads; the package's other files (its petstore initializer, source maps, the ES
# module builds) are not served.
ASSETS = ("swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png", "favicon-16x16.png")

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>convnet-service API</title>
<link rel="stylesheet" href="{css}">
<link rel="icon" type="image/png" href="{icon32}" sizes="32x32">
<link rel="icon" type="image/png" href="{icon16}" sizes="16x16">
<style>body {{ margin: 0 }}</style>
</head>
<body>
<div id="swagger-ui"></div>
<script src="{js}"></script>
<script>window.ui = SwaggerUIBundle({config});</script>
</body>
</html>
"""


def _config() -> dict:
    """Swagger UI's options, as FastAPI sets them: no top bar (BaseLayout), deep links."""
    return {
        "url": url_for("docs.openapi"),
        "dom_id": "#swagger-ui",
        "layout": "BaseLayout",
        "deepLinking": True,
        "displayRequestDuration": True,
        "validatorUrl": None,
    }


@bp.get("/docs")
def page():
    # "<" escaped so that no value can close the script element.
    config = json.dumps(_config()).replace("<", "\\u003c")
    html = PAGE.format(
        css=url_for("swagger.asset", name="swagger-ui.css"),
        js=url_for("swagger.asset", name="swagger-ui-bundle.js"),
        icon32=url_for("swagger.asset", name="favicon-32x32.png"),
        icon16=url_for("swagger.asset", name="favicon-16x16.png"),
        config=config,
    )
    response = Response(html, mimetype="text/html")
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/docs/<name>")
def asset(name: str):
    if name not in ASSETS:
        raise NotFound(f"no file {name!r} under /docs; the page is /docs")
    return send_from_directory(os.fspath(swagger_ui_path), name)
