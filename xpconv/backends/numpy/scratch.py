"""Large temporaries of the NumPy kernels, kept from one training step for the next.

A training step allocates and frees the same large arrays every time: a convolution's
columns, its output before the pool, their gradients. glibc gives memory that large
back to the system when it is freed (the heap's top is trimmed, or the block was a
mapping of its own), and NumPy asks for 2 MiB pages for it, so the next step has every
one of those pages zeroed again on first touch. Keeping the freed arrays inside xpconv
avoids that without any process-wide setting
(:func:`~xpconv.backends.numpy.host.keep_freed_memory` is the process-wide way, for
whoever asks for it).

:func:`take` hands out arrays of at least :data:`SMALLEST` bytes whose memory xpconv
allocated; :func:`give` returns one when the op that made it knows nothing else holds
it. Only arrays :func:`take` made are kept (anything else is left to the garbage
collector), each at most once, and at most :data:`KEPT_BYTES` in all; :func:`clear`
lets them all go. A later :func:`take` of the same size in bytes gets one back, in
whatever shape and dtype it asks for. Safe to call from several threads.
"""

from __future__ import annotations

import math
import threading
import weakref
from typing import Any

import numpy as np

__all__ = ["KEPT_BYTES", "SMALLEST", "clear", "give", "kept_bytes", "take"]

#: Arrays smaller than this come from ``np.empty`` (malloc reuses small blocks itself).
SMALLEST = 1 << 20
#: The most memory kept for reuse at once; what would go past it is let go.
KEPT_BYTES = 1 << 28


class _Kept:
    """The arrays given back, by size in bytes, and the ones :func:`take` made."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.free: dict[int, list[np.ndarray]] = {}
        self.ids: set[int] = set()  # id() of every array in ``free``
        self.bytes = 0
        self.made: weakref.WeakValueDictionary[int, np.ndarray] = weakref.WeakValueDictionary()


_KEPT = _Kept()


def take(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised C-ordered array of ``shape`` and ``dtype``, like ``np.empty``;
    its memory is reused from an array given back when one of the same size is kept."""
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    if size < SMALLEST:
        return np.empty(shape, dtype=dtype)
    with _KEPT.lock:
        found = _KEPT.free.get(size)
        if found:
            memory = found.pop()
            _KEPT.ids.discard(id(memory))
            _KEPT.bytes -= size
        else:
            memory = np.empty(size, dtype=np.uint8)
            _KEPT.made[id(memory)] = memory
    return memory.view(dtype).reshape(shape)


def give(array: np.ndarray | None) -> None:
    """Keep the memory of ``array`` (or of the array it views) for a later :func:`take`.

    Call it only when neither ``array`` nor any other view of its memory will be read
    or written again. Arrays :func:`take` did not make, ``None``, and anything over
    :data:`KEPT_BYTES` are ignored.
    """
    if not isinstance(array, np.ndarray):
        return
    memory = array if array.base is None else array.base  # NumPy keeps bases one deep
    if not isinstance(memory, np.ndarray):
        return
    size = memory.nbytes
    with _KEPT.lock:
        if _KEPT.made.get(id(memory)) is not memory or id(memory) in _KEPT.ids:
            return
        if _KEPT.bytes + size > KEPT_BYTES:
            return
        _KEPT.free.setdefault(size, []).append(memory)
        _KEPT.ids.add(id(memory))
        _KEPT.bytes += size


def kept_bytes() -> int:
    """Bytes kept for reuse now."""
    return _KEPT.bytes


def clear() -> None:
    """Let every kept array go (its memory returns to the allocator)."""
    with _KEPT.lock:
        _KEPT.free.clear()
        _KEPT.ids.clear()
        _KEPT.bytes = 0
