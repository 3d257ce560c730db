"""Own-process timing: every contender in a fresh interpreter, interleaved in rounds.

A user runs one library per process. Timed side by side in one process, contenders
share an allocator, loaded libraries and their thread pools, and colour each other's
figures. In this mode every round starts one fresh process per contender (the order
rotating from round to round); the process builds the runner, warms up, calibrates its
steps per repeat, times one repeat (run again while other processes kept the cores busy,
as in :mod:`benchmarks.timing`) and prints one JSON line. One sample per round and
contender; the record is the median, exactly as in the in-process mode.

xpconv's processes apply ``xpconv.tune_host``, as the ``xpconv`` command does (and
``Trainer(..., tune_host=True)``); a peer's (PyTorch's, JAX's) run as their users run
them, without it, unless ``peer_host_tuning`` asks for it. It matters: on the 2-core Zen 3
machine, glibc's default of fresh ``mmap`` pages for every large temporary made
PyTorch's W1 inference step at batch 128 take 8.1 ms, against 4.3 ms under xpconv's
allocator setting.

Run a single child by hand::

    python -m benchmarks.isolated '{"contender": "torch", "workload": "W2", ...}'
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .timing import Policy, Timing, run_interleaved
from .workloads import is_xpconv

__all__ = ["child", "host_tuned", "time_own_process"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def host_tuned(contender: str, peer_host_tuning: bool = False) -> bool:
    """Whether ``contender``'s own process applies ``xpconv.tune_host``: xpconv's always,
    a peer's only with ``peer_host_tuning``."""
    return is_xpconv(contender) or peer_host_tuning


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Inside the fresh process: time one contender once (warm-up, calibration, one
    kept repeat) and return its per-step seconds and busy-ness."""
    from xpconv.backends.numpy import host

    from .environment import set_threads
    from .workloads import make_runner

    tuned = host.tune_host() if spec.get("host_tuning", host_tuned(spec["contender"])) else None
    set_threads(spec["threads"], limit_blas=False)
    runner = make_runner(
        spec["contender"], spec["workload"], spec["mode"], spec["batch"], spec["seed"]
    )
    policy = Policy(**spec["policy"], rounds=1)
    timing = run_interleaved({"one": runner}, {"one": policy}, pause_s=0.0)["one"]
    return {
        "seconds": timing.samples[0],
        "steps": timing.steps,
        "busy": timing.busy[0],
        "retried": timing.retried,
        "last_value": timing.last_value,
        "host_tuning": tuned,
    }


def _run_child(spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.isolated", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
        cwd=REPO_ROOT,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{spec['contender']} {spec['workload']} {spec['mode']} batch {spec['batch']}: "
            f"the timing process failed ({done.returncode}): {done.stderr.strip()[-2000:]}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def time_own_process(
    names: list[str],
    workload: str,
    mode: str,
    batch: int,
    policies: dict[str, Policy],
    *,
    seed: int = 0,
    threads: int = 1,
    peer_host_tuning: bool = False,
    timeout_s: float = 600.0,
    launch: Callable[[dict[str, Any], float], dict[str, Any]] = _run_child,
) -> dict[str, Timing]:
    """One fresh process per contender and round, the order rotating; a ``Timing`` per
    contender as :func:`benchmarks.timing.run_interleaved` gives. xpconv's processes
    apply ``xpconv.tune_host``; the peers' only with ``peer_host_tuning``."""
    timings: dict[str, Timing] = {}
    rounds = max(policies[name].rounds for name in names)
    for r in range(rounds):
        shift = r % len(names)
        for name in [*names[shift:], *names[:shift]]:
            policy = policies[name]
            if r >= policy.rounds:
                continue
            spec = {
                "contender": name,
                "workload": workload,
                "mode": mode,
                "batch": batch,
                "seed": seed,
                "threads": threads,
                "host_tuning": host_tuned(name, peer_host_tuning),
                "policy": {
                    "warmup": policy.warmup,
                    "warmup_s": policy.warmup_s,
                    "target_s": policy.target_s,
                    "max_steps": policy.max_steps,
                    "fixed_steps": policy.fixed_steps,
                    "busy_limit": policy.busy_limit,
                    "retries": policy.retries,
                },
            }
            got = launch(spec, timeout_s)
            timing = timings.setdefault(name, Timing(got["steps"]))
            timing.samples.append(got["seconds"])
            timing.busy.append(got["busy"])
            timing.retried += got["retried"]
            timing.last_value = got["last_value"]
    return timings


if __name__ == "__main__":
    print(json.dumps(child(json.loads(sys.argv[1]))))
