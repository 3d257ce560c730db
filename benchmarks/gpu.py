"""``python -m benchmarks --gpu``: xpconv on CuPy and on PyTorch CUDA tensors against
PyTorch's own modules with cuDNN, in the same process, on the same GPU.

    python -m benchmarks --gpu                     # JSON to benchmarks/results/gpu-<device>.json
    python -m benchmarks --gpu --tf32 --markdown   # TF32 allowed everywhere; a README table
    python -m benchmarks --gpu-dry-run             # the same code on the CPU, tiny sizes

Workloads, float32:

- **W2 train**, batch 128 and 1024: the CPU harness's training step of the small LeNet
  (forward, softmax cross-entropy, backward, SGD with momentum).
- **block**: one ResNet-style convolution, Conv2D(64 -> 64, 3x3, same) + relu on a
  64 x 64 x 56 x 56 input: forward, then backward from a fixed upstream gradient
  (weight, bias *and input* gradients, as inside a network). No loss, no optimizer.

Contenders: ``xpconv-cupy``, ``xpconv-torch-cuda`` (xpconv on PyTorch CUDA tensors) and
``torch`` (PyTorch's ``nn.Module`` with cuDNN, ``torch.backends.cudnn.benchmark = True``).
A contender whose library or device is missing is skipped with a note.

Timing: each contender warms up (CuPy compiles its kernels, cuDNN picks its
algorithms), then a calibration step sets the steps per repeat; then rounds in which
every contender runs one repeat, the order rotating. A repeat is bracketed by CUDA
events of the contender's library, recorded after a device synchronisation, so the
time covers the GPU work and any host work that keeps the GPU waiting; warm-up is
excluded. A sample is event time / steps; the result is the median. Wall-clock time of
the same repeats is recorded beside it.

TF32 is off unless ``--tf32``: ``torch.backends.cuda.matmul.allow_tf32`` and
``torch.backends.cudnn.allow_tf32`` are set explicitly, and ``CUPY_TF32`` (read by CuPy
at its first float32 matmul) is set before CuPy is imported. The values in force are
recorded beside the results.

Without a CUDA device ``--gpu`` exits with status 2 and says what is missing;
``--gpu-dry-run`` runs everything with NumPy and PyTorch CPU tensors in place of the
GPU contenders, at tiny sizes and a wall clock, to check the code path (its numbers
mean nothing and are marked ``dry_run``).
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from . import environment, report
from .report import (
    _lookup,
    _rate,
    _ratio,
    _rows,
    progress,
    relative_diffs,
    timing_record,
    write_json,
)
from .timing import ClockTimer, Policy, Timing, flat_unique, run_interleaved, settings_base
from .workloads import (
    DTYPE,
    LR,
    MOMENTUM,
    TorchRunner,
    XpconvRunner,
    copy_weights,
    has_module,
)

__all__ = [
    "CONTENDERS",
    "EXIT_NO_DEVICE",
    "EXIT_NOT_IMPLEMENTED",
    "BlockShape",
    "GpuSettings",
    "available_contenders",
    "build_records",
    "context_line",
    "default_json_path",
    "detect",
    "device_slug",
    "format_table",
    "has_device",
    "main",
    "markdown_table",
    "run",
    "settings_from",
]

EXIT_NO_DEVICE = 2
EXIT_NOT_IMPLEMENTED = 3  # returned by earlier versions that had no GPU suite; kept for callers

NEEDED = (
    "GPU benchmarks need an NVIDIA GPU with its CUDA driver, plus CuPy "
    "(pip install cupy-cuda12x, or cupy-cuda13x for CUDA 13) for xpconv's cupy backend "
    "and a CUDA build of PyTorch for the peer."
)
DRY_RUN_HINT = (
    "Without a GPU, `python -m benchmarks --gpu-dry-run` runs the same code on the CPU "
    "at tiny sizes (to check it; its numbers mean nothing)."
)

CONTENDERS = ("xpconv-cupy", "xpconv-torch-cuda", "torch")
LIBRARY = {"xpconv-cupy": "cupy", "xpconv-torch-cuda": "torch", "torch": "torch"}
SHORT = {"xpconv-cupy": "xpconv-cupy", "xpconv-torch-cuda": "xpconv-torch", "torch": "torch+cuDNN"}
RESULTS_DIR = environment.REPO_ROOT / "benchmarks" / "results"

BLOCK_MODE = "fwd+bwd"


@dataclasses.dataclass(frozen=True)
class BlockShape:
    """The ResNet-style block: input (batch, channels, size, size), 3x3 same conv."""

    batch: int = 64
    channels: int = 64
    size: int = 56


@dataclasses.dataclass(frozen=True)
class GpuSettings:
    """How much to measure. The defaults are the full GPU run."""

    w2_batches: tuple[int, ...] = (128, 1024)
    block: BlockShape = BlockShape()
    warmup: int = 10
    rounds: int = 7
    target_s: float = 0.25
    max_steps: int = 200
    tf32: bool = False
    seed: int = 0
    dry_run: bool = False

    @property
    def policy(self) -> Policy:
        return Policy(
            warmup=self.warmup,
            rounds=self.rounds,
            target_s=self.target_s,
            max_steps=self.max_steps,
        )


QUICK = dict(warmup=5, rounds=3, target_s=0.1)
DRY_RUN = dict(
    w2_batches=(4,),
    block=BlockShape(batch=2, channels=4, size=8),
    warmup=1,
    rounds=2,
    target_s=0.0,
    max_steps=1,
    dry_run=True,
)

NOTES = [
    "images_per_s = batch / median seconds per step. W2 train: forward, softmax "
    "cross-entropy, backward, SGD momentum update. block: Conv2D(64->64, 3x3, same) + relu "
    "forward, then backward from a fixed upstream gradient (weight, bias and input "
    "gradients); no loss, no optimizer.",
    "Timed with CUDA events of each contender's library around every repeat, recorded "
    "after a device synchronisation; warm-up and calibration steps are excluded. Each "
    "repeat ends by reading one number back to the host. median_s is the median over "
    "the rounds of event time / steps; wall_median_s the same from the host clock.",
    "All contenders of one workload and batch run in the same process in interleaved "
    "rounds, the order rotating; ratio_vs_torch = images_per_s / images_per_s of "
    "PyTorch's nn.Module (cuDNN, cudnn.benchmark on) in the same rounds.",
    "tf32 records the TF32 settings in force for every contender; off unless --tf32.",
    "memory: CuPy's memory pool and PyTorch's caching allocator after warm-up and after "
    "the timed rounds; no growth means the step reuses freed blocks.",
]


# ------------------------------------------------------------------ devices


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


def _cupy_ok(found: dict[str, Any]) -> bool:
    count = found.get("cupy")
    return isinstance(count, int) and not isinstance(count, bool) and count > 0


def _torch_cuda_ok(found: dict[str, Any]) -> bool:
    return found.get("torch.cuda.is_available()") is True


def has_device(found: dict[str, Any]) -> bool:
    return _cupy_ok(found) or _torch_cuda_ok(found)


def available_contenders(found: dict[str, Any], dry_run: bool = False) -> dict[str, str | None]:
    """Every contender mapped to ``None`` when it can run, else the reason it cannot."""
    if dry_run:
        torch_missing = None if has_module("torch") else "PyTorch is not installed"
        return {"xpconv-cupy": None, "xpconv-torch-cuda": torch_missing, "torch": torch_missing}
    cupy_reason = None if _cupy_ok(found) else f"CuPy: {found.get('cupy')}"
    torch_state = found.get("torch.cuda.is_available()")
    if _torch_cuda_ok(found):
        torch_reason = None
    elif torch_state is False:
        torch_reason = "PyTorch sees no CUDA device (a CPU-only build, or no driver)"
    else:
        torch_reason = f"PyTorch: {torch_state}"
    return {"xpconv-cupy": cupy_reason, "xpconv-torch-cuda": torch_reason, "torch": torch_reason}


def xpconv_backend(contender: str, dry_run: bool) -> str:
    """The xpconv backend name a contender runs on (CPU stand-ins in a dry run)."""
    if dry_run:
        return {"xpconv-cupy": "numpy", "xpconv-torch-cuda": "torch"}[contender]
    return {"xpconv-cupy": "cupy", "xpconv-torch-cuda": "torch:cuda"}[contender]


def _nvidia_smi() -> dict[str, str] | None:
    try:
        out = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    first = out.splitlines()[0] if out else ""
    parts = [p.strip() for p in first.split(",")]
    if len(parts) != 3:
        return None
    return {"name": parts[0], "driver_version": parts[1], "memory_total": parts[2]}


def gpu_info(dry_run: bool = False) -> dict[str, Any]:
    """The device and the CUDA stack: name, memory, capability, driver, CUDA, cuDNN."""
    if dry_run:
        return {"name": "cpu (dry run)", "dry_run": True}
    info: dict[str, Any] = {"name": None}
    smi = _nvidia_smi()
    if smi:
        info["nvidia_smi"] = smi
        info["name"] = smi["name"]
        info["driver_version"] = smi["driver_version"]
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["name"] = info["name"] or props.name
            info["count"] = torch.cuda.device_count()
            info["memory_gb"] = round(props.total_memory / 2**30, 1)
            info["compute_capability"] = f"{props.major}.{props.minor}"
            info["multiprocessors"] = props.multi_processor_count
            info["torch_cuda"] = torch.version.cuda
            info["cudnn"] = torch.backends.cudnn.version()
    except ImportError:
        pass
    try:
        import cupy

        runtime = cupy.cuda.runtime
        if runtime.getDeviceCount() > 0:
            props = runtime.getDeviceProperties(0)
            name = props.get("name", b"")
            info["name"] = info["name"] or (name.decode() if isinstance(name, bytes) else name)
            info["cupy"] = cupy.__version__
            info["cupy_cuda_runtime"] = runtime.runtimeGetVersion()
            info["cuda_driver_api"] = runtime.driverGetVersion()
    except Exception:  # CuPy missing or without a device: the torch facts stand
        pass
    return info


def device_slug(name: str | None = None) -> str:
    """A file-name form of the GPU's name, e.g. ``nvidia-h100-80gb-hbm3``."""
    if name is None:
        name = gpu_info().get("name") or "unknown-gpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown-gpu"


def default_json_path(name: str | None = None) -> Path:
    return RESULTS_DIR / f"gpu-{device_slug(name)}.json"


# ------------------------------------------------------------------ TF32


@contextmanager
def tf32_mode(enabled: bool) -> Iterator[None]:
    """TF32 allowed (``enabled``) or forbidden for PyTorch and CuPy, cuDNN autotuning on;
    the previous settings come back afterwards."""
    previous_env = os.environ.get("CUPY_TF32")
    os.environ["CUPY_TF32"] = "1" if enabled else "0"
    saved: tuple[bool, bool, bool] | None = None
    torch = sys.modules.get("torch") or _import_or_none("torch")
    if torch is not None:
        saved = (
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.benchmark,
        )
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        if previous_env is None:
            os.environ.pop("CUPY_TF32", None)
        else:
            os.environ["CUPY_TF32"] = previous_env
        if torch is not None and saved is not None:
            (
                torch.backends.cuda.matmul.allow_tf32,
                torch.backends.cudnn.allow_tf32,
                torch.backends.cudnn.benchmark,
            ) = saved


def _import_or_none(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        return None


def tf32_settings(enabled: bool, dry_run: bool) -> dict[str, Any]:
    """The TF32 settings in force now (call inside :func:`tf32_mode`)."""
    return environment.tf32_settings(enabled, applies=not dry_run)


# ------------------------------------------------------------------ timers


class WallTimer(ClockTimer):
    """The host clock (dry runs: there is no device to synchronise with)."""

    kind = "wall clock (dry run)"


class CudaEventTimer:
    """CUDA events of one library (``"cupy"`` or ``"torch"``) on its current stream."""

    def __init__(self, library: str) -> None:
        self.kind = f"CUDA events ({library})"
        if library == "cupy":
            import cupy

            self._event: Callable[[], Any] = cupy.cuda.Event
            self._sync: Callable[[], None] = lambda: cupy.cuda.Device().synchronize()
            self._elapsed_ms: Callable[[Any, Any], float] = cupy.cuda.get_elapsed_time
        elif library == "torch":
            import torch

            self._event = functools.partial(torch.cuda.Event, enable_timing=True)
            self._sync = torch.cuda.synchronize
            self._elapsed_ms = lambda start, end: start.elapsed_time(end)
        else:
            raise ValueError(f"library: expected 'cupy' or 'torch', got {library!r}")

    def sync(self) -> None:
        self._sync()

    def time(self, fn: Callable[[], float]) -> tuple[float, float, float]:
        """Run ``fn`` between two events; return its value, the event time and the wall
        time, in seconds."""
        self._sync()
        start, end = self._event(), self._event()
        start.record()
        begin = time.perf_counter()
        value = fn()
        end.record()
        end.synchronize()
        wall = time.perf_counter() - begin
        return value, self._elapsed_ms(start, end) / 1e3, wall


def make_timer(contender: str, dry_run: bool) -> WallTimer | CudaEventTimer:
    return WallTimer() if dry_run else CudaEventTimer(LIBRARY[contender])


# ------------------------------------------------------------------ runners


class XpconvW2Runner(XpconvRunner):
    """The CPU harness's xpconv training step, on a GPU backend."""

    def output(self) -> np.ndarray:
        """Logits of the data batch (eval mode), on the host."""
        return self.model.backend.to_numpy(self.model.forward(self.x, training=False))


class TorchW2Runner(TorchRunner):
    """The CPU harness's PyTorch training step, with the network and data on ``device``."""

    def __init__(self, workload: str, batch: int, seed: int, device: str) -> None:
        super().__init__(workload, "train", batch, seed)
        torch = self.torch
        dev = torch.device(device)
        self.net.to(dev)
        self.x, self.y = self.x.to(dev), self.y.to(dev)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=LR, momentum=MOMENTUM)

    def output(self) -> np.ndarray:
        torch = self.torch
        training = self.net.training
        self.net.eval()
        with torch.no_grad():
            out = self.net(self.x)
        self.net.train(training)
        return out.detach().cpu().numpy()


def block_model(backend: str, shape: BlockShape, seed: int) -> Any:
    """xpconv's block: one Conv2D(channels -> channels, 3x3, same) with a fused relu."""
    from xpconv.nn.layers import Conv2D
    from xpconv.nn.sequential import Sequential

    return Sequential(
        [Conv2D(shape.channels, 3, padding="same", activation="relu", init="he_normal")],
        backend=backend,
        dtype=DTYPE,
        seed=seed,
        input_shape=(shape.channels, shape.size, shape.size),
    )


def block_data(shape: BlockShape, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Host input and upstream gradient, both (batch, channels, size, size) float32."""
    rng = np.random.default_rng([seed, shape.batch, shape.channels, shape.size])
    dims = (shape.batch, shape.channels, shape.size, shape.size)
    return (
        rng.standard_normal(dims, dtype=np.float32),
        rng.standard_normal(dims, dtype=np.float32),
    )


class XpconvBlockRunner:
    """xpconv's block: forward in training mode, backward with the input gradient."""

    def __init__(self, backend: str, shape: BlockShape, seed: int = 0) -> None:
        self.model = block_model(backend, shape, seed)
        x, g = block_data(shape, seed)
        self.x = self.model.as_input(x)
        self.g = self.model.backend.asarray(g)

    def run(self, steps: int) -> float:
        model, xp = self.model, self.model.xp
        grad = None
        for _ in range(steps):
            model.forward(self.x, training=True)
            grad = model.backward(self.g, input_grad=True)
        return float(xp.sum(grad[0, 0, ...]))

    def output(self) -> np.ndarray:
        return self.model.backend.to_numpy(self.model.forward(self.x, training=False))


class TorchBlockRunner:
    """PyTorch's block: ``nn.Conv2d`` + ``nn.ReLU`` with xpconv's initial weights."""

    def __init__(self, shape: BlockShape, seed: int, device: str) -> None:
        import torch
        from torch import nn

        self.torch = torch
        dev = torch.device(device)
        self.net = nn.Sequential(nn.Conv2d(shape.channels, shape.channels, 3, padding=1), nn.ReLU())
        copy_weights(block_model("numpy", shape, seed), self.net)
        self.net.to(dev)
        x, g = block_data(shape, seed)
        self.x = torch.from_numpy(x).to(dev).requires_grad_(True)
        self.g = torch.from_numpy(g).to(dev)

    def run(self, steps: int) -> float:
        for _ in range(steps):
            self.net.zero_grad(set_to_none=True)
            self.x.grad = None
            self.net(self.x).backward(self.g)
        return float(self.x.grad[0, 0].sum())

    def output(self) -> np.ndarray:
        with self.torch.no_grad():
            return self.net(self.x).cpu().numpy()


def make_runner(
    contender: str, workload: str, batch: int, settings: GpuSettings
) -> XpconvW2Runner | TorchW2Runner | XpconvBlockRunner | TorchBlockRunner:
    """A runner for one contender: ``workload`` is ``"W2"`` or ``"block"``."""
    device = "cpu" if settings.dry_run else "cuda"
    if workload == "W2":
        if contender == "torch":
            return TorchW2Runner("W2", batch, settings.seed, device)
        backend = xpconv_backend(contender, settings.dry_run)
        return XpconvW2Runner("W2", backend, "train", batch, settings.seed)
    if workload == "block":
        shape = dataclasses.replace(settings.block, batch=batch)
        if contender == "torch":
            return TorchBlockRunner(shape, settings.seed, device)
        return XpconvBlockRunner(xpconv_backend(contender, settings.dry_run), shape, settings.seed)
    raise ValueError(f"workload: expected 'W2' or 'block', got {workload!r}")


# ------------------------------------------------------------------ measuring


def build_records(
    workload: str,
    mode: str,
    batch: int,
    timings: dict[str, Timing],
    walls: dict[str, list[float]],
    *,
    warmup: int,
    device: str,
    timer_kinds: dict[str, str],
    tf32: bool,
    dry_run: bool = False,
) -> list[dict[str, Any]]:
    """One record per contender, in the CPU harness's format, plus GPU fields."""
    torch_rate = batch / timings["torch"].median_s if "torch" in timings else None
    records = []
    for name, t in timings.items():
        record = timing_record(workload, mode, batch, name, t, torch_rate)
        record.update(
            warmup_steps=warmup + 1,
            reference_only=False,
            dtype=DTYPE,
            device=device,
            timer=timer_kinds[name],
            wall_median_s=statistics.median(walls[name]) if walls.get(name) else None,
            tf32=tf32,
            dry_run=dry_run,
        )
        records.append(record)
    return records


def peer_check(
    workload: str, batch: int, runners: dict[str, Any], tolerance: float
) -> dict[str, Any]:
    """Same weights and data: each contender's output against PyTorch's (or the first's)."""
    outputs = {name: r.output() for name, r in runners.items()}
    reference = "torch" if "torch" in outputs else next(iter(outputs))
    diffs = relative_diffs(outputs, reference)
    return {
        "workload": workload,
        "batch": batch,
        "reference": reference,
        "relative_diff": diffs,
        "tolerance": tolerance,
        "ok": all(d <= tolerance for d in diffs.values()),
    }


def pool_stats(dry_run: bool) -> dict[str, Any]:
    """Device memory held by CuPy's pool and PyTorch's caching allocator, in MB."""
    if dry_run:
        return {}
    stats: dict[str, Any] = {}
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        try:
            pool = cupy.get_default_memory_pool()
            stats["cupy_pool_used_mb"] = pool.used_bytes() / 2**20
            stats["cupy_pool_total_mb"] = pool.total_bytes() / 2**20
        except Exception as exc:  # no device: nothing held
            stats["cupy_pool"] = f"unavailable ({type(exc).__name__})"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        stats["torch_allocated_mb"] = torch.cuda.memory_allocated() / 2**20
        stats["torch_reserved_mb"] = torch.cuda.memory_reserved() / 2**20
        stats["torch_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return stats


def release_device_memory(dry_run: bool) -> None:
    """Give cached blocks back between workloads, so each starts from an empty pool."""
    gc.collect()
    if dry_run:
        return
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        try:
            cupy.get_default_memory_pool().free_all_blocks()
        except Exception:  # no device: nothing to free
            pass
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _growth(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    keys = ("cupy_pool_total_mb", "torch_reserved_mb")
    return {k: after[k] - before[k] for k in keys if k in before and k in after}


def im2col_workspace_mb(workload: str, batch: int, block: BlockShape) -> float:
    """The largest column matrix xpconv builds in the workload's forward pass (float32)."""
    if workload == "W2":  # conv1: 1x3x3 taps on 28x28, conv2: 32x3x3 taps on 14x14
        sizes = [1 * 9 * 28 * 28 * batch, 32 * 9 * 14 * 14 * batch]
    else:
        sizes = [block.channels * 9 * block.size * block.size * batch]
    return max(sizes) * 4 / 2**20


def run(
    settings: GpuSettings,
    contenders: Sequence[str],
    device: str,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure every workload; returns ``results``, ``peer_check`` and ``memory``."""
    say = progress or (lambda message: None)
    groups = [("W2", "train", b) for b in settings.w2_batches]
    groups.append(("block", BLOCK_MODE, settings.block.batch))
    tolerance = 1e-2 if settings.tf32 else 1e-4
    records: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    timers = {name: make_timer(name, settings.dry_run) for name in contenders}
    for workload, mode, batch in groups:
        say(f"{workload} {mode} batch {batch}: {', '.join(contenders)}")
        runners = {name: make_runner(name, workload, batch, settings) for name in contenders}
        checks.append(peer_check(workload, batch, runners, tolerance))
        if not checks[-1]["ok"]:
            say(f"WARNING: {workload} batch {batch}: outputs disagree {checks[-1]}")
        entry: dict[str, Any] = {
            "workload": workload,
            "batch": batch,
            "im2col_workspace_mb": im2col_workspace_mb(workload, batch, settings.block),
        }

        def warmed(entry: dict[str, Any] = entry) -> None:
            entry["after_warmup"] = pool_stats(settings.dry_run)

        policies = {name: settings.policy for name in runners}
        timings = run_interleaved(
            runners, policies, pause_s=0.0, cpu=lambda: None, timers=timers, after_warmup=warmed
        )
        walls = {name: t.walls for name, t in timings.items()}
        entry["after_timing"] = pool_stats(settings.dry_run)
        entry["growth_during_timing_mb"] = _growth(entry["after_warmup"], entry["after_timing"])
        memory.append(entry)
        records += build_records(
            workload,
            mode,
            batch,
            timings,
            walls,
            warmup=settings.warmup,
            device=device,
            timer_kinds={name: timers[name].kind for name in contenders},
            tf32=settings.tf32,
            dry_run=settings.dry_run,
        )
        del runners
        release_device_memory(settings.dry_run)
    return {"results": records, "peer_check": checks, "memory": memory}


# ------------------------------------------------------------------ tables


def format_table(records: Sequence[dict[str, Any]]) -> str:
    """Images/s per contender and the xpconv / PyTorch ratios, one row per workload."""
    return report.format_table(
        records,
        CONTENDERS,
        SHORT,
        (("xpconv-cupy", "cupy/torch"), ("xpconv-torch-cuda", "xp-torch/torch")),
        peer="PyTorch nn.Module (cuDNN)",
        dry_run_note="DRY RUN on the CPU at tiny sizes (xpconv-cupy on NumPy, xpconv-torch "
        "and torch on PyTorch CPU tensors): these numbers mean nothing",
    )


def context_line(report: dict[str, Any]) -> str:
    """One line naming what the numbers were measured on."""
    info = report.get("gpu", {})
    versions = report.get("versions", {})
    tf32 = report.get("tf32", {})
    settings = report.get("settings", {})
    stack = []
    if info.get("driver_version"):
        stack.append(f"driver {info['driver_version']}")
    if info.get("torch_cuda"):
        stack.append(f"CUDA {info['torch_cuda']} (PyTorch)")
    if info.get("cudnn"):
        stack.append(f"cuDNN {info['cudnn']}")
    if info.get("cupy"):
        stack.append(f"CuPy {info['cupy']}")
    if versions.get("torch"):
        stack.append(f"PyTorch {versions['torch']}")
    kernels = report.get("xpconv_kernels", {}).get("cupy")
    if kernels:
        stack.append(f"xpconv cupy kernels: {kernels}")
    tf32_text = "TF32 on" if tf32.get("requested") else "TF32 off"
    timer = "wall clock" if report.get("dry_run") else "CUDA events"
    return (
        f"{info.get('name')}; {', '.join(stack) or 'versions unknown'}; float32, "
        f"{tf32_text}; median of {settings.get('rounds')} interleaved rounds, {timer}; "
        f"{report.get('date', '')[:10]}"
    )


def markdown_table(records: Sequence[dict[str, Any]], report: dict[str, Any] | None = None) -> str:
    """The README table: images/s of the three contenders and the ratios."""
    index = _lookup(records)
    lines = [
        "| Workload | Batch | xpconv, CuPy (images/s) | xpconv, PyTorch CUDA (images/s) "
        "| PyTorch + cuDNN (images/s) | CuPy / PyTorch | xpconv-torch / PyTorch |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for workload, mode, batch in _rows(records):
        recs = [index.get((workload, mode, batch, c)) for c in CONTENDERS]
        rates = [_rate(r["images_per_s"]) if r else "-" for r in recs]
        ratios = [_ratio(r["ratio_vs_torch"]) if r else "-" for r in recs[:2]]
        name = f"{workload} {mode}"
        lines.append(f"| {name} | {batch} | {' | '.join(rates)} | {' | '.join(ratios)} |")
    if report:
        lines.append("")
        lines.append(context_line(report))
    return "\n".join(lines)


# ------------------------------------------------------------------ command line


def settings_from(args: Any) -> GpuSettings:
    """Settings from ``python -m benchmarks`` arguments (missing ones: defaults)."""
    base = settings_base(args, [("quick", QUICK), ("gpu_dry_run", DRY_RUN)])
    batches = flat_unique(getattr(args, "batch", None))
    if batches:
        base["w2_batches"] = batches
    base["tf32"] = bool(getattr(args, "tf32", False))
    base["seed"] = int(getattr(args, "seed", 0) or 0)
    return GpuSettings(**base)


_progress = functools.partial(progress, "benchmarks --gpu")


def _no_device_message(found: dict[str, Any]) -> None:
    summary = "; ".join(f"{k}: {v}" for k, v in found.items())
    print(f"benchmarks --gpu: no CUDA device was found ({summary}).", file=sys.stderr)
    print(NEEDED, file=sys.stderr)
    print(DRY_RUN_HINT, file=sys.stderr)


def main(args: Any = None, argv: Sequence[str] | None = None) -> int:
    """Run the GPU suite (``args`` from ``python -m benchmarks``' parser)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    settings = settings_from(args)
    dry_run = settings.dry_run
    started = time.perf_counter()
    with tf32_mode(settings.tf32):  # before CuPy is imported: it reads CUPY_TF32
        found = {"dry_run": True} if dry_run else detect()
        if not dry_run and not has_device(found):
            _no_device_message(found)
            return EXIT_NO_DEVICE
        availability = available_contenders(found, dry_run)
        skipped = {c: reason for c, reason in availability.items() if reason}
        contenders = [c for c in CONTENDERS if c not in skipped]
        for contender, reason in skipped.items():
            _progress(f"skipping {contender}: {reason}")
        if "torch" not in contenders:
            _progress("no PyTorch peer in this run: ratio_vs_torch is null")

        info = gpu_info(dry_run)
        result = _report_header(argv, settings, found, info, contenders)
        result["skipped"] = skipped
        result["notes"] = NOTES
        result["xpconv_kernels"] = {**result.get("xpconv_kernels", {}), **_gpu_kernels(found)}
        if not contenders:
            _progress("no contender can run here")
            return EXIT_NO_DEVICE
        measured = run(settings, contenders, info.get("name") or "unknown GPU", _progress)
        result.update(measured)

    print(format_table(result["results"]))
    for check in result["peer_check"]:
        diffs = ", ".join(f"{k} {v:.1e}" for k, v in check["relative_diff"].items())
        status = "ok" if check["ok"] else "MISMATCH"
        print(
            f"Peer check {check['workload']} batch {check['batch']} "
            f"(vs {check['reference']}): {status} {diffs}"
        )
    result["elapsed_s"] = round(time.perf_counter() - started, 2)
    print(f"\n{context_line(result)}; {result['elapsed_s']:.0f} s")
    if getattr(args, "markdown", False):
        print()
        print(markdown_table(result["results"], result))
    path = getattr(args, "json", None)
    if path is None and not dry_run:
        path = default_json_path(info.get("name"))
    if path is not None:
        written = write_json(result, path)
        table = Path(written).with_suffix(".md")
        table.write_text(markdown_table(result["results"], result) + "\n", encoding="utf-8")
        _progress(f"wrote {written} and {table}")
    return 0


def _report_header(
    argv: Sequence[str],
    settings: GpuSettings,
    found: dict[str, Any],
    info: dict[str, Any],
    contenders: Sequence[str],
) -> dict[str, Any]:
    """The report's description of the machine, the settings, the workloads and the
    contenders, before anything is measured."""
    dry_run = settings.dry_run
    threads = {"requested": None, "torch": None, "blas_limited": False}
    result: dict[str, Any] = environment.collect(list(argv), threads)
    result["gpu"] = info
    result["detected"] = found
    result["tf32"] = tf32_settings(settings.tf32, dry_run)
    result["dtype"] = DTYPE
    result["dry_run"] = dry_run
    result["settings"] = dataclasses.asdict(settings)
    block = settings.block
    result["workloads"] = {
        "W2": "Conv2D(1->32, 3x3, same) relu maxpool2, Conv2D(32->64, 3x3, same) relu "
        "maxpool2, flatten, Dense(3136->128) relu, Dense(128->10); training step",
        "block": f"Conv2D({block.channels}->{block.channels}, 3x3, same) relu on "
        f"{block.channels}x{block.size}x{block.size} images: forward + backward (input "
        "gradient included), no loss, no optimizer",
    }
    peer = "PyTorch nn.Module on the CPU" if dry_run else "PyTorch nn.Module, cuDNN"
    result["contenders"] = {
        c: (
            f"{peer} (cudnn.benchmark on), autograd, torch.optim.SGD"
            if c == "torch"
            else f"xpconv on backend {xpconv_backend(c, dry_run)!r}"
        )
        for c in contenders
    }
    return result


def _gpu_kernels(found: dict[str, Any]) -> dict[str, str]:
    """Which im2col/col2im kernels xpconv uses on the GPU backends here."""
    kernels: dict[str, str] = {}
    if not _cupy_ok(found):
        return kernels
    try:
        from xpconv.backends import registry as xb
        from xpconv.backends.kernels import kernels_for

        kernels["cupy"] = kernels_for(xb.get_backend("cupy").xp).name
    except Exception as exc:  # report, do not stop the run
        kernels["cupy"] = f"unavailable ({type(exc).__name__}: {exc})"
    return kernels


if __name__ == "__main__":
    raise SystemExit(main())
