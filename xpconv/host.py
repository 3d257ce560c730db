"""Process-wide settings that keep NumPy training fast on a Linux host, applied only
when asked for.

Importing xpconv, selecting a backend or building a model changes nothing outside
xpconv. :func:`tune_host` is the one entry point that does; the ``xpconv`` command,
:class:`xpconv.Trainer` and the benchmarks call it, and a user may. It does three
things, each described at its function:

- :func:`keep_freed_memory`: glibc keeps the step's freed temporaries for reuse
  (``XPCONV_KEEP_FREED_MEMORY=0`` turns this one off).
- :func:`quiet_blas_threads`: OpenBLAS's idle worker threads sleep instead of spinning
  (an ``OPENBLAS_THREAD_TIMEOUT`` set by the user is respected instead).
- :func:`balance_blas_threads` is switched on: called between training steps, it gives
  OpenBLAS one thread while other processes keep the cores busy, and its thread count
  back when they stop.

``XPCONV_HOST_TUNING=0`` in the environment turns all of it off.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

__all__ = [
    "CpuSample",
    "balance_blas_threads",
    "blas_threads",
    "cpu_sample",
    "keep_freed_memory",
    "openblas_paths",
    "quiet_blas_threads",
    "set_blas_threads",
    "tune_host",
]

_TIMEOUT_VARIABLE = "OPENBLAS_THREAD_TIMEOUT"
_SHORTEST_TIMEOUT = "4"  # OpenBLAS's minimum: spin for 2**4 cycles, then sleep


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of returning it to the system.

    A training step allocates and frees the same tens of megabytes of temporaries
    (columns, activations, gradients) every time. By default glibc serves such blocks
    with fresh ``mmap`` calls and gives them back on free, so every step pays page
    faults on all of it: on the reference CNN that was 15% of the step and made step
    times erratic. Raising the mmap and trim thresholds keeps the memory in the heap;
    resident memory then stays at its peak instead of going up and down. Only on
    Linux with glibc; ``XPCONV_KEEP_FREED_MEMORY=0`` turns it off.
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


@cache
def quiet_blas_threads() -> bool:
    """Make OpenBLAS's idle worker threads sleep at once instead of spinning.

    After every call OpenBLAS keeps its workers busy-waiting for the next one, for
    2**28 cycles (about 0.1 s) by default. A training step runs NumPy's elementwise
    operations and xpconv's own copy threads between its matrix products; spinning
    workers take the cores those need. On the 2-core reference machine, letting the
    workers sleep took W1's training step from 12.9 to 7.2 ms and W2's from 48 to
    36 ms; the products themselves do not get slower.

    OpenBLAS reads ``OPENBLAS_THREAD_TIMEOUT`` when it starts its thread pool, usually
    before xpconv is imported. So this sets the variable, has OpenBLAS read it again,
    shuts the pool down, lets one small product start it anew, and restores the
    environment. It does nothing when the user has set the variable (to keep
    OpenBLAS's default, set it to 28) or when no OpenBLAS with these two entry points
    is loaded. It acts on every OpenBLAS loaded so far, once per process; call it
    while no other thread is inside BLAS.
    """
    if _TIMEOUT_VARIABLE in os.environ:
        return False
    libraries = []
    for path in openblas_paths():
        try:
            lib = ctypes.CDLL(path)
            libraries.append((lib.openblas_read_env, lib.blas_thread_shutdown_))
        except (OSError, AttributeError):
            continue
    if not libraries:
        return False
    os.environ[_TIMEOUT_VARIABLE] = _SHORTEST_TIMEOUT
    try:
        for read_env, shutdown in libraries:
            read_env()  # newer OpenBLAS caches the variable here...
            shutdown()
        square = np.ones((256, 256), dtype=np.float32)
        square @ square  # ...older ones read it when the pool restarts, as NumPy's does here
    finally:
        del os.environ[_TIMEOUT_VARIABLE]
    return True


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
    """Give every loaded OpenBLAS ``count`` threads; False when none is loaded. Call it
    while no other thread is inside BLAS."""
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
    times = os.times()
    return CpuSample(time.monotonic(), busy, times.user + times.system, cores)


class _Balancer:
    """The state of :func:`balance_blas_threads`."""

    window = 0.1  # seconds between two decisions
    crowded = 0.3  # cores taken by other processes that make OpenBLAS go to one thread
    clear = 0.15  # ... and below which it gets its threads back

    def __init__(self) -> None:
        self.enabled = False
        self.full: int | None = None
        self.current: int | None = None
        self.last: CpuSample | None = None

    def enable(self) -> None:
        if not self.enabled:
            self.full = blas_threads()
            self.current = self.full
            self.enabled = self.full is not None and self.full > 1 and cpu_sample() is not None

    def step(self) -> int | None:
        if not self.enabled:
            return None
        if self.last is not None and time.monotonic() - self.last.wall < self.window:
            return self.current
        now = cpu_sample()
        if now is None:
            return self.current
        if self.last is None:  # first call: one thread until the machine is seen idle
            self.last = now
            self._set(1)
            return self.current
        others = now.others_since(self.last)
        self.last = now
        if others >= self.crowded:
            self._set(1)
        elif others < self.clear:
            self._set(self.full)
        return self.current

    def _set(self, count: int | None) -> None:
        if count is not None and count != self.current:
            set_blas_threads(count)
            self.current = count


_BALANCER = _Balancer()


def balance_blas_threads() -> int | None:
    """Between training steps: give OpenBLAS one thread while other processes keep the
    cores busy, and its thread count back when they stop. Returns the thread count now
    (``None`` when :func:`tune_host` has not switched balancing on, or there is no
    multi-threaded OpenBLAS).

    Why: OpenBLAS splits every product over its threads and the calling thread waits
    for the slowest. Beside another process's spinning thread pool (a PyTorch training,
    say) one of them is descheduled, and the product waits for its time slice: on 2
    cores beside a 2-thread PyTorch loop, a LeNet epoch of 600 images took 3 to 30 s
    with 2 OpenBLAS threads and 0.7 to 1.5 s with one. It reads ``/proc/stat`` at most
    every 0.1 s and decides on the CPU time other processes took since the last
    decision (0.3 cores or more: one thread; under 0.15: the count it had when
    balancing was switched on). The first call after switching on starts with one
    thread. Call it while no other thread is inside BLAS.
    """
    return _BALANCER.step()


def tune_host() -> dict[str, bool]:
    """Apply xpconv's process-wide host tuning; returns what was done.

    Changes three things in the whole process (Linux): glibc's ``mallopt`` thresholds
    (freed memory is kept for reuse, :func:`keep_freed_memory`), the idle timeout of
    every loaded OpenBLAS's threads (:func:`quiet_blas_threads`), and, between
    training steps, OpenBLAS's thread count while the machine is busy
    (:func:`balance_blas_threads`). ``XPCONV_HOST_TUNING=0`` turns it into a no-op.
    Safe to call more than once; call it while no other thread is inside BLAS.
    """
    if os.environ.get("XPCONV_HOST_TUNING", "1").strip() == "0":
        return {"keep_freed_memory": False, "quiet_blas_threads": False, "balance_blas": False}
    kept = keep_freed_memory()
    quiet = quiet_blas_threads()
    _BALANCER.enable()
    balance = _BALANCER.enabled
    return {"keep_freed_memory": kept, "quiet_blas_threads": quiet, "balance_blas": balance}
