"""How often the served models flag images that are none of their classes as `uncertain`.

    .venv/bin/python scripts/out_of_scope.py [--data ../shared/data] [--models models]

Builds an out-of-scope set from what is on this machine (no download): blank and flat images,
noise, textures, the other model's held-out images (photos sent to mnist, digits sent to scenes)
and the sample images that installed packages ship (matplotlib's). Every image is encoded as a
PNG or JPEG and goes through the service's own decoding and preprocessing, then the served
model (LiteRT, as in the service) and the service's `uncertain` rule. Prints a table per model and
writes it to `models/<name>/<version>/report/out_of_scope.json`.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image

from service import images, inference
from service.registry import Registry
from training import data
from training.recipes import MNIST, SCENES

ROOT = Path(__file__).resolve().parents[1]
SEED = 1
PER_KIND = 100  # images per synthetic kind
CROSS_DOMAIN = 500  # held-out images of the other model's data


def encode(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def blank(rng: np.random.Generator) -> list[bytes]:
    """White, black and flat images of one random colour, at a few sizes."""
    out = [encode(np.full((64, 64, 3), v, np.uint8)) for v in (0, 255, 128)]
    while len(out) < PER_KIND:
        side = int(rng.integers(16, 300))
        out.append(encode(np.full((side, side, 3), rng.integers(0, 256, 3), np.uint8)))
    return out


def noise(rng: np.random.Generator) -> list[bytes]:
    """Uniform colour noise, Gaussian grey noise and salt and pepper, at a few sizes."""
    out = []
    for i in range(PER_KIND):
        side = int(rng.integers(28, 256))
        if i % 3 == 0:
            arr = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        elif i % 3 == 1:
            grey = np.clip(rng.normal(128, 50, (side, side)), 0, 255).astype(np.uint8)
            arr = np.repeat(grey[..., None], 3, axis=2)
        else:
            arr = np.where(rng.random((side, side, 1)) < 0.5, 0, 255).astype(np.uint8)
            arr = np.repeat(arr, 3, axis=2)
        out.append(encode(arr))
    return out


def textures(rng: np.random.Generator) -> list[bytes]:
    """Stripes at random angles and periods, checkerboards and gradients, in random colours."""
    out = []
    yy, xx = np.mgrid[0:128, 0:128].astype(np.float32)
    for i in range(PER_KIND):
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        if i % 3 == 0:
            angle, period = rng.uniform(0, np.pi), rng.uniform(4, 40)
            t = (np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0)[
                ..., None
            ]
        elif i % 3 == 1:
            cell = int(rng.integers(4, 32))
            t = (((yy // cell) + (xx // cell)) % 2 == 0)[..., None]
        else:
            t = (xx / 127.0)[..., None]
        arr = (a * t + b * (1 - t)).astype(np.uint8)
        out.append(encode(arr))
    return out


def package_samples(rng: np.random.Generator) -> list[bytes]:
    """matplotlib's sample photos and logos, whole and as random square crops."""
    folder = Path(matplotlib.get_data_path()) / "sample_data"
    out = []
    for path in sorted(folder.glob("*.png")) + sorted(folder.glob("*.jpg")):
        img = np.asarray(Image.open(path).convert("RGB"))
        out.append(encode(img, "JPEG"))
        h, w = img.shape[:2]
        for _ in range(9):
            side = int(rng.integers(min(h, w) // 4, min(h, w) + 1))
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            out.append(encode(np.ascontiguousarray(img[y : y + side, x : x + side]), "JPEG"))
    return out


def held_out(name: str, data_dir: Path, count: int) -> list[bytes]:
    """The last `count` images of the model's validation split (never trained on)."""
    recipe = MNIST if name == "mnist" else SCENES
    ds = recipe.load(data_dir)
    _, val = data.stratified_split(ds.y, recipe.val_fraction, SEED)
    picks = val[np.linspace(0, len(val) - 1, count).astype(int)]
    if name == "mnist":  # the 28x28 digit as MNIST has it: white ink on black
        return [encode(ds.x[i, 2:30, 2:30, 0]) for i in picks]
    return [encode(ds.x[i]) for i in picks]


def flagged_share(model, payloads: list[bytes]) -> dict[str, float]:
    """The share flagged, and the share each half of the rule would flag alone."""
    limits = images.Limits()
    rule = model.uncertainty
    flags, low_confidence, far = [], [], []
    for start in range(0, len(payloads), 64):
        chunk = payloads[start : start + 64]
        batch = np.stack([images.load(p, model.preprocessing, limits) for p in chunk])
        outputs = model.predict(batch)
        flags += [row["uncertain"] for row in inference.describe(model, outputs, None)]
        low_confidence += list(outputs["probabilities"].max(axis=1) < rule["min_confidence"])
        far += list(outputs["distance"] > rule["max_distance"])
    return {
        "images": len(flags),
        "flagged": float(np.mean(flags)),
        "by_confidence_alone": float(np.mean(low_confidence)),
        "by_distance_alone": float(np.mean(far)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--engine-cache", type=Path, default=Path("/tmp/convnet-engines-oos"))
    args = parser.parse_args()

    registry = Registry(args.models, engine="litert", engine_cache=args.engine_cache)
    registry.load_all()
    rng = np.random.default_rng(SEED)
    shared = {
        "blank and flat": blank(rng),
        "noise": noise(rng),
        "textures": textures(rng),
        "package sample images": package_samples(rng),
    }
    cross = {
        "mnist": ("scenes", "photos (CIFAR held-out)"),
        "scenes": ("mnist", "digits (MNIST held-out)"),
    }
    for name, model in registry.models.items():
        if model.uncertainty is None:
            print(f"\n{name} v{model.version}: exported without an uncertainty rule, skipped")
            continue
        other, label = cross[name]
        kinds = {**shared, label: held_out(other, args.data, CROSS_DOMAIN)}
        own = held_out(name, args.data, CROSS_DOMAIN)
        table = {kind: flagged_share(model, payloads) for kind, payloads in kinds.items()}
        table["(in scope) own held-out images"] = flagged_share(model, own)
        print(
            f"\n{name} v{model.version}: share flagged uncertain (confidence alone, distance alone)"
        )
        for kind, row in table.items():
            print(
                f"  {kind:<34} {row['flagged']:7.1%} ({row['by_confidence_alone']:6.1%}, "
                f"{row['by_distance_alone']:6.1%}) of {row['images']}"
            )
        report = model.path / "report" / "out_of_scope.json"
        report.write_text(json.dumps({"seed": SEED, "kinds": table}, indent=2) + "\n")
        print(f"  written to {report.relative_to(ROOT) if report.is_relative_to(ROOT) else report}")


if __name__ == "__main__":
    main()
