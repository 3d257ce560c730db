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

__all__ = ["keep_freed_memory", "openblas_path", "quiet_blas_threads"]

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


def openblas_path() -> str | None:
    """The file of the OpenBLAS library loaded in this process (Linux), else None."""
    if sys.platform != "linux":
        return None
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if "openblas" in os.path.basename(path).lower() and ".so" in path:
                    return path
    except OSError:
        pass
    return None


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
    OpenBLAS's default, set it to 28), when NumPy does not use OpenBLAS, or when the
    library lacks the two entry points. It acts once per process; call it while no
    other thread is inside BLAS.
    """
    if _TIMEOUT_VARIABLE in os.environ:
        return False
    path = openblas_path()
    if path is None:
        return False
    try:
        lib = ctypes.CDLL(path)
        read_env, shutdown = lib.openblas_read_env, lib.blas_thread_shutdown_
    except (OSError, AttributeError):
        return False
    os.environ[_TIMEOUT_VARIABLE] = _SHORTEST_TIMEOUT
    try:
        read_env()  # newer OpenBLAS caches the variable here...
        shutdown()
        square = np.ones((256, 256), dtype=np.float32)
        square @ square  # ...older ones read it when the pool restarts, in this call
    finally:
        del os.environ[_TIMEOUT_VARIABLE]
    return True
