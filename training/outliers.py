"""Synthetic images that are none of the classes, for outlier exposure (Hendrycks et al. 2019).

The model is trained to spread its probability evenly over the classes on these, so that its
confidence is low on noise, and the `uncertain` flag catches it. Each image is drawn at a random
size and goes through the service's own preprocessing (service/images.py, as the model's
metadata describes it), so the model sees noise exactly as it would be served.

Only noise is drawn here, never anything stroke-like (a line is a 1) nor a photo: the textures,
photos and sample images of scripts/out_of_scope.py stay a check of what the model was never
shown.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from service import images


def _noise(rng: np.random.Generator) -> np.ndarray:
    """One noise image of a random kind and size, uint8 RGB."""
    side = int(rng.integers(16, 320))
    kind = int(rng.integers(0, 4))
    if kind == 0:  # uniform colour noise
        return rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    if kind == 1:  # Gaussian grey noise around a random tone
        grey = rng.normal(rng.uniform(40, 215), rng.uniform(10, 80), (side, side))
        return np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    if kind == 2:  # salt and pepper at a random density
        dots = rng.random((side, side)) < rng.uniform(0.05, 0.95)
        return np.repeat(np.where(dots, 255, 0).astype(np.uint8)[..., None], 3, axis=2)
    # Blocky noise: a coarse random grid scaled up, so the noise has a grain of its own.
    cells = int(rng.integers(6, 16))
    coarse = rng.integers(0, 256, (cells, cells), dtype=np.uint8)
    grid = Image.fromarray(coarse).resize((side, side), Image.Resampling.NEAREST)
    return np.repeat(np.asarray(grid)[..., None], 3, axis=2)


def synthetic_outliers(count: int, preprocessing: dict[str, Any], seed: int) -> np.ndarray:
    """`count` noise images as the model receives them, stored like the training images: uint8
    (count, H, W, C), that is the service's float input undone by the metadata's scale and
    offset."""
    rng = np.random.default_rng(seed)
    scale, offset = preprocessing["scale"], preprocessing["offset"]
    out = []
    for _ in range(count):
        x = images.preprocess(Image.fromarray(_noise(rng)), preprocessing)
        out.append(np.clip(np.rint((x - offset) / scale), 0, 255).astype(np.uint8))
    return np.stack(out)
