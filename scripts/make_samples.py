"""Make the explorer's bundled sample images from the training data.

    .venv/bin/python scripts/make_samples.py [--data /work/shared/data]

Writes small PNGs and a `samples.json` manifest to `service/explorer/samples/`:
- one MNIST digit of each class 0-9 (28x28 greyscale, white ink on black, as in MNIST), the
  held-out digit nearest its class's mean image, so a clear one;
- two photos of each scenes class (32x32 RGB, CIFAR-10's own pixels), the last held-out ones.

Every image comes from the validation split that training holds out (the same seeded, stratified
split as `convnet-train --seed 1`), so the served models never trained on them. The CIFAR file's
classes are bird, cat, dog, ship; the scenes model calls ship "boat". The output is deterministic:
rerunning the script writes the same files. It reads the classes and the split from the training
package (so it imports Keras); the project must be installed (`pip install -e .`).
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from training import data
from training.recipes import MNIST, SCENES

OUT = Path(__file__).resolve().parents[1] / "service" / "explorer" / "samples"
SEED = 1  # runs/train_all.sh trains with --seed 1
SCENES_PER_CLASS = 2


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def held_out(y: np.ndarray, val_fraction: float, label: int, count: int) -> list[int]:
    """The last `count` indices of class `label` in training's validation split."""
    _, val = data.stratified_split(y, val_fraction, SEED)
    return [int(i) for i in val[y[val] == label][-count:]]


def typical_digit(x: np.ndarray, y: np.ndarray, val_fraction: float, label: int) -> int:
    """The held-out digit of class `label` closest to its class's mean training image.

    MNIST has many odd digits (a 4 that reads as a 7); the one nearest the mean is a clear one.
    """
    train, val = data.stratified_split(y, val_fraction, SEED)
    mean = x[train[y[train] == label]].astype(np.float32).mean(axis=0)
    candidates = val[y[val] == label]
    distance = ((x[candidates].astype(np.float32) - mean) ** 2).sum(axis=(1, 2))
    return int(candidates[distance.argmin()])


def make(data_dir: Path, out: Path = OUT) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    manifest: list[dict] = []

    with np.load(data_dir / "mnist-train.npz") as f:
        x, y = f["x"], f["y"].astype(np.int64)
    for digit, label in enumerate(MNIST.classes):
        i = typical_digit(x, y, MNIST.val_fraction, digit)
        name = f"digit-{label}.png"
        (out / name).write_bytes(png(x[i]))
        manifest.append({"file": name, "model": "mnist", "label": label, "source": f"MNIST #{i}"})

    with np.load(data_dir / "cifar4-train.npz") as f:
        x, source_classes = f["x"], [str(c) for c in f["classes"].tolist()]
        y = data.remap_labels(f["y"], source_classes, SCENES.classes)
    for k, label in enumerate(SCENES.classes):
        for n, i in enumerate(held_out(y, SCENES.val_fraction, k, SCENES_PER_CLASS), 1):
            name = f"{label}-{n}.png"
            (out / name).write_bytes(png(x[i]))
            manifest.append(
                {"file": name, "model": "scenes", "label": label, "source": f"CIFAR-10 #{i}"}
            )

    (out / "samples.json").write_text(json.dumps({"samples": manifest}, indent=2) + "\n")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description="Make the explorer's sample images.")
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    manifest = make(args.data, args.out)
    total = sum((args.out / s["file"]).stat().st_size for s in manifest)
    print(f"wrote {len(manifest)} samples, {total} bytes, to {args.out}")


if __name__ == "__main__":
    main()
