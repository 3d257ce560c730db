"""Process-wide settings for NumPy training on a Linux host, applied only when asked for,
and the BLAS thread controls xpconv's NumPy kernels use.

Importing xpconv, selecting a backend or building a model changes nothing outside
xpconv. :func:`tune_host` is the one entry point that does; the ``xpconv`` command,
:class:`xpconv.Trainer` and the benchmarks call it, and a user may. It does three
things, each described at its function:

- :func:`keep_freed_memory`: glibc keeps the step's freed temporaries for reuse
  (``XPCONV_KEEP_FREED_MEMORY=0`` turns this one off).
- :func:`quiet_blas_threads`: OpenBLAS's idle worker threads sleep instead of spinning
  (an ``OPENBLAS_THREAD_TIMEOUT`` set by the user is respected instead).
- :func:`balance_threads` is switched on: called between training steps, it runs
  xpconv's NumPy work on one thread while other processes keep the cores busy, and on
  every core again when they stop.

``XPCONV_HOST_TUNING=0`` in the environment turns all of it off.

Beside them, :func:`single_blas_thread` holds OpenBLAS at one thread while one of
xpconv's own matrix products runs (xpconv splits those over its threads itself, so
that their results do not depend on the thread count) and gives the count back after.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

__all__ = [
    "CpuSample",
    "balance_threads",
    "blas_threads",
    "cpu_sample",
    "keep_freed_memory",
    "openblas_paths",
    "parallel_workers",
    "quiet_blas_threads",
    "set_blas_threads",
    "single_blas_thread",
    "tune_host",
    "usable_cores",
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

    After every call that used its threads, OpenBLAS keeps its workers busy-waiting
    for the next one, for 2**28 cycles (about 0.1 s) by default. xpconv's own products
    use none of them (see :func:`single_blas_thread`), but any other product in the
    process (an evaluation, a user's own NumPy code) does, and the spinning workers
    then take the cores xpconv's threads need: on 2 cores, LeNet's second convolution
    ran at half speed right after such a product (docs/performance.md, "Kernel choices").

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

    Why: work split over threads waits for the slowest part. Beside another process's
    spinning thread pool (a PyTorch training, say) one thread is always descheduled,
    and the step waits for its time slice: on 2 cores beside a 2-thread PyTorch loop, a
    LeNet epoch of 600 images took 3 to 30 s with 2 threads and 0.7 to 1.5 s with one.
    It reads ``/proc/stat`` at most every 0.1 s and decides on the CPU time other
    processes took over the last 0.3 s (0.3 cores or more: one thread; under 0.15:
    every usable core). The first call after switching on starts with one thread.
    ``/proc/stat`` counts in ticks of 10 ms per CPU, so over a single 0.1 s the count
    of an idle 2-core machine, busy with this process alone, read up to 0.3 cores of
    others' work, enough to halve xpconv's speed for the next 0.1 s; over 0.3 s that
    error is a third as large.

    Only the number of threads that run the parts changes, never how the work is cut
    into parts (see :func:`parallel_workers`), so a seeded training computes the same
    numbers, bit for bit, however busy the machine is.
    """
    return _BALANCER.step()


def parallel_workers() -> int | None:
    """How many threads xpconv's NumPy kernels may run their parts on now: the
    balancer's choice, or ``None`` (no limit: every core) while balancing is off."""
    return _BALANCER.current if _BALANCER.enabled else None


class _BlasHold:
    """Reference-counted hold of OpenBLAS at one thread (see :func:`single_blas_thread`)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.outside: int | None = None


_HOLD = _BlasHold()


@contextmanager
def single_blas_thread() -> Iterator[int | None]:
    """Hold every loaded OpenBLAS at one thread inside the ``with`` block; yields the
    thread count it has outside (``None``: no OpenBLAS whose count can be set is
    loaded, and nothing is held).

    xpconv's NumPy kernels split their large matrix products over their own threads in
    a fixed way, each part a one-thread BLAS call, so that a product's rounding does
    not depend on how many threads run it (OpenBLAS's AVX2 kernels round differently
    with one thread and with two). Nested and concurrent holds share one: the first
    sets the count, the last gives the outside count back.
    """
    with _HOLD.lock:
        if _HOLD.depth == 0:
            _HOLD.outside = blas_threads()
            if _HOLD.outside is not None and _HOLD.outside != 1:
                set_blas_threads(1)
        _HOLD.depth += 1
        outside = _HOLD.outside
    try:
        yield outside
    finally:
        with _HOLD.lock:
            _HOLD.depth -= 1
            if _HOLD.depth == 0 and _HOLD.outside is not None and _HOLD.outside != 1:
                set_blas_threads(_HOLD.outside)


def tune_host() -> dict[str, bool]:
    """Apply xpconv's process-wide host tuning; returns what was done.

    Changes three things in the whole process (Linux): glibc's ``mallopt`` thresholds
    (freed memory is kept for reuse, :func:`keep_freed_memory`), the idle timeout of
    every loaded OpenBLAS's threads (:func:`quiet_blas_threads`), and, between training
    steps, how many threads xpconv's NumPy kernels use while the machine is busy
    (:func:`balance_threads`; this changes no result). ``XPCONV_HOST_TUNING=0`` turns
    it into a no-op. Safe to call more than once; call it while no other thread is
    inside BLAS.
    """
    if os.environ.get("XPCONV_HOST_TUNING", "1").strip() == "0":
        return {"keep_freed_memory": False, "quiet_blas_threads": False, "balance_threads": False}
    kept = keep_freed_memory()
    quiet = quiet_blas_threads()
    _BALANCER.enable()
    return {
        "keep_freed_memory": kept,
        "quiet_blas_threads": quiet,
        "balance_threads": _BALANCER.enabled,
    }
