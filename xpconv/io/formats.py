"""Which file format a path names, and whether a file's first bytes agree.

A model file's format follows its name: ``.npz`` (xpconv's checkpoint) and
``.safetensors`` are saved and loaded; ``.onnx`` and ``.pt`` (a PyTorch ``state_dict``)
are written by export only. xpconv never loads a pickle, so it never loads ``.pt``;
an ONNX file is run with onnxruntime. An unknown suffix is refused, naming the
supported ones.
"""

from __future__ import annotations

import os
from pathlib import Path

from xpconv.io.checkpoint import CheckpointError

__all__ = [
    "EXPORT_FORMATS",
    "MODEL_FORMATS",
    "check_first_bytes",
    "export_format",
    "model_format",
    "same_file",
]

PathLike = str | os.PathLike

#: Suffixes that :func:`~xpconv.save_model` writes and :func:`~xpconv.load_model` reads.
MODEL_FORMATS: dict[str, str] = {".npz": "npz", ".safetensors": "safetensors"}
#: Suffixes that ``xpconv export`` writes: every format the library can write.
EXPORT_FORMATS: dict[str, str] = {**MODEL_FORMATS, ".onnx": "onnx", ".pt": "torch"}

#: Why a suffix that names a format xpconv writes but does not read is not loaded.
_NOT_LOADED = {
    ".onnx": "an ONNX file is written by export only; run it with onnxruntime "
    "(onnxruntime.InferenceSession)",
    ".pt": "a PyTorch file is a pickle, and xpconv never loads pickles; load it with "
    "torch.load(path, weights_only=True) into xpconv.to_torch(model)",
}


def _suffix(path: PathLike) -> str:
    return Path(os.fspath(path)).suffix.lower()


def model_format(path: PathLike, *, loading: bool = False) -> str:
    """``"npz"`` or ``"safetensors"``, from ``path``'s suffix (any case).

    Raises:
        ValueError: another suffix (a :class:`~xpconv.io.checkpoint.CheckpointError` when
            ``loading``), naming the supported ones and, for ``.onnx`` and ``.pt``, what
            reads them.
    """
    suffix = _suffix(path)
    if suffix in MODEL_FORMATS:
        return MODEL_FORMATS[suffix]
    verb = "load" if loading else "save"
    why = _NOT_LOADED.get(suffix, "")
    if why and not loading:
        why = "write it with xpconv export (or xpconv.to_onnx / xpconv.to_torch)"
    error = CheckpointError if loading else ValueError
    raise error(
        f"{os.fspath(path)}: cannot {verb} a model as {suffix or 'a name without a suffix'!r}"
        f"{'; ' + why if why else ''}; expected one of {sorted(MODEL_FORMATS)}"
    )


def export_format(path: PathLike) -> str:
    """``"npz"``, ``"safetensors"``, ``"onnx"`` or ``"torch"``, from ``path``'s suffix.

    Raises:
        ValueError: another suffix, naming the supported ones.
    """
    suffix = _suffix(path)
    if suffix not in EXPORT_FORMATS:
        raise ValueError(
            f"{os.fspath(path)}: cannot export to {suffix or 'a name without a suffix'!r}; "
            f"expected one of {sorted(EXPORT_FORMATS)}"
        )
    return EXPORT_FORMATS[suffix]


def _sniff(head: bytes) -> str | None:
    """The format the first bytes of a file show, if any."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "npz"
    if head.startswith(b"\x80"):
        return "pickle"
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1:
        return "safetensors"
    return None


def check_first_bytes(path: PathLike, expected: str) -> None:
    """Refuse a file whose first bytes show another known format than its suffix names
    (``expected``: ``"npz"`` or ``"safetensors"``). Bytes that show no known format are
    left to the format's own reader, which refuses them with its own reason.

    Raises:
        CheckpointError: the first bytes are another format's.
        OSError: the file cannot be read.
    """
    with open(path, "rb") as fh:
        found = _sniff(fh.read(9))
    if found is None or found == expected or found == "pickle" and expected == "npz":
        return  # the npz reader refuses a pickle with its own message
    shown = {"npz": "an .npz (zip) archive", "safetensors": "a safetensors file"}
    raise CheckpointError(
        f"{os.fspath(path)}: the name says {expected} but the file's first bytes are those of "
        f"{shown.get(found, 'a pickle (never loaded by xpconv)')}; rename it to the suffix "
        "of its format, or check that it is the file you meant"
    )


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether ``a`` and ``b`` are the same file (same device and inode, so through links
    and other spellings of the path too); ``False`` when either does not exist."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
