"""Process-level settings that keep NumPy training fast on a Linux host.

Both are applied once, when the NumPy backend is first loaded, and each can be turned
off from the environment:

- :func:`keep_freed_memory`: glibc keeps the step's freed temporaries for reuse
  (``XPCONV_KEEP_FREED_MEMORY=0`` turns it off).
- :func:`quiet_blas_threads`: OpenBLAS's idle worker threads sleep instead of spinning
  (an ``OPENBLAS_THREAD_TIMEOUT`` set by the user is respected instead).
"""

from __future__ import annotations

import ctypes
import os
import sys
from functools import cache

import numpy as np

__all__ = ["keep_freed_memory", "openblas_paths", "quiet_blas_threads"]

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
