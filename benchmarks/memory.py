"""Peak resident memory of one contender's training steps, measured in a fresh process.

Python allocators and PyTorch's caching allocator keep memory after it is freed, so
the only clean figure for one contender is taken in a process of its own. The child
(``python -m benchmarks.memory WORKLOAD CONTENDER MODE BATCH STEPS THREADS``) imports
what it needs, builds the model, its optimizer and the data, and records its resident
set size (``before``). It then resets the kernel's high-water mark (``VmHWM``, by
writing 5 to ``/proc/self/clear_refs``), runs ``STEPS`` more steps and reads the
high-water mark again (``peak``). ``increase_mb = peak - before`` is the working
memory of training beyond the weights and the data: activations, saved tensors,
gradients, optimizer state (created by the first step), temporaries, and whatever a
library allocates once on its first call.

Where the high-water mark cannot be reset (not Linux), ``peak`` is the process's
lifetime maximum from ``getrusage`` (imports included) and the method says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["measure_in_subprocess", "process_peak_rss_mb"]

REPO_ROOT = Path(__file__).resolve().parents[1]
_MB = 2**20


def process_peak_rss_mb() -> float | None:
    """This process's lifetime peak resident set size, from ``getrusage``."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return peak / _MB if sys.platform == "darwin" else peak / 1024


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _current_rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb / 1024
    try:
        import psutil

        return psutil.Process().memory_info().rss / _MB
    except ImportError:
        return None


def _child(workload: str, contender: str, mode: str, batch: int, steps: int, threads: int) -> dict:
    if contender in ("torch", "xpconv-torch"):
        import torch

        torch.set_num_threads(threads)
    from .workloads import make_runner

    runner = make_runner(contender, workload, mode, batch)
    before = _current_rss_mb()
    reset = _reset_peak() and _status_kb("VmHWM") is not None
    value = runner.run(steps)
    if reset:
        peak = _status_kb("VmHWM") / 1024
        method = "VmHWM reset after setup (Linux /proc/self/clear_refs)"
    else:
        peak = process_peak_rss_mb()
        method = "getrusage ru_maxrss (lifetime peak, imports included)"
    return {
        "workload": workload,
        "mode": mode,
        "batch": batch,
        "backend": contender,
        "steps": steps,
        "rss_before_mb": before,
        "peak_rss_mb": peak,
        "increase_mb": None if before is None or peak is None else max(peak - before, 0.0),
        "method": method,
        "last_value": value,
    }


def measure_in_subprocess(
    workload: str,
    contender: str,
    mode: str = "train",
    batch: int = 128,
    steps: int = 3,
    threads: int = 1,
    timeout_s: float = 300,
) -> dict[str, Any]:
    """Run :func:`_child` in a fresh interpreter; returns its record, or one with an
    ``error`` entry when the child failed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    args = [workload, contender, mode, str(batch), str(steps), str(threads)]
    cmd = [sys.executable, "-m", "benchmarks.memory", *args]
    base = {"workload": workload, "mode": mode, "batch": batch, "backend": contender}
    try:
        proc = subprocess.run(
            cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return {**base, "error": f"timed out after {timeout_s:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {**base, "error": f"exit status {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def main(argv: list[str]) -> int:
    if len(argv) != 6:
        print(
            "usage: python -m benchmarks.memory WORKLOAD CONTENDER MODE BATCH STEPS THREADS",
            file=sys.stderr,
        )
        return 2
    workload, contender, mode, batch, steps, threads = argv
    record = _child(workload, contender, mode, int(batch), int(steps), int(threads))
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
