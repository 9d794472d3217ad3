"""What one /predict/mnist request costs inside the app, with no network and no Gunicorn.

    python -m bench.inprocess            # 5,000 requests per line

Calls the WSGI app directly with a prepared environ, in one process on one core, and prints the
microseconds per request: the hello-world baseline, the service, then the service with one stage
after another replaced by its precomputed result (decode + preprocess, the model call and its
response body, reading the image from the request, the metrics hooks). Each difference is what that
stage costs inside a whole request, where caches are colder than in a loop over the stage alone.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from werkzeug.test import EnvironBuilder

from bench.baselines import hello
from bench.bodies import make_bodies


def per_request_us(app: Callable, environ: dict, body: bytes, n: int) -> float:
    statuses: list[str] = []

    def call() -> None:
        env = dict(environ, **{"wsgi.input": io.BytesIO(body)})
        out = app(env, lambda status, headers, exc_info=None: statuses.append(status))
        b"".join(out)
        if hasattr(out, "close"):
            out.close()

    call()
    if not statuses[0].startswith("200"):  # timing an error answer would measure nothing
        raise SystemExit(f"{environ['PATH_INFO']} answered {statuses[0]}")
    for _ in range(n // 10):  # warm up
        call()
    started = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - started) / n * 1e6


def main(n: int = 5000) -> None:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        run(n)
        return
    # Set before the app imports prometheus_client, as in the workers (gunicorn.conf.py).
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as metrics_dir:  # removed after
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        try:
            run(n)
        finally:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]


def run(n: int) -> None:
    from service import codecs, inference
    from service.app import create_app
    from service.config import Settings

    with tempfile.TemporaryDirectory() as folder:
        body = make_bodies(Path(folder), {"digit28.png"})["digit28.png"].read_bytes()
    environ = EnvironBuilder(
        path="/predict/mnist", method="POST", data=body, content_type="image/png"
    ).get_environ()
    service = create_app(Settings.from_env(load_in_background=False))
    state = service.extensions["convnet"]
    model = state.registry.get("mnist")
    batch = inference.prepare(model, [body], state.limits, state.metrics)
    result = inference.predict(model, [body], state.limits, state.metrics)

    print(f"{'hello (Flask)':45s} {per_request_us(hello(), environ, body, n):7.0f} us")
    print(f"{'service /predict/mnist':45s} {per_request_us(service, environ, body, n):7.0f} us")
    # Each step replaces one more stage by its result; the module functions are looked up at
    # call time, so patching them here reaches the blueprint.
    steps = [
        ("- decode + preprocess", lambda: setattr(inference, "prepare", lambda *a: batch)),
        ("- model call, response body", lambda: setattr(inference, "predict", lambda *a: result)),
        ("- reading the image", lambda: setattr(codecs, "images_from_request", lambda *a: [body])),
        (
            "- request metrics hooks",
            lambda: [
                f.clear()
                for f in (
                    service.before_request_funcs,
                    service.after_request_funcs,
                    service.teardown_request_funcs,
                )
            ],
        ),
    ]
    for name, remove in steps:
        remove()
        print(f"{name:45s} {per_request_us(service, environ, body, n):7.0f} us")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("n", type=int, nargs="?", default=5000, help="requests per line")
    args = parser.parse_args()
    main(args.n)
