"""The roofline: effective GFLOP/s of each contender and its fraction of the machine's
float32 matmul peak.

FLOPs are those of direct convolution and the dense products (2 per multiply-add),
whatever algorithm ran (im2col, Winograd, a library's own): a step that needs fewer
multiplies shows as a higher effective rate, which may pass the peak. Per image:

- inference: the forward pass of every Conv2D (``2 * O * C/groups * KH * KW * OH * OW``)
  and Dense (``2 * in * out``);
- train: three times that (forward, input gradient, weight gradient), less the input
  gradient of the first layer, which no step computes.

Counted from the models themselves (:func:`step_mflop`): W1 2.0 MFLOP per image to
train and 0.88 for inference, W2 25.0 and 8.5.

The peak is a (4096 x 4096) by (4096 x 4096) float32 product on 2 threads (or the
threads asked for), the best of a few, measured in a fresh process with NumPy and,
when installed, PyTorch; the higher of the two is the machine's peak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .workloads import build_xpconv

__all__ = ["PEAK_SIZE", "format_roofline", "measure_peak", "roofline", "step_mflop"]

PEAK_SIZE = 4096

_PEAK_CHILD = r"""
import json, sys, time
n, threads, repeats = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
out = {}
import numpy as np
rng = np.random.default_rng(0)
a = rng.random((n, n), dtype=np.float32); b = rng.random((n, n), dtype=np.float32)
def best(f):
    f(); times = []
    for _ in range(repeats):
        t = time.perf_counter(); f(); times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times) / 1e9
out["numpy"] = best(lambda: a @ b)
try:
    import torch
except ImportError:
    pass
else:
    torch.set_num_threads(threads)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    out["torch"] = best(lambda: ta @ tb)
print(json.dumps(out))
"""


def _layer_mflop(layer: Any) -> float:
    from xpconv.nn.layers import Conv2D, Dense

    if isinstance(layer, Conv2D):
        g = layer.geometry
        per_out = (g.in_channels // g.groups) * g.kernel[0] * g.kernel[1]
        return 2 * g.out_channels * per_out * g.out[0] * g.out[1] / 1e6
    if isinstance(layer, Dense):
        weight = layer.params["weight"]
        return 2 * weight.shape[0] * weight.shape[1] / 1e6
    return 0.0


def step_mflop(workload: str, mode: str) -> float:
    """MFLOP per image of one step of ``workload`` in ``mode`` (see the module doc)."""
    model = build_xpconv(workload, "numpy")
    counted = [layer for layer in model.layers if _layer_mflop(layer)]
    forward = sum(_layer_mflop(layer) for layer in counted)
    if mode != "train":
        return forward
    first = _layer_mflop(model.layers[0]) if counted and counted[0] is model.layers[0] else 0.0
    return 3 * forward - first


def measure_peak(threads: int = 2, size: int = PEAK_SIZE, repeats: int = 3) -> dict[str, Any]:
    """GFLOP/s of a float32 (size x size) matmul in a fresh process on ``threads``
    threads: ``{"numpy": ..., "torch": ... (when installed), "peak": the higher}``."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_CHILD, str(size), str(threads), str(repeats)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=True,
    )
    rates = json.loads(done.stdout.strip().splitlines()[-1])
    return {**rates, "peak": max(rates.values()), "size": size, "threads": threads}


def roofline(
    records: Sequence[dict[str, Any]],
    peak: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
    threads: int = 2,
) -> dict[str, Any]:
    """Effective GFLOP/s and fraction of ``peak`` (measured here when None) for each
    throughput record: ``{"peak": ..., "mflop_per_image": ..., "rows": [...]}``."""
    if peak is None:
        if progress:
            progress(f"roofline: float32 matmul peak, {PEAK_SIZE}^2, {threads} threads")
        peak = measure_peak(threads)
    flops = {f"{r['workload']} {r['mode']}": step_mflop(r["workload"], r["mode"]) for r in records}
    rows = []
    for r in records:
        mflop = flops[f"{r['workload']} {r['mode']}"]
        gflops = r["images_per_s"] * mflop / 1e3
        rows.append(
            {
                "workload": r["workload"],
                "mode": r["mode"],
                "batch": r["batch"],
                "backend": r["backend"],
                "images_per_s": r["images_per_s"],
                "gflop_per_s": gflops,
                "of_peak": gflops / peak["peak"],
                "roofline_images_per_s": peak["peak"] * 1e3 / mflop,
            }
        )
    return {"peak": peak, "mflop_per_image": flops, "rows": rows}


def format_roofline(result: dict[str, Any]) -> str:
    """One line per workload, mode, batch and contender: images/s, effective GFLOP/s,
    fraction of the peak; then the peak and the FLOPs counted."""
    lines = [("workload", "mode", "batch", "contender", "images/s", "GFLOP/s", "of peak")]
    for r in result["rows"]:
        lines.append(
            (
                r["workload"],
                r["mode"],
                str(r["batch"]),
                r["backend"],
                f"{r['images_per_s']:,.0f}",
                f"{r['gflop_per_s']:.1f}",
                f"{r['of_peak']:.2f}",
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    out = [
        "  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in lines
    ]
    peak = result["peak"]
    libs = ", ".join(f"{k} {v:.0f}" for k, v in peak.items() if k in ("numpy", "torch"))
    flops = ", ".join(f"{k} {v:.2f}" for k, v in result["mflop_per_image"].items())
    out.append(
        f"peak: float32 matmul {peak['size']}^2 on {peak['threads']} threads, own process: "
        f"{peak['peak']:.0f} GFLOP/s ({libs}); MFLOP per image (direct convolution and "
        f"dense, whatever algorithm ran): {flops}"
    )
    return "\n".join(out)
