"""Train one recipe: data pipeline, fit, evaluate on the held-out split."""

from __future__ import annotations

import dataclasses
import itertools
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from training import calibration, data
from training.export import Calibrated, distance_inputs, logits_and_embedding
from training.outliers import synthetic_outliers
from training.recipes import Recipe
from training.snapshots import Snapshot, SnapshotRecorder


@dataclass
class TrainResult:
    model: keras.Model
    history: dict[str, list[float]]
    evaluation: dict
    training: dict
    snapshots: list[Snapshot] = field(default_factory=list)  # the network while it learned
    # An exported version's snapshots/ folder, when the weights were read from that version.
    snapshot_dir: Path | None = None


def elastic_distort(images: tf.Tensor, alpha: float, sigma: float) -> tf.Tensor:
    """Simard et al. (2003) elastic distortion of a batch of NHWC images.

    Each pixel moves by a random field drawn uniform in [-1, 1], smoothed by a Gaussian of
    `sigma` pixels and scaled by `alpha`; the image is resampled bilinearly, zeros outside.
    """
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    radius = int(2 * sigma)
    taps = tf.range(-radius, radius + 1, dtype=tf.float32)
    g = tf.exp(-(taps**2) / (2 * sigma**2))
    g = g / tf.reduce_sum(g)
    field = tf.random.uniform(tf.stack([b, h, w, 2]), -1.0, 1.0)
    # Separable blur, the two displacement channels independently.
    kx = tf.tile(tf.reshape(g, [1, -1, 1, 1]), [1, 1, 2, 1])
    ky = tf.tile(tf.reshape(g, [-1, 1, 1, 1]), [1, 1, 2, 1])
    field = tf.nn.depthwise_conv2d(field, kx, [1, 1, 1, 1], "SAME")
    field = tf.nn.depthwise_conv2d(field, ky, [1, 1, 1, 1], "SAME") * alpha
    yy, xx = tf.meshgrid(
        tf.range(h, dtype=tf.float32), tf.range(w, dtype=tf.float32), indexing="ij"
    )
    y = yy[None] + field[..., 0]
    x = xx[None] + field[..., 1]
    y0, x0 = tf.floor(y), tf.floor(x)
    wy, wx = (y - y0)[..., None], (x - x0)[..., None]
    padded = tf.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]])  # zero border for out-of-range taps
    batch = tf.broadcast_to(tf.range(b)[:, None, None], tf.stack([b, h, w]))

    def tap(dy: float, dx: float) -> tf.Tensor:
        yi = tf.clip_by_value(tf.cast(y0 + dy, tf.int32) + 1, 0, h + 1)
        xi = tf.clip_by_value(tf.cast(x0 + dx, tf.int32) + 1, 0, w + 1)
        return tf.gather_nd(padded, tf.stack([batch, yi, xi], axis=-1))

    top = tap(0, 0) * (1 - wx) + tap(0, 1) * wx
    bottom = tap(1, 0) * (1 - wx) + tap(1, 1) * wx
    return top * (1 - wy) + bottom * wy


def cutout(images: tf.Tensor, size: int) -> tf.Tensor:
    """DeVries & Taylor (2017): one `size` x `size` square per image, at a uniformly random centre
    (partly outside the image near the edges), set to mid-grey."""
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    top = tf.random.uniform(tf.stack([b, 1, 1]), 0, h, tf.int32) - size // 2
    left = tf.random.uniform(tf.stack([b, 1, 1]), 0, w, tf.int32) - size // 2
    ys = tf.range(h)[None, :, None]
    xs = tf.range(w)[None, None, :]
    inside = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return tf.where(inside[..., None], tf.constant(0.5, images.dtype), images)


def shear_x(images: tf.Tensor, factor: float) -> tf.Tensor:
    """A random horizontal shear per image, uniform in [-factor, factor] around the centre row:
    the slant of handwriting. Bilinear, zeros outside (the digits' black background)."""
    shape = tf.shape(images)
    b, h = shape[0], tf.cast(shape[1], tf.float32)
    s = tf.random.uniform(tf.stack([b]), -factor, factor)
    zeros, ones = tf.zeros_like(s), tf.ones_like(s)
    # Output (x, y) reads input (x + s (y - h/2), y).
    transforms = tf.stack([ones, s, -s * h / 2, zeros, ones, zeros, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=shape[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )


def stroke_width(images: tf.Tensor, share: float) -> tf.Tensor:
    """Thicker strokes (a 3x3 dilation, a marker) for `share` of the images and thinner ones (a
    2x2 erosion, a fine pen) for another `share`; bright ink on dark."""
    thick = tf.nn.max_pool2d(images, 3, 1, "SAME")
    thin = -tf.nn.max_pool2d(-images, 2, 1, "SAME")
    draw = tf.random.uniform(tf.stack([tf.shape(images)[0], 1, 1, 1]))
    return tf.where(draw < share, thick, tf.where(draw < 2 * share, thin, images))


def handwriting_variants(x: np.ndarray, y: np.ndarray, share: float, seed: int) -> np.ndarray:
    """A copy of the digits where `share` of the 1s get the continental flag (a stroke down to
    the left from the top) and `share` of the 7s a crossing bar: shapes MNIST barely has.
    Bright ink on dark, (N, H, W, 1) uint8."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = x.copy()
    for label in (1, 7):
        picks = np.flatnonzero(y == label)
        for i in rng.choice(picks, int(share * len(picks)), replace=False):
            img = Image.fromarray(out[i, ..., 0])
            ink = np.argwhere(out[i, ..., 0] > 128)
            if not len(ink):
                continue
            top, bottom = int(ink[:, 0].min()), int(ink[:, 0].max())
            draw = ImageDraw.Draw(img)
            width = int(rng.integers(2, 4))
            if label == 1:  # from the top of the stroke, down and to the left
                x0 = float(ink[ink[:, 0] <= top + 2][:, 1].mean())
                dx, dy = rng.uniform(4, 8), rng.uniform(3, 7)
                draw.line([(x0, top), (x0 - dx, top + dy)], fill=255, width=width)
            else:  # a bar across the stem, a little below the middle
                row = top + int((bottom - top) * rng.uniform(0.45, 0.65))
                at_row = ink[np.abs(ink[:, 0] - row) <= 1][:, 1]
                if not len(at_row):
                    continue
                centre, half = float(at_row.mean()), rng.uniform(3, 6)
                draw.line([(centre - half, row), (centre + half, row)], fill=255, width=width)
            out[i, ..., 0] = np.asarray(img)
    return out


def _augmenter(recipe: Recipe, seed: int) -> keras.Sequential:
    a = recipe.augment
    steps: list[keras.layers.Layer] = []
    # One seed per random layer: layers given the same seed make the same draws, so one image
    # would be flipped, rotated, zoomed and shifted in lockstep.
    seeds = itertools.count(seed)
    if a.get("elastic_alpha"):
        alpha, sigma = a["elastic_alpha"], a["elastic_sigma"]
        steps.append(
            keras.layers.Lambda(lambda x: elastic_distort(x, alpha, sigma), name="elastic")
        )
    if a.get("stroke"):
        share = a["stroke"]
        steps.append(keras.layers.Lambda(lambda x: stroke_width(x, share), name="stroke"))
    if a.get("shear"):
        factor = a["shear"]
        steps.append(keras.layers.Lambda(lambda x: shear_x(x, factor), name="shear"))
    if a.get("flip"):
        steps.append(keras.layers.RandomFlip("horizontal", seed=next(seeds)))
    if a.get("rotation"):
        steps.append(
            keras.layers.RandomRotation(a["rotation"], fill_mode="constant", seed=next(seeds))
        )
    if a.get("zoom"):
        steps.append(keras.layers.RandomZoom(a["zoom"], fill_mode="constant", seed=next(seeds)))
    if a.get("translation"):
        t = a["translation"]
        # Reflect for photos (like pad-and-crop), zeros for digits on a black background.
        fill = "reflect" if recipe.input_shape[-1] == 3 else "constant"
        steps.append(keras.layers.RandomTranslation(t, t, fill_mode=fill, seed=next(seeds)))
    if a.get("cutout"):
        size = int(a["cutout"])
        steps.append(keras.layers.Lambda(lambda x: cutout(x, size), name="cutout"))
    return keras.Sequential(steps, name="augment")


def _augment_fn(recipe: Recipe, seed: int):
    """Scale a uint8 batch and augment it; `clean_fraction` of the images stay as they are, so
    the model also sees images exactly as they will be served."""
    augment = _augmenter(recipe, seed)
    clean = recipe.augment.get("clean_fraction", 0.0)

    def fn(x: tf.Tensor) -> tf.Tensor:
        x = _scale(x, recipe)
        out = augment(x, training=True)
        if clean:
            keep = tf.random.uniform(tf.stack([tf.shape(x)[0], 1, 1, 1])) < clean
            out = tf.where(keep, x, out)
        return out

    return fn


def _scale(x: np.ndarray | tf.Tensor, recipe: Recipe) -> tf.Tensor:
    p = recipe.preprocessing
    return tf.cast(x, tf.float32) * p["scale"] + p["offset"]


def split(
    recipe: Recipe, ds: data.Dataset, seed: int, max_batches: int | None
) -> tuple[np.ndarray, np.ndarray]:
    train_idx, val_idx = data.stratified_split(ds.y, recipe.val_fraction, seed)
    if max_batches is not None:  # smoke runs: a few batches end to end
        train_idx = train_idx[: max_batches * recipe.batch_size]
        val_idx = val_idx[: max_batches * recipe.batch_size]
    return train_idx, val_idx


def _outlier_count(recipe: Recipe, max_batches: int | None) -> int:
    """The recipe's outliers; a smoke run's share of them, one batch's worth at most."""
    if max_batches is None:
        return recipe.outliers
    return min(recipe.outliers, recipe.batch_size)


def make_datasets(
    recipe: Recipe,
    ds: data.Dataset,
    seed: int,
    max_batches: int | None,
    targets: np.ndarray | None = None,
) -> tuple[tf.data.Dataset, tf.data.Dataset, np.ndarray, np.ndarray]:
    """The seeded split as datasets. `targets` (one row per image) replaces the labels as what the
    model is fitted to; the returned y_val is always the labels."""
    train_idx, val_idx = split(recipe, ds, seed, max_batches)
    fit_to = ds.y if targets is None else targets
    if targets is None and (recipe.label_smoothing or recipe.outliers):  # one-hot targets
        fit_to = np.eye(len(recipe.classes), dtype=np.float32)[ds.y]
    x_val = _scale(ds.x[val_idx], recipe).numpy()
    y_val = ds.y[val_idx]
    augment = _augment_fn(recipe, seed)
    x_train, y_train = ds.x[train_idx], fit_to[train_idx]
    if recipe.augment.get("variants"):  # drawn once, on the training images only
        x_train = handwriting_variants(x_train, ds.y[train_idx], recipe.augment["variants"], seed)
    if count := _outlier_count(recipe, max_batches):
        # Drawn once with a seed of their own; fitted to the same probability for every class.
        noise = synthetic_outliers(count, recipe.preprocessing, seed + 1_000)
        even = np.full((count, len(recipe.classes)), 1 / len(recipe.classes), np.float32)
        x_train, y_train = np.concatenate([x_train, noise]), np.concatenate([y_train, even])
    train = (
        tf.data.Dataset.from_tensor_slices((x_train, y_train))
        .shuffle(len(x_train), seed=seed, reshuffle_each_iteration=True)
        .batch(recipe.batch_size)
        # A smoke run trains on max_batches batches an epoch, outliers or not.
        .take(-1 if max_batches is None else max_batches)
        .map(lambda x, y: (augment(x), y))
        .prefetch(tf.data.AUTOTUNE)
    )
    val = tf.data.Dataset.from_tensor_slices((x_val, fit_to[val_idx])).batch(512)
    return train, val, x_val, y_val


def distillation_loss(alpha: float, temperature: float):
    """Labels' cross-entropy (weight alpha) plus cross-entropy to the teacher's softened outputs
    (weight 1 - alpha, scaled by T^2 as in Hinton et al.). y_true rows: label, teacher logits.

    The model ends in a softmax, so its logits are recovered as log-probabilities: softmax is
    unchanged by the constant that separates the two.
    """

    def loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        labels = tf.cast(y_true[:, 0], tf.int32)
        hard = keras.losses.sparse_categorical_crossentropy(labels, y_pred)
        log_p = tf.math.log(tf.clip_by_value(y_pred, 1e-12, 1.0))
        teacher = tf.nn.softmax(y_true[:, 1:] / temperature)
        soft = -tf.reduce_sum(teacher * tf.nn.log_softmax(log_p / temperature), axis=-1)
        return alpha * hard + (1 - alpha) * temperature**2 * soft

    return loss


class StopAfter(keras.callbacks.Callback):
    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None) -> None:
        if epoch + 1 >= self.epochs:
            self.model.stop_training = True


class InScopeAccuracy(keras.metrics.Metric):
    """Accuracy over the rows whose target has a class (one-hot or smoothed); outlier rows, whose
    target is the same for every class, have no right answer and are left out."""

    def __init__(self, name: str = "accuracy", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.right = self.add_variable(shape=(), initializer="zeros", name="right")
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None) -> None:
        has_class = tf.reduce_max(y_true, axis=-1) > tf.reduce_min(y_true, axis=-1)
        right = tf.equal(tf.argmax(y_true, axis=-1), tf.argmax(y_pred, axis=-1))
        self.right.assign_add(tf.reduce_sum(tf.cast(right & has_class, tf.float32)))
        self.total.assign_add(tf.reduce_sum(tf.cast(has_class, tf.float32)))

    def result(self):
        return tf.math.divide_no_nan(self.right, self.total)

    def reset_state(self) -> None:
        self.right.assign(0.0)
        self.total.assign(0.0)


def label_accuracy(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Accuracy against the label in column 0 of distillation targets."""
    labels = tf.cast(y_true[:, 0], tf.int64)
    return tf.cast(tf.equal(tf.argmax(y_pred, axis=-1), labels), tf.float32)


def _fit(
    model: keras.Model,
    recipe: Recipe,
    train_ds,
    val_ds,
    epochs: int,
    loss,
    metric,
    callbacks: list[keras.callbacks.Callback] = (),
) -> keras.callbacks.History:
    per_epoch = max(1, int(train_ds.cardinality().numpy()))
    warmup = min(recipe.warmup_epochs, epochs - 1) * per_epoch
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0 if warmup else recipe.learning_rate,
        decay_steps=per_epoch * epochs - warmup,
        warmup_target=recipe.learning_rate if warmup else None,
        warmup_steps=warmup,
    )
    model.compile(optimizer=_optimizer(recipe, schedule), loss=loss, metrics=[metric])
    # A live progress bar on a terminal; one line per epoch in a log file.
    return model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=epochs,
        verbose=1 if sys.stdout.isatty() else 2,
        callbacks=list(callbacks),
    )


def teach(
    recipe: Recipe, ds: data.Dataset, seed: int, max_batches: int | None
) -> tuple[np.ndarray, dict]:
    """Train the recipe's teacher on the same split; its logits for every image, and its figures."""
    train_ds, val_ds, x_val, y_val = make_datasets(recipe, ds, seed, max_batches)
    teacher = recipe.teacher(len(recipe.classes))
    print(f"teacher {teacher.name}: {recipe.teacher_epochs} epochs", flush=True)
    started = time.monotonic()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    _fit(teacher, recipe, train_ds, val_ds, recipe.teacher_epochs, loss, "accuracy")
    wall = time.monotonic() - started
    used = np.concatenate(split(recipe, ds, seed, max_batches))
    logits = np.zeros((len(ds.y), len(recipe.classes)), np.float32)
    logits[used] = teacher.predict(_scale(ds.x[used], recipe), batch_size=1024, verbose=0)
    val_logits = teacher.predict(x_val, batch_size=1024, verbose=0)
    figures = {
        "architecture": teacher.name,
        "parameters": int(teacher.count_params()),
        "epochs": recipe.teacher_epochs,
        "validation_accuracy": float((val_logits.argmax(axis=1) == y_val).mean()),
        "wall_time_seconds": round(wall, 1),
        "temperature": recipe.distill_temperature,
        "alpha": recipe.distill_alpha,
    }
    print(f"teacher validation accuracy {figures['validation_accuracy']:.4f}", flush=True)
    return logits, figures


def evaluate(model: keras.Model, x_val: np.ndarray, y_val: np.ndarray, classes: list[str]) -> dict:
    probs = model.predict(x_val, batch_size=512, verbose=0)
    pred = probs.argmax(axis=1)
    k = len(classes)
    confusion = np.zeros((k, k), dtype=np.int64)  # rows: true class, columns: predicted
    np.add.at(confusion, (y_val, pred), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    return {
        "split": "validation",
        "samples": len(y_val),
        "accuracy": float((pred == y_val).mean()),
        "per_class_accuracy": {c: float(a) for c, a in zip(classes, per_class, strict=True)},
        "confusion_matrix": confusion.tolist(),
        "confusion_matrix_axes": "rows: true class, columns: predicted class, in class order",
    }


def _optimizer(recipe: Recipe, schedule) -> keras.optimizers.Optimizer:
    # With ema_momentum set, the exported weights are the moving average of the last steps'.
    common = {
        "weight_decay": recipe.weight_decay,
        "use_ema": recipe.ema_momentum is not None,
        "ema_momentum": recipe.ema_momentum or 0.99,
    }
    if recipe.optimizer == "sgd":
        return keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True, **common)
    if recipe.optimizer == "adamw":
        return keras.optimizers.AdamW(schedule, **common)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


def train(
    recipe: Recipe,
    data_dir: Path,
    seed: int,
    epochs: int | None = None,
    max_batches: int | None = None,
    tuning_split: bool = False,
    stop_after: int | None = None,
) -> TrainResult:
    """Train and evaluate on the seeded split; with `tuning_split`, on a split of its training
    part instead, so that hyperparameters are chosen without ever scoring the validation images.
    With `stop_after`, the first epochs of the same run only, schedule included (a replay:
    training/snapshots.py)."""
    # Checked here as well as in the CLI: 0 would train nothing, or on nothing.
    if epochs is not None and epochs < 1:
        raise ValueError(f"epochs must be 1 or more, got {epochs}")
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be 1 or more, got {max_batches}")
    if recipe.teacher is not None and recipe.outliers:
        raise ValueError("a recipe distils from a teacher or exposes outliers, not both")
    keras.utils.set_random_seed(seed)
    ds = recipe.load(data_dir)
    if tuning_split:
        ds = data.training_part(ds, recipe.val_fraction, seed)
    epochs = recipe.epochs if epochs is None else epochs
    started = time.monotonic()
    teacher = None
    if recipe.teacher is not None and recipe.teacher_epochs:
        logits, teacher = teach(recipe, ds, seed, max_batches)
        targets = np.concatenate([ds.y[:, None].astype(np.float32), logits], axis=1)
        loss = distillation_loss(recipe.distill_alpha, recipe.distill_temperature)
        metric = keras.metrics.MeanMetricWrapper(label_accuracy, name="accuracy")
    elif recipe.label_smoothing or recipe.outliers:  # targets that are probabilities
        targets, metric = None, InScopeAccuracy()
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing)
    else:
        targets, loss, metric = None, "sparse_categorical_crossentropy", "accuracy"
    train_ds, val_ds, x_val, y_val = make_datasets(recipe, ds, seed, max_batches, targets)
    model = recipe.build(len(recipe.classes), recipe.dropout)
    recorder = SnapshotRecorder(final=stop_after is None)
    callbacks: list[keras.callbacks.Callback] = [recorder]
    if stop_after is not None:
        callbacks.append(StopAfter(stop_after))
    history = _fit(model, recipe, train_ds, val_ds, epochs, loss, metric, callbacks)
    wall = time.monotonic() - started
    evaluation = evaluate(model, x_val, y_val, recipe.classes)
    if tuning_split:
        evaluation["split"] = "tuning"
    training = {
        "seed": seed,
        "data_source": ds.source,
        "epochs": epochs,
        "batch_size": recipe.batch_size,
        "learning_rate": recipe.learning_rate,
        "weight_decay": recipe.weight_decay,
        "dropout": recipe.dropout,
        "augmentation": recipe.augment,
        "ema_momentum": recipe.ema_momentum,
        "optimizer": recipe.optimizer,
        "warmup_epochs": recipe.warmup_epochs,
        "label_smoothing": recipe.label_smoothing,
        "distilled_from": teacher,
        "outliers": _outlier_count(recipe, max_batches),
        "train_samples": int(len(ds.y) - len(y_val)) if max_batches is None else None,
        "validation_samples": len(y_val),
        "validation_split": f"stratified {recipe.val_fraction:.0%}, seed {seed}"
        + (", of the training part of that split (tuning split)" if tuning_split else ""),
        "tuning_split": tuning_split,
        "wall_time_seconds": round(wall, 1),
        "cpu_count": len(os.sched_getaffinity(0)),
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "smoke_run": max_batches is not None,
        "max_batches": max_batches,
    }
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    return TrainResult(
        model=model,
        history=hist,
        evaluation=evaluation,
        training=training,
        snapshots=recorder.snapshots,
    )


def _same_split(
    recipe: Recipe, data_dir: Path, seed: int, max_batches: int | None, tuning_split: bool
) -> tuple[data.Dataset, np.ndarray, np.ndarray]:
    """The data and the (train, held-out) indices train() used with the same arguments."""
    ds = recipe.load(data_dir)
    if tuning_split:
        ds = data.training_part(ds, recipe.val_fraction, seed)
    train_idx, val_idx = split(recipe, ds, seed, max_batches)
    return ds, train_idx, val_idx


def calibrate(
    model: keras.Model,
    recipe: Recipe,
    data_dir: Path,
    seed: int,
    max_batches: int | None = None,
    tuning_split: bool = False,
) -> Calibrated:
    """Fit the temperature and the `uncertain` rule (training/calibration.py): the feature
    Gaussians on the training images, the rest on the held-out ones, the same split as train()."""
    ds, train_idx, val_idx = _same_split(recipe, data_dir, seed, max_batches, tuning_split)
    logits_layer, embedding_layer = logits_and_embedding(model)
    layers = [embedding_layer.name, *recipe.distance_layers]
    heads_model = keras.Model(
        model.inputs, [logits_layer.output, *distance_inputs(model, recipe.distance_layers)]
    )

    def run(idx: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        logits, *features = heads_model.predict(
            _scale(ds.x[idx], recipe), batch_size=512, verbose=0
        )
        return logits.astype(np.float64), features

    _, train_features = run(train_idx)
    heads = calibration.fit_heads(layers, train_features, ds.y[train_idx], len(recipe.classes))
    val_logits, val_features = run(val_idx)
    temperature, scales, calib, uncertainty = calibration.calibrate(
        val_logits,
        heads.head_distances(val_features),
        ds.y[val_idx],
        layers,
        recipe.target_accuracy_unflagged,
        seed,
        recipe.min_flagged,
    )
    heads = dataclasses.replace(heads, scales=scales)
    return Calibrated(temperature, heads, calib, uncertainty)


def evaluate_held_out(
    model: keras.Model,
    recipe: Recipe,
    data_dir: Path,
    seed: int,
    max_batches: int | None = None,
    tuning_split: bool = False,
) -> dict:
    """evaluate() on the same held-out split as train(): for the network as exported, when it
    differs from the one trained (flip averaging)."""
    ds, _, val_idx = _same_split(recipe, data_dir, seed, max_batches, tuning_split)
    evaluation = evaluate(
        model, _scale(ds.x[val_idx], recipe).numpy(), ds.y[val_idx], recipe.classes
    )
    if tuning_split:
        evaluation["split"] = "tuning"
    return evaluation
