"""What a benchmark table must carry beside it: machine, versions, threads, BLAS, settings."""

from __future__ import annotations

import datetime
import importlib
import importlib.metadata
import os
import platform
import shlex
import subprocess
from pathlib import Path
from typing import Any

__all__ = [
    "ENV_VARS",
    "blas_info",
    "collect",
    "core_count",
    "git_revision",
    "host_settings",
    "machine_info",
    "results_name",
    "set_threads",
    "torch_info",
    "versions",
]

REPO_ROOT = Path(__file__).resolve().parents[1]

# Variables that change how fast the numerical libraries run; recorded, never changed.
ENV_VARS = (
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OPENBLAS_NUM_THREADS",
    "OPENBLAS_THREAD_TIMEOUT",
    "OMP_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "MKL_NUM_THREADS",
    "KMP_BLOCKTIME",
    "XPCONV_BACKEND",
    "XPCONV_PORTABLE",
    "XPCONV_KEEP_FREED_MEMORY",
    "XPCONV_HOST_TUNING",
)


def core_count() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


VECTOR_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
)


def cpu_features() -> dict[str, Any]:
    """Vendor, family and the vector extensions the CPU reports (``/proc/cpuinfo``)."""
    found: dict[str, Any] = {"vendor": None, "family": None, "vector_extensions": []}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "vendor_id" and found["vendor"] is None:
                    found["vendor"] = {"AuthenticAMD": "amd", "GenuineIntel": "intel"}.get(
                        value, value.lower()
                    )
                elif key == "cpu family" and found["family"] is None:
                    found["family"] = int(value) if value.isdigit() else value
                elif key == "flags" and not found["vector_extensions"]:
                    flags = set(value.split())
                    found["vector_extensions"] = [f for f in VECTOR_FLAGS if f in flags]
    except OSError:
        pass
    if found["vendor"] is None:
        found["vendor"] = (platform.machine() or "cpu").lower()
    return found


def results_name(machine: dict[str, Any]) -> str:
    """The results file of a machine kind:
    ``cpu-<vendor>[-family<F>][-avx512]-<cores>core.json``. The CPU family tells
    processor generations of one vendor apart (AMD family 25 is Zen 3 and 4, 26 is
    Zen 5), whose speed differs as much as the vendors' does."""
    vendor = machine.get("vendor") or "cpu"
    family = f"-family{machine['family']}" if machine.get("family") is not None else ""
    wide = "-avx512" if "avx512f" in (machine.get("vector_extensions") or []) else ""
    return f"cpu-{vendor}{family}{wide}-{machine.get('cores_usable')}core.json"


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        **cpu_features(),
        "cores_logical": os.cpu_count(),
        "cores_usable": core_count(),
        "cores_physical": None,
        "memory_gb": None,
    }
    try:
        import psutil

        info["cores_physical"] = psutil.cpu_count(logical=False)
        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    try:
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        info["load_average"] = None
    return info


def _version(module: str) -> str | None:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    version = getattr(mod, "__version__", None)
    if version is None:
        try:
            version = importlib.metadata.version(module.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
    return str(version)


def versions() -> dict[str, str | None]:
    names = (
        "numpy",
        "torch",
        "xpconv",
        "array_api_compat",
        "array_api_strict",
        "threadpoolctl",
        "psutil",
        "matplotlib",
    )
    return {"python": platform.python_version(), **{name: _version(name) for name in names}}


def git_revision() -> dict[str, Any] | None:
    """The commit of the checkout benchmarked and whether it had local changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head, "local_changes": bool(status.strip())}


def blas_info() -> dict[str, Any]:
    """Thread pools and BLAS libraries loaded (threadpoolctl), else NumPy's build config."""
    try:
        import threadpoolctl
    except ImportError:
        threadpoolctl = None
    if threadpoolctl is not None:
        pools = threadpoolctl.threadpool_info()
        keep = ("user_api", "internal_api", "prefix", "version", "num_threads")
        keep += ("threading_layer", "architecture")
        return {
            "source": "threadpoolctl",
            "pools": [{k: pool.get(k) for k in keep if k in pool} for pool in pools],
        }
    import numpy as np

    try:
        config = np.show_config(mode="dicts")
        blas = config.get("Build Dependencies", {}).get("blas")
    except TypeError:  # NumPy < 1.25 prints only
        blas = None
    return {"source": "numpy.show_config", "numpy_blas": blas}


def blas_kernel() -> str | None:
    """NumPy's BLAS and the CPU kernel it picked, as ``"openblas 0.3.30 Zen, 2 threads"``."""
    try:
        import numpy  # noqa: F401  (loads its BLAS)
        import threadpoolctl
    except ImportError:
        return None
    for pool in threadpoolctl.threadpool_info():
        if pool.get("user_api") == "blas" and "numpy" in str(pool.get("filepath", "")):
            return (
                f"{pool.get('internal_api')} {pool.get('version')} "
                f"{pool.get('architecture')}, {pool.get('num_threads')} threads"
            )
    return None


def torch_info() -> dict[str, Any] | None:
    """Thread counts and backend settings of PyTorch (TF32 does not apply on a CPU)."""
    try:
        import torch
    except ImportError:
        return None
    parallel = [line.strip() for line in torch.__config__.parallel_info().splitlines()]
    return {
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
        "parallel_info": [line for line in parallel if line],
        "mkldnn_available": torch.backends.mkldnn.is_available(),
        "mkldnn_enabled": bool(torch.backends.mkldnn.enabled),
        "mkl_available": torch.backends.mkl.is_available(),
        "cuda_available": torch.cuda.is_available(),
    }


def tf32_settings(requested: bool = False, applies: bool = False) -> dict[str, Any]:
    """The TF32 settings in force now, for the CPU and the GPU harness alike:
    ``requested`` is what the run asked for, ``applies`` whether it runs on a GPU (where
    TF32 is a setting at all); PyTorch's flags when PyTorch is installed."""
    info: dict[str, Any] = {
        "applies": applies,
        "requested": requested,
        "CUPY_TF32": os.environ.get("CUPY_TF32"),
        "NVIDIA_TF32_OVERRIDE": os.environ.get("NVIDIA_TF32_OVERRIDE"),
    }
    if not applies:
        info["note"] = "run on the CPU: TF32 is a GPU setting"
    try:
        import torch
    except ImportError:
        return info
    info["torch.backends.cuda.matmul.allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
    info["torch.backends.cudnn.allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)
    info["torch.get_float32_matmul_precision"] = torch.get_float32_matmul_precision()
    info["torch.backends.cudnn.benchmark"] = bool(torch.backends.cudnn.benchmark)
    return info


def xpconv_kernels() -> dict[str, str]:
    """Which convolution kernels xpconv picks per backend (portable or a fast path)."""
    from xpconv.backends import registry as xb

    found: dict[str, str] = {}
    try:
        from xpconv.backends.kernels import kernels_for
    except ImportError:
        return found
    for name in ("numpy", "torch", "array_api_strict"):
        try:
            found[name] = kernels_for(xb.get_backend(name).xp).name
        except Exception as exc:  # a missing library, or kernels under change
            found[name] = f"unavailable ({type(exc).__name__})"
    return found


def host_settings() -> dict[str, bool]:
    """Apply ``xpconv.tune_host`` (as the ``xpconv`` command does) and say what it did;
        ``openblas_idle_threads_sleep`` is whether OpenBLAS's idle threads now sleep (OpenBLAS
    runs on one thread, so its workers are never woken). In the
        in-process mode it holds for the whole process, so PyTorch's rounds run under it too."""
    from xpconv.backends.numpy import host

    done = host.tune_host()
    return {"openblas_idle_threads_sleep": done["one_blas_thread"], **done}


def set_threads(threads: int, limit_blas: bool) -> dict[str, Any]:
    """Give PyTorch ``threads`` intra-op threads; with ``limit_blas`` also cap the BLAS and
    OpenMP pools (threadpoolctl). Returns what was done; the limiter is kept alive."""
    done: dict[str, Any] = {"requested": threads, "torch": None, "blas_limited": False}
    try:
        import torch

        torch.set_num_threads(threads)
        done["torch"] = torch.get_num_threads()
    except ImportError:
        pass
    if limit_blas:
        try:
            import threadpoolctl

            done["_limiter"] = threadpoolctl.threadpool_limits(limits=threads)
            done["blas_limited"] = True
        except ImportError:
            done["blas_limited"] = "threadpoolctl missing: BLAS threads left at their default"
    return done


def collect(argv: list[str], threads: dict[str, Any]) -> dict[str, Any]:
    """The header of the JSON report."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "benchmarks", *argv]),
        "machine": machine_info(),
        "versions": versions(),
        "xpconv_git": git_revision(),
        "xpconv_kernels": xpconv_kernels(),
        "xpconv_host": host_settings(),
        "threads": {
            "requested": threads.get("requested"),
            "torch": threads.get("torch"),
            "blas_limited": threads.get("blas_limited"),
        },
        "torch": torch_info(),
        "blas": blas_info(),
        "blas_kernel": blas_kernel(),
        "environment": {name: os.environ.get(name) for name in ENV_VARS},
        "tf32": tf32_settings(),
    }
