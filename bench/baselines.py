"""The baselines the service is measured against, each a minimal WSGI app under the same Gunicorn.

    hello:     a Flask hello-world POST: the framework's ceiling on this machine
    signature: a minimal Flask app calling the SavedModel's serving signature per request
    keras:     a tutorial-style Flask app calling keras `model.predict()` per request

Run as `gunicorn 'bench.baselines:hello()'` etc. (bench/run.py does this).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from flask import Flask, jsonify, request
from PIL import Image


def _model_path() -> str:
    """BENCH_MODEL_PATH, or the newest mnist version the service itself would serve."""
    from service.registry import find_versions

    return os.environ.get("BENCH_MODEL_PATH") or str(find_versions(Path("models"))["mnist"])


def _mnist_input() -> np.ndarray:
    # The tutorial way: decode, greyscale, resize to the input, scale. No digit normalisation.
    img = Image.open(io.BytesIO(request.get_data())).convert("L").resize((32, 32))
    return (np.asarray(img, np.float32) / 255.0)[np.newaxis, :, :, np.newaxis]


def hello() -> Flask:
    app = Flask("hello")

    @app.post("/<path:anything>")
    def ok(anything: str):
        request.get_data()
        return jsonify({"hello": "world"})

    return app


def signature() -> Flask:
    import tensorflow as tf

    predict = tf.saved_model.load(_model_path()).signatures["serving_default"]
    app = Flask("signature")

    @app.post("/<path:anything>")
    def infer(anything: str):
        probs = predict(image=tf.constant(_mnist_input()))["probabilities"].numpy()[0]
        return jsonify({"probabilities": probs.tolist()})

    return app


def keras_predict() -> Flask:
    import keras

    model = keras.Sequential(
        [keras.layers.TFSMLayer(_model_path(), call_endpoint="serving_default")]
    )
    app = Flask("keras")

    @app.post("/<path:anything>")
    def infer(anything: str):
        out = model.predict(_mnist_input(), verbose=0)
        probs = out["probabilities"] if isinstance(out, dict) else out
        return jsonify({"probabilities": np.asarray(probs)[0].tolist()})

    return app
