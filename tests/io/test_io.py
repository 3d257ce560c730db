"""The file helpers every writer shares: atomic writes, JSON, directory fsync, progress
bars and file identities (xpconv.io.files)."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from xpconv.io import checkpoint
from xpconv.io import files as _io


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_atomic_write_replaces_only_when_complete(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    with _io.atomic_write(path) as fh:
        fh.write(b"first")
        assert not path.exists()  # nothing under the final name until the block ends
        assert len(_names(tmp_path)) == 1 and _names(tmp_path)[0].startswith(".f.bin.")
    assert path.read_bytes() == b"first"

    with pytest.raises(RuntimeError, match="stop"):
        with _io.atomic_write(path) as fh:
            fh.write(b"second, half")
            raise RuntimeError("stop")
    assert path.read_bytes() == b"first"
    assert _names(tmp_path) == ["f.bin"]  # no temporary left


def test_atomic_write_failing_fsync_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def broken(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="disk full"):
        with _io.atomic_write(path, suffix=".part") as fh:
            fh.write(b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old" and _names(tmp_path) == ["f.bin"]


def test_atomic_write_modes_and_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"")
    os.chmod(path, 0o640)
    with _io.atomic_write(path) as fh:
        fh.write(b"x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # an existing file keeps its bits
    fresh = tmp_path / "g.bin"
    with _io.atomic_write(fresh) as fh:
        fh.write(b"y")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask
    with pytest.raises(FileNotFoundError, match="does not exist"):
        with _io.atomic_write(tmp_path / "absent" / "h.bin"):
            pass
    assert checkpoint.atomic_write is _io.atomic_write  # the old name still imports


def test_write_json_is_strict_and_creates_the_directory(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "m.json"
    _io.write_json(path, {"x": [1, 2.5], "y": None})
    text = path.read_text(encoding="utf-8")
    assert text == json.dumps({"x": [1, 2.5], "y": None}, indent=2) + "\n"
    with pytest.raises(ValueError):
        _io.write_json(path, {"x": float("nan")})
    assert json.loads(path.read_text(encoding="utf-8")) == {"x": [1, 2.5], "y": None}
    assert _names(path.parent) == ["m.json"]


def test_fsync_directory_is_best_effort(tmp_path: Path) -> None:
    _io.fsync_directory(tmp_path)
    _io.fsync_directory(tmp_path / "absent")  # no error where it cannot be done


def test_file_identity_changes_with_the_content(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    first = _io.file_identity(path)
    assert first == _io.file_identity(path) and first[0] == str(path.resolve())
    assert first[1] == 3
    with _io.atomic_write(path) as fh:  # replaced: a new inode
        fh.write(b"abc")
    assert _io.file_identity(path) != first
    with pytest.raises(OSError):
        _io.file_identity(tmp_path / "absent")


def test_progress_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _io.progress_bar(False, 10, "x") is None
    tqdm = pytest.importorskip("tqdm")
    del tqdm
    bar = _io.progress_bar(True, 10, "images")
    try:
        assert bar.total == 10 and bar.unit == "img" and bar.desc == "images"
    finally:
        bar.close()
    bar = _io.progress_bar(True, None, "file.gz", unit="B")
    try:
        assert bar.unit == "B" and bar.unit_scale and bar.unit_divisor == 1024
    finally:
        bar.close()
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    assert _io.progress_bar(True, 10, "x") is None


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux's /proc only")
def test_the_umask_is_read_from_proc_without_setting_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Setting the umask to read it back changes it for every thread of the process for
    a moment; where Linux shows it in /proc, it is read from there."""
    status = Path("/proc/self/status").read_text(encoding="ascii").splitlines()
    expected = int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)

    def umask(mask: int) -> int:
        raise AssertionError("os.umask was called: it sets the mask process-wide")

    monkeypatch.setattr(_io.os, "umask", umask)
    assert _io._current_umask() == expected
