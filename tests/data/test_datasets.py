"""Tests for xpconv.data.datasets: IDX parsing, explicit directories, cache, downloads, fallback.

Downloads are exercised for real against small HTTP servers bound to 127.0.0.1. The default
mirror list is pointed at a closed loopback port for every test, so nothing here reaches the
internet.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from conftest import require_or_skip

import xpconv.data.datasets as ds

DATA = Path(
    os.environ.get("XPCONV_TEST_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")
)

GZ_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
STEMS = tuple(name[: -len(".gz")] for name in GZ_FILES)
DEFAULT_MIRRORS = copy.deepcopy(ds.MIRRORS)
FASHION_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


# --------------------------------------------------------------------------- utilities


def _real_dir(name: str) -> Path:
    directory = DATA / name
    missing = [f for f in GZ_FILES if not (directory / f).is_file()]
    if missing:
        require_or_skip(
            False,
            f"real {name} data not found: {directory / missing[0]} is missing "
            f"(set XPCONV_TEST_DATA to a folder with mnist/ and fashion-mnist/ subfolders)",
        )
    return directory


def _closed_port_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def _flip(data: bytes, index: int | None = None) -> bytes:
    out = bytearray(data)
    out[len(out) // 2 if index is None else index] ^= 0xFF
    return bytes(out)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _idx(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def _write_synthetic(directory: Path, n_train: int = 6, n_test: int = 3) -> dict[str, Path]:
    """A valid, uncompressed, 4x4-pixel IDX set; returns the paths by stem."""
    rng = np.random.default_rng(1)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        STEMS[0]: rng.integers(0, 256, (n_train, 4, 4)),
        STEMS[1]: np.arange(n_train) % 10,
        STEMS[2]: rng.integers(0, 256, (n_test, 4, 4)),
        STEMS[3]: np.arange(n_test) % 10,
    }
    paths = {}
    for stem, array in arrays.items():
        paths[stem] = directory / stem
        paths[stem].write_bytes(_idx(array))
    return paths


def _cache_files(cache: Path) -> list[str]:
    """Everything in a dataset's cache folder, hidden temp files included."""
    return sorted(os.listdir(cache)) if cache.exists() else []


class Mirror:
    """An HTTP server on 127.0.0.1 serving files from ``root``, misbehaving per ``mode``.

    Modes: ``good``; ``corrupt`` (one byte flipped); ``truncate`` (first half, with a matching
    Content-Length); ``drop`` (full Content-Length, half the body, then the connection is
    closed); ``404``.
    """

    def __init__(self, root: Path, mode: str) -> None:
        self.root, self.mode = root, mode
        self.requests: list[str] = []
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                mirror.requests.append(self.path)
                path = mirror.root / self.path.rsplit("/", 1)[-1]
                if mirror.mode == "404" or not path.is_file():
                    self.send_error(404)
                    return
                full = body = path.read_bytes()
                if mirror.mode == "corrupt":
                    body = _flip(full)
                elif mirror.mode in ("truncate", "drop"):
                    body = full[: len(full) // 2]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                length = len(full) if mirror.mode == "drop" else len(body)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/files/"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No XPCONV_DATA, a fresh cache under tmp_path, and default mirrors that go nowhere."""
    monkeypatch.delenv("XPCONV_DATA", raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("XPCONV_CACHE", str(cache))
    closed = _closed_port_url()
    monkeypatch.setattr(ds, "MIRRORS", {key: [closed] for key in DEFAULT_MIRRORS})
    return cache


@pytest.fixture(scope="module")
def mnist_dir() -> Path:
    return _real_dir("mnist")


@pytest.fixture(scope="module")
def fashion_dir() -> Path:
    return _real_dir("fashion-mnist")


@pytest.fixture(scope="module")
def mnist_ref(mnist_dir: Path) -> ds.Dataset:
    return ds.mnist(mnist_dir, download=False, progress=False)


@pytest.fixture
def mirrors():
    """Factory: ``mirrors("good")`` starts a server for the real MNIST files (or ``root``)."""
    started: list[Mirror] = []

    def start(mode: str, root: Path | None = None) -> Mirror:
        server = Mirror(_real_dir("mnist") if root is None else root, mode)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


# --------------------------------------------------------------------------- constants


def test_default_mirrors_and_checksums() -> None:
    assert DEFAULT_MIRRORS["mnist"] == [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ]
    assert DEFAULT_MIRRORS["fashion-mnist"] == [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    ]
    for key in ("mnist", "fashion-mnist"):
        assert sorted(ds.CHECKSUMS[key]) == sorted(GZ_FILES)
        assert all(len(v) == 64 for v in ds.CHECKSUMS[key].values())


def test_import_needs_only_numpy() -> None:
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('xpconv_datasets', {ds.__file__!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules['xpconv_datasets'] = module\n"
        "spec.loader.exec_module(module)\n"
        "heavy = [m for m in ('tqdm', 'sklearn', 'scipy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------------- real data


def test_mnist_real(mnist_ref: ds.Dataset, mnist_dir: Path) -> None:
    d = mnist_ref
    assert d.x_train.shape == (60000, 1, 28, 28)
    assert d.x_test.shape == (10000, 1, 28, 28)
    assert d.y_train.shape == (60000,) and d.y_test.shape == (10000,)
    assert d.x_train.dtype == np.float32 and d.x_test.dtype == np.float32
    assert d.y_train.dtype == np.int64 and d.y_test.dtype == np.int64
    assert d.x_train.min() == 0.0 and d.x_train.max() == 1.0
    assert 0.0 <= d.x_test.min() and d.x_test.max() <= 1.0
    assert set(np.unique(d.y_train)) == set(range(10)) == set(np.unique(d.y_test))
    # Published label counts and mean pixel value of the MNIST training set.
    assert np.bincount(d.y_train)[:3].tolist() == [5923, 6742, 5958]
    assert abs(float(d.x_train.mean(dtype=np.float64)) * 255 - 33.318) < 1e-2
    assert d.name == "mnist" and d.num_classes == 10
    assert d.class_names == tuple("0123456789")
    assert d.source == str(mnist_dir.resolve())
    assert d.image_shape == (1, 28, 28)
    assert "60000" in repr(d) and len(repr(d)) < 400


def test_fashion_mnist_real(fashion_dir: Path) -> None:
    d = ds.fashion_mnist(fashion_dir, download=False, progress=False)
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0
    assert set(np.unique(d.y_train)) == set(range(10)) == set(np.unique(d.y_test))
    assert d.name == "fashion-mnist"
    assert d.class_names == FASHION_NAMES


def test_standard_normalization(mnist_dir: Path, mnist_ref: ds.Dataset) -> None:
    d = ds.mnist(mnist_dir, normalize="standard", download=False)
    assert d.x_train.dtype == np.float32
    assert abs(float(d.x_train.mean(dtype=np.float64))) < 1e-4
    assert abs(float(d.x_train.std(dtype=np.float64)) - 1.0) < 1e-4
    # The test set uses the training statistics.
    mean = mnist_ref.x_train.mean(dtype=np.float64)
    std = mnist_ref.x_train.std(dtype=np.float64)
    np.testing.assert_allclose(d.x_test[:50], (mnist_ref.x_test[:50] - mean) / std, atol=1e-5)


def test_parent_directory_and_env_var(monkeypatch: pytest.MonkeyPatch, fashion_dir: Path) -> None:
    # A parent with mnist/ and fashion-mnist/ subfolders picks the right one.
    d = ds.load_dataset("fashion_mnist", fashion_dir.parent, download=False)
    assert d.source == str(fashion_dir.resolve())
    monkeypatch.setenv("XPCONV_DATA", str(fashion_dir.parent))
    d = ds.fashion_mnist(download=False)
    assert d.source == str(fashion_dir.resolve()) and d.class_names == FASHION_NAMES


def test_uncompressed_files(tmp_path: Path, mnist_dir: Path, mnist_ref: ds.Dataset) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in GZ_FILES:
        with gzip.open(mnist_dir / name, "rb") as src, open(raw / name[:-3], "wb") as dst:
            shutil.copyfileobj(src, dst)
    d = ds.mnist(raw, download=False)
    assert d.source == str(raw.resolve())
    np.testing.assert_array_equal(d.x_train, mnist_ref.x_train)
    np.testing.assert_array_equal(d.y_test, mnist_ref.y_test)


def test_gz_from_other_dataset_is_rejected(mnist_dir: Path) -> None:
    with pytest.raises(ds.DatasetError, match="It is the MNIST file, not the Fashion-MNIST one"):
        ds.fashion_mnist(mnist_dir, download=False)


def test_corrupt_gz_in_explicit_dir(tmp_path: Path, mnist_dir: Path, mirrors) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in GZ_FILES:
        (data / name).symlink_to(mnist_dir / name)
    bad = data / "t10k-labels-idx1-ubyte.gz"
    bad.unlink()
    bad.write_bytes(_flip((mnist_dir / bad.name).read_bytes()))
    server = mirrors("good")
    with pytest.raises(ds.DatasetError) as info:
        ds.load_dataset("mnist", data, mirrors=[server.url], allow_fallback=True)
    message = str(info.value)
    assert str(bad) in message and "checksum mismatch" in message
    assert ds.CHECKSUMS["mnist"][bad.name] in message
    assert "Delete it" in message
    assert server.requests == []  # an explicit directory is never repaired by downloading


# --------------------------------------------------------------------------- explicit dirs


def test_explicit_dir_without_files_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mirrors
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / STEMS[1]).write_bytes(_idx(np.zeros(3)))
    server = mirrors("good", root=empty)
    with pytest.raises(ds.DatasetError) as info:
        ds.load_dataset("mnist", empty, mirrors=[server.url], allow_fallback=True)
    message = str(info.value)
    assert str(empty) in message
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "train-labels-idx1-ubyte" not in message  # that one is present
    assert "data_dir=DIR" in message
    # The same through XPCONV_DATA, and for a directory that does not exist.
    monkeypatch.setenv("XPCONV_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(ds.DatasetError, match="XPCONV_DATA.*does not exist"):
        ds.load_dataset("fashion-mnist", mirrors=[server.url], allow_fallback=True)
    assert server.requests == []


def test_synthetic_set_loads(tmp_path: Path) -> None:
    paths = _write_synthetic(tmp_path / "syn")
    d = ds.mnist(tmp_path / "syn", download=False)
    assert d.x_train.shape == (6, 1, 4, 4) and d.x_test.shape == (3, 1, 4, 4)
    raw = np.frombuffer(paths[STEMS[0]].read_bytes()[16:], np.uint8).reshape(6, 1, 4, 4)
    np.testing.assert_allclose(d.x_train, raw / 255.0, rtol=1e-6)
    assert d.y_train.tolist() == [0, 1, 2, 3, 4, 5]
    # The original distribution's dotted names ("train-images.idx3-ubyte") are found too.
    for path in paths.values():
        path.rename(path.with_name(path.name.replace("-idx", ".idx")))
    assert ds.mnist(tmp_path / "syn", download=False).x_train.shape == (6, 1, 4, 4)


def _bad_magic(p: dict[str, Path]) -> tuple[Path, str]:
    data = p[STEMS[0]].read_bytes()
    p[STEMS[0]].write_bytes(b"\x01\x02" + data[2:])
    return p[STEMS[0]], "magic"


def _bad_dtype(p: dict[str, Path]) -> tuple[Path, str]:
    data = p[STEMS[2]].read_bytes()
    p[STEMS[2]].write_bytes(data[:2] + b"\x0d" + data[3:])
    return p[STEMS[2]], "0x08"


def _bad_ndim(p: dict[str, Path]) -> tuple[Path, str]:
    p[STEMS[1]].write_bytes(_idx(np.zeros((6, 1))))
    return p[STEMS[1]], "IDX file of labels with 1 dimension(s), found 2"


def _bad_ndim_images(p: dict[str, Path]) -> tuple[Path, str]:
    p[STEMS[0]].write_bytes(_idx(np.zeros((6, 16))))
    return p[STEMS[0]], "IDX file of images with 3 dimension(s), found 2"


def _truncated(p: dict[str, Path]) -> tuple[Path, str]:
    data = p[STEMS[0]].read_bytes()
    p[STEMS[0]].write_bytes(data[:-10])
    return p[
        STEMS[0]
    ], "expected 96 bytes of data after the header (6 x 4 x 4), found 86 (truncated"


def _trailing(p: dict[str, Path]) -> tuple[Path, str]:
    p[STEMS[3]].write_bytes(p[STEMS[3]].read_bytes() + b"\x00")
    return p[STEMS[3]], "trailing"


def _short_header(p: dict[str, Path]) -> tuple[Path, str]:
    p[STEMS[2]].write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    return p[STEMS[2]], "header"


def _empty(p: dict[str, Path]) -> tuple[Path, str]:
    p[STEMS[1]].write_bytes(b"")
    return p[STEMS[1]], "empty"


def _count_mismatch(p: dict[str, Path]) -> tuple[Path, str]:
    p[STEMS[1]].write_bytes(_idx(np.arange(5)))
    return p[STEMS[1]], "expected 6 labels"


def _label_out_of_range(p: dict[str, Path]) -> tuple[Path, str]:
    p[STEMS[3]].write_bytes(_idx(np.array([0, 10, 3])))
    return p[STEMS[3]], "labels 0..9"


def _gzipped(p: dict[str, Path]) -> tuple[Path, str]:
    path = p[STEMS[1]]
    gz = path.with_name(path.name + ".gz")
    gz.write_bytes(gzip.compress(path.read_bytes()))
    path.unlink()
    return gz, "decompress it"


@pytest.mark.parametrize(
    "damage",
    [
        _bad_magic,
        _bad_dtype,
        _bad_ndim,
        _bad_ndim_images,
        _truncated,
        _trailing,
        _short_header,
        _empty,
        _count_mismatch,
        _label_out_of_range,
        _gzipped,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_invalid_idx_files(tmp_path: Path, damage) -> None:
    paths = _write_synthetic(tmp_path / "syn")
    bad, phrase = damage(paths)
    with pytest.raises(ds.DatasetError) as info:
        ds.load_dataset("mnist", tmp_path / "syn", allow_fallback=True)
    message = str(info.value)
    assert str(bad) in message
    assert phrase in message
    assert "expected" in message and ("download" in message or "data_dir=DIR" in message)
    assert isinstance(info.value, ValueError)


# --------------------------------------------------------------------------- downloads


def test_download_into_cache(isolated: Path, mirrors, mnist_ref: ds.Dataset) -> None:
    server = mirrors("good")
    d = ds.mnist(mirrors=[server.url], progress=True)
    cache = isolated / "mnist"
    assert d.source.startswith(f"downloaded from {server.url}") and str(cache) in d.source
    assert _cache_files(cache) == sorted(GZ_FILES)
    for name in GZ_FILES:
        assert _sha(cache / name) == ds.CHECKSUMS["mnist"][name]
    assert len(server.requests) == 4
    np.testing.assert_array_equal(d.y_train, mnist_ref.y_train)
    np.testing.assert_array_equal(d.x_test, mnist_ref.x_test)
    # Loaded again: straight from the cache, no request.
    again = ds.mnist(mirrors=[server.url])
    assert again.source == str(cache.resolve())
    again = ds.load_dataset("mnist", download=False, allow_fallback=False)
    assert len(server.requests) == 4
    np.testing.assert_array_equal(again.y_test, mnist_ref.y_test)


def test_download_without_tqdm(
    isolated: Path, mirrors, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = isolated / "mnist"
    cache.mkdir(parents=True)
    for name in GZ_FILES[:3]:
        shutil.copy(mnist_dir / name, cache / name)
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    server = mirrors("good")
    d = ds.mnist(mirrors=[server.url], progress=True)
    assert [r.rsplit("/", 1)[-1] for r in server.requests] == [GZ_FILES[3]]
    assert d.y_test.shape == (10000,)


BAD_MODES = {
    "corrupt": "checksum mismatch",
    "truncate": "checksum mismatch",
    "drop": "received .* of .* bytes|connection failed",
    "404": "HTTP 404",
}


@pytest.mark.parametrize("mode", sorted(BAD_MODES))
def test_bad_mirror_then_good_mirror(isolated: Path, mirrors, mode: str) -> None:
    bad, good = mirrors(mode), mirrors("good")
    with pytest.warns(UserWarning, match=BAD_MODES[mode]) as record:
        d = ds.mnist(mirrors=[bad.url, good.url], progress=False)
    assert any(bad.url in str(w.message) for w in record)
    assert d.x_train.shape == (60000, 1, 28, 28)
    assert d.source.startswith(f"downloaded from {good.url}")
    # The failed mirror is not retried for every file once another one has worked.
    assert len(bad.requests) == 1 and len(good.requests) == 4
    cache = isolated / "mnist"
    assert _cache_files(cache) == sorted(GZ_FILES)
    for name in GZ_FILES:
        assert _sha(cache / name) == ds.CHECKSUMS["mnist"][name]


@pytest.mark.parametrize("mode", sorted(BAD_MODES))
def test_bad_mirror_alone_leaves_nothing(isolated: Path, mirrors, mode: str) -> None:
    bad = mirrors(mode)
    with pytest.raises(ds.DatasetError, match=BAD_MODES[mode]) as info:
        ds.mnist(mirrors=[bad.url], progress=False)
    assert bad.url in str(info.value)
    assert _cache_files(isolated / "mnist") == []  # no partial file, no stray temp file


def test_all_mirrors_fail(isolated: Path, mirrors) -> None:
    corrupt, drop, missing = mirrors("corrupt"), mirrors("drop"), mirrors("404")
    closed = _closed_port_url()
    urls = [corrupt.url, drop.url, missing.url, closed]
    with pytest.warns(UserWarning, match="trying the next mirror"):
        with pytest.raises(ds.DatasetError) as info:
            ds.mnist(mirrors=urls, progress=False)
    message = str(info.value)
    for url in urls:
        assert url in message
    assert "checksum mismatch" in message and "HTTP 404" in message
    assert "could not connect" in message
    assert "data_dir=DIR" in message and "XPCONV_DATA" in message
    assert _cache_files(isolated / "mnist") == []

    # Asked to, load_dataset without an explicit directory falls back to digits, loudly.
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        d = ds.load_dataset("mnist", mirrors=urls, progress=False, allow_fallback=True)
    assert d.name == "digits" and d.source.startswith("fallback: scikit-learn 8x8 digits")
    assert d.x_train.shape == (1437, 1, 28, 28)
    assert all(issubclass(w.category, UserWarning) for w in record)
    fallback = [str(w.message) for w in record if "fell back" in str(w.message)]
    assert len(fallback) == 1 and len(record) == len(urls)  # one per failed mirror + fallback
    assert "data_dir=DIR" in fallback[0] and "XPCONV_DATA" in fallback[0]
    assert corrupt.url in fallback[0]  # says why

    with pytest.raises(ds.DatasetError):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.load_dataset("mnist", mirrors=urls, allow_fallback=False, progress=False)


def test_digits_without_scikit_learn_says_how_to_install_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ds.DatasetError) as info:
        ds.digits()
    assert str(info.value) == (
        "The digits dataset needs scikit-learn, which is not installed. "
        "Install it with `pip install scikit-learn` (or `pip install xpconv[cli]`)."
    )


def test_fallback_when_offline_and_not_downloading() -> None:
    with pytest.warns(UserWarning, match="fell back.*Fashion-MNIST|Fashion-MNIST.*fell back"):
        d = ds.load_dataset("fashion-mnist", download=False, allow_fallback=True)
    assert d.name == "digits" and d.source.startswith("fallback:")
    with pytest.raises(ds.DatasetError, match="download=False"):
        ds.fashion_mnist(download=False)


def test_library_raises_instead_of_falling_back(isolated: Path) -> None:
    """Without ``allow_fallback`` a user asking for MNIST gets MNIST or an error that
    names the function's arguments, never the command line's flags."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning either
        for load in (
            lambda: ds.load_dataset("mnist", download=False),
            lambda: ds.load_dataset("fashion-mnist", download=False),
            lambda: ds.mnist(download=False),
        ):
            with pytest.raises(ds.DatasetError) as info:
                load()
            message = str(info.value)
            assert "download=False" in message and "data_dir=DIR" in message
            assert "XPCONV_DATA" in message and "--" not in message


def test_corrupt_cache_file(isolated: Path, mirrors) -> None:
    server = mirrors("good")
    ds.mnist(mirrors=[server.url], progress=False)
    cached = isolated / "mnist" / "train-labels-idx1-ubyte.gz"
    cached.write_bytes(_flip(cached.read_bytes(), 100))

    # Without downloading: an error naming the file and what to do.
    with pytest.raises(ds.DatasetError) as info:
        ds.mnist(download=False)
    message = str(info.value)
    assert str(cached) in message and "checksum mismatch" in message and "Delete it" in message

    # With downloading: replaced from the mirror, with a warning.
    with pytest.warns(UserWarning, match="Downloading it again"):
        d = ds.mnist(mirrors=[server.url], progress=False)
    assert server.requests[-1].endswith("train-labels-idx1-ubyte.gz")
    assert len(server.requests) == 5
    assert _sha(cached) == ds.CHECKSUMS["mnist"][cached.name]
    assert d.y_train.shape == (60000,)
    assert _cache_files(isolated / "mnist") == sorted(GZ_FILES)


# --------------------------------------------------------------------------- digits


def test_digits() -> None:
    pytest.importorskip("sklearn")
    d = ds.digits()
    assert d.x_train.shape == (1437, 1, 28, 28) and d.x_test.shape == (360, 1, 28, 28)
    assert d.y_train.shape == (1437,) and d.y_test.shape == (360,)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert d.x_train.min() == 0.0 and d.x_train.max() == 1.0 and d.x_test.max() <= 1.0
    assert set(np.unique(d.y_train)) == set(range(10)) == set(np.unique(d.y_test))
    assert d.name == "digits" and d.num_classes == 10 and d.class_names == tuple("0123456789")
    for x in (d.x_train, d.x_test):
        border = np.ones((28, 28), bool)
        border[2:26, 2:26] = False
        assert not x[:, 0, border].any()
        # Each source pixel became a constant 3x3 block.
        inner = x[:, 0, 2:26, 2:26].reshape(-1, 8, 3, 8, 3)
        assert np.array_equal(inner, np.broadcast_to(inner[:, :, :1, :, :1], inner.shape))
    again = ds.load_dataset("digits")
    np.testing.assert_array_equal(again.x_train, d.x_train)
    np.testing.assert_array_equal(again.y_test, d.y_test)
    std = ds.digits(normalize="standard")
    assert abs(float(std.x_train.mean(dtype=np.float64))) < 1e-4
    assert abs(float(std.x_train.std(dtype=np.float64)) - 1.0) < 1e-4


def test_digits_without_sklearn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ds.DatasetError, match="pip install scikit-learn"):
        ds.digits()
    with pytest.raises(ds.DatasetError, match="fallback is not available"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.load_dataset("mnist", download=False, allow_fallback=True)


# --------------------------------------------------------------------------- arguments


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"dataset must be one of .*'mnist'.*got 'cifar10'"):
        ds.load_dataset("cifar10")
    for call in (
        lambda: ds.mnist(tmp_path, normalize="minmax"),
        lambda: ds.fashion_mnist(normalize="minmax"),
        lambda: ds.digits(normalize="minmax"),
        lambda: ds.load_dataset("mnist", normalize="minmax"),
    ):
        with pytest.raises(ValueError, match=r"normalize must be one of 'unit', 'standard'"):
            call()
    assert ds.load_dataset("Digits").name == "digits"


def test_dataset_is_frozen() -> None:
    d = ds.Dataset(
        x_train=np.zeros((2, 1, 3, 3), np.float32),
        y_train=np.zeros(2, np.int64),
        x_test=np.zeros((1, 1, 3, 3), np.float32),
        y_test=np.zeros(1, np.int64),
        name="toy",
        source="memory",
        num_classes=10,
        class_names=tuple("0123456789"),
    )
    with pytest.raises(AttributeError):
        d.name = "other"  # type: ignore[misc]
    assert d == d and hash(d) == hash(d)


def test_cache_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XPCONV_CACHE", str(tmp_path / "c"))
    assert ds.get_cache_dir("fashion_mnist") == tmp_path / "c" / "fashion-mnist"
    monkeypatch.delenv("XPCONV_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ds.get_cache_dir("mnist") == tmp_path / "xdg" / "xpconv" / "mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert ds.get_cache_dir() == Path.home() / ".cache" / "xpconv"
