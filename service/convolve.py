"""2-D convolution in numpy, as TensorFlow computes it (cross-correlation, "same" or "valid").

Used by `POST /convolve`, which applies a kernel the explorer's user picks.
"""

from __future__ import annotations

import numpy as np


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "same" padding on one axis: (before, after), the odd pixel after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv2d(
    x: np.ndarray, kernel: np.ndarray, stride: tuple[int, int] = (1, 1), padding: str = "valid"
) -> np.ndarray:
    """x (H, W, C_in), kernel (kh, kw, C_in, C_out) -> (H', W', C_out), in float64."""
    kh, kw = kernel.shape[:2]
    x = np.asarray(x, np.float64)
    if padding == "same":
        pads = (same_padding(x.shape[0], kh, stride[0]), same_padding(x.shape[1], kw, stride[1]))
        x = np.pad(x, (*pads, (0, 0)))
    # windows: (H', W', C_in, kh, kw) every stride-th position
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(0, 1))
    windows = windows[:: stride[0], :: stride[1]]
    return np.einsum("yxcij,ijco->yxo", windows, np.asarray(kernel, np.float64))
