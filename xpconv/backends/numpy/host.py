"""Process-wide settings for NumPy training on a Linux host, applied only when asked
for, and what xpconv's NumPy kernels read of OpenBLAS's configuration.

Importing xpconv, selecting a backend, building a model and ``Trainer.fit`` change
nothing outside xpconv. :func:`tune_host` is the one entry point that does; the
``xpconv`` command and the benchmarks call it, and a user may (``xpconv.tune_host()``,
or ``Trainer(..., tune_host=True)``). It does three things, each described at its
function:

- :func:`keep_freed_memory`: glibc keeps the step's freed temporaries for reuse
  (``XPCONV_KEEP_FREED_MEMORY=0`` turns this one off).
- :func:`one_blas_thread`: every loaded OpenBLAS runs each product on the calling
  thread, and xpconv's NumPy kernels split their large products over their own threads
  instead (idle OpenBLAS workers are then never woken, so they never spin).
- :func:`balance_threads` is switched on: called between training steps, it runs
  xpconv's NumPy work on one thread while other processes keep the cores busy, and on
  every core again when they stop.

``XPCONV_HOST_TUNING=0`` in the environment turns all of it off.

Nothing here shuts OpenBLAS's thread pool down or changes its thread count around a
product, so no call can block or slow another thread that is inside BLAS.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from functools import cache
from typing import Any

__all__ = [
    "CpuSample",
    "balance_threads",
    "blas_threads",
    "cpu_sample",
    "keep_freed_memory",
    "one_blas_thread",
    "openblas_paths",
    "parallel_workers",
    "product_threads",
    "set_blas_threads",
    "tune_host",
    "usable_cores",
]


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of returning it to the system.

    A training step allocates and frees the same temporaries (columns, activations,
    gradients) every time. By default glibc serves large blocks with fresh ``mmap``
    calls and gives them back on free, so every step pays page faults on all of them.
    Raising the mmap and trim thresholds (process-wide) keeps the memory in the heap;
    resident memory then stays at its peak instead of going up and down. Returns
    whether both thresholds were set. Only on Linux with glibc;
    ``XPCONV_KEEP_FREED_MEMORY=0`` turns it off. See docs/performance.md for the
    measured effect.
    """
    if os.environ.get("XPCONV_KEEP_FREED_MEMORY", "1") == "0" or sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(
            libc.mallopt(m_trim_threshold, (1 << 31) - 1)
        )
    except (OSError, AttributeError):  # not glibc
        return False


def openblas_paths() -> list[str]:
    """The files of the OpenBLAS libraries loaded in this process (Linux), in load
    order: NumPy's, and any other package's (SciPy's, say)."""
    if sys.platform != "linux":
        return []
    try:
        with open("/proc/self/maps") as maps:
            found = [line.split()[-1] for line in maps if "openblas" in line.lower()]
    except OSError:
        return []
    return [p for p in dict.fromkeys(found) if ".so" in os.path.basename(p)]


# ------------------------------------------------------------------ BLAS thread count

_SET_NAMES = ("openblas_set_num_threads", "scipy_openblas_set_num_threads64_")
_GET_NAMES = ("openblas_get_num_threads", "scipy_openblas_get_num_threads64_")


@cache
def _thread_controls() -> tuple[tuple[Any, Any], ...]:
    """(get, set) entry points of every OpenBLAS loaded so far (unprefixed or SciPy's
    ``scipy_...64_`` build, which NumPy's wheels carry)."""
    found = []
    for path in openblas_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        get = next((getattr(lib, n) for n in _GET_NAMES if hasattr(lib, n)), None)
        put = next((getattr(lib, n) for n in _SET_NAMES if hasattr(lib, n)), None)
        if get is not None and put is not None:
            get.restype = ctypes.c_int
            put.argtypes = [ctypes.c_int]
            found.append((get, put))
    return tuple(found)


def blas_threads() -> int | None:
    """The thread count of the first loaded OpenBLAS (``None``: none is loaded)."""
    controls = _thread_controls()
    return int(controls[0][0]()) if controls else None


def set_blas_threads(count: int) -> bool:
    """Give every loaded OpenBLAS ``count`` threads, for the whole process; False when
    none is loaded. xpconv calls it only from :func:`one_blas_thread`, when asked."""
    controls = _thread_controls()
    for _, put in controls:
        put(int(count))
    return bool(controls)


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds the whole machine and this process had used at ``wall`` (monotonic
    seconds); the difference of two samples says what other processes took between."""

    wall: float
    machine_busy: float
    own: float
    cores: int

    def others_since(self, earlier: CpuSample) -> float:
        """Cores (0 to ``cores``) other processes kept busy between ``earlier`` and now."""
        elapsed = self.wall - earlier.wall
        if elapsed <= 0:
            return 0.0
        others = (self.machine_busy - earlier.machine_busy) - (self.own - earlier.own)
        return min(max(others / elapsed, 0.0), float(self.cores))


def _busy_seconds(fields: list[str]) -> float:
    """Busy seconds of one ``/proc/stat`` cpu line: all but idle and iowait."""
    ticks = [int(v) for v in fields[1:9]]
    return (sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)) / os.sysconf("SC_CLK_TCK")


def cpu_sample() -> CpuSample | None:
    """Read ``/proc/stat`` and this process's CPU time now (``None`` where there is no
    ``/proc/stat``, as off Linux). Only the CPUs this process may run on count."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        with open("/proc/stat") as stat:
            lines = [line.split() for line in stat if line.startswith("cpu")]
    except OSError:
        return None
    per_cpu = {int(f[0][3:]): f for f in lines if f[0][3:].isdigit()}
    if allowed and per_cpu and allowed <= per_cpu.keys():
        busy = sum(_busy_seconds(per_cpu[c]) for c in allowed)
        cores = len(allowed)
    elif lines and lines[0][0] == "cpu":
        busy, cores = _busy_seconds(lines[0]), len(per_cpu) or (os.cpu_count() or 1)
    else:
        return None
    # this process's time to the nanosecond (os.times counts 10 ms ticks)
    return CpuSample(time.monotonic(), busy, time.process_time(), cores)


class _Balancer:
    """The state of :func:`balance_threads`."""

    window = 0.1  # seconds between two decisions
    horizon = 0.3  # ... each on the CPU time of (at least, once running) this long
    crowded = 0.3  # cores taken by other processes that make xpconv go to one thread
    clear = 0.15  # ... and below which it gets its threads back

    def __init__(self) -> None:
        self.enabled = False
        self.full: int | None = None
        self.current: int | None = None
        self.history: deque[CpuSample] = deque()

    def enable(self) -> None:
        if not self.enabled:
            self.full = usable_cores()
            self.current = self.full
            self.enabled = self.full > 1 and cpu_sample() is not None

    def step(self) -> int | None:
        if not self.enabled:
            return None
        history = self.history
        if history and time.monotonic() - history[-1].wall < self.window:
            return self.current
        now = cpu_sample()
        if now is None:
            return self.current
        if not history:  # first call: one thread until the machine is seen idle
            history.append(now)
            self.current = 1
            return self.current
        while len(history) > 1 and now.wall - history[1].wall >= self.horizon:
            history.popleft()
        others = now.others_since(history[0])
        history.append(now)
        if others >= self.crowded:
            self.current = 1
        elif others < self.clear:
            self.current = self.full
        return self.current


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    found = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return len(found) if found else (os.cpu_count() or 1)


_BALANCER = _Balancer()


def balance_threads() -> int | None:
    """Between training steps: run xpconv's NumPy work on one thread while other
    processes keep the cores busy, and on all of them again when they stop. Returns the
    thread count now (``None`` when :func:`tune_host` has not switched balancing on, or
    there is one core).

    Work split over threads waits for the slowest part, and beside another process's
    busy threads one of xpconv's is always descheduled. It reads ``/proc/stat`` at most
    every ``_Balancer.window`` seconds and decides on the CPU time other processes took
    over the last ``_Balancer.horizon`` seconds (``crowded`` cores or more: one thread;
    under ``clear``: every usable core); the longer horizon keeps the coarse tick
    rounding of ``/proc/stat`` from being read as load. The first call after switching
    on starts with one thread.

    Only the number of threads that run the parts changes, never how the work is cut
    into parts (see :func:`parallel_workers`), so a seeded training computes the same
    numbers, bit for bit, however busy the machine is.
    """
    return _BALANCER.step()


def parallel_workers() -> int | None:
    """How many threads xpconv's NumPy kernels may run their parts on now: the
    balancer's choice, or ``None`` (no limit: every core) while balancing is off."""
    return _BALANCER.current if _BALANCER.enabled else None


class _BlasOwner:
    """The state of :func:`one_blas_thread`: the thread count OpenBLAS had when xpconv
    took it to one thread (``None``: never taken)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.before: int | None = None


_OWNER = _BlasOwner()


def one_blas_thread() -> bool:
    """Run every loaded OpenBLAS on one thread from now on, for the whole process, and
    let xpconv's NumPy kernels split their large products over as many of their own
    threads as OpenBLAS had. Returns whether OpenBLAS is now held at one thread by
    xpconv (False: no OpenBLAS whose count can be set is loaded, or it already ran on
    one thread, as with ``OPENBLAS_NUM_THREADS=1``).

    Done once per process; later calls change nothing. Lowering the count only stores
    a number that later calls read, so a product another thread is running meanwhile
    finishes as it started; OpenBLAS's thread pool is never shut down. Products of
    other code in the process then run on one thread too.
    """
    with _OWNER.lock:
        if _OWNER.before is None:
            count = blas_threads()
            if count is None or count <= 1:
                return False
            _OWNER.before = count
            set_blas_threads(1)
        return True


def product_threads() -> int | None:
    """How many threads xpconv's NumPy kernels may split one matrix product over, each
    part a one-thread BLAS call: the count OpenBLAS had before :func:`one_blas_thread`
    took it, or 1 while OpenBLAS is configured with one thread (the parts then run one
    after another). ``None``: OpenBLAS threads its products itself (the kernels call it
    on whole products and never change its count), or no OpenBLAS whose count can be
    read is loaded."""
    if blas_threads() != 1:  # also when set again since :func:`one_blas_thread`
        return None
    return _OWNER.before or 1


def tune_host() -> dict[str, bool]:
    """Apply xpconv's process-wide host tuning; returns what was done.

    Changes three things in the whole process (Linux): glibc's ``mallopt`` thresholds
    (:func:`keep_freed_memory`), the thread count of every loaded OpenBLAS, to one
    (:func:`one_blas_thread`), and, between training steps, how many threads xpconv's
    NumPy kernels use while the machine is busy (:func:`balance_threads`; this changes
    no result). ``XPCONV_HOST_TUNING=0`` turns it into a no-op. Safe to call more than
    once, and while other threads are inside BLAS.
    """
    if os.environ.get("XPCONV_HOST_TUNING", "1").strip() == "0":
        return {"keep_freed_memory": False, "one_blas_thread": False, "balance_threads": False}
    kept = keep_freed_memory()
    single = one_blas_thread()
    _BALANCER.enable()
    return {
        "keep_freed_memory": kept,
        "one_blas_thread": single,
        "balance_threads": _BALANCER.enabled,
    }
