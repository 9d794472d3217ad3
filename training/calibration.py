"""Probabilities that mean what they say, and a flag for images the model does not know.

Fitted at export on images the model never trained on (the held-out split):

- a temperature T (Guo et al. 2017): the served probabilities are softmax(logits / T), with T
  chosen to minimise the negative log-likelihood of the held-out labels;
- a feature distance (Lee et al. 2018): the Mahalanobis distance from the embedding (the layer
  feeding the class layer) to the nearest class mean, with one covariance shared by the classes,
  both estimated on the training images. Images unlike anything in training (noise, blank
  images, another domain) land far from every class mean, often while the softmax is confident.
  A recipe may name earlier feature maps as well (`distance_layers`, the ends of the network's
  stages): each gets the same distance over its channel means. Each head's distance is divided
  by its 99th percentile on the held-out images, and the served distance is the largest of
  these: an image is far when any stage finds it unlike the training images. Early and middle
  layers see what an image is made of (strokes on a flat ground, a texture), which the
  embedding, trained to tell the classes apart, can map close to a class;
- the `uncertain` rule: a prediction is uncertain when its confidence is below
  `min_confidence` or its distance above `max_distance` (1.0: beyond a head's 99th percentile).
  `min_confidence` is the lowest at which a 90 % lower bound of the unflagged held-out
  predictions' accuracy reaches the recipe's target.

Figures are cross-fitted: each half of the held-out split is scored with the temperature and
thresholds fitted on the other half, so that no image grades a parameter it chose.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import keras
import numpy as np

from training.architectures import mean_over_views

BINS = 15
# The share of held-out images whose distance may exceed max_distance.
DISTANCE_QUANTILE = 0.99
# The confidence with which the unflagged predictions' accuracy is to reach the recipe's target:
# the threshold is chosen where a lower bound of it does, not the held-out accuracy itself, which
# would meet the target on these images and fall short of it on new ones about half the time.
TARGET_CONFIDENCE = 0.9


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


@dataclass(frozen=True)
class DistanceHeads:
    """The feature distance over one or more layers: `layers[0]` is the embedding, the others
    feature maps seen through their channel means (ChannelMeans)."""

    layers: list[str]
    gaussians: list[FeatureGaussians]
    scales: list[float]  # each head's distance is divided by its scale

    def head_distances(self, features: list[np.ndarray]) -> np.ndarray:
        """(N, heads): each head's distance, unscaled."""
        pairs = zip(self.gaussians, features, strict=True)
        return np.stack([g.distance(f) for g, f in pairs], axis=1)

    def distance(self, features: list[np.ndarray]) -> np.ndarray:
        return scaled_distance(self.head_distances(features), self.scales)


def scaled_distance(head_distances: np.ndarray, scales: list[float] | np.ndarray) -> np.ndarray:
    return (head_distances / np.asarray(scales)).max(axis=1)


def fit_heads(
    layers: list[str], train_features: list[np.ndarray], labels: np.ndarray, classes: int
) -> DistanceHeads:
    """Gaussians per layer on the training images; scales 1 until calibrate() fits them."""
    gaussians = [fit_gaussians(f, labels, classes) for f in train_features]
    return DistanceHeads(layers, gaussians, [1.0] * len(layers))


class ChannelMeans(keras.layers.Layer):
    """(B, H, W, C) -> (N, C): a feature map's mean per channel; with test-time views (B = (1 +
    views) N, each image then its views) the mean over the image and its views, as the embedding
    is (ViewMean)."""

    def __init__(self, views: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.views = views

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "views": self.views}

    def call(self, maps):
        return mean_over_views(keras.ops.mean(maps, axis=(1, 2)), self.views)


class FeatureDistance(keras.layers.Layer):
    """DistanceHeads.distance in the served graph, so that every engine computes it beside the
    probabilities: its inputs are the heads' features, in the heads' order."""

    def __init__(self, heads: DistanceHeads, **kwargs) -> None:
        super().__init__(**kwargs)
        self.heads = heads
        self._whitening = [keras.ops.convert_to_tensor(g.whitening) for g in heads.gaussians]
        # The means, whitened.
        self._means = [keras.ops.convert_to_tensor(g.means @ g.whitening) for g in heads.gaussians]

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "layers": self.heads.layers,
            "means": [g.means.tolist() for g in self.heads.gaussians],
            "whitening": [g.whitening.tolist() for g in self.heads.gaussians],
            "scales": self.heads.scales,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FeatureDistance:
        gaussians = [
            FeatureGaussians(np.asarray(m, np.float32), np.asarray(w, np.float32))
            for m, w in zip(config.pop("means"), config.pop("whitening"), strict=True)
        ]
        heads = DistanceHeads(config.pop("layers"), gaussians, config.pop("scales"))
        return cls(heads, **config)

    def call(self, features):
        ops = keras.ops
        if not isinstance(features, list | tuple):
            features = [features]
        distances = []
        for f, w, m, scale in zip(
            features, self._whitening, self._means, self.heads.scales, strict=True
        ):
            z = ops.matmul(f, w)
            d2 = (
                ops.sum(z * z, axis=1, keepdims=True)
                - 2 * ops.matmul(z, ops.transpose(m))
                + ops.sum(m * m, axis=1)[None, :]
            )
            distances.append(ops.sqrt(ops.maximum(ops.min(d2, axis=1), 0.0)) / scale)
        return distances[0] if len(distances) == 1 else ops.max(ops.stack(distances), axis=0)


def accuracy_lower_bound(right: np.ndarray, count: np.ndarray, level: float) -> np.ndarray:
    """One-sided Wilson score lower bound, at confidence `level`, of the accuracy behind `right`
    correct answers out of `count`."""
    z = NormalDist().inv_cdf(level)
    p = right / count
    centre = p + z**2 / (2 * count)
    spread = z * np.sqrt(p * (1 - p) / count + z**2 / (4 * count**2))
    return (centre - spread) / (1 + z**2 / count)


def choose_min_confidence(
    confidence: np.ndarray,
    correct: np.ndarray,
    keep: np.ndarray,
    target: float,
    level: float = TARGET_CONFIDENCE,
) -> float:
    """The lowest confidence threshold at which the accuracy of the kept, unflagged predictions
    reaches `target` with confidence `level` (its lower bound does; 1.0 when none does): flag as
    few as the target allows, with a margin for the held-out split's own sampling noise."""
    order = np.argsort(-confidence[keep])
    conf, ok = confidence[keep][order], correct[keep][order]
    # Thresholds at each confidence value: keeping the first i predictions.
    running = accuracy_lower_bound(np.cumsum(ok), np.arange(1, len(ok) + 1), level)
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
    head_distances: np.ndarray,
    val_labels: np.ndarray,
    layers: list[str],
    target_accuracy: float,
    seed: int,
    min_flagged: float = 0.0,
) -> tuple[float, list[float], dict[str, Any], dict[str, Any]]:
    """Temperature, the distance heads' scales, and the `calibration` and `uncertainty` sections
    of the metadata. `head_distances`: (N, heads), the held-out images' distances per head.
    `min_flagged`: flag at least that share of the held-out images by confidence, even where
    the accuracy target allows fewer (a stricter threshold, for images of none of the classes)."""
    labels = val_labels.astype(np.int64)
    temperature = fit_temperature(val_logits, labels)
    scales = [float(s) for s in np.quantile(head_distances, DISTANCE_QUANTILE, axis=0)]
    distance = scaled_distance(head_distances, scales)
    max_distance = 1.0  # beyond one head's quantile
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
        fit_scales = np.quantile(head_distances[fit], DISTANCE_QUANTILE, axis=0)
        p_fit = softmax(val_logits[fit] / t)
        c_min = _threshold(
            p_fit,
            p_fit.argmax(axis=1) == labels[fit],
            scaled_distance(head_distances[fit], fit_scales) <= max_distance,
            target_accuracy,
            min_flagged,
        )
        d_score = scaled_distance(head_distances[score], fit_scales)
        is_flagged[score] = flagged(crossed[score], d_score, c_min, max_distance)
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
        "distance": "Mahalanobis distance to the nearest class mean (shared covariance, fitted "
        "on the training images) of the embedding and of each other distance layer's channel "
        "means, each divided by its distance_scale (its 99th percentile on the held-out "
        "images); the largest of these",
        "distance_layers": layers,
        "distance_scales": scales,
        "target_accuracy_unflagged": target_accuracy,
        "target_confidence": TARGET_CONFIDENCE,
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
    return temperature, scales, calibration, uncertainty
