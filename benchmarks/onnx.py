"""``python -m benchmarks.onnx``: onnxruntime on xpconv's ONNX export against xpconv's
own NumPy inference, W2 (the small LeNet), float32.

    python -m benchmarks.onnx                  # batch 128, each contender in its own process
    python -m benchmarks.onnx --same-process   # both in this process, interleaved rounds
    python -m benchmarks.onnx --batch 32 --rounds 9 --json onnx.json

The model is built from one seed and exported once; each contender then runs the
same batch in inference mode. In the default mode every contender runs in a fresh
process of its own (users run one library per process), one after the other, and
the whole alternation is repeated ``--alternations`` times; with ``--same-process``
the two share this process and run in interleaved rounds. Each figure is the median
over rounds of the time per forward pass, after warm-up. The ratio is onnxruntime's
images/s over xpconv's. Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import environment
from .workloads import build_xpconv, make_data

__all__ = ["main", "time_contender"]

CONTENDERS = ("xpconv-numpy", "onnxruntime")
_LIMITS: list[Any] = []


def _runner(contender: str, onnx_path: str, batch: int, threads: int) -> Any:
    """A function running one forward pass of ``contender`` and returning one logit."""
    x, _ = make_data(batch)
    if contender == "xpconv-numpy":
        _LIMITS.append(environment.set_threads(threads, limit_blas=True))  # kept alive
        model = build_xpconv("W2", "numpy")
        xin = model.as_input(x)
        return lambda: float(model.forward(xin, training=False)[0, 0])
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    runtime = onnxruntime.InferenceSession(
        onnx_path, sess_options=options, providers=["CPUExecutionProvider"]
    )
    return lambda: float(runtime.run(["output"], {"input": x})[0][0, 0])


def _sample(run: Any, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        run()
    return (time.perf_counter() - start) / steps


def _steps(run: Any, target_s: float) -> int:
    one = _sample(run, 1)
    return max(1, min(50, round(target_s / max(one, 1e-6))))


def time_contender(
    contender: str, onnx_path: str, batch: int, rounds: int, threads: int, target_s: float
) -> dict[str, Any]:
    """Median seconds per forward pass of one contender, timed in this process."""
    run = _runner(contender, onnx_path, batch, threads)
    for _ in range(3):
        run()
    steps = _steps(run, target_s)
    samples = [_sample(run, steps) for _ in range(rounds)]
    return {"contender": contender, "steps": steps, "samples_s": samples}


def _versions(*names: str) -> dict[str, str | None]:
    from importlib import metadata

    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _torch_threads() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.get_num_threads()


def _export(path: str) -> None:
    from xpconv.io import to_onnx

    to_onnx(build_xpconv("W2", "numpy"), path)


def _own_processes(args: argparse.Namespace, path: str) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {c: [] for c in CONTENDERS}
    for _ in range(args.alternations):
        for contender in CONTENDERS:
            command = [
                sys.executable, "-m", "benchmarks.onnx", "--child", contender, "--onnx", path,
                "--batch", str(args.batch), "--rounds", str(args.rounds),
                "--threads", str(args.threads), "--target-s", str(args.target_s),
            ]  # fmt: skip
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            samples[contender] += json.loads(out.strip().splitlines()[-1])["samples_s"]
    return samples


def _same_process(args: argparse.Namespace, path: str) -> dict[str, list[float]]:
    runs = {c: _runner(c, path, args.batch, args.threads) for c in CONTENDERS}
    for run in runs.values():
        for _ in range(3):
            run()
    steps = {c: _steps(run, args.target_s) for c, run in runs.items()}
    samples: dict[str, list[float]] = {c: [] for c in CONTENDERS}
    order = list(CONTENDERS)
    for _ in range(args.rounds * args.alternations):
        for contender in order:
            samples[contender].append(_sample(runs[contender], steps[contender]))
        order.reverse()
    return samples


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.onnx", description=__doc__)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=7, help="timed repeats per process")
    p.add_argument("--alternations", type=int, default=3, help="processes per contender")
    p.add_argument(
        "--threads",
        type=int,
        default=environment.core_count(),
        help="onnxruntime's intra-op threads and xpconv's BLAS threads (default: the cores)",
    )
    p.add_argument("--target-s", type=float, default=0.3, help="length of one timed repeat")
    p.add_argument("--same-process", action="store_true")
    p.add_argument("--json", default=None, metavar="PATH")
    p.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    p.add_argument("--onnx", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        result = time_contender(
            args.child, args.onnx, args.batch, args.rounds, args.threads, args.target_s
        )
        print(json.dumps(result))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "w2.onnx")
        _export(path)
        torch_threads = _torch_threads()
        try:
            samples = (_same_process if args.same_process else _own_processes)(args, path)
        finally:  # give this process its thread settings back
            for done in _LIMITS:
                if hasattr(done.get("_limiter"), "restore_original_limits"):
                    done["_limiter"].restore_original_limits()
            _LIMITS.clear()
            if torch_threads is not None:
                import torch

                torch.set_num_threads(torch_threads)
    medians = {c: statistics.median(s) for c, s in samples.items()}
    rates = {c: args.batch / m for c, m in medians.items()}
    ratio = rates["onnxruntime"] / rates["xpconv-numpy"]
    mode = "same process, interleaved" if args.same_process else "each in its own process"
    print(f"W2 inference, float32, batch {args.batch} ({mode}; {args.threads} threads)")
    for c in CONTENDERS:
        print(f"  {c:14s} {medians[c] * 1e3:8.2f} ms/batch  {rates[c]:9,.0f} images/s")
    print(f"  onnxruntime / xpconv-numpy: {ratio:.2f}")
    if args.json:
        record = {
            "workload": "W2",
            "mode": "inference",
            "batch": args.batch,
            "dtype": "float32",
            "process": "same" if args.same_process else "own",
            "threads": args.threads,
            "median_s": medians,
            "images_per_s": rates,
            "ratio_onnxruntime_vs_xpconv": ratio,
            "samples_s": samples,
            "machine": environment.machine_info(),
            "versions": {**environment.versions(), **_versions("onnx", "onnxruntime")},
        }
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
