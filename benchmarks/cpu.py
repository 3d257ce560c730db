"""The CPU suite: throughput of every contender, per-layer times, and a peer check.

Throughput: for each workload, mode and batch size, all contenders are built, warmed
up and timed in interleaved rounds (:mod:`benchmarks.timing`); a record per contender
gives images per second (batch / median seconds per step) and the ratio to PyTorch's
``nn.Module`` measured in the same rounds.

array-api-strict is a reference implementation (every operation checked, nothing
fused or in place): it runs one step per repeat, in fewer rounds, and only up to a
batch size limit; its records carry ``reference_only: true``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import report
from .isolated import host_tuned, time_own_process
from .timing import Policy, run_interleaved
from .workloads import (
    CONTENDERS,
    DTYPE,
    LR,
    MOMENTUM,
    REFERENCE_ONLY,
    build_xpconv,
    copy_weights,
    make_data,
    make_runner,
    torch_net,
)

__all__ = ["Settings", "peer_check", "per_layer", "throughput"]


@dataclass(frozen=True)
class Settings:
    """How much to measure. The defaults are the full run."""

    workloads: tuple[str, ...] = ("W1", "W2")
    modes: tuple[str, ...] = ("train", "inference")
    batches: tuple[int, ...] = (32, 128, 512)
    contenders: tuple[str, ...] = CONTENDERS
    warmup: int = 3
    warmup_s: float = 0.3
    rounds: int = 7
    target_s: float = 0.3
    max_steps: int = 50
    strict_max_batch: int = 128
    strict_rounds: int = 3
    pause_s: float = 0.02
    per_layer_batch: int = 128
    per_layer_repeats: int = 7
    loops_repeats: int = 3
    memory_steps: int = 3
    seed: int = 0
    own_process: bool = False
    peer_host_tuning: bool = False
    retries: int = 2
    threads: int = 1


def _policy(contender: str, settings: Settings) -> Policy:
    if contender in REFERENCE_ONLY:
        return Policy(
            warmup=1,
            rounds=min(settings.rounds, settings.strict_rounds),
            target_s=0.0,
            fixed_steps=1,
            retries=0,
        )
    return Policy(
        warmup=settings.warmup,
        warmup_s=settings.warmup_s,
        rounds=settings.rounds,
        target_s=settings.target_s,
        max_steps=settings.max_steps,
        retries=settings.retries,
    )


def _runs_at(contender: str, batch: int, settings: Settings) -> bool:
    return contender not in REFERENCE_ONLY or batch <= settings.strict_max_batch


def throughput(
    settings: Settings, progress: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """One record per workload, mode, batch size and contender."""
    records: list[dict[str, Any]] = []
    for workload in settings.workloads:
        for mode in settings.modes:
            for batch in settings.batches:
                names = [c for c in settings.contenders if _runs_at(c, batch, settings)]
                if not names:
                    continue
                if progress:
                    progress(f"{workload} {mode} batch {batch}: {', '.join(names)}")
                policies = {name: _policy(name, settings) for name in names}
                if settings.own_process:
                    timings = time_own_process(
                        names,
                        workload,
                        mode,
                        batch,
                        policies,
                        seed=settings.seed,
                        threads=settings.threads,
                        peer_host_tuning=settings.peer_host_tuning,
                    )
                else:
                    runners = {
                        name: make_runner(name, workload, mode, batch, settings.seed)
                        for name in names
                    }
                    timings = run_interleaved(runners, policies, pause_s=settings.pause_s)
                    del runners
                torch_rate = batch / timings["torch"].median_s if "torch" in timings else None
                for name in names:
                    record = report.timing_record(
                        workload, mode, batch, name, timings[name], torch_rate
                    )
                    record.update(
                        warmup_steps=policies[name].warmup + 1,
                        reference_only=name in REFERENCE_ONLY,
                        dtype=DTYPE,
                        device="cpu",
                        process="own" if settings.own_process else "shared",
                        # in one process, xpconv's host tuning holds for every contender
                        host_tuning=not settings.own_process
                        or host_tuned(name, settings.peer_host_tuning),
                    )
                    records.append(record)
    return records


def per_layer(
    workload: str = "W2",
    backend: str = "numpy",
    batch: int = 128,
    repeats: int = 7,
    warmup: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """Median forward and backward seconds of each layer in one training step.

    Calls ``step.forward(h, training=True)`` for each of ``model.steps`` (the layers,
    with a fused convolution + max pool as one step), the loss forward and backward,
    ``step.backward(g)`` in reverse order, then the SGD update: exactly what
    ``train_batch`` + ``step`` do, with a clock read between the calls.
    """
    from xpconv.optim.optimizers import SGD

    model = build_xpconv(workload, backend, seed)
    optimizer = SGD(LR, momentum=MOMENTUM)
    x_host, y_host = make_data(batch, seed)
    x, y = model.as_input(x_host), model.as_target(y_host, batch)
    times: dict[str, list] = {
        "fwd": [[] for _ in model.steps],
        "bwd": [[] for _ in model.steps],
        "loss_f": [],
        "loss_b": [],
        "opt": [],
        "step": [],
    }
    value = math.nan
    for rep in range(warmup + max(1, repeats)):
        value = _timed_step(model, optimizer, x, y, times if rep >= warmup else None)
    rows = _layer_rows(model, batch, times)
    total = sum(r["total_s"] for r in rows)
    for r in rows:
        r["share"] = r["total_s"] / total if total > 0 else 0.0
    return {
        "workload": workload,
        "backend": f"xpconv-{backend}",
        "batch": batch,
        "dtype": DTYPE,
        "repeats": max(1, repeats),
        "warmup_steps": warmup,
        "layers": rows,
        "sum_of_medians_s": total,
        "step_median_s": statistics.median(times["step"]),
        "last_loss": value,
        "note": "optimizer time is listed under backward_s",
    }


def _timed_step(model: Any, optimizer: Any, x: Any, y: Any, times: dict | None) -> float:
    """One training step, a clock read between the calls; the seconds are appended to
    ``times`` (None: a warm-up step, nothing kept). Returns the loss."""
    clock, layers = time.perf_counter, model.steps
    laps: dict[str, Any] = {"fwd": [], "bwd": []}
    begin = clock()
    h = x
    for layer in layers:
        start = clock()
        h = layer.forward(h, True)
        laps["fwd"].append(clock() - start)
    start = clock()
    loss = model.loss.forward(h, y)
    mid = clock()
    g = model.loss.backward()
    end = clock()
    laps["loss_f"], laps["loss_b"] = mid - start, end - mid
    for i in reversed(range(len(layers))):
        start = clock()
        g = layers[i].backward(g)
        laps["bwd"].insert(0, clock() - start)
    start = clock()
    optimizer.step(model.parameters())
    value = float(loss)
    end = clock()
    if times is not None:
        for i in range(len(layers)):
            times["fwd"][i].append(laps["fwd"][i])
            times["bwd"][i].append(laps["bwd"][i])
        times["loss_f"].append(laps["loss_f"])
        times["loss_b"].append(laps["loss_b"])
        times["opt"].append(end - start)
        times["step"].append(end - begin)
    return value


def _layer_rows(model: Any, batch: int, times: dict[str, list]) -> list[dict[str, Any]]:
    """One row per step, then the loss and the optimizer: median seconds each."""
    med = statistics.median
    rows = [
        {
            "layer": layer.name,
            "description": layer.describe(),
            "output_shape": [batch, *layer.output_shape],
            "forward_s": med(times["fwd"][i]),
            "backward_s": med(times["bwd"][i]),
        }
        for i, layer in enumerate(model.steps)
    ]
    rows.append(
        {
            "layer": "loss",
            "description": model.loss.name,
            "output_shape": [],
            "forward_s": med(times["loss_f"]),
            "backward_s": med(times["loss_b"]),
        }
    )
    rows.append(
        {
            "layer": "optimizer",
            "description": f"SGD(lr={LR}, momentum={MOMENTUM}) step",
            "output_shape": [],
            "forward_s": 0.0,
            "backward_s": med(times["opt"]),
        }
    )
    for r in rows:
        r["total_s"] = r["forward_s"] + r["backward_s"]
    return rows


def peer_check(workload: str, batch: int = 8, steps: int = 2, seed: int = 0) -> dict[str, Any]:
    """Do xpconv (NumPy) and the PyTorch peer compute the same thing?

    Both start from the same weights; compares the logits before training and after
    ``steps`` SGD-momentum steps on one batch (relative to the largest logit).
    """
    import torch

    from xpconv.optim.optimizers import SGD

    model = build_xpconv(workload, "numpy", seed)
    net = torch_net(workload)
    copy_weights(model, net)
    x_host, y_host = make_data(batch, seed)
    x_t, y_t = torch.from_numpy(x_host), torch.from_numpy(y_host)

    def compare() -> float:
        with torch.no_grad():
            theirs = net(x_t).numpy()
        ours = model.forward(x_host, training=False)
        return report.relative_diffs({"torch": theirs, "xpconv": ours}, "torch")["xpconv"]

    before = compare()
    optimizer = SGD(LR, momentum=MOMENTUM)
    torch_opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    for _ in range(steps):
        model.train_batch(x_host, y_host)
        optimizer.step(model.parameters())
        torch_opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x_t), y_t).backward()
        torch_opt.step()
    after = compare()
    tolerance = 1e-4
    return {
        "workload": workload,
        "batch": batch,
        "steps": steps,
        "relative_diff_before": before,
        "relative_diff_after_steps": after,
        "tolerance": tolerance,
        "ok": bool(before <= tolerance and after <= tolerance),
    }
