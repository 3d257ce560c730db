"""Safe, atomic storage of checkpoints: NumPy arrays plus JSON metadata.

This module is the file layer underneath model-level saving and loading. A
checkpoint is a standard NumPy ``.npz`` archive (a zip file of ``.npy``
members) that holds

* one member per array, stored under the array's name, and
* one reserved member, :data:`METADATA_KEY`, holding the metadata as UTF-8
  JSON bytes in a ``uint8`` array.  The JSON object always starts with the
  format marker ``{"format": "xpconv-checkpoint", "version": 1, ...}``
  followed by the caller's metadata keys.

Writing is atomic: the archive is written to a temporary file in the target
directory, flushed and fsynced, and then renamed over the final name, so a
reader (or a process that crashes mid-save) never sees a half-written file
under the final name (:func:`xpconv.io.files.atomic_write`, also importable from
here as ``atomic_write``).

Reading never unpickles anything (``allow_pickle=False`` always) and checks
every ``.npy`` header *before* allocating memory, so a crafted or corrupt
file is refused with a :class:`CheckpointError` instead of executing code or
allocating an unbounded amount of memory.

Only the standard library and NumPy are used here.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.lib.format as npy_format

from xpconv.io.files import atomic_write

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "METADATA_KEY",
    "CheckpointError",
    "CheckpointNotFoundError",
    "atomic_write",
    "is_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]

#: Value of the ``"format"`` key in every checkpoint's metadata.
FORMAT_NAME = "xpconv-checkpoint"
#: Checkpoint format version written by this module (and the newest it reads).
FORMAT_VERSION = 1
#: Reserved archive entry that holds the JSON metadata.
METADATA_KEY = "__xpconv_meta__"

_DEFAULT_MAX_BYTES = 2**31
_ALLOWED_DTYPE_KINDS = "biufc"  # bool, signed/unsigned integer, floating, complex
_NPY_SUFFIX = ".npy"
_PICKLE_PREFIX = b"\x80"
_ZIP_PREFIXES = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_PREFIX = b"\x93NUMPY"
# Deflate cannot expand data by more than about 1032:1; a member claiming a
# larger ratio is lying about its size.
_MAX_DEFLATE_RATIO = 1100
# A whole archive may declare at most this many times its own size in array bytes (or
# _SMALL_ARCHIVE_BYTES, whichever is more) unless max_bytes is None: trained weights
# barely compress, so only a file built to expand (runs of zeros) goes past it, and a
# file of a few kilobytes then cannot cost more than a few tens of megabytes.
_MAX_ARCHIVE_RATIO = 256
_SMALL_ARCHIVE_BYTES = 8 * 2**20
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)

# Everything the standard zip / npy readers may raise on malformed input.
_PARSE_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    struct.error,
    EOFError,
    OSError,
    ValueError,
    TypeError,
    KeyError,
    NotImplementedError,
    RuntimeError,
    OverflowError,
    UnicodeDecodeError,
)


class CheckpointError(ValueError):
    """A file could not be loaded as an xpconv checkpoint.

    The message names the file, what was expected, what was found and,
    where useful, what to do about it.
    """


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist.

    Subclasses both :class:`CheckpointError` and :class:`FileNotFoundError`,
    so either ``except`` clause catches it.
    """

    def __str__(self) -> str:  # the message, not OSError's "[Errno None] None: ..."
        return str(self.args[0]) if self.args else "checkpoint not found"


# --------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------


def save_checkpoint(
    path: str | os.PathLike[str],
    arrays: Mapping[str, np.ndarray],
    metadata: Mapping[str, Any],
    *,
    compress: bool = False,
) -> Path:
    """Atomically write ``arrays`` and ``metadata`` as a checkpoint at ``path``.

    The file is written to exactly ``path``; no ``.npz`` suffix is appended
    (``"model.ckpt"`` stays ``"model.ckpt"``).  The parent directory must
    exist.

    The archive is first written to a temporary file ``.<name>.<random>.tmp``
    in the same directory, flushed and fsynced, then renamed onto ``path``
    with :func:`os.replace`, and finally the directory is fsynced (best
    effort).  ``path`` therefore always holds either the previous complete
    checkpoint or the new complete one.  On an exception the temporary file
    is removed; if the process is killed outright (e.g. ``SIGKILL`` or power
    loss) the temporary file may remain and can be deleted safely.

    Parameters
    ----------
    path:
        Destination file.  An existing file there is replaced atomically and
        keeps its permission bits; a new file gets the usual ``0o666 & ~umask``.
    arrays:
        Mapping from name to NumPy array.  Names must be non-empty ``str`` that
        do not start with ``"__"`` (reserved) and contain no NUL character.
        Arrays must have a boolean, integer, floating or complex dtype; NumPy
        scalars are accepted and stored as 0-d arrays, ndarray subclasses are
        stored as plain arrays.
    metadata:
        JSON-serialisable mapping with ``str`` keys (nested dicts, lists,
        tuples, str, int, float, bool, None).  Tuples come back as lists and
        non-finite floats are stored with Python's ``NaN``/``Infinity`` JSON
        extension.  The keys ``"format"`` and ``"version"`` are reserved for
        the format marker; they may only be passed with the values this
        module writes (so metadata returned by :func:`load_checkpoint` can be
        saved again unchanged).
    compress:
        Store members deflate-compressed instead of uncompressed.

    Returns
    -------
    pathlib.Path
        The path written (``Path(path)``).

    Raises
    ------
    TypeError
        A name is not a ``str``, a value is not a numeric/bool NumPy array, or
        metadata is not JSON-serialisable; the message names the offending key.
    ValueError
        A name is empty, reserved, or contains NUL; metadata uses a reserved
        key with a wrong value or contains a circular reference.
    OSError
        Writing failed.  The temporary file is removed and any previous file
        at ``path`` is left untouched.
    """
    target = Path(os.fspath(path))
    entries = _validate_arrays(arrays)
    meta_bytes = _encode_metadata(metadata)

    compression = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with atomic_write(target) as fh:
        with zipfile.ZipFile(fh, mode="w", compression=compression, allowZip64=True) as zf:
            _write_entry(zf, METADATA_KEY, np.frombuffer(meta_bytes, dtype=np.uint8))
            for name, array in entries:
                _write_entry(zf, name, array)
    return target


def _validate_arrays(arrays: Mapping[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    if not isinstance(arrays, Mapping):
        raise TypeError(f"arrays must be a mapping of name -> numpy array, got {type(arrays)!r}")
    entries: list[tuple[str, np.ndarray]] = []
    for name, value in arrays.items():
        if not isinstance(name, str):
            raise TypeError(
                f"array name {name!r} has type {type(name).__name__}; names must be str"
            )
        if not name:
            raise ValueError("array name '' is empty; names must be non-empty str")
        if name.startswith("__"):
            raise ValueError(
                f"array name {name!r} starts with '__', which is reserved for checkpoint "
                "bookkeeping; rename the array"
            )
        if "\x00" in name:
            raise ValueError(f"array name {name!r} contains a NUL character")
        if isinstance(value, np.generic):
            value = np.asarray(value)
        if not isinstance(value, np.ndarray):
            raise TypeError(
                f"array {name!r} is a {type(value).__module__}.{type(value).__qualname__}, not a "
                "numpy.ndarray; convert it to a host NumPy array first (e.g. numpy.asarray)"
            )
        if value.dtype.kind not in _ALLOWED_DTYPE_KINDS or value.dtype.fields is not None:
            raise TypeError(
                f"array {name!r} has dtype {value.dtype}; checkpoints store only bool, integer, "
                "floating and complex arrays (object, string, void and datetime dtypes are refused)"
            )
        entries.append((name, np.asarray(value)))
    return entries


def _encode_metadata(metadata: Mapping[str, Any]) -> bytes:
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping with str keys, got {type(metadata)!r}")
    document: dict[str, Any] = {"format": FORMAT_NAME, "version": FORMAT_VERSION}
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise TypeError(
                f"metadata key {key!r} has type {type(key).__name__}; JSON object keys must be str"
            )
        if key == "format" and value != FORMAT_NAME:
            raise ValueError(
                f"metadata key 'format' is reserved for the checkpoint marker "
                f"({FORMAT_NAME!r}); got {value!r}"
            )
        if key == "version" and not (
            type(value) is int and value == FORMAT_VERSION  # bool is rejected too
        ):
            raise ValueError(
                f"metadata key 'version' is reserved for the checkpoint format version "
                f"({FORMAT_VERSION}); got {value!r}"
            )
        document[key] = _to_json(value, f"metadata[{key!r}]", set())
    text = json.dumps(document, ensure_ascii=False, allow_nan=True)
    return text.encode("utf-8")


def _to_json(value: Any, where: str, active: set[int]) -> Any:
    """Return a plain-JSON copy of ``value``; raise naming ``where`` if impossible."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (Mapping, list, tuple)):
        if id(value) in active:
            raise ValueError(f"metadata value at {where} contains a circular reference")
        active.add(id(value))
        try:
            if isinstance(value, Mapping):
                out: dict[str, Any] = {}
                for key, item in value.items():
                    if not isinstance(key, str):
                        raise TypeError(
                            f"metadata key {key!r} at {where} has type {type(key).__name__}; "
                            "JSON object keys must be str"
                        )
                    out[key] = _to_json(item, f"{where}[{key!r}]", active)
                return out
            return [_to_json(item, f"{where}[{i}]", active) for i, item in enumerate(value)]
        finally:
            active.discard(id(value))
    hint = " (convert NumPy scalars with .item())" if isinstance(value, np.generic) else ""
    raise TypeError(
        f"metadata value at {where} has type {type(value).__module__}.{type(value).__qualname__}, "
        f"which is not JSON-serialisable; use dict, list, str, int, float, bool or None{hint}"
    )


def _write_entry(zf: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    """Write one ``.npy`` member named ``name + '.npy'`` into the open archive."""
    info = zipfile.ZipInfo(name + _NPY_SUFFIX, date_time=_ZIP_EPOCH)
    info.compress_type = zf.compression
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    # Upper bound of the member size; zipfile uses it to decide on zip64 records.
    info.file_size = array.nbytes + 4096
    with zf.open(info, mode="w") as member:
        npy_format.write_array(member, array, allow_pickle=False)


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


class _Entry:
    __slots__ = ("key", "info", "shape", "dtype", "nbytes")

    def __init__(
        self, key: str, info: zipfile.ZipInfo, shape: tuple[int, ...], dtype: np.dtype, nbytes: int
    ) -> None:
        self.key = key
        self.info = info
        self.shape = shape
        self.dtype = dtype
        self.nbytes = nbytes


def load_checkpoint(
    path: str | os.PathLike[str], *, max_bytes: int | None = _DEFAULT_MAX_BYTES
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Nothing is ever unpickled.  Before any array is read, every member's
    ``.npy`` header is parsed and checked: its dtype must be bool, integer,
    floating or complex, the data it declares must exactly match the bytes
    the member holds, and the declared sizes together must not exceed
    ``max_bytes``.  A crafted or corrupt file therefore cannot make this
    function execute code or allocate unbounded memory.

    Parameters
    ----------
    path:
        The checkpoint file (any name; no suffix is assumed).
    max_bytes:
        Refuse checkpoints whose arrays (metadata included) declare more than
        this many bytes in total.  ``None`` disables the total limit; the
        per-entry consistency checks still apply.

    Returns
    -------
    (arrays, metadata)
        ``arrays`` is a plain ``dict`` of fully-read NumPy arrays (in the
        order they were saved, not tied to any open file) with the dtype and
        shape they were saved with.  ``metadata`` is the stored JSON object,
        including the marker keys ``"format"`` and ``"version"``.

    Raises
    ------
    CheckpointNotFoundError
        ``path`` does not exist (also a :class:`FileNotFoundError`).
    CheckpointError
        The file is not a valid xpconv checkpoint: a pickle, not a zip,
        truncated or corrupt (bad CRC), missing or wrong metadata, an
        unsupported format version, a refused dtype (e.g. an object array),
        a header that declares more data than present, or more than
        ``max_bytes`` in total.
    """
    if max_bytes is not None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
            raise TypeError(f"max_bytes must be an int or None, got {max_bytes!r}")
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
    target = Path(os.fspath(path))
    with _open_archive(target) as (zf, archive_size):
        entries, metadata = _inspect(zf, target, archive_size, max_bytes)
        arrays = {entry.key: _read_entry(zf, target, entry) for entry in entries}
    return arrays, metadata


def is_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Return whether ``path`` looks like a loadable xpconv checkpoint.

    Checks the archive structure, metadata, format marker and every array
    header, without reading the array data (so payload corruption that only
    a CRC check would reveal is not detected) and without a total size
    limit.  Returns ``False`` instead of raising for missing, unreadable or
    invalid files.
    """
    try:
        target = Path(os.fspath(path))
        with _open_archive(target) as (zf, archive_size):
            _inspect(zf, target, archive_size, None)
    except (CheckpointError, OSError):
        return False
    return True


@contextlib.contextmanager
def _open_archive(path: Path) -> Iterator[tuple[zipfile.ZipFile, int]]:
    """Open ``path`` as a zip archive after sniffing its first bytes.

    Yields the archive and the file's size in bytes.
    """
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        err = CheckpointNotFoundError(
            f"checkpoint {str(path)!r} does not exist; expected an .npz file written by "
            "xpconv.io.checkpoint.save_checkpoint - check the path"
        )
        err.filename = str(path)
        raise err from None
    except IsADirectoryError:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is a directory; expected an .npz checkpoint file"
        ) from None
    with fh:
        info = os.fstat(fh.fileno())
        if stat.S_ISDIR(info.st_mode):
            raise CheckpointError(
                f"checkpoint {str(path)!r} is a directory; expected an .npz checkpoint file"
            )
        _check_prefix(path, fh.read(8))
        fh.seek(0)
        try:
            zf = zipfile.ZipFile(fh, mode="r")
        except _PARSE_ERRORS as exc:
            raise CheckpointError(
                f"cannot load checkpoint {str(path)!r}: expected a complete zip (.npz) "
                f"archive, but it could not be read as one ({exc}); the file is probably "
                "truncated or corrupted - re-save it or restore it from a backup"
            ) from exc
        with zf:
            yield zf, info.st_size


def _check_prefix(path: Path, head: bytes) -> None:
    if not head:
        raise CheckpointError(
            f"cannot load checkpoint {str(path)!r}: the file is empty; expected an .npz archive "
            "(a previous save may have been interrupted before this file was created)"
        )
    if head.startswith(_PICKLE_PREFIX):
        raise CheckpointError(
            f"cannot load checkpoint {str(path)!r}: it starts with the pickle protocol marker "
            "0x80; refusing to load a pickle file; xpconv checkpoints are .npz files and are "
            "never unpickled"
        )
    if head.startswith(_NPY_PREFIX):
        raise CheckpointError(
            f"cannot load checkpoint {str(path)!r}: it is a single-array .npy file, not an .npz "
            "checkpoint archive; save checkpoints with xpconv.io.checkpoint.save_checkpoint"
        )
    if not head.startswith(_ZIP_PREFIXES):
        raise CheckpointError(
            f"cannot load checkpoint {str(path)!r}: expected an .npz (zip) archive starting with "
            f"b'PK\\x03\\x04', found {head[:8]!r}; this is not an xpconv checkpoint"
        )


def _not_xpconv(path: Path, found: str) -> CheckpointError:
    return CheckpointError(
        f"cannot load checkpoint {str(path)!r}: not an xpconv checkpoint - expected a "
        f"{METADATA_KEY!r} entry with format {FORMAT_NAME!r}, but {found}; save checkpoints "
        "with xpconv.io.checkpoint.save_checkpoint"
    )


def _inspect(
    zf: zipfile.ZipFile, path: Path, archive_size: int, max_bytes: int | None
) -> tuple[list[_Entry], dict[str, Any]]:
    """Validate the archive layout, metadata and all array headers; read no array data."""
    infos = zf.infolist()
    seen: set[str] = set()
    meta_info: zipfile.ZipInfo | None = None
    array_infos: list[tuple[str, zipfile.ZipInfo]] = []
    for info in infos:
        name = info.filename
        if name in seen:
            raise CheckpointError(
                f"cannot load checkpoint {str(path)!r}: the archive contains the entry {name!r} "
                "more than once; the file is corrupt or was crafted"
            )
        seen.add(name)
        if not name.endswith(_NPY_SUFFIX):
            raise CheckpointError(
                f"cannot load checkpoint {str(path)!r}: expected only '.npy' members in the "
                f"archive, found {name!r}; not an xpconv checkpoint"
            )
        key = name[: -len(_NPY_SUFFIX)]
        if key == METADATA_KEY:
            meta_info = info
        elif key.startswith("__"):
            raise CheckpointError(
                f"cannot load checkpoint {str(path)!r}: unexpected reserved entry {key!r}; it was "
                "written by an incompatible program"
            )
        else:
            array_infos.append((key, info))
    if meta_info is None:
        raise _not_xpconv(
            path,
            f"the archive has no such entry (found entries {[k for k, _ in array_infos][:8]!r}; "
            "a plain numpy.savez file?)",
        )

    total = 0
    meta_entry = _inspect_entry(zf, path, METADATA_KEY, meta_info, archive_size)
    if meta_entry.dtype != np.dtype(np.uint8) or len(meta_entry.shape) != 1:
        raise _not_xpconv(
            path,
            f"that entry has dtype {meta_entry.dtype} and shape {meta_entry.shape} "
            "instead of 1-d uint8 JSON bytes",
        )
    total += meta_entry.nbytes
    _check_total(path, total, max_bytes, METADATA_KEY, archive_size)
    metadata = _parse_metadata(path, _read_entry(zf, path, meta_entry).tobytes())

    entries: list[_Entry] = []
    for key, info in array_infos:
        entry = _inspect_entry(zf, path, key, info, archive_size)
        total += entry.nbytes
        _check_total(path, total, max_bytes, key, archive_size)
        entries.append(entry)
    return entries, metadata


def _check_total(
    path: Path, total: int, max_bytes: int | None, key: str, archive_size: int
) -> None:
    if max_bytes is None:
        return
    if total > max_bytes:
        raise CheckpointError(
            f"cannot load checkpoint {str(path)!r}: its arrays declare at least {total} bytes "
            f"(reached at entry {key!r}), more than max_bytes={max_bytes}; pass a larger "
            "max_bytes (or None) to load_checkpoint if you trust this file"
        )
    expands = max(_MAX_ARCHIVE_RATIO * archive_size, _SMALL_ARCHIVE_BYTES)
    if total > expands:
        raise CheckpointError(
            f"cannot load checkpoint {str(path)!r}: its arrays declare at least {total} bytes "
            f"(reached at entry {key!r}) from a file of {archive_size} bytes, more than "
            f"{_MAX_ARCHIVE_RATIO} times its size; trained weights do not compress like that. "
            "Pass max_bytes=None to load_checkpoint if you trust this file"
        )


def _inspect_entry(
    zf: zipfile.ZipFile, path: Path, key: str, info: zipfile.ZipInfo, archive_size: int
) -> _Entry:
    """One member checked without reading its data: the zip entry, then its ``.npy``
    header, then the array it declares against the bytes it holds."""
    where = f"cannot load checkpoint {str(path)!r}: entry {key!r}"
    _check_member(where, info, archive_size)
    shape, fortran_order, dtype, header_size = _npy_header(zf, info, where)
    return _declared_array(where, key, info, shape, fortran_order, dtype, header_size)


def _check_member(where: str, info: zipfile.ZipInfo, archive_size: int) -> None:
    """The zip entry: not encrypted, stored or deflated with believable sizes, inside
    the file."""
    if info.flag_bits & 0x1:
        raise CheckpointError(f"{where} is encrypted; xpconv checkpoints are never encrypted")
    if info.compress_type == zipfile.ZIP_STORED:
        if info.compress_size != info.file_size:
            raise CheckpointError(
                f"{where} is stored uncompressed but declares {info.file_size} bytes of data "
                f"in {info.compress_size} stored bytes; the file is corrupt or was crafted"
            )
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        if info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 1024:
            raise CheckpointError(
                f"{where} declares {info.file_size} uncompressed bytes from only "
                f"{info.compress_size} compressed bytes, which deflate cannot produce; the file "
                "is corrupt or was crafted"
            )
    else:
        raise CheckpointError(
            f"{where} uses zip compression method {info.compress_type}; expected stored (0) or "
            "deflated (8)"
        )
    if info.header_offset + info.compress_size > archive_size:
        raise CheckpointError(
            f"{where} extends past the end of the file ({archive_size} bytes); the file is "
            "truncated or corrupt - re-save it or restore it from a backup"
        )


def _npy_header(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str
) -> tuple[Any, Any, Any, int]:
    """The member's ``.npy`` header (version 1.0 or 2.0): shape, order, dtype, size."""
    try:
        with zf.open(info) as member:
            version = npy_format.read_magic(member)
            if version == (1, 0):
                shape, fortran_order, dtype = npy_format.read_array_header_1_0(member)
            elif version == (2, 0):
                shape, fortran_order, dtype = npy_format.read_array_header_2_0(member)
            else:
                raise CheckpointError(
                    f"{where} uses .npy format version {version}; expected 1.0 or 2.0"
                )
            header_size = member.tell()
    except CheckpointError:
        raise
    except _PARSE_ERRORS as exc:
        raise CheckpointError(
            f"{where} does not hold a valid .npy array header ({exc}); the file is corrupt or "
            "was crafted"
        ) from exc
    return shape, fortran_order, dtype, header_size


def _declared_array(
    where: str,
    key: str,
    info: zipfile.ZipInfo,
    shape: Any,
    fortran_order: Any,
    dtype: Any,
    header_size: int,
) -> _Entry:
    """The declared array: a plain dtype (never objects), a valid shape, and exactly as
    many bytes as the member holds."""
    dtype = np.dtype(dtype)
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in _ALLOWED_DTYPE_KINDS:
        what = "an object array" if dtype.hasobject else f"an array of dtype {dtype}"
        raise CheckpointError(
            f"{where} holds {what}; expected a bool, integer, floating or complex array. Object "
            "arrays would require unpickling, which xpconv never does; refusing to load"
        )
    if not isinstance(fortran_order, bool) or any(
        isinstance(dim, bool) or not isinstance(dim, int) or dim < 0 for dim in shape
    ):
        raise CheckpointError(
            f"{where} declares an invalid shape {shape!r}; the file is corrupt or was crafted"
        )
    nbytes = math.prod(shape) * dtype.itemsize
    payload = info.file_size - header_size
    if nbytes != payload:
        detail = (
            "refusing to allocate memory for data that is not there"
            if nbytes > payload
            else "the entry has trailing bytes"
        )
        raise CheckpointError(
            f"{where} declares shape {tuple(shape)} of {dtype} ({nbytes} bytes), but holds "
            f"{payload} bytes of array data; {detail} - the file is corrupt or was crafted"
        )
    return _Entry(key, info, tuple(shape), dtype, nbytes)


def _parse_metadata(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        metadata = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _not_xpconv(path, f"its content is not valid UTF-8 JSON ({exc})") from exc
    if not isinstance(metadata, dict):
        raise _not_xpconv(path, f"it holds a JSON {type(metadata).__name__}, not an object")
    fmt = metadata.get("format")
    if fmt != FORMAT_NAME:
        raise _not_xpconv(path, f"found format marker {fmt!r}")
    version = metadata.get("version")
    if type(version) is not int or version < 1:  # bool is rejected too
        raise CheckpointError(
            f"cannot load checkpoint {str(path)!r}: expected an integer format version >= 1, "
            f"found {version!r}; the file is corrupt or was not written by xpconv"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"cannot load checkpoint {str(path)!r}: it uses checkpoint format version {version}, "
            f"but this xpconv reads only version {FORMAT_VERSION}; upgrade xpconv to load it"
        )
    return metadata


def _read_entry(zf: zipfile.ZipFile, path: Path, entry: _Entry) -> np.ndarray:
    """Read one already-validated member completely, verifying its CRC."""
    try:
        with zf.open(entry.info) as member:
            array = npy_format.read_array(member, allow_pickle=False)
            trailing = member.read(1)
    except _PARSE_ERRORS as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(
            f"cannot load checkpoint {str(path)!r}: entry {entry.key!r} could not be read "
            f"({type(exc).__name__}: {exc}); expected {entry.nbytes} bytes of {entry.dtype} "
            "data - the file is truncated or corrupted (e.g. bad CRC); re-save it or restore "
            "it from a backup"
        ) from exc
    if trailing or array.shape != entry.shape or array.dtype != entry.dtype:
        raise CheckpointError(
            f"cannot load checkpoint {str(path)!r}: entry {entry.key!r} changed while it was "
            "being read; expected the header checked before"
        )
    return array
