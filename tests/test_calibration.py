"""Calibration and the `uncertain` rule: the fitting (training/calibration.py) on known cases."""

from __future__ import annotations

import numpy as np
import pytest

from training import calibration


def _sampled(n: int, temperature: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose labels are drawn from softmax(logits / temperature): a model whose right
    temperature is known."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 4, (n, 5))
    p = calibration.softmax(logits / temperature)
    labels = np.array([rng.choice(5, p=row) for row in p])
    return logits, labels


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_the_temperature_labels_were_drawn_with(true_t):
    logits, labels = _sampled(20_000, true_t)
    assert calibration.fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.05)


def test_temperature_scaling_brings_the_ece_down():
    logits, labels = _sampled(20_000, 2.5)
    before = calibration.expected_calibration_error(calibration.softmax(logits), labels)
    t = calibration.fit_temperature(logits, labels)
    after = calibration.expected_calibration_error(calibration.softmax(logits / t), labels)
    assert before > 0.1 and after < 0.02


def test_ece_of_known_bins():
    # Two bins: confidence 0.9 right 3 times in 4 (gap 0.15), confidence 0.6 right twice in 2.
    probs = np.array([[0.9, 0.1]] * 4 + [[0.6, 0.4]] * 2)
    labels = np.array([0, 0, 0, 1, 0, 0])
    assert calibration.expected_calibration_error(probs, labels) == pytest.approx(
        4 / 6 * 0.15 + 2 / 6 * 0.4
    )
    rows = calibration.reliability(probs, labels)
    assert len(rows) == calibration.BINS and sum(r["count"] for r in rows) == 6


def test_min_confidence_is_the_lowest_threshold_that_meets_the_target():
    confidence = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6])
    correct = np.array([True, True, True, False, True, False])
    keep = np.ones(6, bool)
    # At level 0.5 the bound is the accuracy itself. Keeping the top 3 is 100 %, the top 5 is
    # 80 %: a 0.8 target keeps 5, down to 0.7.
    assert calibration.choose_min_confidence(confidence, correct, keep, 0.8, level=0.5) == 0.7
    assert calibration.choose_min_confidence(confidence, correct, keep, 1.0, level=0.5) == 0.9
    assert calibration.choose_min_confidence(confidence, ~correct, keep, 0.99) == 1.0
    # At 90 %, six images are too few to vouch for 80 %: the top 3 (100 %) already bound to 70 %.
    assert calibration.choose_min_confidence(confidence, correct, keep, 0.8) == 1.0
    assert calibration.choose_min_confidence(confidence, correct, keep, 0.5) == 0.7


def test_accuracy_lower_bound_is_wilsons():
    bound = calibration.accuracy_lower_bound(np.array([97.0, 970.0]), np.array([100, 1000]), 0.9)
    # Wilson's score interval by hand, z = 1.28155: 97/100 -> 0.93943, 970/1000 -> 0.96228.
    np.testing.assert_allclose(bound, [0.93943, 0.96228], atol=1e-5)
    assert calibration.accuracy_lower_bound(np.array([97.0]), np.array([100]), 0.5)[0] == 0.97


def test_the_threshold_meets_its_target_on_new_images_with_the_confidence_asked():
    """Chosen on one sample and scored on a fresh one from the same population, the unflagged
    accuracy reaches the target in about 90 % of draws; without the margin, in about half."""
    rng = np.random.default_rng(7)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        confidence = rng.uniform(0.4, 1.0, n)
        return confidence, rng.random(n) < confidence  # right with probability = confidence

    met = {0.5: 0, 0.9: 0}
    trials = 200
    for _ in range(trials):
        conf_fit, ok_fit = draw(1500)
        conf_new, ok_new = draw(20_000)
        for level in met:
            t = calibration.choose_min_confidence(conf_fit, ok_fit, np.ones(1500, bool), 0.9, level)
            met[level] += ok_new[conf_new >= t].mean() >= 0.9
    assert 0.3 < met[0.5] / trials < 0.7
    assert met[0.9] / trials > 0.8


def test_distance_is_the_whitened_distance_to_the_nearest_class_mean():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 1, (500, 3)), rng.normal(10, 2, (500, 3))])
    y = np.repeat([0, 1], 500)
    g = calibration.fit_gaussians(x, y, 2)
    d = g.distance(np.array([[0.0, 0, 0], [10, 10, 10], [100, -100, 50]], np.float32))
    assert d[0] < 1 and d[1] < 1 and d[2] > 20
    # The graph's layer computes what the numpy reference does.
    layer = calibration.FeatureDistance(calibration.DistanceHeads(["embedding"], [g], [1.0]))
    probe = rng.normal(5, 5, (8, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(layer(probe)), g.distance(probe), rtol=1e-4)


def test_several_heads_flag_an_image_any_one_of_them_finds_far():
    """The distance is the largest scaled head: an image ordinary in the embedding but unlike
    the training images at an earlier layer is far."""
    rng = np.random.default_rng(4)
    y = np.repeat([0, 1], 500)
    embedding = rng.normal(0, 1, (1000, 3)) + 5 * y[:, None]
    early = rng.normal(0, 1, (1000, 4))
    heads = calibration.fit_heads(["embedding", "early"], [embedding, early], y, 2)
    heads = calibration.DistanceHeads(heads.layers, heads.gaussians, [2.0, 3.0])
    ordinary = np.array([[0.0, 0, 0]], np.float32)
    odd_early = np.array([[0.0, 9, -9, 9]], np.float32)
    per_head = heads.head_distances([ordinary, odd_early])
    assert per_head[0, 0] < 1 and per_head[0, 1] > 10
    assert heads.distance([ordinary, odd_early])[0] == pytest.approx(per_head[0, 1] / 3.0)
    # The served graph's layer computes the same.
    probe = [
        rng.normal(0, 3, (8, 3)).astype(np.float32),
        rng.normal(0, 3, (8, 4)).astype(np.float32),
    ]
    layer = calibration.FeatureDistance(heads)
    np.testing.assert_allclose(np.asarray(layer(probe)), heads.distance(probe), rtol=1e-4)
    # Each head's 99th percentile becomes its scale: about 2 % flagged by either of two heads.
    distances = heads.head_distances([embedding, early])
    logits = np.stack([-embedding[:, 0], embedding[:, 0]], axis=1)
    _, scales, _, rule = calibration.calibrate(logits, distances, y, heads.layers, 0.5, seed=1)
    far = calibration.scaled_distance(distances, scales) > rule["max_distance"]
    assert 0.01 <= far.mean() <= 0.02


def test_calibrate_reports_cross_fitted_figures_and_meets_its_target():
    rng = np.random.default_rng(2)
    logits, labels = _sampled(4000, 2.0, seed=3)
    embeddings = rng.normal(0, 1, (4000, 4)) + labels[:, None]
    heads = calibration.fit_heads(["embedding"], [embeddings], labels, 5)
    distances = heads.head_distances([embeddings])
    t, scales, calib, rule = calibration.calibrate(
        logits, distances, labels, heads.layers, 0.9, seed=1
    )
    # The distance in units of its 99th percentile on these images: 1 % beyond the threshold.
    assert scales == [pytest.approx(np.quantile(distances[:, 0], 0.99))]
    assert rule["max_distance"] == 1.0
    assert t == calib["temperature"] and calib["ece_after"] < calib["ece_before"]
    assert rule["validation_in_sample"]["accuracy_unflagged"] >= 0.9
    # Cross-fitted: close to the target, not necessarily on it.
    assert rule["validation"]["accuracy_unflagged"] > 0.87
    assert 0 < rule["validation"]["coverage"] < 1
