"""Tests for the checkpoint file layer: round trips, atomicity, crash safety, untrusted files."""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import queue
import signal
import stat
import subprocess
import sys
import threading
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import numpy.lib.format as npy_format
import pytest

from xpconv.io import checkpoint
from xpconv.io.checkpoint import (
    FORMAT_NAME,
    FORMAT_VERSION,
    METADATA_KEY,
    CheckpointError,
    CheckpointNotFoundError,
    is_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


class _CreatesFileWhenUnpickled:
    """An object whose unpickling opens (and so creates) ``path`` for writing."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def _meta_npy(document: object) -> bytes:
    raw = json.dumps(document).encode("utf-8")
    return _npy_bytes(np.frombuffer(raw, dtype=np.uint8))


def _valid_meta_array() -> np.ndarray:
    raw = json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION}).encode()
    return np.frombuffer(raw, dtype=np.uint8)


def _valid_meta_npy(**extra: object) -> bytes:
    return _meta_npy({"format": FORMAT_NAME, "version": FORMAT_VERSION, **extra})


def _write_zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def _assert_same_arrays(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert list(got) == list(expected)
    for name, want in expected.items():
        have = got[name]
        assert type(have) is np.ndarray, name
        assert have.dtype == want.dtype, name
        assert have.shape == want.shape, name
        assert have.tobytes() == np.ascontiguousarray(want).tobytes(), name


# --------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------


def _sample_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    floats = rng.standard_normal((3, 4)).astype(np.float32)
    floats[0, 0] = np.nan
    floats[0, 1] = -0.0
    return {
        "conv1.weight": floats,
        "conv1.bias": rng.standard_normal(4),
        "float16": rng.standard_normal(5).astype(np.float16),
        "steps": np.arange(-3, 3, dtype=np.int64),
        "bytes": np.arange(256, dtype=np.uint8),
        "small": np.array([-128, 127], dtype=np.int8),
        "huge_unsigned": np.array([2**64 - 1], dtype=np.uint64),
        "mask": np.array([[True, False], [False, True]]),
        "complex": np.array([1 + 2j, -3j], dtype=np.complex64),
        "scalar": np.array(3.5),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "empty_1d": np.array([], dtype=np.int32),
        "big_endian": np.arange(4, dtype=">f4"),
        "fortran": np.asfortranarray(rng.standard_normal((3, 5))),
        "strided": np.arange(20, dtype=np.int16)[::3],
        "wéight/ünïcode": np.ones(2),
    }


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip_is_bit_exact(tmp_path: Path, compress: bool) -> None:
    arrays = _sample_arrays()
    metadata = {
        "architecture": {"layers": [{"kind": "conv", "channels": 8, "padding": [1, 1]}]},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": None, "nesterov": False},
        "history": [1.0, 0.5, 1e-300, 123456789012345678901234567890],
        "note": "ünïcødé ✓",
    }
    path = tmp_path / "model.npz"
    returned = save_checkpoint(path, arrays, metadata, compress=compress)
    assert returned == path

    loaded, meta = load_checkpoint(path)
    _assert_same_arrays(loaded, arrays)
    assert loaded["fortran"].flags.f_contiguous
    assert meta == {"format": FORMAT_NAME, "version": FORMAT_VERSION, **metadata}
    assert list(meta)[:2] == ["format", "version"]
    assert is_checkpoint(path)
    assert _temp_files(tmp_path) == []


def test_numpy_scalar_is_stored_as_0d_array(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    save_checkpoint(path, {"s": np.float32(2.5)}, {})
    loaded, _ = load_checkpoint(path)
    assert loaded["s"].shape == () and loaded["s"].dtype == np.float32 and loaded["s"] == 2.5


def test_metadata_details_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    save_checkpoint(path, {}, {"pair": (1, 2), "nan": math.nan, "inf": -math.inf, "empty": {}})
    loaded, meta = load_checkpoint(path)
    assert loaded == {}
    assert meta["pair"] == [1, 2]
    assert math.isnan(meta["nan"]) and meta["inf"] == -math.inf and meta["empty"] == {}
    # Metadata as returned (with the marker keys) can be saved again unchanged.
    save_checkpoint(path, {}, meta)
    assert load_checkpoint(path)[1]["pair"] == [1, 2]
    # the same list under two keys is shared, not circular
    shared = [1, {"k": "v"}]
    save_checkpoint(path, {}, {"a": shared, "b": shared, "c": [shared, shared]})
    meta = load_checkpoint(path)[1]
    assert meta["a"] == meta["b"] == [1, {"k": "v"}] and meta["c"] == [shared, shared]


def test_writes_exactly_the_given_path(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    assert save_checkpoint(str(path), {"a": np.ones(3)}, {}) == path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt"]
    assert load_checkpoint(path)[0]["a"].tolist() == [1.0, 1.0, 1.0]


def test_output_is_a_plain_npz_and_deterministic(tmp_path: Path) -> None:
    arrays = {"w": np.arange(6.0).reshape(2, 3), "b": np.zeros(2, dtype=np.int32)}
    first, second = tmp_path / "a.npz", tmp_path / "b.npz"
    save_checkpoint(first, arrays, {"k": 1})
    save_checkpoint(second, arrays, {"k": 1})
    assert first.read_bytes() == second.read_bytes()
    with np.load(first, allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted([METADATA_KEY, "w", "b"])
        assert np.array_equal(npz["w"], arrays["w"])


def test_loaded_arrays_are_independent_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    save_checkpoint(path, {"w": np.arange(10.0)}, {})
    loaded, _ = load_checkpoint(path)
    save_checkpoint(path, {"w": np.zeros(10)}, {})
    path.unlink()
    assert loaded["w"].tolist() == list(np.arange(10.0))
    loaded["w"][0] = 42.0  # writable, owns its memory
    assert loaded["w"][0] == 42.0


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_file_permissions(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    save_checkpoint(path, {"a": np.ones(1)}, {})
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    path.chmod(0o600)
    save_checkpoint(path, {"a": np.ones(1)}, {})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        save_checkpoint(tmp_path / "does-not-exist" / "c.npz", {"a": np.ones(1)}, {})


# --------------------------------------------------------------------------
# bad save inputs
# --------------------------------------------------------------------------


class _Opaque:
    pass


_circular: list[object] = []
_circular.append(_circular)


@pytest.mark.parametrize(
    ("arrays", "metadata", "error", "match"),
    [
        ({"ok": np.ones(2), "bad": np.array([{}], dtype=object)}, {}, TypeError, "'bad'"),
        ({"text": np.array(["x", "y"])}, {}, TypeError, "'text'"),
        ({"rec": np.zeros(2, dtype=[("a", "f4")])}, {}, TypeError, "'rec'"),
        ({"when": np.array(["2020-01-01"], dtype="datetime64[D]")}, {}, TypeError, "'when'"),
        ({"lst": [1.0, 2.0]}, {}, TypeError, "'lst'.*numpy"),
        ({1: np.ones(2)}, {}, TypeError, "array name 1 "),
        ({"__hidden": np.ones(2)}, {}, ValueError, "'__hidden'"),
        ({METADATA_KEY: np.ones(2)}, {}, ValueError, METADATA_KEY),
        ({"": np.ones(2)}, {}, ValueError, "empty"),
        ({"nul\x00": np.ones(2)}, {}, ValueError, "NUL"),
        ({"a": np.ones(1)}, {"tags": {1, 2}}, TypeError, r"metadata\['tags'\]"),
        ({"a": np.ones(1)}, {"opt": {"lr": np.float32(0.1)}}, TypeError, r"\['opt'\]\['lr'\]"),
        ({"a": np.ones(1)}, {"opt": {"lr": np.float32(0.1)}}, TypeError, r"\.item\(\)"),
        ({"a": np.ones(1)}, {"layers": [1, _Opaque()]}, TypeError, r"\['layers'\]\[1\]"),
        ({"a": np.ones(1)}, {1: "x"}, TypeError, "metadata key 1 "),
        ({"a": np.ones(1)}, {"nested": {2: "x"}}, TypeError, r"key 2 at metadata\['nested'\]"),
        ({"a": np.ones(1)}, {"format": "other"}, ValueError, "'format'"),
        ({"a": np.ones(1)}, {"version": 2}, ValueError, "'version'"),
        ({"a": np.ones(1)}, {"version": True}, ValueError, "'version'"),
        ({"a": np.ones(1)}, {"loop": _circular}, ValueError, "circular"),
        ([np.ones(1)], {}, TypeError, "mapping"),
        ({"a": np.ones(1)}, ["x"], TypeError, "mapping"),
    ],
)
def test_bad_save_inputs(tmp_path: Path, arrays, metadata, error, match) -> None:
    with pytest.raises(error, match=match):
        save_checkpoint(tmp_path / "c.npz", arrays, metadata)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------
# atomicity
# --------------------------------------------------------------------------


@pytest.fixture
def old_checkpoint(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray], bytes]:
    path = tmp_path / "model.npz"
    arrays = {"w": np.arange(12.0).reshape(3, 4), "b": np.ones(4, dtype=np.float32)}
    save_checkpoint(path, arrays, {"epoch": 1})
    return path, arrays, path.read_bytes()


def _assert_old_intact(path: Path, arrays: dict[str, np.ndarray], raw: bytes) -> None:
    assert path.read_bytes() == raw
    loaded, meta = load_checkpoint(path)
    _assert_same_arrays(loaded, arrays)
    assert meta["epoch"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_failed_validation_leaves_old_file(old_checkpoint) -> None:
    path, arrays, raw = old_checkpoint
    new = {"w": np.zeros((3, 4)), "b": np.zeros(4), "c": np.array([object()], dtype=object)}
    with pytest.raises(TypeError, match="'c'"):
        save_checkpoint(path, new, {"epoch": 2})
    _assert_old_intact(path, arrays, raw)


@pytest.mark.parametrize("exc_type", [OSError, KeyboardInterrupt])
def test_failure_mid_write_leaves_old_file(old_checkpoint, monkeypatch, exc_type) -> None:
    path, arrays, raw = old_checkpoint
    real_write_entry = checkpoint._write_entry
    calls = []

    def failing_write_entry(zf, name, array):
        calls.append(name)
        if len(calls) == 3:  # metadata and one array already written to the temp file
            raise exc_type("simulated failure while writing")
        real_write_entry(zf, name, array)

    monkeypatch.setattr(checkpoint, "_write_entry", failing_write_entry)
    big = {"w": np.zeros((3, 4)), "b": np.zeros(4), "c": np.zeros(100_000)}
    with pytest.raises(exc_type, match="simulated"):
        save_checkpoint(path, big, {"epoch": 2})
    assert len(calls) == 3
    _assert_old_intact(path, arrays, raw)


def test_failure_at_rename_leaves_old_file(old_checkpoint, monkeypatch) -> None:
    path, arrays, raw = old_checkpoint

    def failing_replace(src, dst):
        assert Path(src).stat().st_size > 0  # the new archive was fully written
        raise OSError("simulated rename failure")

    monkeypatch.setattr(checkpoint.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated rename"):
        save_checkpoint(path, {"w": np.zeros(3)}, {"epoch": 2})
    monkeypatch.undo()
    _assert_old_intact(path, arrays, raw)


# --------------------------------------------------------------------------
# crash safety: SIGKILL a real process in the middle of a save
# --------------------------------------------------------------------------

_CHILD = r"""
import sys
import numpy as np
from xpconv.io.checkpoint import save_checkpoint

path, size = sys.argv[1], int(sys.argv[2])
weights = np.empty(size, dtype=np.float64)
for step in range(1, 100_000):
    weights.fill(step)
    print("begin", step, flush=True)
    save_checkpoint(path, {"w": weights, "step": np.array(step)}, {"step": step})
    print("done", step, flush=True)
"""

_CHILD_FLOATS = 8_000_000  # 64 MB per checkpoint


def _line_reader(stream, lines: queue.Queue) -> threading.Thread:
    def pump() -> None:
        for line in stream:
            lines.put(line.strip())
        lines.put(None)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def _kill_during_save(directory: Path, fraction: float) -> tuple[int, int, bool]:
    """Run the saving child, SIGKILL it mid-save; return (last done, last begun, killed mid-save).

    The child is killed once a temporary file of a save after the first has reached
    ``fraction`` of a complete checkpoint's size (1.0: written completely, i.e. during
    fsync / just before the rename).
    """
    path = directory / "model.npz"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), str(_CHILD_FLOATS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: queue.Queue = queue.Queue()
    reader = _line_reader(proc.stdout, lines)
    seen: list[str] = []
    killed_mid_save = False
    try:
        deadline = time.monotonic() + 20
        while "done 1" not in seen:
            remaining = deadline - time.monotonic()
            line = lines.get(timeout=max(remaining, 0.01))
            assert line is not None, f"child exited early: {proc.stderr.read()}"
            seen.append(line)
        threshold = max(1, int(path.stat().st_size * fraction))

        # Watch for the temporary file of a later save to reach the threshold size.
        prefix = "." + path.name + "."
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and proc.poll() is None:
            sizes = []
            for entry in os.scandir(directory):
                if entry.name.startswith(prefix) and entry.name.endswith(".tmp"):
                    try:
                        sizes.append(entry.stat().st_size)
                    except FileNotFoundError:
                        pass
            if sizes and max(sizes) >= threshold:
                os.kill(proc.pid, signal.SIGKILL)
                killed_mid_save = True
                break
            time.sleep(0.0005)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        reader.join(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
    while True:
        try:
            line = lines.get_nowait()
        except queue.Empty:
            break
        if line is not None:
            seen.append(line)
    done = max(int(s.split()[1]) for s in seen if s.startswith("done"))
    begun = max(int(s.split()[1]) for s in seen if s.startswith("begin"))
    return done, begun, killed_mid_save


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_during_save_leaves_a_complete_checkpoint(tmp_path: Path) -> None:
    started = time.monotonic()
    stray_after_kill = 0
    for run, fraction in enumerate([0.0, 0.5, 1.0]):
        directory = tmp_path / f"run{run}"
        directory.mkdir()
        done, begun, killed_mid_save = _kill_during_save(directory, fraction)

        loaded, meta = load_checkpoint(directory / "model.npz")
        step = meta["step"]
        # The final name holds a complete version: the last one reported done, or the
        # one in progress if the kill landed between the rename and the "done" line.
        assert done <= step <= min(done + 1, begun)
        assert loaded["step"] == step
        weights = loaded["w"]
        assert weights.shape == (_CHILD_FLOATS,) and weights.dtype == np.float64
        assert weights.min() == weights.max() == step
        # A save interrupted by SIGKILL leaves its temporary file behind; that is expected
        # (nothing can clean up after SIGKILL) and never affects the final name.
        if killed_mid_save and _temp_files(directory):
            stray_after_kill += 1
    assert stray_after_kill >= 1, "no kill landed while a save was in progress"
    assert time.monotonic() - started < 60


# --------------------------------------------------------------------------
# untrusted and broken files
# --------------------------------------------------------------------------


def test_pickle_file_is_refused_and_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    payload = pickle.dumps(_CreatesFileWhenUnpickled(marker))
    path = tmp_path / "x.npz"
    path.write_bytes(payload)

    with pytest.raises(CheckpointError, match="refusing to load a pickle file") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert "never unpickled" in str(info.value)
    assert not marker.exists()
    assert not is_checkpoint(path)
    assert not marker.exists()

    # The payload is live: unpickling it really would have created the marker.
    pickle.loads(payload).close()
    assert marker.exists()


def test_plain_pickle_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(path)


def test_protocol_0_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "x.npz"
    path.write_bytes(pickle.dumps(_CreatesFileWhenUnpickled(marker), protocol=0))
    with pytest.raises(CheckpointError, match="not an xpconv checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_object_array_entry_is_refused_and_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "x.npz"
    evil = np.array([_CreatesFileWhenUnpickled(marker)], dtype=object)
    with open(path, "wb") as fh:
        np.savez(fh, weights=np.ones(3), evil=evil, **{METADATA_KEY: _valid_meta_array()})

    with pytest.raises(CheckpointError, match="'evil'.*object array") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert not marker.exists()
    assert not is_checkpoint(path)
    assert not marker.exists()

    # The entry is live: numpy with allow_pickle=True would have created the marker.
    with np.load(path, allow_pickle=True) as npz:
        npz["evil"][0].close()
    assert marker.exists()


def _huge_header_member(shape: tuple[int, ...], payload: bytes) -> bytes:
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return buf.getvalue() + payload


@pytest.mark.parametrize("shape", [(10**12,), (200_000_000,), (10**6, 10**6, 10**6)])
def test_declared_huge_shape_is_refused_without_allocating(tmp_path: Path, shape) -> None:
    psutil = pytest.importorskip("psutil")
    path = tmp_path / "x.npz"
    _write_zip(
        path,
        {
            METADATA_KEY + ".npy": _valid_meta_npy(),
            "w.npy": _huge_header_member(shape, b"\x00" * 16),
        },
    )
    process = psutil.Process()
    rss_before = process.memory_info().rss
    tracemalloc.start()
    started = time.monotonic()
    try:
        for limit in (2**31, None):
            with pytest.raises(CheckpointError, match="'w'.*declares shape") as info:
                load_checkpoint(path, max_bytes=limit)
            assert str(path) in str(info.value)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 2
    assert peak < 10 * 2**20
    assert process.memory_info().rss - rss_before < 100 * 2**20
    assert not is_checkpoint(path)


def _patch_central_directory(path: Path, member: str, **sizes: int) -> None:
    """Overwrite the sizes recorded for ``member`` in the zip central directory."""
    raw = bytearray(path.read_bytes())
    offsets = {"compressed": 20, "uncompressed": 24}
    start = 0
    while True:
        start = raw.index(b"PK\x01\x02", start)
        name_len = int.from_bytes(raw[start + 28 : start + 30], "little")
        if raw[start + 46 : start + 46 + name_len] == member.encode():
            break
        start += 4
    for field, value in sizes.items():
        raw[start + offsets[field] : start + offsets[field] + 4] = value.to_bytes(4, "little")
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("compress", "sizes", "match"),
    [
        (True, {"uncompressed": 4_000_000_000}, "deflate cannot produce"),
        (False, {"uncompressed": 4_000_000_000}, "stored uncompressed but declares"),
        (False, {"uncompressed": 10**9, "compressed": 10**9}, "past the end of the file"),
    ],
)
def test_lying_zip_sizes_are_refused(tmp_path: Path, compress, sizes, match) -> None:
    path = tmp_path / "c.npz"
    save_checkpoint(path, {"w": np.zeros(1000)}, {}, compress=compress)
    _patch_central_directory(path, "w.npy", **sizes)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="'w'.*" + match):
            load_checkpoint(path, max_bytes=None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20


def test_header_declaring_less_data_than_present_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    _write_zip(
        path,
        {METADATA_KEY + ".npy": _valid_meta_npy(), "w.npy": _huge_header_member((2,), bytes(24))},
    )
    with pytest.raises(CheckpointError, match="'w'.*trailing"):
        load_checkpoint(path)


def test_max_bytes_limits_total_size(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    save_checkpoint(path, {"a": np.zeros(1000), "b": np.zeros(1000)}, {})
    with pytest.raises(CheckpointError, match="max_bytes=10000"):
        load_checkpoint(path, max_bytes=10_000)
    assert load_checkpoint(path, max_bytes=20_000)[0]["b"].shape == (1000,)
    assert load_checkpoint(path, max_bytes=None)[0]["a"].shape == (1000,)
    with pytest.raises(ValueError, match="max_bytes"):
        load_checkpoint(path, max_bytes=-1)
    with pytest.raises(TypeError, match="max_bytes"):
        load_checkpoint(path, max_bytes=1.5)


@pytest.mark.parametrize(
    "content",
    [
        np.random.default_rng(1).bytes(4096),
        b"just some text, not a checkpoint\n",
        b"PK\x03\x04" + b"\x00" * 100,
        b"",
    ],
    ids=["random", "text", "zip-magic-only", "empty"],
)
def test_non_checkpoint_bytes_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.npz"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert not is_checkpoint(path)


def test_single_npy_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    path.write_bytes(_npy_bytes(np.ones(3)))
    with pytest.raises(CheckpointError, match=r"single-array \.npy"):
        load_checkpoint(path)


@pytest.mark.parametrize("keep", [0.5, 0.9, -1, -22, 100])
def test_truncated_checkpoint_is_refused(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "c.npz"
    save_checkpoint(path, {"w": np.arange(50_000.0), "b": np.ones(10)}, {"epoch": 3})
    raw = path.read_bytes()
    cut = int(len(raw) * keep) if isinstance(keep, float) else keep % len(raw)
    path.write_bytes(raw[:cut])
    with pytest.raises(CheckpointError, match="truncated") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert not is_checkpoint(path)


@pytest.mark.parametrize("compress", [False, True])
def test_corrupted_payload_fails_crc(tmp_path: Path, compress: bool) -> None:
    path = tmp_path / "c.npz"
    rng = np.random.default_rng(2)
    save_checkpoint(path, {"w": rng.standard_normal(100_000)}, {}, compress=compress)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="'w'.*corrupt"):
        load_checkpoint(path)


def test_plain_npz_without_metadata_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    with open(path, "wb") as fh:
        np.savez(fh, a=np.ones(3), b=np.zeros(2))
    with pytest.raises(CheckpointError, match="not an xpconv checkpoint") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert not is_checkpoint(path)


@pytest.mark.parametrize(
    ("document", "match"),
    [
        ({"format": "something-else", "version": 1}, "not an xpconv checkpoint"),
        ({"version": 1}, "not an xpconv checkpoint"),
        (["format", "xpconv-checkpoint"], "not an xpconv checkpoint"),
        ({"format": FORMAT_NAME, "version": FORMAT_VERSION + 98}, "upgrade xpconv"),
        ({"format": FORMAT_NAME, "version": "1"}, "integer format version"),
        ({"format": FORMAT_NAME, "version": 0}, "integer format version"),
        ({"format": FORMAT_NAME}, "integer format version"),
    ],
)
def test_wrong_format_marker_or_version_is_refused(tmp_path: Path, document, match) -> None:
    path = tmp_path / "x.npz"
    _write_zip(path, {METADATA_KEY + ".npy": _meta_npy(document), "w.npy": _npy_bytes(np.ones(2))})
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_metadata_that_is_not_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    bad = _npy_bytes(np.frombuffer(b"\xff\xfe not json", dtype=np.uint8))
    _write_zip(path, {METADATA_KEY + ".npy": bad})
    with pytest.raises(CheckpointError, match="not an xpconv checkpoint.*JSON"):
        load_checkpoint(path)
    _write_zip(path, {METADATA_KEY + ".npy": _npy_bytes(np.ones(3))})
    with pytest.raises(CheckpointError, match="uint8"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("members", "match"),
    [
        ({"notes.txt": b"hello"}, "'notes.txt'"),
        ({"__other__.npy": _npy_bytes(np.ones(1))}, "reserved entry '__other__'"),
        ({"text.npy": _npy_bytes(np.array(["a", "b"]))}, "'text'.*dtype <U1"),
        ({"w.npy": b"\x93NUMPY\x01\x00\x08\x00garbage!"}, "'w'.*not hold a valid .npy"),
        ({"w.npy": b"\x93NUMPY\x07\x00"}, "'w'.*format version"),
    ],
)
def test_unexpected_members_are_refused(tmp_path: Path, members, match) -> None:
    path = tmp_path / "x.npz"
    _write_zip(path, {METADATA_KEY + ".npy": _valid_meta_npy(), **members})
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_missing_path_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "model.npz"
    with pytest.raises(CheckpointNotFoundError, match="nowhere") as info:
        load_checkpoint(path)
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value, CheckpointError)
    assert info.value.filename == str(path)
    assert not is_checkpoint(path)


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="directory"):
        load_checkpoint(tmp_path)
    assert not is_checkpoint(tmp_path)


def test_a_model_file_of_another_suffix_is_refused_naming_the_suffix(tmp_path: Path) -> None:
    """Saving or loading a model under a suffix that is not a model format says which
    operation, the suffix and the formats there are (and, for .onnx, what writes it)."""
    import xpconv as xc

    model = xc.Sequential([xc.Dense(2)], input_shape=(3,))
    path = tmp_path / "m.txt"
    formats = "expected one of ['.npz', '.safetensors']"
    with pytest.raises(ValueError) as info:
        xc.save_model(model, path)
    assert str(info.value) == f"{path}: cannot save a model as '.txt'; {formats}"
    with pytest.raises(CheckpointError) as info:
        xc.load_model(path)
    assert str(info.value) == f"{path}: cannot load a model as '.txt'; {formats}"
    with pytest.raises(ValueError) as info:
        xc.save_model(model, tmp_path / "m.onnx")
    assert str(info.value).endswith(
        "cannot save a model as '.onnx'; write it with xpconv export (or xpconv.to_onnx / "
        f"xpconv.to_torch); {formats}"
    )


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_load_model_puts_the_model_on_the_device_asked_for(tmp_path: Path, suffix: str) -> None:
    """``load_model(..., backend, device)`` rebuilds the model with every parameter on
    that device (array-api-strict's second device: no GPU needed)."""
    import xpconv as xc

    strict = pytest.importorskip("array_api_strict")
    model = xc.Sequential([xc.Dense(2)], input_shape=(3,), seed=1)
    path = tmp_path / f"m{suffix}"
    xc.save_model(model, path)
    loaded = xc.load_model(path, backend="array_api_strict", device="device1")
    assert (loaded.backend.name, loaded.backend.device) == (
        "array_api_strict",
        strict.Device("device1"),
    )
    for name, p in loaded.parameters().items():
        assert p.value.device == strict.Device("device1"), name
        np.testing.assert_array_equal(
            loaded.backend.to_numpy(p.value), model.parameters()[name].value
        )


def test_architecture_fuse_must_be_a_boolean() -> None:
    """A checkpoint's ``fuse`` flag is true or false (or absent, as in older files);
    anything else is refused naming the field and the value found."""
    import xpconv as xc
    from xpconv.io.schema import validate_architecture

    model = xc.Sequential([xc.Dense(2)], input_shape=(3,))
    config = json.loads(json.dumps(model.get_config()))
    stored = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    validate_architecture({k: v for k, v in config.items() if k != "fuse"}, stored)
    for bad in ("yes", 1, None):
        with pytest.raises(CheckpointError) as info:
            validate_architecture({**config, "fuse": bad}, stored)
        assert str(info.value) == f"architecture.fuse: expected true or false, got {bad!r}"


def test_architecture_without_layers_is_refused_naming_the_field() -> None:
    import xpconv as xc
    from xpconv.io.schema import LIMITS, validate_architecture

    model = xc.Sequential([xc.Dense(2)], input_shape=(3,))
    config = json.loads(json.dumps(model.get_config()))
    for bad in ([], {"type": "Dense"}):
        with pytest.raises(CheckpointError) as info:
            validate_architecture({**config, "layers": bad}, {})
        assert str(info.value) == (
            f"architecture.layers: expected a list of 1 to {LIMITS['layers']} layers, got {bad!r}"
        )


def test_an_architecture_that_is_not_an_object_is_refused_naming_it() -> None:
    from xpconv.io.schema import validate_architecture

    for bad in (["Dense"], "Sequential", None):
        with pytest.raises(CheckpointError) as info:
            validate_architecture(bad, {})
        assert str(info.value) == f"architecture: expected an object, got {type(bad).__name__}"


def test_blocks_nest_at_most_the_limit_deep() -> None:
    """Residual blocks inside blocks: as deep as ``LIMITS["block_depth"]`` loads, one
    level more is refused naming the field, before anything is built."""
    import xpconv as xc
    from xpconv.io.schema import LIMITS, validate_architecture

    def nested(levels: int) -> dict:
        block: xc.Layer = xc.ReLU()
        for _ in range(levels):
            block = xc.Residual([block])
        model = xc.Sequential([xc.Flatten(), block, xc.Dense(2)], input_shape=(3,))
        return json.loads(json.dumps(model.get_config()))

    limit = LIMITS["block_depth"]
    validate_architecture(nested(limit), {"dense_0.weight": (2, 3), "dense_0.bias": (2,)})
    with pytest.raises(CheckpointError) as info:
        validate_architecture(nested(limit + 1), {})
    field = "architecture.layers[1]" + ".config.layers[0]" * limit
    assert str(info.value) == (
        f"{field}.config.layers: expected at most {LIMITS['layers']} inner layers nested at "
        f"most {limit} deep"
    )


def test_an_input_of_the_limit_elements_loads_and_one_more_is_refused() -> None:
    import xpconv as xc
    from xpconv.io.schema import LIMITS, validate_architecture

    model = xc.Sequential([xc.Flatten()], input_shape=(2, 3))
    config = json.loads(json.dumps(model.get_config()))
    limit = LIMITS["activation_elements"]
    validate_architecture({**config, "input_shape": [2, limit // 2]}, {})
    with pytest.raises(CheckpointError) as info:
        validate_architecture({**config, "input_shape": [1, limit + 1]}, {})
    assert str(info.value) == (
        f"architecture.input_shape: (1, {limit + 1}) has more than {limit} elements per example"
    )


def test_an_archive_with_an_entry_twice_is_refused_as_crafted(tmp_path: Path) -> None:
    path = tmp_path / "twice.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(METADATA_KEY + ".npy", _valid_meta_npy())
        zf.writestr("w.npy", _npy_bytes(np.full(2, 1.0)))
        with pytest.warns(UserWarning, match="Duplicate name"):  # which would a reader take?
            zf.writestr("w.npy", _npy_bytes(np.full(2, 2.0)))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (
        f"cannot load checkpoint {str(path)!r}: the archive contains the entry 'w.npy' more "
        "than once; the file is corrupt or was crafted"
    )
