"""Text and Markdown tables, the JSON file and the ratio chart."""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .workloads import CONTENDERS, REFERENCE_ONLY

__all__ = [
    "RECORD_KEYS",
    "context_line",
    "format_lecture_loops",
    "format_memory",
    "format_per_layer",
    "format_table",
    "markdown_table",
    "write_json",
    "write_png",
]

RECORD_KEYS = (
    "workload",
    "mode",
    "batch",
    "backend",
    "images_per_s",
    "ratio_vs_torch",
    "median_s",
    "repeats",
)

SHORT = {
    "xpconv-numpy": "xpconv-numpy",
    "xpconv-torch": "xpconv-torch",
    "xpconv-torch-eager": "xpconv-torch eager",
    "xpconv-array_api_strict": "xpconv-strict*",
    "xpconv-jax": "xpconv-jax",
    "torch": "torch nn",
    "jax": "jax (plain)",
}


def progress(prefix: str, message: str) -> None:
    """One progress line on stderr: ``[prefix] message``."""
    print(f"[{prefix}] {message}", file=sys.stderr, flush=True)


def relative_diffs(outputs: dict[str, Any], reference: str) -> dict[str, float]:
    """The largest difference of each output from ``outputs[reference]``, relative to
    the reference's largest magnitude (at least 1); the reference itself left out."""
    ref = np.asarray(outputs[reference], dtype=np.float64)
    scale = max(float(np.max(np.abs(ref))), 1.0)
    return {
        name: float(np.max(np.abs(np.asarray(out, dtype=np.float64) - ref))) / scale
        for name, out in outputs.items()
        if name != reference
    }


def timing_record(
    workload: str, mode: str, batch: int, backend: str, timing: Any, peer_rate: float | None
) -> dict[str, Any]:
    """The fields every throughput record has, from one contender's ``Timing``;
    ``peer_rate`` is PyTorch's images/s in the same rounds (None without a peer)."""
    rate = batch / timing.median_s
    return {
        "workload": workload,
        "mode": mode,
        "batch": batch,
        "backend": backend,
        "images_per_s": rate,
        "ratio_vs_torch": None if peer_rate is None else rate / peer_rate,
        "median_s": timing.median_s,
        "min_s": timing.min_s,
        "spread": timing.spread,
        "repeats": len(timing.samples),
        "steps_per_repeat": timing.steps,
        "samples_s": timing.samples,
        "last_value": timing.last_value,
        "finite": math.isfinite(timing.last_value),
        "busy_cores": [None if b is None else round(b, 3) for b in getattr(timing, "busy", [])],
        "clean_repeats": getattr(timing, "clean", None),
        "retried_repeats": getattr(timing, "retried", 0),
    }


def _rows(records: Sequence[dict[str, Any]]) -> list[tuple[str, str, int]]:
    seen: list[tuple[str, str, int]] = []
    for r in records:
        key = (r["workload"], r["mode"], r["batch"])
        if key not in seen:
            seen.append(key)
    return seen


def _lookup(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str, int, str], dict]:
    return {(r["workload"], r["mode"], r["batch"], r["backend"]): r for r in records}


def _align(rows: Sequence[Sequence[str]], left: int = 2) -> list[str]:
    """Columns padded to a common width (the first ``left`` left-aligned), a rule under
    the header row."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = []
    for k, row in enumerate(rows):
        cells = [
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))
        ]
        out.append("  ".join(cells).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f}"


def rate_table(
    records: Sequence[dict[str, Any]],
    contenders: Sequence[str],
    short: dict[str, str],
    ratios: Sequence[tuple[str, str]],
) -> list[str]:
    """Aligned lines: images/s of each contender present, then the ``ratio_vs_torch``
    of each (contender, heading) in ``ratios``; one row per workload, mode and batch."""
    present = [c for c in contenders if any(r["backend"] == c for r in records)]
    index = _lookup(records)
    lines = [["workload", "mode", "batch", *(short[c] for c in present), *(h for _, h in ratios)]]
    for workload, mode, batch in _rows(records):
        row = [workload, mode, str(batch)]
        for c in present:
            rec = index.get((workload, mode, batch, c))
            row.append(_rate(rec["images_per_s"]) if rec else "-")
        for c, _ in ratios:
            rec = index.get((workload, mode, batch, c))
            row.append(_ratio(rec["ratio_vs_torch"]) if rec else "-")
        lines.append(row)
    return _align(lines)


CPU_RATIOS = (
    ("xpconv-numpy", "numpy/torch"),
    ("xpconv-torch", "xp-torch/torch"),
    ("xpconv-torch-eager", "xp-torch eager/torch"),
)


def format_table(
    records: Sequence[dict[str, Any]],
    contenders: Sequence[str] = CONTENDERS,
    short: dict[str, str] = SHORT,
    ratios: Sequence[tuple[str, str]] = CPU_RATIOS,
    peer: str = "PyTorch nn.Module",
    dry_run_note: str = "DRY RUN: these numbers mean nothing",
) -> str:
    """Images/s per contender and the xpconv / ``peer`` ratios, one row per workload,
    mode and batch size, and the notes the records call for (reference-only
    contenders, a dry run). The CPU table by default; the GPU harness passes its own
    contenders and names."""
    out = rate_table(records, contenders, short, ratios)
    out.append(f"images/s (higher is better); ratio = xpconv images/s / {peer} images/s")
    if any(r.get("backend") in REFERENCE_ONLY for r in records):
        out.append("* array-api-strict: reference only, one step per repeat, few rounds")
    if any(r.get("dry_run") for r in records):
        out.append(dry_run_note)
    return "\n".join(out)


def context_line(report: dict[str, Any]) -> str:
    """One line naming what the numbers were measured on."""
    machine = report.get("machine", {})
    versions = report.get("versions", {})
    threads = report.get("threads", {})
    blas = ""
    for pool in report.get("blas", {}).get("pools", []):
        if pool.get("user_api") == "blas":
            blas = f", NumPy BLAS {pool.get('internal_api')} {pool.get('version') or ''}".rstrip()
            blas += f" ({pool.get('num_threads')} threads)"
            break
    if blas and report.get("xpconv_host", {}).get("openblas_idle_threads_sleep"):
        blas += ", idle BLAS threads sleep"
    settings = report.get("settings", {})
    process = "one process"
    if settings.get("own_process"):
        peers = "with" if settings.get("peer_host_tuning") else "without"
        process = f"own process per contender (peers {peers} xpconv's host tuning)"
    if report.get("blas_kernel"):
        blas += f", kernel {report['blas_kernel']}"
    chosen = [f"{k}={v}" for k, v in (report.get("environment") or {}).items() if v is not None]
    if chosen:  # set by the user or the machine, e.g. a BLAS kernel forced by OPENBLAS_CORETYPE
        blas += f", environment {' '.join(chosen)}"
    vector = ", ".join(
        f for f in machine.get("vector_extensions") or [] if f in ("avx2", "avx512f")
    )
    torch = (
        f"PyTorch {versions['torch']} ({threads.get('torch')} threads)"
        if versions.get("torch")
        else "PyTorch not installed"
    )
    return (
        f"{machine.get('processor') or machine.get('machine')}"
        f"{f' ({vector})' if vector else ''}, "
        f"{machine.get('cores_usable')} cores; Python {versions.get('python')}, "
        f"NumPy {versions.get('numpy')}, {torch}{blas}; float32, images 1x28x28, "
        f"TF32 n/a (CPU); median of {settings.get('rounds')} interleaved rounds, "
        f"{process}{busy_note(report)}; {report.get('date', '')[:10]}"
    )


def busy_note(report: dict[str, Any]) -> str:
    """How busy the machine was during the kept repeats: '' when every one was clean."""
    busy = [
        b for r in report.get("results", []) for b in r.get("busy_cores") or [] if b is not None
    ]
    if not busy:
        return ""
    dirty = [b for b in busy if b >= 0.25]
    if not dirty:
        return ""
    return (
        f"; machine busy: other processes took 0.25 cores or more in {len(dirty)} of "
        f"{len(busy)} repeats (median {statistics.median(busy):.2f} cores)"
    )


def markdown_table(records: Sequence[dict[str, Any]], report: dict[str, Any] | None = None) -> str:
    """W1 and W2, train and inference, every batch size: xpconv (NumPy) and PyTorch
    images/s and their ratio, as a Markdown table."""
    index = _lookup(records)
    lines = [
        "| Workload | Mode | Batch | xpconv, NumPy (images/s) | PyTorch CPU (images/s) "
        "| xpconv / PyTorch |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for workload, mode, batch in _rows(records):
        ours = index.get((workload, mode, batch, "xpconv-numpy"))
        theirs = index.get((workload, mode, batch, "torch"))
        if ours is None:
            continue
        lines.append(
            f"| {workload} | {mode} | {batch} | {_rate(ours['images_per_s'])} | "
            f"{_rate(theirs['images_per_s']) if theirs else '-'} | "
            f"{_ratio(ours['ratio_vs_torch'])} |"
        )
    if report:
        lines.append("")
        lines.append(context_line(report))
    return "\n".join(lines)


def _layer_label(row: dict[str, Any]) -> str:
    name, description = row["layer"], row["description"]
    return description if description.startswith(name) else f"{name}: {description}"


def format_per_layer(per_layer: dict[str, Any]) -> str:
    rows = [("layer", "output", "forward ms", "backward ms", "share")]
    for r in per_layer["layers"]:
        rows.append(
            (
                _layer_label(r),
                "x".join(str(s) for s in r["output_shape"]) or "-",
                f"{r['forward_s'] * 1e3:.2f}",
                f"{r['backward_s'] * 1e3:.2f}",
                f"{r['share'] * 100:.1f}%",
            )
        )
    rows.append(
        (
            "sum of medians (full step median)",
            "",
            "",
            f"{per_layer['sum_of_medians_s'] * 1e3:.2f} ({per_layer['step_median_s'] * 1e3:.2f})",
            "",
        )
    )
    title = (
        f"Per layer: {per_layer['workload']} train step, {per_layer['backend']}, "
        f"batch {per_layer['batch']}, median of {per_layer['repeats']} "
        "(optimizer under backward)"
    )
    return "\n".join([title, *_align(rows)])


def format_lecture_loops(loops: dict[str, Any]) -> str:
    shape = loops["shape"]
    return (
        f"Lecture loop conv2d, x {tuple(shape['x'])}, weight {tuple(shape['weight'])}, "
        f"same padding, float64: matches conv2d {loops['matches']} "
        f"(max abs diff {loops['max_abs_diff']:.1e}); loops {loops['loops_s'] * 1e3:.1f} ms, "
        f"conv2d {loops['conv2d_s'] * 1e6:.1f} us, speed-up {loops['speedup']:,.0f}x"
    )


def format_memory(memory: dict[str, Any]) -> str:
    out = []
    peak = memory.get("process_peak_rss_mb")
    if peak is not None:
        out.append(f"Peak RSS of this process: {peak:,.0f} MB (all contenders, imports included)")
    runs = memory.get("per_contender", [])
    if runs:
        out.append(
            "Per contender, fresh process, training steps: RSS after setup -> peak (increase)"
        )
        for r in runs:
            label = f"  {r['workload']} {r['mode']} batch {r['batch']} {r['backend']}:"
            if "error" in r:
                out.append(f"{label} not measured ({r['error']})")
            else:
                out.append(
                    f"{label} {r['rss_before_mb']:,.0f} -> {r['peak_rss_mb']:,.0f} MB "
                    f"(+{r['increase_mb']:,.0f} MB)"
                )
    return "\n".join(out)


def write_json(report: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    return path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def write_png(
    records: Sequence[dict[str, Any]], path: str | Path, title: str | None = None
) -> Path | None:
    """A bar chart of ``ratio_vs_torch`` per xpconv backend; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = _rows(records)
    index = _lookup(records)
    backends = [c for c in CONTENDERS if c != "torch" and any(r["backend"] == c for r in records)]
    fig, ax = plt.subplots(figsize=(max(7.0, 0.8 * len(rows) + 4), 4.2))
    width = 0.8 / max(len(backends), 1)
    for k, backend in enumerate(backends):
        xs, ys = [], []
        for i, (workload, mode, batch) in enumerate(rows):
            rec = index.get((workload, mode, batch, backend))
            if rec is not None and rec["ratio_vs_torch"] is not None:
                xs.append(i + (k - (len(backends) - 1) / 2) * width)
                ys.append(rec["ratio_vs_torch"])
        label = SHORT[backend].rstrip("*") + (" (reference)" if backend in REFERENCE_ONLY else "")
        bars = ax.bar(xs, ys, width, label=label, hatch="//" if backend in REFERENCE_ONLY else None)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--", label="PyTorch nn.Module = 1")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{w} {m}\nbatch {b}" for w, m, b in rows], fontsize=8)
    ax.set_ylabel("images/s relative to PyTorch CPU")
    ax.set_title(title or "xpconv throughput relative to PyTorch (same run, same threads)")
    top = max([r["ratio_vs_torch"] or 0.0 for r in records] + [1.0])
    ax.set_ylim(0, top * 1.15)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
