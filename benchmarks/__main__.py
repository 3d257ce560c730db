"""``python -m benchmarks``: xpconv against PyTorch on the CPU, same run, same threads.

    python -m benchmarks                       # full run: W1, W2, batch 32/128/512
    python -m benchmarks --quick --markdown    # batch 128, fewer rounds (< 2 minutes)
    python -m benchmarks --batch 128 --json bench.json --png ratios.png
    python -m benchmarks --gpu                 # GPU suite (needs a CUDA device)
    python -m benchmarks --gpu-dry-run         # the GPU suite's code on the CPU, tiny sizes

Prints a table of images/s per contender and the ratios to PyTorch, a per-layer table
of W2 on NumPy, the lecture's loop convolution against conv2d, and peak memory.
``--json`` writes everything with the machine, versions, threads and BLAS beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time
from typing import Any

from . import busy, cpu, environment, gpu, lecture_loops, memory, opcount, report, roofline
from .timing import flat_unique, settings_base
from .workloads import CONTENDERS, MODES, REFERENCE_ONLY, WORKLOADS, available_contenders

__all__ = ["build_parser", "main", "settings_from"]

QUICK = dict(
    batches=(128,),
    warmup=1,
    rounds=5,
    target_s=0.15,
    max_steps=20,
    strict_rounds=2,
    per_layer_repeats=3,
    loops_repeats=2,
    memory_steps=2,
)
SMOKE = dict(
    batches=(4,),
    warmup=1,
    warmup_s=0.0,
    rounds=1,
    target_s=0.0,
    max_steps=1,
    strict_rounds=1,
    retries=0,
    pause_s=0.0,
    per_layer_batch=4,
    per_layer_repeats=1,
    loops_repeats=1,
    memory_steps=1,
)


NOTES = [
    "images_per_s = batch / median seconds per step; a step is a full training step "
    "(forward, loss, backward, optimizer update) or an inference forward in eval mode. "
    "The loss (or one logit) is read back at the end of every timed repeat.",
    "All contenders of one workload/mode/batch run in the same process, warmed up, then "
    "in interleaved rounds with the order rotating; median of the rounds.",
    "ratio_vs_torch = images_per_s / images_per_s of PyTorch's nn.Module in the same "
    "rounds (1.0 for the torch record itself). The peer starts from xpconv's weights; "
    "peer_check compares their logits.",
    "xpconv-array_api_strict is a reference implementation, not built for speed: one step "
    "per repeat, fewer rounds, batches up to strict_max_batch (reference_only: true).",
    "Other processes on the machine change absolute numbers; load_average is recorded at "
    "the start and the end. Ratios are steadier than absolute figures.",
]


def _list(kind: Any, choices: tuple[Any, ...] | None = None) -> Any:
    """An argparse type for one value or a comma-separated list of them."""

    def parse(text: str) -> list[Any]:
        values = []
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                value = kind(part)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"expected {kind.__name__} values, got {part!r}"
                ) from None
            if choices is not None and value not in choices:
                raise argparse.ArgumentTypeError(
                    f"expected one of {', '.join(map(str, choices))}, got {part!r}"
                )
            if kind is int and value < 1:
                raise argparse.ArgumentTypeError(f"expected a positive integer, got {part!r}")
            values.append(value)
        return values

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=(
            "Images/s of xpconv (numpy, torch and array-api-strict backends) and of "
            "PyTorch's nn.Module on W1 (the lecture's network) and W2 (a small LeNet), "
            "float32, timed in interleaved rounds in one process; ratios are against "
            "PyTorch measured in the same rounds."
        ),
    )
    _selection_options(p)
    _run_options(p)
    _output_options(p)
    return p


def _selection_options(p: argparse.ArgumentParser) -> None:
    """What to measure: size presets, batches, workloads, modes, contenders."""
    scale = p.add_mutually_exclusive_group()
    scale.add_argument(
        "--quick", action="store_true", help="batch 128, fewer rounds: under 2 minutes"
    )
    scale.add_argument(
        "--smoke", action="store_true", help="batch 4, one step of everything (for tests)"
    )
    p.add_argument(
        "--batch",
        action="append",
        type=_list(int),
        metavar="N[,N...]",
        help="batch sizes (repeatable; default 32,128,512; --quick 128)",
    )
    p.add_argument(
        "--workload",
        action="append",
        type=_list(str, tuple(WORKLOADS)),
        metavar="W1|W2",
        help="workloads (repeatable; default both)",
    )
    p.add_argument(
        "--mode",
        action="append",
        type=_list(str, MODES),
        metavar="train|inference",
        help="modes (repeatable; default both)",
    )
    p.add_argument(
        "--backend",
        action="append",
        type=_list(str, CONTENDERS),
        metavar="NAME",
        help=f"contenders (repeatable; default all of {', '.join(CONTENDERS)})",
    )
    p.add_argument("--no-strict", action="store_true", help="leave array-api-strict out")


def _run_options(p: argparse.ArgumentParser) -> None:
    """How to measure: processes, busy checks, rounds, threads, seed."""
    p.add_argument(
        "--own-process",
        action="store_true",
        help="time each contender in its own fresh process, one per round (default: all "
        "in this process); the report says which",
    )
    p.add_argument(
        "--peer-host-tuning",
        action="store_true",
        help="with --own-process: apply xpconv.tune_host in the peers' processes too "
        "(default: only in xpconv's, as their users run them)",
    )
    p.add_argument(
        "--busy-check",
        action="store_true",
        help="also time a LeNet epoch beside a 2-thread PyTorch training and beside a "
        "second xpconv training (started and ended here), against one BLAS thread",
    )
    p.add_argument("--busy-tries", type=int, default=3, help="tries per busy background (3)")
    p.add_argument("--rounds", type=int, help="timed rounds per contender (default 7)")
    p.add_argument("--warmup", type=int, help="untimed warm-up steps (default 3)")
    p.add_argument(
        "--target-s", type=float, help="seconds one timed repeat should last (default 0.3)"
    )
    p.add_argument(
        "--strict-max-batch",
        type=int,
        help="largest batch array-api-strict runs at (default 128)",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="threads for PyTorch and (when given) the BLAS/OpenMP pools; "
        "default: PyTorch gets one per usable core, BLAS keeps its default",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of weights and data (default 0)")


def _output_options(p: argparse.ArgumentParser) -> None:
    """Which extra tables to make, where to write, and the GPU suite."""
    p.add_argument("--no-per-layer", action="store_true", help="skip the per-layer table")
    p.add_argument("--no-loops", action="store_true", help="skip the lecture loop convolution")
    p.add_argument(
        "--no-memory", action="store_true", help="skip the per-contender memory subprocesses"
    )
    p.add_argument(
        "--no-roofline",
        action="store_true",
        help="skip the roofline (effective GFLOP/s, fraction of the matmul peak)",
    )
    p.add_argument("--json", metavar="PATH", help="write the full report as JSON")
    p.add_argument("--png", metavar="PATH", help="write a bar chart of the ratios (matplotlib)")
    p.add_argument(
        "--markdown",
        action="store_true",
        help="also print a Markdown table (xpconv-numpy vs PyTorch) for the README",
    )
    p.add_argument(
        "--gpu",
        action="store_true",
        help="GPU benchmarks: W2 train at batch 128 and 1024 and a ResNet-style block, "
        "xpconv on CuPy and on PyTorch CUDA tensors against PyTorch with cuDNN (see "
        "benchmarks/gpu.py; --batch, --rounds, --warmup, --quick, --json, --markdown "
        "apply); exits with status 2 when no CUDA device is found",
    )
    p.add_argument(
        "--gpu-dry-run",
        action="store_true",
        help="run the GPU suite's code on the CPU at tiny sizes (numbers mean nothing)",
    )
    p.add_argument(
        "--tf32", action="store_true", help="GPU suite: allow TF32 (default: off everywhere)"
    )


def settings_from(args: argparse.Namespace) -> cpu.Settings:
    """Settings from parsed arguments: defaults, then --quick/--smoke, then explicit flags."""
    base = settings_base(args, [("quick", QUICK), ("smoke", SMOKE)])
    batches = flat_unique(args.batch)
    if batches:
        base["batches"] = batches
    if args.smoke:
        base["strict_max_batch"] = max(base.get("batches", (4,)))
    workloads = flat_unique(args.workload)
    if workloads:
        base["workloads"] = tuple(w for w in WORKLOADS if w in workloads)
    modes = flat_unique(args.mode)
    if modes:
        base["modes"] = tuple(m for m in MODES if m in modes)
    contenders = flat_unique(args.backend) or CONTENDERS
    if args.no_strict:
        contenders = tuple(c for c in contenders if c not in REFERENCE_ONLY)
    base["contenders"] = tuple(c for c in CONTENDERS if c in contenders)
    if args.strict_max_batch is not None:
        base["strict_max_batch"] = args.strict_max_batch
    base["seed"] = args.seed
    base["own_process"] = bool(getattr(args, "own_process", False))
    base["peer_host_tuning"] = bool(getattr(args, "peer_host_tuning", False))
    return cpu.Settings(**base)


_progress = functools.partial(report.progress, "benchmarks")


def _memory_runs(settings: cpu.Settings, threads: int) -> list[dict[str, Any]]:
    """Training-step memory of every contender, each in a fresh process, at batch 128
    (or the largest batch chosen when 128 is not)."""
    batch = 128 if 128 in settings.batches else max(settings.batches)
    runs = []
    for workload in settings.workloads:
        for contender in settings.contenders:
            if contender in REFERENCE_ONLY and batch > settings.strict_max_batch:
                continue
            _progress(f"memory: {workload} train batch {batch} {contender} (fresh process)")
            runs.append(
                memory.measure_in_subprocess(
                    workload, contender, "train", batch, settings.memory_steps, threads
                )
            )
    return runs


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.gpu or args.gpu_dry_run:
        return gpu.main(args, argv)
    _check_args(args)
    started = time.perf_counter()
    settings, skipped = _runnable(settings_from(args))
    threads = args.threads or environment.core_count()
    thread_state = environment.set_threads(threads, limit_blas=args.threads is not None)
    settings = dataclasses.replace(settings, threads=thread_state.get("torch") or threads)
    result: dict[str, Any] = environment.collect(argv, thread_state)
    result["dtype"] = "float32"
    result["settings"] = dataclasses.asdict(settings)
    result["workloads"] = {k: w.description for k, w in WORKLOADS.items()}
    result["skipped"] = skipped
    result["notes"] = NOTES
    has_torch = "torch" in settings.contenders
    if has_torch:
        result["peer_check"] = _peer_checks(settings)
    result["results"] = cpu.throughput(settings, _progress)
    print(report.format_table(result["results"]))
    _roofline_section(args, result, threads)
    _extra_tables(args, settings, result)
    result["memory"] = _memory_section(args, settings, thread_state.get("torch") or threads)
    print()
    print(report.format_memory(result["memory"]))
    if has_torch and "peer_check" in result:
        checks = ", ".join(
            f"{c['workload']} {'ok' if c['ok'] else 'MISMATCH'} "
            f"({c['relative_diff_after_steps']:.1e})"
            for c in result["peer_check"]
        )
        print(f"\nPeer check (same weights, logits after 2 SGD steps, relative): {checks}")
    try:
        result["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        pass
    result["elapsed_s"] = round(time.perf_counter() - started, 2)
    print(f"\n{report.context_line(result)}; {result['elapsed_s']:.0f} s")
    _write_outputs(args, result, has_torch)
    return 0


def _check_args(args: argparse.Namespace) -> None:
    """Refuse out-of-range numbers and options that do not go together (exits 2)."""
    for flag, value, least in (
        ("--threads", args.threads, 1),
        ("--rounds", args.rounds, 1),
        ("--warmup", args.warmup, 0),
        ("--strict-max-batch", args.strict_max_batch, 1),
        ("--target-s", args.target_s, 0),
    ):
        if value is not None and value < least:
            build_parser().error(f"{flag}: expected a number >= {least}, got {value}")
    if getattr(args, "peer_host_tuning", False) and not getattr(args, "own_process", False):
        build_parser().error("--peer-host-tuning: applies only with --own-process")


def _runnable(settings: cpu.Settings) -> tuple[cpu.Settings, dict[str, str]]:
    """The settings without the contenders that cannot run here, and why each cannot."""
    availability = available_contenders()
    skipped = {c: availability[c] for c in settings.contenders if availability[c]}
    for contender, reason in skipped.items():
        _progress(f"skipping {contender}: {reason}")
    settings = dataclasses.replace(
        settings, contenders=tuple(c for c in settings.contenders if c not in skipped)
    )
    if "torch" not in settings.contenders:
        _progress("no PyTorch peer in this run: ratio_vs_torch is null")
    return settings, skipped  # type: ignore[return-value]


def _peer_checks(settings: cpu.Settings) -> list[dict[str, Any]]:
    checks = [cpu.peer_check(w, seed=settings.seed) for w in settings.workloads]
    for check in checks:
        if not check["ok"]:
            _progress(
                f"WARNING: {check['workload']}: xpconv and the PyTorch peer disagree "
                f"(relative logit difference {check['relative_diff_after_steps']:.2e})"
            )
    return checks


def _roofline_section(args: argparse.Namespace, result: dict, threads: int) -> None:
    """Effective GFLOP/s and the fraction of the machine's matmul peak, per result."""
    if args.no_roofline or args.smoke:
        return
    result["roofline"] = roofline.roofline(result["results"], progress=_progress, threads=threads)
    print()
    print(roofline.format_roofline(result["roofline"]))


def _extra_tables(args: argparse.Namespace, settings: cpu.Settings, result: dict) -> None:
    """Operation counts, the per-layer table, the lecture loops and the busy check, as
    asked for; each printed and stored in ``result``."""
    if any(opcount.COUNTED_AS.get(c, c) in opcount.COUNTABLE for c in settings.contenders):
        result["ops_per_step"] = opcount.ops_per_step(
            settings.workloads, settings.contenders, seed=settings.seed
        )
        print()
        print(opcount.format_ops(result["ops_per_step"]))
    if not args.no_per_layer:
        _progress(f"per layer: W2 xpconv-numpy batch {settings.per_layer_batch}")
        result["per_layer"] = cpu.per_layer(
            "W2",
            "numpy",
            settings.per_layer_batch,
            settings.per_layer_repeats,
            warmup=1 if args.smoke else 2,
            seed=settings.seed,
        )
        print()
        print(report.format_per_layer(result["per_layer"]))
    if not args.no_loops:
        _progress("lecture loop convolution")
        result["lecture_loops"] = lecture_loops.run(settings.loops_repeats, settings.seed)
        print()
        print(report.format_lecture_loops(result["lecture_loops"]))
    if args.busy_check:
        result["busy_machine"] = busy.busy_check(tries=args.busy_tries, progress=_progress)
        print()
        print(busy.format_busy(result["busy_machine"]))


def _memory_section(args: argparse.Namespace, settings: cpu.Settings, threads: int) -> dict:
    mem: dict[str, Any] = {
        "what": (
            "process_peak_rss_mb: getrusage ru_maxrss of the benchmark process (all "
            "contenders and imports). per_contender: a fresh process per contender; "
            "rss_before_mb after building the model, optimizer and data; peak_rss_mb the "
            "high-water mark during the training steps; increase_mb the difference."
        ),
        "per_contender": [],
    }
    if not args.no_memory and not args.smoke:
        mem["per_contender"] = _memory_runs(settings, threads)
    mem["process_peak_rss_mb"] = memory.process_peak_rss_mb()
    return mem


def _write_outputs(args: argparse.Namespace, result: dict, has_torch: bool) -> None:
    """The Markdown table, the JSON report and the PNG chart, as asked for."""
    if args.markdown:
        print()
        print(report.markdown_table(result["results"], result))
    if args.json:
        path = report.write_json(result, args.json)
        _progress(f"wrote {path}")
    if args.png and not has_torch:
        _progress(f"--png: no PyTorch peer, so no ratios to draw; {args.png} was not written")
    elif args.png:
        path = report.write_png(result["results"], args.png)
        if path is None:
            _progress(f"--png: matplotlib is not installed; {args.png} was not written")
        else:
            _progress(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
