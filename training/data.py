"""Load the training images, remap labels to our class order, and split off a fixed validation set.

The local `.npz` files (see ../shared/data/README.md) are the primary source. When a file is absent
we fall back to `keras.datasets`, which downloads from the internet; offline, that fails with a
clear `DataError` instead of a traceback.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from tokenize import TokenError

import numpy as np

# Our name for a class in a source data set, where the two differ.
CLASS_ALIASES = {"ship": "boat"}

# CIFAR-10's label ids, used only by the keras.datasets fallback.
CIFAR10_IDS = {"bird": 2, "cat": 3, "dog": 5, "boat": 8}
# The fallback keeps what cifar4-train.npz holds: the first 4,500 images of each class in
# CIFAR-10's order; the last 500 are kept aside for evaluation (../shared/data/README.md).
CIFAR_PER_CLASS = 4500


class DataError(Exception):
    """A data file is missing, unreadable or not what we expect."""


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # uint8, (N, H, W, C)
    y: np.ndarray  # int64 class index in the recipe's class order, (N,)
    source: str = ""  # where the images came from, for the model's metadata


def remap_labels(y: np.ndarray, source_classes: list[str], classes: list[str]) -> np.ndarray:
    """Map label indices of `source_classes` onto indices of `classes`, by class name."""
    table = np.empty(len(source_classes), dtype=np.int64)
    for i, name in enumerate(source_classes):
        ours = CLASS_ALIASES.get(name, name)
        if ours not in classes:
            raise DataError(f"class {name!r} in the data file is not one of {classes}")
        table[i] = classes.index(ours)
    if y.size and (y.min() < 0 or y.max() >= len(source_classes)):
        raise DataError(f"labels must lie in 0..{len(source_classes) - 1}")
    return table[y.astype(np.int64)]


def _read_npz(path: Path, arrays: tuple[str, ...]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [a for a in arrays if a not in f.files]
            if missing:
                raise DataError(f"{path}: missing arrays {missing} (has {f.files})")
            return {a: f[a] for a in arrays}
    except DataError:
        raise
    # A damaged member fails only when it is read: zlib.error, TokenError from numpy parsing a
    # damaged .npy header, or BadZipFile on its CRC.
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error, TokenError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from exc


def _check(x: np.ndarray, y: np.ndarray, shape: tuple[int, ...], path: Path | str) -> None:
    if x.dtype != np.uint8 or x.shape[1:] != shape:
        raise DataError(f"{path}: x must be uint8 of shape (N, {shape}), got {x.dtype} {x.shape}")
    if y.shape != (x.shape[0],):
        raise DataError(f"{path}: y must have shape ({x.shape[0]},), got {y.shape}")


def _check_labels(y: np.ndarray, n_classes: int, source: Path | str) -> None:
    # Checked before any use: a float label would be truncated, an out-of-range one mislabel.
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{source}: labels must be integers, got {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise DataError(f"{source}: labels must lie in 0..{n_classes - 1}")


def _keras_fallback(name: str, path: Path):
    import keras

    print(f"{path} not found: downloading {name} with keras.datasets")
    try:
        return getattr(keras.datasets, name).load_data()
    except Exception as exc:  # network errors come in many types
        raise DataError(
            f"{path} does not exist and keras.datasets.{name} could not be downloaded ({exc}). "
            "Pass --data-dir pointing at the folder that holds the .npz files."
        ) from exc


def load_mnist(data_dir: Path) -> Dataset:
    """MNIST digits, padded from 28x28 to 32x32 as LeNet-5 expects, ink bright on dark."""
    path = Path(data_dir) / "mnist-train.npz"
    if path.exists():
        d = _read_npz(path, ("x", "y"))
        x, y, source = d["x"], d["y"], str(path)
    else:
        (x, y), _ = _keras_fallback("mnist", path)
        source = "keras.datasets.mnist"
    _check(x, y, (28, 28), source)
    _check_labels(y, 10, source)
    x = np.pad(x, ((0, 0), (2, 2), (2, 2)))[..., np.newaxis]
    return Dataset(x=x, y=y.astype(np.int64), source=source)


def load_scenes(data_dir: Path, classes: list[str]) -> Dataset:
    """The four CIFAR-10 classes, relabelled from the file's alphabetical order to `classes`."""
    path = Path(data_dir) / "cifar4-train.npz"
    if path.exists():
        d = _read_npz(path, ("x", "y", "classes"))
        x, y, source_classes = d["x"], d["y"], [str(c) for c in d["classes"].tolist()]
        _check(x, y, (32, 32, 3), path)
        _check_labels(y, len(source_classes), path)
        return Dataset(x=x, y=remap_labels(y, source_classes, classes), source=str(path))
    (x, y), _ = _keras_fallback("cifar10", path)
    y = y.reshape(-1)
    _check_labels(y, 10, "keras.datasets.cifar10")
    lut = np.full(10, -1, dtype=np.int64)
    for i, name in enumerate(classes):
        lut[CIFAR10_IDS[name]] = i
    y = lut[y.astype(np.int64)]
    keep = np.sort(
        np.concatenate([np.flatnonzero(y == i)[:CIFAR_PER_CLASS] for i in range(len(classes))])
    )
    source = f"keras.datasets.cifar10, the first {CIFAR_PER_CLASS} images of each class"
    return Dataset(x=x[keep], y=y[keep], source=source)


def stratified_split(
    y: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded, stratified (train, validation) split: the same seed, the same split."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        n_val = round(len(idx) * val_fraction)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return rng.permutation(np.concatenate(train)), np.sort(np.concatenate(val))


def training_part(ds: Dataset, val_fraction: float, seed: int) -> Dataset:
    """The training part of the seeded split, as a dataset of its own: a split of it (the tuning
    split) holds out images for choosing hyperparameters, never the validation images."""
    train_idx = np.sort(stratified_split(ds.y, val_fraction, seed)[0])
    return Dataset(x=ds.x[train_idx], y=ds.y[train_idx], source=ds.source)
