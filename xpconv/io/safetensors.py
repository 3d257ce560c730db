"""Arrays plus JSON metadata as a safetensors file, with the guarantees of ``.npz``.

A file written here is an ordinary safetensors file (written by the ``safetensors``
library): an 8-byte little-endian header length, a JSON header naming every tensor's
dtype, shape and byte range, then the raw little-endian data. The caller's metadata
is stored as one JSON string under the header's ``__metadata__`` key
:data:`METADATA_KEY`, as an object that starts with the checkpoint format marker
(``{"format": "xpconv-checkpoint", "version": 1, ...}``).

Writing is atomic (temporary file, fsync, rename; :func:`xpconv.io.checkpoint.atomic_write`).
Reading trusts nothing: the header length is read and bounded first, the header is
parsed and every tensor checked (allowed dtype, shape, byte ranges that tile the data
exactly, total size within ``max_bytes``) against the file's size before the data is
read, and only then is the file handed to the library. Nothing is ever executed; a
truncated, crafted or oversized file raises :class:`~xpconv.io.checkpoint.CheckpointError`.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from xpconv.io.checkpoint import (
    FORMAT_NAME,
    FORMAT_VERSION,
    CheckpointError,
    CheckpointNotFoundError,
    atomic_write,
)

__all__ = ["MAX_HEADER_BYTES", "METADATA_KEY", "load_safetensors", "save_safetensors"]

#: Key of the xpconv metadata (a JSON string) inside the header's ``__metadata__``.
METADATA_KEY = "xpconv"
#: Longest header accepted (the safetensors library itself allows 100 MB).
MAX_HEADER_BYTES = 16 * 2**20
_DEFAULT_MAX_BYTES = 2**31

#: safetensors dtype names accepted, and the NumPy dtype each holds (little-endian).
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("bool"),
    "U8": np.dtype("<u1"),
    "I8": np.dtype("<i1"),
    "I16": np.dtype("<i2"),
    "U16": np.dtype("<u2"),
    "I32": np.dtype("<i4"),
    "U32": np.dtype("<u4"),
    "I64": np.dtype("<i8"),
    "U64": np.dtype("<u8"),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
}


def save_safetensors(
    path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray], metadata: Mapping[str, Any]
) -> Path:
    """Atomically write ``arrays`` (name -> host NumPy array) and JSON ``metadata``.

    Raises:
        TypeError: a name is not a str, a value is not a NumPy array of an allowed
            dtype (see :data:`DTYPES`), or the metadata is not JSON-serialisable.
        ValueError: a name is empty or reserved (``__metadata__``).
        FileNotFoundError: the directory of ``path`` does not exist.
    """
    from safetensors.numpy import save

    tensors: dict[str, np.ndarray] = {}
    allowed = {d.name for d in DTYPES.values()}
    for name, value in arrays.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ValueError(
                f"arrays: expected non-empty str names (not '__metadata__'), got {name!r}"
            )
        if not isinstance(value, np.ndarray) or value.dtype.name not in allowed:
            raise TypeError(
                f"arrays[{name!r}]: expected a NumPy array of one of {sorted(allowed)}, got "
                f"{type(value).__name__} of dtype {getattr(value, 'dtype', None)}"
            )
        tensors[name] = np.ascontiguousarray(value.astype(value.dtype.newbyteorder("<")))
    document = {"format": FORMAT_NAME, "version": FORMAT_VERSION}
    for key in ("format", "version"):
        if key in metadata and metadata[key] != document[key]:
            raise ValueError(f"metadata[{key!r}]: reserved, expected {document[key]!r}")
    document.update({k: v for k, v in metadata.items()})
    try:
        text = json.dumps(document, ensure_ascii=False, allow_nan=False)
    except ValueError as exc:
        raise TypeError(f"metadata: expected finite JSON-serialisable values ({exc})") from exc
    payload = save(tensors, metadata={METADATA_KEY: text})
    target = Path(os.fspath(path))
    with atomic_write(target) as fh:
        fh.write(payload)
    return target


def load_safetensors(
    path: str | os.PathLike[str], *, max_bytes: int | None = _DEFAULT_MAX_BYTES
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load a file written by :func:`save_safetensors`: ``(arrays, metadata)``.

    The header is validated completely (see the module docstring) before any tensor
    data is read; ``max_bytes`` bounds the tensors' declared total size (``None``: no
    bound, the other checks still apply).

    Raises:
        CheckpointNotFoundError: ``path`` does not exist.
        CheckpointError: the file is not a complete, consistent xpconv safetensors file.
    """
    target = Path(os.fspath(path))
    where = f"cannot load safetensors file {str(target)!r}"
    try:
        fh = open(target, "rb")
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{where}: it does not exist - check the path") from None
    except IsADirectoryError:
        raise CheckpointError(f"{where}: it is a directory, expected a file") from None
    with fh:
        info = os.fstat(fh.fileno())
        if stat.S_ISDIR(info.st_mode):
            raise CheckpointError(f"{where}: it is a directory, expected a file")
        size = info.st_size
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise CheckpointError(
                f"{where}: expected an 8-byte header length, the file has {size} bytes; it is "
                "empty or truncated"
            )
        header_len = int.from_bytes(prefix, "little")
        if header_len > MAX_HEADER_BYTES or header_len < 2:
            raise CheckpointError(
                f"{where}: its header declares {header_len} bytes, expected 2 to "
                f"{MAX_HEADER_BYTES}; not a safetensors file, or a crafted one"
            )
        if 8 + header_len > size:
            raise CheckpointError(
                f"{where}: its header declares {header_len} bytes but only {size - 8} follow; "
                "the file is truncated"
            )
        header_bytes = fh.read(header_len)
        entries, metadata = _parse_header(where, header_bytes)
        data_size = size - 8 - header_len
        total = _check_layout(where, entries, data_size)
        if max_bytes is not None and total > max_bytes:
            raise CheckpointError(
                f"{where}: its tensors declare {total} bytes, more than max_bytes={max_bytes}; "
                "pass a larger max_bytes (or None) if you trust this file"
            )
        data = fh.read(data_size)
    if len(data) != data_size:
        raise CheckpointError(f"{where}: the file changed while it was being read")
    arrays = _deserialize(where, prefix + header_bytes + data)
    for name, (dtype, shape, _) in entries.items():
        got = arrays.get(name)
        if got is None or got.dtype != dtype or tuple(got.shape) != shape:
            raise CheckpointError(f"{where}: tensor {name!r} does not match its header")
    return {name: arrays[name] for name in entries}, metadata


def _parse_header(where: str, raw: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise ValueError(f"duplicate keys in {sorted(keys)[:8]}")
        return dict(pairs)

    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=unique)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{where}: its header is not valid UTF-8 JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointError(
            f"{where}: expected a JSON object header, got {type(header).__name__}"
        )
    extra = header.pop("__metadata__", None)
    if not isinstance(extra, dict) or not isinstance(extra.get(METADATA_KEY), str):
        raise CheckpointError(
            f"{where}: not an xpconv file - expected __metadata__[{METADATA_KEY!r}] holding the "
            "architecture; save models with xpconv.save_model(model, 'm.safetensors')"
        )
    try:
        metadata = json.loads(extra[METADATA_KEY])
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{where}: its xpconv metadata is not valid JSON ({exc})") from exc
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise CheckpointError(
            f"{where}: not an xpconv file - expected metadata with format {FORMAT_NAME!r}"
        )
    version = metadata.get("version")
    if type(version) is not int or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: expected format version 1 to {FORMAT_VERSION}, found {version!r}"
        )
    entries: dict[str, Any] = {}
    for name, spec in header.items():
        if (
            not isinstance(spec, dict)
            or set(spec) != {"dtype", "shape", "data_offsets"}
            or spec["dtype"] not in DTYPES
            or not _ints(spec["shape"])
            or not _ints(spec["data_offsets"])
            or len(spec["data_offsets"]) != 2
        ):
            raise CheckpointError(
                f"{where}: tensor {name!r} has an invalid header entry {str(spec)[:200]}; "
                f"expected dtype one of {sorted(DTYPES)}, a shape and two data offsets"
            )
        dtype = DTYPES[spec["dtype"]]
        shape = tuple(spec["shape"])
        begin, end = spec["data_offsets"]
        nbytes = math.prod(shape) * dtype.itemsize
        if end - begin != nbytes:
            raise CheckpointError(
                f"{where}: tensor {name!r} declares shape {shape} of {spec['dtype']} "
                f"({nbytes} bytes) but the byte range [{begin}, {end}) holds {end - begin}"
            )
        entries[name] = (dtype, shape, (begin, end))
    return entries, metadata


def _ints(value: Any) -> bool:
    return isinstance(value, list) and all(type(v) is int and 0 <= v < 2**63 for v in value)


def _check_layout(where: str, entries: dict[str, Any], data_size: int) -> int:
    """The byte ranges must tile ``[0, data_size)`` exactly; returns their total."""
    position = 0
    for name, (_, _, (begin, end)) in sorted(entries.items(), key=lambda kv: kv[1][2]):
        if begin != position:
            raise CheckpointError(
                f"{where}: tensor {name!r} starts at byte {begin}, expected {position} (ranges "
                "must follow each other without gaps or overlaps); the file is corrupt or crafted"
            )
        position = end
    if position != data_size:
        detail = "the file is truncated" if position > data_size else "it has trailing bytes"
        raise CheckpointError(
            f"{where}: its tensors declare {position} bytes of data, the file holds {data_size}; "
            f"{detail}"
        )
    return position


def _deserialize(where: str, raw: bytes) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        return load(raw)
    except (SafetensorError, ValueError, TypeError, OverflowError) as exc:
        raise CheckpointError(f"{where}: the safetensors library refused it ({exc})") from exc
