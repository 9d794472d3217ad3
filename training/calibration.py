"""Probabilities that mean what they say, and a flag for images the model does not know.

Fitted at export on images the model never trained on (the held-out split):

- a temperature T (Guo et al. 2017): the served probabilities are softmax(logits / T), with T
  chosen to minimise the negative log-likelihood of the held-out labels;
- a feature distance (Lee et al. 2018): the Mahalanobis distance from the embedding (the layer
  feeding the class layer) to the nearest class mean, with one covariance shared by the classes,
  both estimated on the training images. Images unlike anything in training (noise, blank
  images, another domain) land far from every class mean, often while the softmax is confident;
- the `uncertain` rule: a prediction is uncertain when its confidence is below
  `min_confidence` or its distance above `max_distance`.

Figures are cross-fitted: each half of the held-out split is scored with the temperature and
thresholds fitted on the other half, so that no image grades a parameter it chose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

BINS = 15
# The share of held-out images whose distance may exceed max_distance.
DISTANCE_QUANTILE = 0.99


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] minimising the NLL: a grid on log T, then golden-section refinement
    (the NLL is convex in 1/T)."""
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 61))
    best = int(np.argmin([nll(logits, labels, t) for t in grid]))
    lo, hi = np.log(grid[max(best - 1, 0)]), np.log(grid[min(best + 1, len(grid) - 1)])
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if nll(logits, labels, np.exp(a)) < nll(logits, labels, np.exp(b)):
            hi = b
        else:
            lo = a
    return float(np.exp((lo + hi) / 2))


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> list[dict[str, Any]]:
    """Per confidence bin (equal width on [0, 1]): count, mean confidence and accuracy."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin i holds (edges[i], edges[i + 1]]; a confidence of exactly 0 joins the first bin.
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    rows = []
    for i in range(bins):
        inside = which == i
        n = int(inside.sum())
        rows.append(
            {
                "low": float(edges[i]),
                "high": float(edges[i + 1]),
                "count": n,
                "confidence": float(confidence[inside].mean()) if n else None,
                "accuracy": float(correct[inside].mean()) if n else None,
            }
        )
    return rows


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """ECE (Naeini et al. 2015): the count-weighted mean |accuracy - confidence| over the bins."""
    total = len(labels)
    return float(
        sum(
            r["count"] / total * abs(r["accuracy"] - r["confidence"])
            for r in reliability(probs, labels, bins)
            if r["count"]
        )
    )


@dataclass(frozen=True)
class FeatureGaussians:
    """Class means and a whitening matrix W with W W^T = inverse of the shared covariance."""

    means: np.ndarray  # (classes, D)
    whitening: np.ndarray  # (D, D)

    def distance(self, embeddings: np.ndarray) -> np.ndarray:
        z = embeddings @ self.whitening
        m = self.means @ self.whitening
        d2 = (z**2).sum(1)[:, None] - 2 * z @ m.T + (m**2).sum(1)[None, :]
        return np.sqrt(np.maximum(d2.min(axis=1), 0.0))


def fit_gaussians(embeddings: np.ndarray, labels: np.ndarray, classes: int) -> FeatureGaussians:
    """Class means and the shared covariance, shrunk a little towards its mean variance so that
    it stays invertible (ReLU features have dimensions that are almost always zero)."""
    x = embeddings.astype(np.float64)
    means = np.stack([x[labels == c].mean(axis=0) for c in range(classes)])
    centred = x - means[labels]
    cov = centred.T @ centred / len(x)
    shrink = 0.01
    cov = (1 - shrink) * cov + shrink * np.trace(cov) / len(cov) * np.eye(len(cov))
    whitening = np.linalg.cholesky(np.linalg.inv(cov))  # L L^T = cov^-1
    return FeatureGaussians(means.astype(np.float32), whitening.astype(np.float32))


class FeatureDistance(keras.layers.Layer):
    """The distance from each embedding to the nearest class mean, whitened: part of the served
    graph, so that every engine computes it beside the probabilities."""

    def __init__(self, gaussians: FeatureGaussians, **kwargs) -> None:
        super().__init__(**kwargs)
        self.gaussians = gaussians
        w = gaussians.whitening
        self._whitening = keras.ops.convert_to_tensor(w)
        self._means = keras.ops.convert_to_tensor(gaussians.means @ w)  # means, whitened

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "means": self.gaussians.means.tolist(),
            "whitening": self.gaussians.whitening.tolist(),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FeatureDistance:
        means = np.asarray(config.pop("means"), np.float32)
        whitening = np.asarray(config.pop("whitening"), np.float32)
        return cls(FeatureGaussians(means, whitening), **config)

    def call(self, embeddings):
        ops = keras.ops
        z = ops.matmul(embeddings, self._whitening)
        m = self._means
        d2 = (
            ops.sum(z * z, axis=1, keepdims=True)
            - 2 * ops.matmul(z, ops.transpose(m))
            + ops.sum(m * m, axis=1)[None, :]
        )
        return ops.sqrt(ops.maximum(ops.min(d2, axis=1), 0.0))


def choose_min_confidence(
    confidence: np.ndarray, correct: np.ndarray, keep: np.ndarray, target: float
) -> float:
    """The lowest confidence threshold at which the accuracy of the kept, unflagged predictions
    reaches `target` (1.0 when none does): flag as few as the target allows."""
    order = np.argsort(-confidence[keep])
    conf, ok = confidence[keep][order], correct[keep][order]
    running = np.cumsum(ok) / np.arange(1, len(ok) + 1)
    # Thresholds at each confidence value: keeping the first i predictions.
    meets = np.flatnonzero(running >= target)
    if not len(meets):
        return 1.0
    # The largest prefix meeting the target, cut between two distinct confidences.
    i = meets[-1]
    return float(conf[i])


def _threshold(
    probs: np.ndarray, correct: np.ndarray, keep: np.ndarray, target: float, min_flagged: float
) -> float:
    confidence = probs.max(axis=1)
    by_accuracy = choose_min_confidence(confidence, correct, keep, target)
    return (
        max(by_accuracy, float(np.quantile(confidence, min_flagged)))
        if min_flagged
        else by_accuracy
    )


def flagged(
    probs: np.ndarray, distance: np.ndarray, min_confidence: float, max_distance: float
) -> np.ndarray:
    """The rule the service applies per prediction (service/inference.py describe)."""
    return (probs.max(axis=1) < min_confidence) | (distance > max_distance)


def _rule_figures(
    probs: np.ndarray, distance: np.ndarray, labels: np.ndarray, min_conf: float, max_dist: float
) -> dict[str, float]:
    correct = probs.argmax(axis=1) == labels
    kept = ~flagged(probs, distance, min_conf, max_dist)
    out = ~kept
    return {
        "coverage": float(kept.mean()),
        "accuracy_unflagged": float(correct[kept].mean()) if kept.any() else float("nan"),
        "accuracy_flagged": float(correct[out].mean()) if out.any() else float("nan"),
        "accuracy_all": float(correct.mean()),
    }


def calibrate(
    val_logits: np.ndarray,
    val_embeddings: np.ndarray,
    val_labels: np.ndarray,
    gaussians: FeatureGaussians,
    target_accuracy: float,
    seed: int,
    min_flagged: float = 0.0,
) -> tuple[float, dict[str, Any], dict[str, Any]]:
    """Temperature, and the `calibration` and `uncertainty` sections of the metadata.
    `min_flagged`: flag at least that share of the held-out images by confidence, even where
    the accuracy target allows fewer (a stricter threshold, for images of none of the classes)."""
    labels = val_labels.astype(np.int64)
    distance = gaussians.distance(val_embeddings)
    temperature = fit_temperature(val_logits, labels)
    max_distance = float(np.quantile(distance, DISTANCE_QUANTILE))
    probs = softmax(val_logits / temperature)
    keep = distance <= max_distance
    correct = probs.argmax(axis=1) == labels
    min_confidence = _threshold(probs, correct, keep, target_accuracy, min_flagged)

    # Cross-fitted figures: two seeded halves, each scored with what the other half chose.
    half = np.random.default_rng(seed).permutation(len(labels)) % 2 == 0
    crossed = np.empty_like(probs)
    is_flagged = np.zeros(len(labels), bool)
    for fit, score in ((half, ~half), (~half, half)):
        t = fit_temperature(val_logits[fit], labels[fit])
        crossed[score] = softmax(val_logits[score] / t)
        d_max = float(np.quantile(distance[fit], DISTANCE_QUANTILE))
        p_fit = softmax(val_logits[fit] / t)
        c_min = _threshold(
            p_fit,
            p_fit.argmax(axis=1) == labels[fit],
            distance[fit] <= d_max,
            target_accuracy,
            min_flagged,
        )
        is_flagged[score] = flagged(crossed[score], distance[score], c_min, d_max)
    crossed_correct = crossed.argmax(axis=1) == labels
    raw = softmax(val_logits)

    calibration = {
        "method": "temperature scaling",
        "temperature": temperature,
        "fitted_on": f"the held-out split ({len(labels)} images)",
        "bins": BINS,
        "ece_before": expected_calibration_error(raw, labels),
        "ece_after": expected_calibration_error(crossed, labels),
        "nll_before": nll(val_logits, labels, 1.0),
        "nll_after": float(
            -np.log(np.maximum(crossed[np.arange(len(labels)), labels], 1e-12)).mean()
        ),
        "after_is": "cross-fitted: each half scored with the temperature fitted on the other",
        "reliability_before": reliability(raw, labels),
        "reliability_after": reliability(crossed, labels),
    }
    uncertainty = {
        "rule": "uncertain when confidence < min_confidence or distance > max_distance",
        "min_confidence": min_confidence,
        "max_distance": max_distance,
        "distance": "Mahalanobis distance of the embedding to the nearest class mean "
        "(shared covariance, fitted on the training images)",
        "target_accuracy_unflagged": target_accuracy,
        "min_flagged": min_flagged,
        "distance_quantile": DISTANCE_QUANTILE,
        "validation": {
            "coverage": float((~is_flagged).mean()),
            "accuracy_unflagged": float(crossed_correct[~is_flagged].mean()),
            "accuracy_flagged": (
                float(crossed_correct[is_flagged].mean()) if is_flagged.any() else None
            ),
            "accuracy_all": float(crossed_correct.mean()),
            "figures_are": "cross-fitted, like the calibration's",
        },
        "validation_in_sample": _rule_figures(
            probs, distance, labels, min_confidence, max_distance
        ),
    }
    return temperature, calibration, uncertainty
