"""``python -m benchmarks.distributed``: data-parallel scaling of W2 on this machine.

    python -m benchmarks.distributed                    # W2, global batch 128, 3 rounds
    python -m benchmarks.distributed --workload W1 --steps 40 --json scaling.json

Times the same training loop (forward, backward, gradient hook, SGD-momentum update)
in three layouts, each in fresh processes, in interleaved rounds (median reported):

- 1 process x 2 threads (BLAS uses both cores),
- 1 process x 1 thread,
- 2 ranks x 1 thread under ``mpiexec -n 2`` (each rank takes half of every global
  batch; the gradients are averaged with one all-reduce of one flat bucket per step).

For the 2-rank layout it also reports the time per step spent in the all-reduce
(which includes waiting for the slower rank) and its share of the step, and, from a
separate loop of back-to-back all-reduces of the same bucket after a barrier, the
cost of the communication alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main", "worker"]

LAYOUTS = (
    ("1 process x 2 threads", 1, 2),
    ("1 process x 1 thread", 1, 1),
    ("2 ranks x 1 thread", 2, 1),
)


def _time_steps(step: Any, comm: Any, warmup: int, steps: int, spent: list[float]) -> float:
    """Seconds of ``steps`` steps after ``warmup`` untimed ones, all ranks started
    together; ``spent`` is reset when the timing starts."""
    for _ in range(warmup):
        step()
    comm.barrier()
    spent[0] = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    float(loss)
    return time.perf_counter() - start


def _pure_allreduce(comm: Any, reduce: Any, bucket: int, steps: int) -> float:
    """Seconds per all-reduce of the gradient bucket alone, back to back."""
    buffer = np.ones(bucket + 1, dtype=np.float32)
    comm.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        reduce(buffer)
    return (time.perf_counter() - start) / steps


def worker(workload: str, batch: int, steps: int, warmup: int) -> dict[str, Any] | None:
    """Run inside every rank: time ``steps`` training steps; rank 0 returns the figures."""
    from benchmarks.workloads import LR, MOMENTUM, WORKLOADS
    from xpconv.models import zoo
    from xpconv.optim.optimizers import SGD
    from xpconv.parallel import (
        GradientAverager,
        MPICommunicator,
        SingleProcessCommunicator,
        shard_range,
    )

    comm = MPICommunicator(timeout=600) if "PMI_RANK" in os.environ else None
    comm = comm if comm is not None and comm.size > 1 else SingleProcessCommunicator()
    model = zoo.build_model(WORKLOADS[workload].zoo_name, backend="numpy", seed=0)
    opt = SGD(LR, momentum=MOMENTUM)
    rng = np.random.default_rng(0)
    lo, hi = shard_range(batch, comm.rank, comm.size)
    x = rng.random((batch, 1, 28, 28), dtype=np.float32)[lo:hi]
    y = rng.integers(0, 10, size=batch)[lo:hi]
    params = model.parameters()
    averager = GradientAverager(comm)
    averager.examples = hi - lo
    spent = [0.0]
    reduce = comm.allreduce

    def timed_allreduce(buffer: Any) -> Any:
        start = time.perf_counter()
        out = reduce(buffer)
        spent[0] += time.perf_counter() - start
        return out

    comm.allreduce = timed_allreduce  # type: ignore[method-assign]

    def step() -> Any:
        loss = model.train_batch(x, y)
        if comm.size > 1:
            grads = averager({k: p.grad for k, p in params.items()})
            for k, p in params.items():
                p.grad = grads[k]
        opt.step(params)
        return loss

    seconds = _time_steps(step, comm, warmup, steps, spent)
    in_allreduce = spent[0]
    bucket = sum(int(np.prod(p.shape)) for p in params.values())
    pure = _pure_allreduce(comm, reduce, bucket, steps) if comm.size > 1 else None
    if not comm.is_root:
        return None
    return {
        "ranks": comm.size,
        "images_per_second": batch * steps / seconds,
        "step_ms": 1e3 * seconds / steps,
        "allreduce_ms_per_step": 1e3 * in_allreduce / steps,
        "allreduce_share": in_allreduce / seconds,
        "pure_allreduce_ms": None if pure is None else 1e3 * pure,
        "bucket_bytes": 4 * (bucket + 1),
    }


def _run_layout(ranks: int, threads: int, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    cmd = [sys.executable, "-m", "benchmarks.distributed", "--worker"]
    cmd += ["--workload", args.workload, "--batch", str(args.batch)]
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    if ranks > 1:
        mpiexec = Path(sys.executable).with_name("mpiexec")
        cmd = [str(mpiexec) if mpiexec.exists() else "mpiexec", "-n", str(ranks), *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=root)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    return json.loads(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distributed")
    parser.add_argument("--workload", choices=("W1", "W2"), default="W2")
    parser.add_argument("--batch", type=int, default=128, help="global batch (default 128)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--json", default=None, metavar="PATH")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = worker(args.workload, args.batch, args.steps, args.warmup)
        if result is not None:
            print(json.dumps(result), flush=True)
        return 0

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in LAYOUTS}
    for r in range(args.rounds):
        for name, ranks, threads in LAYOUTS:
            runs[name].append(_run_layout(ranks, threads, args))
            print(f"round {r + 1}/{args.rounds}: {name}: "
                  f"{runs[name][-1]['images_per_second']:.0f} img/s", file=sys.stderr)  # fmt: skip
    table = _table(args, runs)
    if args.json:
        from benchmarks import environment

        out = {
            "workload": args.workload,
            "batch": args.batch,
            "steps": args.steps,
            "rounds": args.rounds,
            "layouts": table,
            "machine": environment.machine_info(),
            "load_average": os.getloadavg(),
        }
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


def _table(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]]) -> list[dict]:
    """Print the medians of every layout's rounds; returns them as rows."""

    def median(name: str, key: str) -> float | None:
        values = [run[key] for run in runs[name] if run[key] is not None]
        return statistics.median(values) if values else None

    base = median("1 process x 2 threads", "images_per_second")
    print(f"{args.workload}, float32, global batch {args.batch}, NumPy backend, "
          f"median of {args.rounds} interleaved rounds of {args.steps} steps")  # fmt: skip
    print(f"{'layout':<24} {'img/s':>8} {'vs 1x2':>7} {'step ms':>8} {'allreduce ms':>13} "
          f"{'share':>6}")  # fmt: skip
    table = []
    for name, ranks, threads in LAYOUTS:
        ips = median(name, "images_per_second")
        row = {
            "layout": name,
            "ranks": ranks,
            "threads_per_rank": threads,
            "images_per_second": ips,
            "relative_to_1x2": ips / base,
            "step_ms": median(name, "step_ms"),
            "allreduce_ms_per_step": median(name, "allreduce_ms_per_step"),
            "allreduce_share": median(name, "allreduce_share"),
            "pure_allreduce_ms": median(name, "pure_allreduce_ms"),
            "bucket_bytes": runs[name][0]["bucket_bytes"],
            "rounds": runs[name],
        }
        table.append(row)
        comm = "" if ranks == 1 else (
            f"{row['allreduce_ms_per_step']:>13.2f} {row['allreduce_share']:>6.1%}"
        )  # fmt: skip
        print(f"{name:<24} {ips:>8.0f} {ips / base:>7.2f} {row['step_ms']:>8.1f} {comm}")
    two = table[-1]
    print(f"all-reduce of the {two['bucket_bytes'] / 1e6:.2f} MB bucket alone (after a "
          f"barrier): {two['pure_allreduce_ms']:.2f} ms")  # fmt: skip
    return table


if __name__ == "__main__":
    sys.exit(main())
