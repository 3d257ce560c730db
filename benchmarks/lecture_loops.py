"""The lecture's convolution: seven nested Python loops, against the vectorised conv2d.

``conv2d_loops`` is written the way the lecture writes it: zero-pad the input, then
loop over the batch, the output channels, the input channels, the output rows and
columns and the kernel rows and columns, accumulating one product at a time.
:func:`run` checks it against :func:`xpconv.ops.conv2d` (im2col and one matrix
product) on the same float64 data and times both.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

import xpconv.ops as F

__all__ = ["DEFAULT_CASE", "conv2d_loops", "run"]

# batch, in channels, out channels, image size, kernel size ("same" padding)
DEFAULT_CASE = {"batch": 2, "in_channels": 1, "out_channels": 4, "size": 12, "kernel": 5}


def conv2d_loops(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int) -> np.ndarray:
    """Stride-1 cross-correlation of x (N, C, H, W) with w (O, C, K, K), bias b (O,),
    ``pad`` zeros on every side, by seven nested loops."""
    n_batch, n_in, height, width = x.shape
    n_out, _, k_rows, k_cols = w.shape
    x_pad = np.zeros((n_batch, n_in, height + 2 * pad, width + 2 * pad), dtype=x.dtype)
    x_pad[:, :, pad : pad + height, pad : pad + width] = x
    out_rows = height + 2 * pad - k_rows + 1
    out_cols = width + 2 * pad - k_cols + 1
    out = np.zeros((n_batch, n_out, out_rows, out_cols), dtype=x.dtype)
    for n in range(n_batch):
        for o in range(n_out):
            for c in range(n_in):
                for i in range(out_rows):
                    for j in range(out_cols):
                        for ki in range(k_rows):
                            for kj in range(k_cols):
                                out[n, o, i, j] += x_pad[n, c, i + ki, j + kj] * w[o, c, ki, kj]
            out[n, o] += b[o]
    return out


def _median_time(fn: Any, repeats: int, min_s: float = 0.0) -> tuple[float, int]:
    """Median seconds per call over ``repeats`` samples; each sample loops the call
    until it lasts ``min_s`` (for fast functions). Returns (median, calls per sample)."""
    calls = 1
    if min_s > 0:
        start = time.perf_counter()
        fn()
        once = max(time.perf_counter() - start, 1e-7)
        calls = max(1, int(min_s / once))
    samples = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls)
    return statistics.median(samples), calls


def run(repeats: int = 3, seed: int = 0, case: dict[str, int] | None = None) -> dict[str, Any]:
    """Check the loop convolution against conv2d and time both (the ``lecture_loops``
    record of the JSON)."""
    case = dict(DEFAULT_CASE if case is None else case)
    rng = np.random.default_rng(seed)
    size, kernel = case["size"], case["kernel"]
    x = rng.standard_normal((case["batch"], case["in_channels"], size, size))
    w = rng.standard_normal((case["out_channels"], case["in_channels"], kernel, kernel))
    b = rng.standard_normal(case["out_channels"])
    pad = (kernel - 1) // 2
    loops = conv2d_loops(x, w, b, pad)
    vectorised = np.asarray(F.conv2d(x, w, b, padding="same"))
    diff = float(np.max(np.abs(loops - vectorised)))
    scale = max(float(np.max(np.abs(vectorised))), 1.0)
    loop_s, _ = _median_time(lambda: conv2d_loops(x, w, b, pad), repeats)
    vec_s, calls = _median_time(
        lambda: F.conv2d(x, w, b, padding="same"), max(repeats, 5), min_s=0.02
    )
    return {
        "shape": {
            "x": list(x.shape),
            "weight": list(w.shape),
            "padding": "same",
            "out": list(loops.shape),
        },
        "dtype": "float64",
        "multiply_adds": int(np.prod(loops.shape) * case["in_channels"] * kernel * kernel),
        "max_abs_diff": diff,
        "matches": bool(diff <= 1e-10 * scale),
        "loops_s": loop_s,
        "conv2d_s": vec_s,
        "speedup": loop_s / vec_s,
        "repeats": max(1, repeats),
        "conv2d_calls_per_sample": calls,
    }
