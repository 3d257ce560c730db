"""Busy-machine check: a LeNet training epoch beside another process's training.

Laptops, shared servers and CI runners are busy machines. This check starts a
background job, bounded in time and ended by the check itself, and times one training
epoch of LeNet (W2) on 600 images, batch 60, through :class:`xpconv.Trainer` (which
applies ``xpconv.tune_host``), each try in a fresh process, interleaved with the same
epoch run with one BLAS thread (``OPENBLAS_NUM_THREADS=1``). Background jobs:

- ``torch``: a PyTorch training loop of the same network with 2 threads;
- ``xpconv``: a second xpconv training of the same network (NumPy backend).

The figure of merit is epoch seconds divided by the one-BLAS-thread epoch seconds of
the same try.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from .isolated import REPO_ROOT

__all__ = ["BACKGROUNDS", "busy_check", "epoch_seconds"]

BACKGROUNDS = ("torch", "xpconv")
EXAMPLES, BATCH = 600, 60


def epoch_seconds(seed: int = 0) -> float:
    """One epoch of LeNet on 600 random images, batch 60, through the Trainer."""
    import numpy as np

    from xpconv.models import zoo
    from xpconv.optim.optimizers import SGD
    from xpconv.train.trainer import Trainer

    rng = np.random.default_rng(seed)
    x = rng.random((EXAMPLES, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, size=EXAMPLES)
    model = zoo.lenet(backend="numpy", seed=seed)
    trainer = Trainer(model, SGD(0.05, momentum=0.9), progress=False, log_every=1000)
    return trainer.fit(x, y, epochs=1, batch_size=BATCH).seconds[0]


def _load_torch(seconds: float) -> None:
    import torch

    from .workloads import make_runner

    torch.set_num_threads(2)
    runner = make_runner("torch", "W2", "train", 128)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        runner.run(1)


def _load_xpconv(seconds: float) -> None:
    from xpconv.backends.numpy import host

    from .workloads import make_runner

    host.tune_host()
    runner = make_runner("xpconv-numpy", "W2", "train", 128)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        host.balance_threads()
        runner.run(1)


def _python(*args: str, env: dict[str, str] | None = None) -> list[str]:
    return [sys.executable, "-m", "benchmarks.busy", *args]


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def _epoch_in_process(one_blas_thread: bool, timeout_s: float) -> float:
    env = _env(OPENBLAS_NUM_THREADS="1") if one_blas_thread else _env()
    done = subprocess.run(
        _python("epoch"), capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=timeout_s
    )
    if done.returncode != 0:
        raise RuntimeError(f"busy check: the epoch process failed: {done.stderr.strip()[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def busy_check(
    backgrounds: tuple[str, ...] = BACKGROUNDS,
    tries: int = 3,
    *,
    load_s: float = 120.0,
    epoch: Callable[[bool, float], float] = _epoch_in_process,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Per background job: ``tries`` pairs of epochs (default, one BLAS thread)."""
    out: dict[str, Any] = {
        "what": (
            f"LeNet (W2) epoch of {EXAMPLES} images, batch {BATCH}, Trainer, fresh process "
            "per epoch; beside a background job bounded to load_s seconds; ratio = epoch "
            "seconds / one-BLAS-thread epoch seconds of the same try"
        ),
        "load_s": load_s,
        "runs": [],
    }
    for background in backgrounds:
        if background not in BACKGROUNDS:
            raise ValueError(f"backgrounds: expected names from {BACKGROUNDS}, got {background!r}")
        if progress:
            progress(f"busy machine: LeNet epoch beside a {background} training, {tries} tries")
        job = subprocess.Popen(
            _python(f"load-{background}", str(load_s)),
            env=_env(),
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        tried: list[dict[str, float]] = []
        try:
            time.sleep(2.0)  # let the background job start its step loop
            for _ in range(tries):
                if job.poll() is not None:
                    break
                one = epoch(True, load_s)
                default = epoch(False, load_s)
                tried.append({"default_s": default, "one_blas_thread_s": one})
        finally:
            job.kill()
            job.wait()
        ratios = [t["default_s"] / t["one_blas_thread_s"] for t in tried]
        out["runs"].append(
            {
                "background": background,
                "tries": tried,
                "ratios": ratios,
                "worst_ratio": max(ratios) if ratios else None,
                "median_ratio": statistics.median(ratios) if ratios else None,
            }
        )
    return out


def format_busy(result: dict[str, Any]) -> str:
    """The busy-machine check as text."""
    lines = [f"Busy machine: {result['what']}"]
    for run in result["runs"]:
        tries = ", ".join(
            f"{t['default_s']:.2f}/{t['one_blas_thread_s']:.2f} s" for t in run["tries"]
        )
        worst = run["worst_ratio"]
        lines.append(
            f"  beside {run['background']}: default/one-thread {tries}; "
            f"worst ratio {'-' if worst is None else f'{worst:.2f}'}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1] == "epoch":
        print(json.dumps(epoch_seconds()))
    elif sys.argv[1] == "load-torch":
        _load_torch(float(sys.argv[2]))
    elif sys.argv[1] == "load-xpconv":
        _load_xpconv(float(sys.argv[2]))
    else:
        raise SystemExit("usage: python -m benchmarks.busy epoch|load-torch S|load-xpconv S")
