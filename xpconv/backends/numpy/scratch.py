"""Memory for the NumPy kernels' large arrays, reused once no array views it.

A training step allocates and frees the same large arrays every time: a convolution's
columns, its output, their gradients. glibc gives memory that large back to the
system when it is freed (the heap's top is trimmed, or the block was a mapping of its
own), and every step then pays page faults, and the system calls of giving it back,
again. Keeping the memory inside xpconv avoids that without any process-wide setting
(:func:`~xpconv.backends.numpy.host.keep_freed_memory` is the process-wide way, for
whoever asks for it).

:func:`take` is ``np.empty`` for arrays of at least :data:`SMALLEST` bytes. The array
it returns views memory xpconv keeps; when that array and every view of it are gone
(whoever held them: a kernel, a layer, the user), the memory goes back to a free list,
and a later :func:`take` of the same size in bytes gets it, in whatever shape and
dtype it asks for. Nothing is handed out while anything still views it, so no caller
can see its array change. At most :data:`KEPT_BYTES` wait in the free list (what would
go past it is freed); :func:`clear` frees them all. Safe from several threads.
"""

from __future__ import annotations

import ctypes
import math
import threading
import weakref
from collections import deque
from typing import Any

import numpy as np

__all__ = ["KEPT_BYTES", "SMALLEST", "clear", "kept_bytes", "take"]

#: Arrays smaller than this come from ``np.empty`` (malloc reuses small blocks itself).
SMALLEST = 1 << 20
#: The most memory waiting for reuse at once.
KEPT_BYTES = 1 << 28


class _FreeList:
    """Memory no array views, by size in bytes, and the memory lent out now.

    A lease's death is noted by a weak reference whose callback is a deque's ``append``
    (C code: no Python runs in whichever thread, or garbage collection, ends the last
    view); the next :func:`take` moves what came back to the free list.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.free: dict[int, list[np.ndarray]] = {}
        self.bytes = 0
        self.lent: dict[int, tuple[weakref.ref[Any], np.ndarray]] = {}  # by id(ref)
        self.returned: deque[weakref.ref[Any]] = deque()

    def lend(self, memory: np.ndarray) -> Any:
        """A ctypes array over ``memory`` whose death returns it."""
        lease = (ctypes.c_char * memory.nbytes).from_buffer(memory.data)
        ref = weakref.ref(lease, self.returned.append)
        with self.lock:
            self.lent[id(ref)] = (ref, memory)
        return lease

    def put(self, memory: np.ndarray) -> None:
        """Keep ``memory`` for reuse, unless that would pass :data:`KEPT_BYTES`
        (callers hold the lock)."""
        if self.bytes + memory.nbytes <= KEPT_BYTES:
            self.free.setdefault(memory.nbytes, []).append(memory)
            self.bytes += memory.nbytes

    def collect(self) -> None:
        """Move the memory whose leases died to the free list (callers hold the lock)."""
        while self.returned:
            self.put(self.lent.pop(id(self.returned.popleft()))[1])

    def get(self, size: int) -> np.ndarray | None:
        with self.lock:
            self.collect()
            found = self.free.get(size)
            if not found:
                return None
            self.bytes -= size
            return found.pop()


_FREE = _FreeList()


def take(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised C-ordered array of ``shape`` and ``dtype``, like ``np.empty``;
    from :data:`SMALLEST` bytes its memory is reused, and goes back for reuse when
    nothing views it any more."""
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    if size < SMALLEST:
        return np.empty(shape, dtype=dtype)
    memory = _FREE.get(size)
    if memory is None:
        memory = np.empty(size, dtype=np.uint8)
    # every view of the array keeps the lease alive; when the last one goes, so does it
    return np.frombuffer(_FREE.lend(memory), dtype=dtype).reshape(shape)


def kept_bytes() -> int:
    """Bytes waiting for reuse now."""
    with _FREE.lock:
        _FREE.collect()
        return _FREE.bytes


def clear() -> None:
    """Free the memory waiting for reuse (arrays in use are not affected)."""
    with _FREE.lock:
        _FREE.collect()
        _FREE.free.clear()
        _FREE.bytes = 0
