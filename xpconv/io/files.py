"""File helpers shared by checkpoints, datasets, the Trainer and the command line.

Each is written once here:

* :func:`atomic_write`: a file whose content appears under its final name only once it
  is complete (temporary file in the same directory, flush, fsync, rename, fsync of the
  directory), so nothing a user saved is ever half-written;
* :func:`write_json`: a JSON document written that way;
* :func:`fsync_directory`: persist a rename in a directory (best effort);
* :func:`progress_bar`: a tqdm bar when it is wanted and tqdm is installed, else ``None``;
* :func:`file_identity`: the key under which a file's digest is remembered (path, size,
  times, inode: a file replaced or rewritten gets a new key).

Only the standard library is used; tqdm is imported when a bar is asked for. The module
sits at the bottom of the house: it imports nothing of xpconv.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "file_identity", "fsync_directory", "progress_bar", "write_json"]

PathLike = str | os.PathLike[str]


@contextlib.contextmanager
def atomic_write(path: PathLike, *, suffix: str = ".tmp") -> Iterator[IO[bytes]]:
    """A binary file whose content appears at ``path`` only once completely written.

    Yields a file opened for writing at ``.<name>.<random><suffix>`` beside ``path``;
    when the block ends normally the file is flushed, fsynced and renamed onto ``path``
    (:func:`os.replace`), then the directory is fsynced (best effort). On an exception
    (raised by the block or by the write itself) the temporary file is removed and any
    previous file at ``path`` is left untouched. An existing file keeps its permission
    bits; a new one gets ``0o666 & ~umask``.

    Args:
        path: the destination file; its directory must exist.
        suffix: ending of the temporary file's name.

    Raises:
        FileNotFoundError: the parent directory of ``path`` does not exist.
    """
    target = Path(os.fspath(path))
    directory = target.parent
    if not directory.is_dir():
        raise FileNotFoundError(
            f"cannot save {str(target)!r}: directory {str(directory)!r} does not exist"
        )
    mode = _target_mode(target)
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix="." + target.name + ".", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            if hasattr(os, "fchmod"):
                os.fchmod(fh.fileno(), mode)
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        raise
    fsync_directory(directory)


def write_json(path: PathLike, data: Any, *, indent: int | None = 2) -> Path:
    """Write ``data`` as a JSON document (strict: no NaN or infinity, then a newline)
    at ``path`` with :func:`atomic_write`, creating missing parent directories.

    Raises:
        ValueError: ``data`` holds a non-finite float.
        TypeError: ``data`` is not JSON-serialisable.
    """
    target = Path(os.fspath(path))
    text = json.dumps(data, indent=indent, allow_nan=False) + "\n"  # fails before any file
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target) as fh:
        fh.write(text.encode("utf-8"))
    return target


def fsync_directory(directory: PathLike) -> None:
    """Persist the renames done in ``directory`` (best effort; a no-op where unsupported)."""
    if os.name == "nt":
        return
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        dir_fd = os.open(directory, flags)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def progress_bar(enabled: bool, total: int | None, desc: str, *, unit: str = "img") -> Any:
    """A tqdm progress bar, or ``None`` when ``enabled`` is false or tqdm is missing.

    Args:
        enabled: whether a bar is wanted at all.
        total: the count the bar runs up to (``None``: unknown).
        desc: the text before the bar.
        unit: ``"img"`` (images, the bar stays on screen when done) or ``"B"`` (bytes,
            shown with binary prefixes: KiB, MiB).
    """
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    if unit == "B":
        return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc)
    return tqdm(total=total, desc=desc, unit=unit, leave=True, dynamic_ncols=True)


def file_identity(path: PathLike) -> tuple[str, int, int, int, int]:
    """The identity of the file at ``path`` as it is now: (resolved path, size, mtime in
    ns, ctime in ns, inode). A file that is rewritten or replaced gets a new identity, so
    a digest remembered under it is never used for other content.

    Raises:
        OSError: the file cannot be examined.
    """
    target = Path(os.fspath(path))
    st = target.stat()
    return (str(target.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _target_mode(target: Path) -> int:
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        return 0o666 & ~_current_umask()


def _current_umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
