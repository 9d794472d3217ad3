"""Outlier exposure: the synthetic noise images and how training uses them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from tests.test_training import SHARED_DATA, needs_data
from training.outliers import synthetic_outliers
from training.recipes import MNIST, SCENES
from training.train import InScopeAccuracy, make_datasets, split


@pytest.mark.parametrize("recipe", [MNIST, SCENES], ids=lambda r: r.name)
def test_outliers_are_seeded_noise_in_the_models_input_form(recipe):
    a = synthetic_outliers(40, recipe.preprocessing, seed=5)
    assert a.shape == (40, *recipe.input_shape) and a.dtype == np.uint8
    assert np.array_equal(a, synthetic_outliers(40, recipe.preprocessing, seed=5))
    assert not np.array_equal(a, synthetic_outliers(40, recipe.preprocessing, seed=6))
    # Forty different images, nearly all with something in them.
    assert len({x.tobytes() for x in a}) == 40
    assert (a.reshape(40, -1).max(axis=1) > 0).mean() > 0.9


def test_digit_outliers_are_normalised_like_a_served_digit():
    """The service's digit normalisation puts the ink in a 28 px canvas centred in 32 px: the
    two outer rows and columns of every input stay black."""
    a = synthetic_outliers(60, MNIST.preprocessing, seed=2)[..., 0]
    assert not a[:, :2].any() and not a[:, -2:].any()
    assert not a[:, :, :2].any() and not a[:, :, -2:].any()


def test_in_scope_accuracy_leaves_outlier_rows_out():
    metric = InScopeAccuracy()
    y_true = tf.constant([[1.0, 0, 0], [0, 1.0, 0], [1 / 3, 1 / 3, 1 / 3], [0.05, 0.9, 0.05]])
    y_pred = tf.constant([[0.9, 0.1, 0], [0.8, 0.2, 0], [0.1, 0.1, 0.8], [0.2, 0.7, 0.1]])
    metric.update_state(y_true, y_pred)
    # Rows 0 and 3 right, row 1 wrong, row 2 (equal target) not counted.
    assert float(metric.result()) == pytest.approx(2 / 3)
    metric.reset_state()
    metric.update_state(y_true[2:3], y_pred[2:3])
    assert float(metric.result()) == 0.0  # no row with a class: nothing to score, not nan


@needs_data
def test_training_set_gains_the_outliers_with_equal_targets_and_validation_none():
    # The whole training part (one cheap augmentation, to keep it quick): a smoke run's max_batches
    # would cut the epoch short of some of the rows.
    recipe = dataclasses.replace(MNIST, outliers=50, augment={"translation": 0.06})
    ds = recipe.load(SHARED_DATA)
    train_idx, val_idx = split(recipe, ds, seed=3, max_batches=None)
    train, val, x_val, y_val = make_datasets(recipe, ds, seed=3, max_batches=None)
    targets = np.concatenate([y.numpy() for _, y in train])
    even = np.isclose(targets, 0.1).all(axis=1)
    assert len(targets) == len(train_idx) + 50 and even.sum() == 50
    assert np.isclose(targets[~even].max(axis=1), 1).all()
    val_targets = np.concatenate([y.numpy() for _, y in val])
    assert not np.isclose(val_targets, 0.1).all(axis=1).any()
    assert len(y_val) == len(x_val) == len(val_idx)


@needs_data
def test_a_smoke_run_trains_max_batches_an_epoch_outliers_included():
    recipe = dataclasses.replace(MNIST, outliers=50, augment={"translation": 0.06})
    ds = recipe.load(SHARED_DATA)
    train, *_ = make_datasets(recipe, ds, seed=3, max_batches=2)
    assert int(train.cardinality()) == 2
    assert sum(len(y) for _, y in train) == 2 * recipe.batch_size


def test_a_recipe_cannot_both_distil_and_expose_outliers(tmp_path):
    from training.train import train

    recipe = dataclasses.replace(MNIST, outliers=10, teacher=lambda n: None, teacher_epochs=1)
    with pytest.raises(ValueError, match="not both"):
        train(recipe, tmp_path, seed=1, epochs=1, max_batches=1)
