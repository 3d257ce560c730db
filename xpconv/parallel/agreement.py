"""Agreement of the ranks: equal inputs checked, rank 0's state broadcast."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from array_api_compat import array_namespace

from xpconv.backends.registry import backend_of
from xpconv.parallel.communicators import Communicator, DistributedError

Array = Any

# --------------------------------------------------------------------------- agreement


def _digest(value: Any) -> bytes:
    h = hashlib.sha256()
    if isinstance(value, np.ndarray):
        a = np.ascontiguousarray(value)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))  # type: ignore[arg-type]
    elif isinstance(value, bytes):
        h.update(value)
    else:
        h.update(repr(value).encode())
    return h.digest()


def check_same(communicator: Communicator, items: Mapping[str, Any]) -> None:
    """Raise :class:`DistributedError` on every rank unless every rank passed equal items.

    ``items`` maps a description (``"the training data"``) to a host value (a NumPy
    array, bytes, or anything with a stable ``repr``); rank 0's digests are broadcast
    and the mismatches summed, so all ranks raise together, naming what differs.
    """
    names = list(items)
    if communicator.size == 1 or not names:
        return
    mine = np.frombuffer(b"".join(_digest(items[k]) for k in names), dtype=np.uint8)
    root = np.asarray(communicator.broadcast(mine))
    differs = np.any(root.reshape(len(names), -1) != mine.reshape(len(names), -1), axis=1)
    counts = np.asarray(communicator.allreduce(differs.astype(np.float64)))
    bad = [f"{name} ({int(c)} rank(s) differ from rank 0)" for name, c in zip(names, counts) if c]
    if bad:
        raise DistributedError(
            f"ranks disagree on {', '.join(bad)}; every rank must run the same model, "
            "optimizer, checkpoint and data"
        )


def broadcast_state(communicator: Communicator, arrays: Mapping[str, Array]) -> dict[str, Array]:
    """Rank 0's ``arrays`` (same names, shapes and dtype on every rank) on every rank, in
    one broadcast of one flat buffer; then checked (a digest of the result is compared)."""
    if not arrays:
        return {}
    values = list(arrays.values())
    xp = array_namespace(*values)
    shapes = [tuple(v.shape) for v in values]
    flat = xp.concat([xp.reshape(v, (-1,)) for v in values])
    flat = communicator.broadcast(flat)
    out, offset = {}, 0
    for name, shape in zip(arrays, shapes):
        size = int(np.prod(shape, dtype=np.int64))
        out[name] = xp.reshape(flat[offset : offset + size], shape)
        offset += size
    check_same(communicator, {"the broadcast state": backend_of(flat).to_numpy(flat)})
    return out
