"""The explorer page: `GET /` (and `/explorer`) serve `service/explorer/index.html`.

Its scripts, styles and sample images are the app's static files under `/explorer/...`; the page
itself only talks to the public API (`/models`, `/features/<model>`, `/gradcam/<model>`).
"""

from __future__ import annotations

from flask import Blueprint, current_app, redirect, url_for

bp = Blueprint("explorer", __name__)


@bp.get("/")
def index():
    response = current_app.send_static_file("index.html")
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/explorer")
@bp.get("/explorer/")
def explorer():
    return redirect(url_for("explorer.index"))
