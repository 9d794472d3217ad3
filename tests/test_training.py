"""Training package: label remap, split, architectures, and export equal to the Keras model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training import data
from training.recipes import MNIST, RECIPES, SCENES

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
needs_data = pytest.mark.skipif(
    not (SHARED_DATA / "mnist-train.npz").exists(),
    reason=f"training data not found at {SHARED_DATA} (see ../shared/data/README.md)",
)


def test_scenes_remap_from_alphabetical_labels():
    # The data file is alphabetical (bird, cat, dog, ship); we serve dog, cat, boat, bird.
    y = np.array([0, 1, 2, 3, 3, 0], np.uint8)
    got = data.remap_labels(y, ["bird", "cat", "dog", "ship"], ["dog", "cat", "boat", "bird"])
    assert got.tolist() == [3, 1, 0, 2, 2, 3]


def test_remap_rejects_unknown_class_and_out_of_range_labels():
    with pytest.raises(data.DataError, match="horse"):
        data.remap_labels(np.array([0]), ["horse"], ["dog"])
    with pytest.raises(data.DataError, match="labels"):
        data.remap_labels(np.array([4]), ["bird", "cat", "dog", "ship"], SCENES.classes)


def test_load_scenes_remaps_a_file(tmp_path):
    x = np.stack([np.full((32, 32, 3), i, np.uint8) for i in range(4)])
    np.savez_compressed(
        tmp_path / "cifar4-train.npz",
        x=x,
        y=np.arange(4, dtype=np.uint8),
        classes=np.array(["bird", "cat", "dog", "ship"]),
    )
    ds = data.load_scenes(tmp_path, SCENES.classes)
    # The image whose pixels are 2 was a 'dog' (file label 2): our class 0.
    assert [SCENES.classes[c] for c in ds.y] == ["bird", "cat", "dog", "boat"]
    assert ds.x[2].max() == 2


def test_malformed_data_file_is_a_clear_error(tmp_path):
    (tmp_path / "mnist-train.npz").write_bytes(b"not a zip file")
    with pytest.raises(data.DataError, match=r"not a readable \.npz"):
        data.load_mnist(tmp_path)
    np.savez_compressed(tmp_path / "mnist-train.npz", x=np.zeros((2, 5, 5), np.uint8))
    with pytest.raises(data.DataError, match="missing arrays"):
        data.load_mnist(tmp_path)
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.cli",
            "mnist",
            "--data-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert cli.returncode == 2
    assert "error:" in cli.stderr and "missing arrays" in cli.stderr
    assert "Traceback" not in cli.stderr


def test_stratified_split_is_seeded_disjoint_and_stratified():
    y = np.repeat(np.arange(4), [100, 200, 300, 400])
    tr1, va1 = data.stratified_split(y, 0.1, seed=7)
    tr2, va2 = data.stratified_split(y, 0.1, seed=7)
    assert np.array_equal(va1, va2) and np.array_equal(tr1, tr2)
    assert not set(tr1) & set(va1) and len(tr1) + len(va1) == len(y)
    assert np.bincount(y[va1]).tolist() == [10, 20, 30, 40]
    _, va3 = data.stratified_split(y, 0.1, seed=8)
    assert not np.array_equal(va1, va3)


def test_tuning_split_never_holds_a_validation_image():
    """--tuning-split trains and scores on a split of the training part only."""
    y = np.repeat(np.arange(4), [100, 200, 300, 400])
    ds = data.Dataset(x=np.arange(len(y)), y=y)  # each "image" is its own index
    _, validation = data.stratified_split(y, 0.1, seed=7)
    part = data.training_part(ds, 0.1, seed=7)
    assert len(part.y) == len(y) - len(validation)
    assert not set(part.x) & set(validation)
    assert (part.y == y[part.x]).all()
    inner_train, inner_val = data.stratified_split(part.y, 0.1, seed=7)
    assert np.bincount(part.y[inner_val]).tolist() == [9, 18, 27, 36]
    assert not set(part.x[inner_train]) & set(validation)


def test_lenet_is_the_classic_layer_list():
    from training.export import layer_table

    table = layer_table(MNIST.build(10, MNIST.dropout))
    assert [(r["name"], r["type"], r["output_shape"]) for r in table] == [
        ("conv1", "conv", [28, 28, 6]),
        ("relu1", "relu", [28, 28, 6]),
        ("pool1", "pool", [14, 14, 6]),
        ("conv2", "conv", [10, 10, 16]),
        ("relu2", "relu", [10, 10, 16]),
        ("pool2", "pool", [5, 5, 16]),
        ("flatten", "flatten", [400]),
        ("fc1", "dense", [120]),
        ("fc2", "dense", [100]),
        ("fc3", "dense", [10]),
        ("softmax", "softmax", [10]),
    ]
    assert table[0]["kernel_size"] == [5, 5] and table[0]["stride"] == [1, 1]
    assert table[2]["kernel_size"] == [2, 2] and table[2]["stride"] == [2, 2]


def test_scenes_resnet_names_every_layer_and_joins_its_shortcuts():
    from training.export import layer_table

    table = layer_table(SCENES.build(4, SCENES.dropout))
    rows = {r["name"]: r for r in table}
    assert [r["name"] for r in table[:3]] == ["conv1", "bn1", "relu1"]
    assert [r["name"] for r in table[-3:]] == ["gap", "fc", "softmax"]
    adds = [r for r in table if r["type"] == "add"]
    assert len(adds) == 5  # blocks (1, 2, 2)
    # A block that keeps the shape adds its input; one that halves it, its 1x1 shortcut.
    assert rows["b1_1_add"]["inputs"] == ["b1_1_bn_b", "relu1"]
    assert rows["b2_1_add"]["inputs"] == ["b2_1_bn_b", "b2_1_shortcut_bn"]
    assert rows["b2_1_shortcut_conv"]["inputs"] == ["b1_1_relu"]
    assert rows["b2_1_shortcut_conv"]["stride"] == [2, 2]
    assert [rows[f"b{s}_1_relu"]["output_shape"] for s in (1, 2, 3)] == [
        [32, 32, 32],
        [16, 16, 64],
        [8, 8, 128],
    ]
    assert rows["gap"]["type"] == "global_pool" and rows["gap"]["output_shape"] == [128]


def test_cutout_greys_one_square_per_image():
    import tensorflow as tf

    from training.train import cutout

    tf.random.set_seed(0)
    for size in (11, 12):
        out = cutout(tf.zeros((64, 32, 32, 3)), size).numpy()
        grey = (out == 0.5).all(axis=3)
        per_image = grey.sum(axis=(1, 2))
        assert (per_image > 0).all() and (per_image <= size * size).all()
        # Whole when the centre is far from the edges.
        assert (per_image == size * size).mean() > 0.3
    assert set(np.unique(out)) <= {0.0, 0.5}


def test_elastic_distortion_moves_ink_smoothly_and_keeps_it():
    from training.train import elastic_distort

    tf = pytest.importorskip("tensorflow")
    images = np.zeros((8, 32, 32, 1), np.float32)
    images[:, 8:24, 14:18] = 1.0  # a vertical bar, a "1"
    x = tf.constant(images)
    assert np.allclose(elastic_distort(x, 0.0, 4.0).numpy(), images)  # alpha 0: untouched
    tf.random.set_seed(0)
    out = elastic_distort(x, 34.0, 4.0).numpy()
    assert out.shape == images.shape and out.min() >= 0.0 and out.max() <= 1.0 + 1e-6
    # The bar moves (each image differently) but stays where it was, roughly, with its ink.
    assert not np.allclose(out, images) and not np.allclose(out[0], out[1])
    mass = out.sum(axis=(1, 2, 3))
    assert (mass > 0.5 * images[0].sum()).all() and (mass < 1.5 * images[0].sum()).all()
    cols = (out.sum(axis=(1, 3)) * np.arange(32)).sum(axis=1) / mass
    assert np.abs(cols - 15.5).max() < 3  # the bar's centre moves by pixels, not across the image
    assert (out[:, :4].sum() == 0) and (out[:, :, :6].sum() == 0)  # no ink from far away


def test_clean_fraction_leaves_that_share_of_images_unaugmented():
    import dataclasses

    tf = pytest.importorskip("tensorflow")
    from training.train import _augment_fn

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (400, 32, 32, 1), dtype=np.uint8)
    scaled = images.astype(np.float32) / 255
    strong = {"translation": 0.2}  # every augmented image moves by some pixels
    tf.random.set_seed(0)
    for clean, low, high in ((0.0, 0, 0), (0.5, 150, 250), (1.0, 400, 400)):
        recipe = dataclasses.replace(MNIST, augment={**strong, "clean_fraction": clean})
        out = _augment_fn(recipe, seed=1)(tf.constant(images)).numpy()
        untouched = int(np.all(np.isclose(out, scaled), axis=(1, 2, 3)).sum())
        assert low <= untouched <= high, (clean, untouched)


def test_distillation_loss_blends_labels_and_the_teachers_softened_outputs():
    tf = pytest.importorskip("tensorflow")
    from training.train import distillation_loss, label_accuracy

    probs = tf.constant([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    labels = np.array([[0.0], [2.0]], np.float32)
    teacher_agrees = np.log(probs.numpy())  # logits whose softmax is the student's output
    y_true = tf.constant(np.concatenate([labels, teacher_agrees], axis=1))
    ce = -np.log([0.7, 0.8])
    # alpha 1: the labels' cross-entropy alone
    assert np.allclose(distillation_loss(1.0, 4.0)(y_true, probs).numpy(), ce, atol=1e-5)
    # alpha 0: least when the student's softened output is the teacher's
    teacher_disagrees = tf.constant(np.concatenate([labels, teacher_agrees[:, ::-1]], axis=1))
    same = distillation_loss(0.0, 4.0)(y_true, probs).numpy()
    other = distillation_loss(0.0, 4.0)(teacher_disagrees, probs).numpy()
    assert (same < other).all()
    assert label_accuracy(y_true, probs).numpy().tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
    ("recipe", "views"),
    [(MNIST, False), (SCENES, False), (MNIST, True), (SCENES, True)],
    ids=["mnist", "scenes", "mnist-views", "scenes-views"],
)
def test_exported_savedmodel_equals_keras(recipe, views, tmp_path):
    import keras
    import tensorflow as tf

    from training import export
    from training.calibration import fit_heads, softmax

    model = recipe.build(len(recipe.classes), recipe.dropout)
    if views:  # as the CLI exports a recipe with test_time_views
        model = export.view_averaged(model, recipe.test_time_views)
    rng = np.random.default_rng(0)
    x = rng.random((5, *recipe.input_shape), dtype=np.float32)
    evaluation = {"accuracy": 0.0}
    logits_layer, embedding_layer = export.logits_and_embedding(model)
    layers = [embedding_layer.name, *recipe.distance_layers]
    heads_model = keras.Model(
        model.inputs, [logits_layer.output, *export.distance_inputs(model, recipe.distance_layers)]
    )
    _, *fit_features = heads_model(rng.random((64, *recipe.input_shape), dtype=np.float32))
    k = len(recipe.classes)
    fit = [np.asarray(f) for f in fit_features]
    heads = fit_heads(layers, fit, np.arange(64) % k, k)
    calibration = {"method": "temperature scaling", "temperature": 2.5}
    rule = {"min_confidence": 0.5, "max_distance": 10.0}
    calibrated = export.Calibrated(2.5, heads, calibration, rule)
    target = export.export(model, recipe, tmp_path, 3, {"seed": 0}, evaluation, calibrated)

    loaded = tf.saved_model.load(str(target))
    out = loaded.signatures["serving_default"](image=tf.constant(x))
    probs = out["probabilities"].numpy()
    logits, *features = (np.asarray(t) for t in heads_model(x))
    # The trained network's logits over the temperature, and the distance heads' reference.
    np.testing.assert_allclose(probs, softmax(logits / 2.5), atol=1e-6)
    np.testing.assert_allclose(out["distance"].numpy(), heads.distance(features), rtol=1e-4)
    feats = loaded.signatures["features"](image=tf.constant(x))
    metadata = json.loads((target / export.METADATA_PATH).read_text())
    for row in metadata["layers"]:
        if row["name"] in ("temperature", "softmax"):  # added at export
            continue
        expected = model.get_layer(row["name"]).output
        sub = keras.Model(model.inputs, expected)
        np.testing.assert_allclose(feats[row["name"]].numpy(), sub(x).numpy(), atol=1e-5)
        assert list(feats[row["name"]].shape[1:]) == row["output_shape"]
    np.testing.assert_allclose(feats["temperature"].numpy(), logits / 2.5, atol=1e-5)
    np.testing.assert_allclose(feats["softmax"].numpy(), probs, atol=1e-6)
    np.testing.assert_allclose(feats["distance"].numpy(), out["distance"].numpy(), rtol=1e-6)
    assert metadata["calibration"] == calibration and metadata["uncertainty"] == rule
    cam = loaded.signatures["gradcam"](image=tf.constant(x), class_index=tf.constant([0] * 5))
    assert cam["heatmap"].shape[0] == 5 and float(tf.reduce_max(cam["heatmap"])) <= 1.0
    assert metadata["name"] == recipe.name and metadata["version"] == 3
    assert metadata["classes"] == recipe.classes
    assert metadata["input"] == {
        "name": "image",
        "shape": list(recipe.input_shape),
        "dtype": "float32",
    }
    assert metadata["preprocessing"] == json.loads(json.dumps(recipe.preprocessing))
    assert metadata["evaluation"] == evaluation
    with pytest.raises(FileExistsError):
        export.export(model, recipe, tmp_path, 3, {}, evaluation, calibrated)


@needs_data
def test_real_scenes_file_remaps_to_balanced_classes():
    ds = data.load_scenes(SHARED_DATA, SCENES.classes)
    assert ds.x.shape == (18000, 32, 32, 3)
    assert np.bincount(ds.y).tolist() == [4500] * 4
    with np.load(SHARED_DATA / "cifar4-train.npz") as f:
        ship = list(f["classes"]).index("ship")
        assert (ds.y[f["y"] == ship] == SCENES.classes.index("boat")).all()


@needs_data
@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("mnist", []),
        ("scenes", []),
        (
            "mnist",
            ["--tuning-split", "--dropout", "0.3", "--outliers", "200", "--augment", "shear=0.1"],
        ),
    ],
)
def test_smoke_train_and_export(name, options, tmp_path):
    """A few batches end to end through the CLI: train, evaluate, export, report."""
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.cli",
            name,
            "--data-dir",
            str(SHARED_DATA),
            "--out",
            str(tmp_path),
            "--epochs",
            "1",
            "--max-batches",
            "2",
            "--seed",
            "3",
            *options,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    target = tmp_path / name / "1"
    assert (target / "saved_model.pb").exists()
    for f in ("training_curves.png", "confusion_matrix.png", "reliability.png", "figures.json"):
        assert (target / "report" / f).stat().st_size > 1000
    metadata = json.loads((target / "assets.extra" / "metadata.json").read_text())
    assert metadata["calibration"]["temperature"] > 0
    assert 0 <= metadata["uncertainty"]["min_confidence"] <= 1
    assert metadata["training"]["smoke_run"] is True
    data_file = {"mnist": "mnist-train.npz", "scenes": "cifar4-train.npz"}[name]
    assert metadata["training"]["data_source"] == str(SHARED_DATA / data_file)
    assert len(metadata["evaluation"]["confusion_matrix"]) == len(metadata["classes"])
    tuning = "--tuning-split" in options
    assert metadata["training"]["tuning_split"] is tuning
    assert metadata["evaluation"]["split"] == ("tuning" if tuning else "validation")
    assert metadata["training"]["dropout"] == (0.3 if tuning else RECIPES[name].dropout)
    # A smoke run draws one batch's worth of outliers at most.
    outliers = 200 if tuning else RECIPES[name].outliers
    assert metadata["training"]["outliers"] == min(outliers, RECIPES[name].batch_size)
    # --augment overrides one setting and keeps the others.
    expected = {**RECIPES[name].augment, **({"shear": 0.1} if tuning else {})}
    assert metadata["training"]["augmentation"] == expected


def _snapshot_probabilities(folder: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    out = {}
    for entry in json.loads((folder / "snapshots.json").read_text())["snapshots"]:
        runner = Interpreter(model_path=str(folder / entry["file"])).get_signature_runner()
        out[entry["name"]] = runner(image=x)["probabilities"]
    return out


@needs_data
def test_training_snapshots_are_exported_and_replayed_exactly(tmp_path):
    """The export carries the network at a few moments of training; a version exported without
    them gets the same ones by replaying its first epochs (training is deterministic)."""
    import tensorflow as tf

    from service.metadata import read_snapshots
    from training.snapshots import replay

    args = ["--data-dir", str(SHARED_DATA), "--out", str(tmp_path), "--epochs", "2"]
    cli = subprocess.run(
        [sys.executable, "-m", "training.cli", "mnist", *args, "--max-batches", "3"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    target = tmp_path / "mnist" / "1"
    index = read_snapshots(target)  # validated against the schema the service reads
    assert [s["name"] for s in index["snapshots"]] == ["init", "step1", "epoch1", "final"]
    assert [s["step"] for s in index["snapshots"]] == [0, 1, 3, 6]
    assert len(index["history"]["loss"]) == 2
    x = np.random.default_rng(0).random((4, 32, 32, 1), dtype=np.float32)
    exported = _snapshot_probabilities(target / "snapshots", x)
    assert not np.allclose(exported["init"], exported["final"], atol=1e-3)
    # The final snapshot is the trained network as served (the recipe's test-time views): its
    # softmax over the exported logits (before the calibration temperature), with weights
    # rounded to float16.
    features = tf.saved_model.load(str(target)).signatures["features"](image=tf.constant(x))
    want = tf.nn.softmax(features["fc3"]).numpy()
    np.testing.assert_allclose(exported["final"], want, atol=2e-3)

    shutil.rmtree(target / "snapshots")
    replay(RECIPES["mnist"], target, SHARED_DATA, epochs=1)
    replayed = _snapshot_probabilities(target / "snapshots", x)
    assert replayed.keys() == exported.keys()
    for name, probs in exported.items():
        np.testing.assert_allclose(replayed[name], probs, atol=1e-5, err_msg=name)


# Floors for the shipped models: a worse export fails here. The issues' targets are higher or
# equal and the README says where a model misses one: mnist v7 has 43 errors of 5,999 held-out
# digits (99.28 %) against a 99.3 % target; scenes v5 (v3's weights) reaches 91.9 % against 94 %.
COMMITTED = {"mnist": 0.9928, "scenes": 0.915}


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_model(name):
    """The models the service ships: present, small, and at the accuracy recorded at export."""
    versions = sorted((ROOT / "models" / name).glob("[0-9]*"), key=lambda p: int(p.name))
    if not versions:
        pytest.skip(f"models/{name} has not been trained yet")
    target = versions[-1]
    metadata = json.loads((target / "assets.extra" / "metadata.json").read_text())
    assert metadata["training"]["smoke_run"] is False
    assert not metadata["training"].get("tuning_split")  # scored on the validation split
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    assert size < 20 * 1024 * 1024
    assert metadata["evaluation"]["samples"] >= 1800
    assert metadata["evaluation"]["accuracy"] >= COMMITTED[name]


@needs_data
@pytest.mark.parametrize("name", COMMITTED)
def test_committed_model_reproduces_its_recorded_accuracy(name):
    """Re-evaluate the committed SavedModel on the same seeded validation split."""
    import tensorflow as tf

    from training.train import _scale

    versions = sorted((ROOT / "models" / name).glob("[0-9]*"), key=lambda p: int(p.name))
    if not versions:
        pytest.skip(f"models/{name} has not been trained yet")
    metadata = json.loads((versions[-1] / "assets.extra" / "metadata.json").read_text())
    recipe = RECIPES[name]
    ds = recipe.load(SHARED_DATA)
    _, val = data.stratified_split(ds.y, recipe.val_fraction, metadata["training"]["seed"])
    predict = tf.saved_model.load(str(versions[-1])).signatures["serving_default"]
    probs = predict(image=_scale(ds.x[val], recipe))["probabilities"].numpy()
    accuracy = float((probs.argmax(1) == ds.y[val]).mean())
    assert accuracy == pytest.approx(metadata["evaluation"]["accuracy"], abs=1e-4)


def _corrupt_member(path: Path, offset: int) -> None:
    """Flip 32 bytes of the first member's compressed data from `offset`, the zip left intact."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = z.infolist()[0]
    raw = bytearray(path.read_bytes())
    header = raw[info.header_offset : info.header_offset + 30]  # the local file header
    start = info.header_offset + 30 + int.from_bytes(header[26:28], "little")
    start += int.from_bytes(header[28:30], "little") + offset
    for i in range(start, start + 32):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


# Where the damage lies decides what numpy raises: at the deflate block header zlib.error; in the
# .npy header tokenize's TokenError (read and parsed before the CRC is checked); later Bad CRC-32.
@pytest.mark.parametrize("offset", [2, 100, 500])
def test_corrupt_member_in_a_data_file_is_a_clear_error(tmp_path, offset):
    path = tmp_path / "mnist-train.npz"
    x = np.tile(np.arange(28, dtype=np.uint8), (500, 28, 1))
    np.savez_compressed(path, x=x, y=np.zeros(500, np.uint8))
    _corrupt_member(path, offset)
    with pytest.raises(data.DataError, match=r"not a readable \.npz"):
        data.load_mnist(tmp_path)


@pytest.mark.parametrize(
    ("y", "message"),
    [
        (np.array([0, 1, 10], np.uint8), r"labels must lie in 0\.\.9"),
        (np.array([0, -1, 2], np.int64), r"labels must lie in 0\.\.9"),
        (np.array([0.0, 1.5, 2.0], np.float32), "labels must be integers"),
    ],
)
def test_load_mnist_checks_its_labels(tmp_path, monkeypatch, y, message):
    x = np.zeros((3, 28, 28), np.uint8)
    np.savez_compressed(tmp_path / "mnist-train.npz", x=x, y=y)
    with pytest.raises(data.DataError, match=message):
        data.load_mnist(tmp_path)
    # keras.datasets, when the file is absent, is checked the same way
    monkeypatch.setattr(data, "_keras_fallback", lambda name, path: ((x, y), (x, y)))
    with pytest.raises(data.DataError, match=message):
        data.load_mnist(tmp_path / "absent")


def test_scenes_fallback_keeps_the_images_the_file_holds(tmp_path, monkeypatch):
    """keras.datasets' CIFAR-10 holds 5,000 images a class; the file the first 4,500 of each."""
    rng = np.random.default_rng(0)
    y = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), 5000))[:, None]
    ids = np.arange(len(y))  # each "image" is its own index in CIFAR-10's order
    monkeypatch.setattr(data, "_keras_fallback", lambda name, path: ((ids, y), (ids, y)))
    ds = data.load_scenes(tmp_path, SCENES.classes)
    assert np.bincount(ds.y).tolist() == [4500] * 4
    expected = [np.flatnonzero(y[:, 0] == data.CIFAR10_IDS[c])[:4500] for c in SCENES.classes]
    assert ds.x.tolist() == sorted(np.concatenate(expected).tolist())  # in the original order
    assert [data.CIFAR10_IDS[SCENES.classes[c]] for c in ds.y] == y[ds.x, 0].tolist()
    assert "keras.datasets.cifar10" in ds.source and "4500" in ds.source


def test_each_augmentation_layer_has_its_own_seed():
    import dataclasses

    from training.train import _augmenter

    augment = {"flip": 1.0, "rotation": 0.02, "zoom": 0.1, "translation": 0.1}
    layers = _augmenter(dataclasses.replace(SCENES, augment=augment), seed=5).layers
    assert [type(layer).__name__ for layer in layers] == [
        "RandomFlip",
        "RandomRotation",
        "RandomZoom",
        "RandomTranslation",
    ]
    assert [layer.seed for layer in layers] == [5, 6, 7, 8]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--epochs", "0"], "argument --epochs: must be 1 or more, got 0"),
        (["--max-batches", "0", "--out", "x"], "argument --max-batches: must be 1 or more"),
        (["--version", "-1"], "argument --version: must be 0 or more, got -1"),
        (["--dropout", "1"], "argument --dropout: must be at least 0 and below 1"),
        (["--dropout", "-0.1"], "argument --dropout: must be at least 0 and below 1"),
        (["--epochs", "two"], "argument --epochs: not an integer: 'two'"),
        (["--max-batches", "2"], "--max-batches and --tuning-split need an explicit --out"),
        (["--tuning-split"], "--max-batches and --tuning-split need an explicit --out"),
        (["--augment", "shear"], "argument --augment: expected KEY=VALUE with KEY one of"),
        (["--augment", "sheer=0.1"], "argument --augment: expected KEY=VALUE with KEY one of"),
        (["--augment", "shear=nan"], "argument --augment: shear must be a finite number >= 0"),
        (["--augment", "shear=-1"], "argument --augment: shear must be a finite number >= 0"),
        (["--augment", "shear=lots"], "argument --augment: not a number: 'lots'"),
    ],
)
def test_cli_rejects_out_of_range_options(options, message, capsys):
    from training import cli

    with pytest.raises(SystemExit) as exc:
        cli.parse_args(["mnist", *options])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_takes_zero_as_given(tmp_path, monkeypatch):
    """--version 0 and --dropout 0 are values, not "use the default"."""
    from training import cli, export, report, train

    seen = {}

    evaluation = {"split": "validation", "accuracy": 1.0, "samples": 1, "per_class_accuracy": {}}

    def fake_train(recipe, data_dir, seed, epochs, max_batches, tuning_split):
        seen["dropout"] = recipe.dropout
        return train.TrainResult(
            model=None, history={}, evaluation=evaluation, training={"wall_time_seconds": 0.0}
        )

    def fake_calibrate(model, recipe, data_dir, seed, max_batches, tuning_split):
        figures = {"coverage": 1.0, "accuracy_unflagged": 1.0}
        return export.Calibrated(
            1.0,
            None,
            {"temperature": 1.0, "ece_before": 0.0, "ece_after": 0.0},
            {"min_confidence": 0.5, "max_distance": 1.0, "validation": figures},
        )

    def fake_export(model, recipe, out_dir, version, training, evaluation, calibrated, *snapshots):
        seen["version"] = version
        return Path(out_dir) / recipe.name / str(version)

    monkeypatch.setattr(train, "train", fake_train)
    monkeypatch.setattr(train, "calibrate", fake_calibrate)
    monkeypatch.setattr(export, "export", fake_export)
    # mnist's test-time views, on no model: the held-out figures as the fake run gave them.
    monkeypatch.setattr(export, "view_averaged", lambda model, views: model)
    monkeypatch.setattr(train, "evaluate_held_out", lambda *args: dict(evaluation))
    monkeypatch.setattr(report, "write_report", lambda *args: None)
    assert cli.parse_args(["mnist", "--out", "x", "--version", "0"]).version == 0
    assert cli.main(["mnist", "--out", str(tmp_path), "--version", "0", "--dropout", "0"]) == 0
    assert seen == {"dropout": 0.0, "version": 0}
    assert cli.main(["mnist", "--out", str(tmp_path)]) == 0
    assert seen["version"] is None  # picked by export, when it writes


def test_train_rejects_zero_epochs_and_batches(tmp_path):
    from training.train import train

    with pytest.raises(ValueError, match="epochs must be 1 or more"):
        train(MNIST, tmp_path, seed=1, epochs=0)
    with pytest.raises(ValueError, match="max_batches must be 1 or more"):
        train(MNIST, tmp_path, seed=1, max_batches=0)


def test_cli_sets_the_tensorflow_log_level_before_tensorflow_loads(tmp_path):
    import os

    (tmp_path / "mnist-train.npz").write_bytes(b"not a zip file")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    cli = subprocess.run(
        [sys.executable, "-m", "training.cli", "mnist", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert cli.returncode == 2 and "not a readable" in cli.stderr
    # TensorFlow's INFO and WARNING lines (level 2 hides them) would say where they came from.
    assert "cpu_feature_guard" not in cli.stderr, cli.stderr


def test_export_without_a_version_takes_the_next_free_one_when_it_writes(tmp_path, monkeypatch):
    """Two runs ending side by side: the one that renames second takes the next version."""
    from training import export

    model = MNIST.build(len(MNIST.classes), MNIST.dropout)
    model_dir = tmp_path / "mnist"
    # Another run exporting version 1 at the same time: its staging folder, under the name a
    # shared one would have had, must not be touched.
    (model_dir / ".1.partial").mkdir(parents=True)
    (model_dir / ".1.partial" / "theirs").write_text("x")
    real_next_version = export.next_version

    def next_version_then_taken(path: Path) -> int:
        version = real_next_version(path)
        if not (path / "1").exists():  # the other run renames its version 1 into place now
            (path / "1").mkdir()
            (path / "1" / "saved_model.pb").write_text("theirs")
            return version  # ... just after this run read 1 as the next free version
        return version

    monkeypatch.setattr(export, "next_version", next_version_then_taken)
    from training.calibration import DistanceHeads, FeatureGaussians

    gaussians = FeatureGaussians(np.zeros((10, 100), np.float32), np.eye(100, dtype=np.float32))
    calibrated = export.Calibrated(
        1.0,
        DistanceHeads(["fc2"], [gaussians], [1.0]),
        {"method": "temperature scaling", "temperature": 1.0},
        {"min_confidence": 0.5, "max_distance": 10.0},
    )
    target = export.export(model, MNIST, tmp_path, None, {"seed": 0}, {"accuracy": 0.0}, calibrated)
    assert target == model_dir / "2"
    assert json.loads((target / export.METADATA_PATH).read_text())["version"] == 2
    assert (model_dir / "1" / "saved_model.pb").read_text() == "theirs"
    assert (model_dir / ".1.partial" / "theirs").exists()
    assert sorted(p.name for p in model_dir.iterdir()) == [".1.partial", "1", "2"]


def test_shear_slants_digits_both_ways_and_keeps_their_ink():
    import tensorflow as tf

    from training.train import shear_x

    x = np.zeros((64, 32, 32, 1), np.float32)
    x[:, 6:26, 15:17] = 1.0  # an upright stroke
    assert np.array_equal(shear_x(tf.constant(x), 0.0).numpy(), x)
    tf.random.set_seed(0)
    out = shear_x(tf.constant(x), 0.3).numpy()
    # The stroke's top moves one way or the other, its bottom the opposite way.
    top = out[:, 7, :, 0].argmax(axis=1) - out[:, 24, :, 0].argmax(axis=1)
    assert (top > 2).any() and (top < -2).any()
    np.testing.assert_allclose(out.sum(axis=(1, 2, 3)), x.sum(axis=(1, 2, 3)), rtol=0.1)


def test_stroke_width_thickens_and_thins_a_share_of_the_digits():
    import tensorflow as tf

    from training.train import stroke_width

    x = np.zeros((400, 32, 32, 1), np.float32)
    x[:, 6:26, 14:18] = 1.0
    assert np.array_equal(stroke_width(tf.constant(x), 0.0).numpy(), x)
    ink = stroke_width(tf.constant(x), 0.25).numpy().sum(axis=(1, 2, 3))
    base = x[0].sum()
    thick, thin = (ink > base).mean(), (ink < base).mean()
    assert 0.15 < thick < 0.35 and 0.15 < thin < 0.35


def test_handwriting_variants_draw_on_a_share_of_the_ones_and_sevens_only():
    from training.train import handwriting_variants

    ds = data.Dataset(
        x=np.zeros((100, 32, 32, 1), np.uint8), y=np.repeat(np.arange(10), 10).astype(np.int64)
    )
    ds.x[:, 6:26, 15:17] = 255  # every digit an upright stroke
    out = handwriting_variants(ds.x, ds.y, 0.5, seed=1)
    changed = (out != ds.x).any(axis=(1, 2, 3))
    assert set(ds.y[changed]) == {1, 7}
    assert changed[ds.y == 1].sum() == 5 and changed[ds.y == 7].sum() == 5
    assert np.array_equal(out, handwriting_variants(ds.x, ds.y, 0.5, seed=1))  # seeded
    assert (out[changed].astype(int).sum() > ds.x[changed].astype(int).sum()).all()


def test_export_refuses_metadata_the_service_would_refuse(tmp_path):
    """The schema the service loads with (service/metadata.py) is checked before writing."""
    from service.metadata import MetadataError
    from training import export
    from training.calibration import DistanceHeads, FeatureGaussians

    model = MNIST.build(len(MNIST.classes), MNIST.dropout)
    gaussians = FeatureGaussians(np.zeros((10, 100), np.float32), np.eye(100, dtype=np.float32))
    heads = DistanceHeads(["fc2"], [gaussians], [1.0])
    bad = export.Calibrated(1.0, heads, {"temperature": 1.0}, {"min_confidence": 2.0})
    with pytest.raises(MetadataError, match=r"calibration\.method.*uncertainty\.min_confidence"):
        export.export(model, MNIST, tmp_path, None, {"seed": 0}, {"accuracy": 0.0}, bad)
    assert not (tmp_path / "mnist" / "1").exists()


def test_an_exported_version_reads_back_into_the_recipes_network():
    """`--from-checkpoint models/<name>/<v>`: the recipe's network with the version's variables
    computes what the version serves (before the temperature, which the export adds)."""
    import tensorflow as tf

    from training import checkpoint

    version = ROOT / "models" / "mnist" / "5"
    result = checkpoint.load(version, MNIST)
    metadata = json.loads((version / "assets.extra" / "metadata.json").read_text())
    assert result.training["weights_from"] == "mnist v5"
    assert result.evaluation["accuracy"] == metadata["evaluation"]["accuracy"]
    x = np.random.default_rng(3).random((8, 32, 32, 1), dtype=np.float32)
    served = tf.saved_model.load(str(version)).signatures["serving_default"](tf.constant(x))
    t = metadata["calibration"]["temperature"]
    log_p = np.log(np.asarray(result.model(x, training=False), np.float64))
    expected = np.exp(log_p / t - (log_p / t).max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-5)
    with pytest.raises(checkpoint.CheckpointError, match="'conv1/kernel' has shape"):
        checkpoint.load(version, SCENES)


def test_every_augment_key_the_cli_accepts_is_one_training_reads():
    from training.recipes import AUGMENT_KEYS

    source = (ROOT / "training" / "train.py").read_text()
    assert all(f'"{key}"' in source for key in AUGMENT_KEYS)


@pytest.mark.parametrize("recipe", [MNIST, SCENES], ids=["mnist", "scenes"])
def test_view_averaging_is_the_mean_of_the_views_logits(recipe):
    """export.view_averaged against views made with numpy: a mirror image, or a shift by one
    pixel with zeros where the image moved away."""
    import keras

    from training import export
    from training.calibration import softmax

    model = recipe.build(len(recipe.classes), recipe.dropout)
    rng = np.random.default_rng(1)
    x = rng.random((3, *recipe.input_shape), dtype=np.float32)
    logits_layer, _ = export.logits_and_embedding(model)
    logits = keras.Model(model.inputs, logits_layer.output)

    def view(a: np.ndarray, name: str) -> np.ndarray:
        if name == "mirror":
            return a[:, :, ::-1]
        out = np.zeros_like(a)
        if name == "up":
            out[:, :-1] = a[:, 1:]
        elif name == "down":
            out[:, 1:] = a[:, :-1]
        elif name == "left":
            out[:, :, :-1] = a[:, :, 1:]
        else:
            out[:, :, 1:] = a[:, :, :-1]
        return out

    # One view at a time as well: the mean of the four shifts would hide two swapped directions.
    for views in (("mirror",), ("up",), ("down",), ("left",), ("right",), ("up", "left")):
        averaged = export.view_averaged(model, views)
        mean = np.mean([logits(x)] + [logits(view(x, v)) for v in views], axis=0)
        np.testing.assert_allclose(averaged(x), softmax(mean), atol=1e-5)
        assert [r["type"] for r in export.layer_table(averaged)][:1] == ["views"]
