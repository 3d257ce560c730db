"""GPU benchmarks: device detection.

The GPU suite (W2 at batch 128 and 1024, and a ResNet-style block, against PyTorch
with cuDNN, timed with device synchronisation) is not written yet. ``--gpu`` finds out
whether a CUDA device is usable and says what is missing; it never prints numbers it
did not measure.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["EXIT_NO_DEVICE", "EXIT_NOT_IMPLEMENTED", "detect", "main"]

EXIT_NO_DEVICE = 2
EXIT_NOT_IMPLEMENTED = 3

NEEDED = (
    "GPU benchmarks need an NVIDIA GPU with its CUDA driver, plus CuPy "
    "(pip install cupy-cuda12x, or cupy-cuda13x for CUDA 13) for xpconv's cupy backend "
    "and a CUDA build of PyTorch for the peer."
)


def detect() -> dict[str, Any]:
    """What each library says about CUDA devices here."""
    found: dict[str, Any] = {}
    try:
        import cupy

        try:
            found["cupy"] = int(cupy.cuda.runtime.getDeviceCount())
        except Exception as exc:  # no driver, no device: CUDA raises its own errors
            found["cupy"] = f"installed, no device ({type(exc).__name__}: {exc})"
    except ImportError:
        found["cupy"] = "not installed"
    except Exception as exc:  # a broken CUDA installation can fail at import
        found["cupy"] = f"import failed ({type(exc).__name__}: {exc})"
    try:
        import torch

        available = bool(torch.cuda.is_available())
        found["torch.cuda.is_available()"] = available
        if available:
            found["torch.cuda.device_count()"] = torch.cuda.device_count()
    except ImportError:
        found["torch.cuda.is_available()"] = "torch not installed"
    return found


def has_device(found: dict[str, Any]) -> bool:
    cupy = found.get("cupy")
    return (isinstance(cupy, int) and cupy > 0) or found.get("torch.cuda.is_available()") is True


def main() -> int:
    found = detect()
    summary = "; ".join(f"{k}: {v}" for k, v in found.items())
    if not has_device(found):
        print(f"benchmarks --gpu: no CUDA device was found ({summary}).", file=sys.stderr)
        print(NEEDED, file=sys.stderr)
        return EXIT_NO_DEVICE
    print(
        f"benchmarks --gpu: CUDA device found ({summary}), but the GPU benchmarks "
        "(W2 at batch 128 and 1024 and a ResNet-style block, against PyTorch with cuDNN) "
        "are not implemented yet; no numbers were produced.",
        file=sys.stderr,
    )
    return EXIT_NOT_IMPLEMENTED
