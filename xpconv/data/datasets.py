"""Image classification datasets: MNIST, Fashion-MNIST and a small offline fallback.

Every loader returns a :class:`Dataset` holding NumPy arrays:

* images: ``(N, 1, H, W)`` ``float32`` (``H = W = 28`` for every built-in dataset),
* labels: ``(N,)`` ``int64`` with values in ``0 .. num_classes - 1``.

Where MNIST / Fashion-MNIST come from, in order:

1. An explicit directory: the ``data_dir`` argument or, if that is not given, the
   ``XPCONV_DATA`` environment variable. The four IDX files may sit directly in it or in a
   subfolder named after the dataset (``mnist`` / ``fashion-mnist``). Each file may be gzipped
   (``.gz``) or not. An explicit directory that lacks the files is an error; nothing is
   downloaded for it.
2. The user cache: ``$XPCONV_CACHE/<name>/`` if that variable is set, else
   ``$XDG_CACHE_HOME/xpconv/<name>/``, else ``~/.cache/xpconv/<name>/``.
3. A download from the public mirrors in :data:`MIRRORS` into the cache (``download=True``).

Every ``.gz`` file, wherever it was found, is checked against the SHA-256 in
:data:`CHECKSUMS` before use. A corrupt file in the cache is downloaded again when
``download=True``; a corrupt file in an explicit directory is always an error.

Only NumPy is needed to import this module; tqdm (progress bars) and scikit-learn (the
:func:`digits` fallback) are imported when used.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.client
import math
import os
import struct
import urllib.error
import urllib.request
import warnings
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CHECKSUMS",
    "DATASETS",
    "MIRRORS",
    "Dataset",
    "DatasetError",
    "digits",
    "fashion_mnist",
    "get_cache_dir",
    "load_dataset",
    "mnist",
]

#: Names accepted by :func:`load_dataset`.
DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist", "digits")

#: Base URLs tried in order when a file has to be downloaded. Each file is fetched as
#: ``base + filename``.
MIRRORS: dict[str, list[str]] = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ],
    "fashion-mnist": [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ],
}

#: SHA-256 of the original gzipped IDX files.
CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": (
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
        ),
        "train-labels-idx1-ubyte.gz": (
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
        ),
        "t10k-images-idx3-ubyte.gz": (
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
        ),
        "t10k-labels-idx1-ubyte.gz": (
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
        ),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": (
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"
        ),
        "train-labels-idx1-ubyte.gz": (
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"
        ),
        "t10k-images-idx3-ubyte.gz": (
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"
        ),
        "t10k-labels-idx1-ubyte.gz": (
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"
        ),
    },
}

#: Seconds to wait for a mirror to connect or to send the next chunk.
DOWNLOAD_TIMEOUT: float = 30.0

_CHUNK = 1 << 16
_NORMALIZE = ("unit", "standard")
_NUM_LABELS = 10

# (role, file stem, IDX ndim)
_FILES: tuple[tuple[str, str, int], ...] = (
    ("train_images", "train-images-idx3-ubyte", 3),
    ("train_labels", "train-labels-idx1-ubyte", 1),
    ("test_images", "t10k-images-idx3-ubyte", 3),
    ("test_labels", "t10k-labels-idx1-ubyte", 1),
)

_TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "digits": "digits"}
_SUBDIRS = {"mnist": ("mnist", "MNIST"), "fashion-mnist": ("fashion-mnist", "fashion_mnist")}
_DIGIT_NAMES: tuple[str, ...] = tuple(str(i) for i in range(10))
_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "mnist": _DIGIT_NAMES,
    "fashion-mnist": (
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
    ),
    "digits": _DIGIT_NAMES,
}

_DIGITS_SOURCE = "scikit-learn 8x8 digits (sklearn.datasets.load_digits), upsampled to 28x28"
_DIGITS_SEED = 0
_DIGITS_TEST = 360

# (resolved path, size, mtime_ns, ctime_ns, inode) -> SHA-256 hex digest
_SHA_MEMO: dict[tuple[str, int, int, int, int], str] = {}


class DatasetError(ValueError):
    """A dataset could not be found, downloaded, verified or parsed.

    The message names the file or directory involved, what was expected, what was found,
    and what to do about it.
    """


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split of an image classification dataset.

    Attributes:
        x_train: training images, shape ``(N_train, 1, H, W)``, ``float32``.
        y_train: training labels, shape ``(N_train,)``, ``int64`` in ``0 .. num_classes - 1``.
        x_test: test images, shape ``(N_test, 1, H, W)``, ``float32``.
        y_test: test labels, shape ``(N_test,)``, ``int64``.
        name: ``"mnist"``, ``"fashion-mnist"`` or ``"digits"``.
        source: where the data came from: a directory, ``"downloaded from ..."``, or
            ``"fallback: scikit-learn 8x8 digits ..."``.
        num_classes: number of classes (10 for every built-in dataset).
        class_names: one human-readable name per class, indexed by label.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    source: str
    num_classes: int
    class_names: tuple[str, ...]

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one image, ``(1, H, W)``."""
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, x_train={self.x_train.shape} {self.x_train.dtype}, "
            f"y_train={self.y_train.shape}, x_test={self.x_test.shape} {self.x_test.dtype}, "
            f"y_test={self.y_test.shape}, num_classes={self.num_classes}, "
            f"source={self.source!r})"
        )


# --------------------------------------------------------------------------- public API


def mnist(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    normalize: str = "unit",
    download: bool = True,
    progress: bool = True,
    mirrors: Sequence[str] | None = None,
) -> Dataset:
    """Load MNIST: 60000 train and 10000 test handwritten digits.

    Args:
        data_dir: directory holding the four IDX files (or a parent with an ``mnist``
            subfolder). Defaults to ``$XPCONV_DATA``, then the user cache.
        normalize: ``"unit"`` scales pixels to ``[0, 1]``; ``"standard"`` then subtracts the
            training-set mean and divides by the training-set standard deviation.
        download: fetch missing files into the cache from :data:`MIRRORS`.
        progress: show a tqdm progress bar while downloading (if tqdm is installed).
        mirrors: base URLs to try instead of ``MIRRORS["mnist"]``.

    Returns:
        A :class:`Dataset` with ``x_train`` ``(60000, 1, 28, 28)`` and ``x_test``
        ``(10000, 1, 28, 28)`` ``float32``, labels ``(N,)`` ``int64``.

    Raises:
        DatasetError: the files are missing, corrupt or could not be downloaded.
        ValueError: ``normalize`` is not one of the allowed values.
    """
    return _load_idx_dataset(
        "mnist",
        data_dir,
        normalize=normalize,
        download=download,
        progress=progress,
        mirrors=mirrors,
    )


def fashion_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    normalize: str = "unit",
    download: bool = True,
    progress: bool = True,
    mirrors: Sequence[str] | None = None,
) -> Dataset:
    """Load Fashion-MNIST: 60000 train and 10000 test 28x28 clothing images.

    Arguments, return value and errors are as for :func:`mnist`; the subfolder looked for in
    ``data_dir`` is ``fashion-mnist`` and the default mirrors are
    ``MIRRORS["fashion-mnist"]``.
    """
    return _load_idx_dataset(
        "fashion-mnist",
        data_dir,
        normalize=normalize,
        download=download,
        progress=progress,
        mirrors=mirrors,
    )


def digits(*, normalize: str = "unit") -> Dataset:
    """Load scikit-learn's 8x8 handwritten digits, upsampled to the MNIST layout.

    Each 8x8 image (values 0..16) is enlarged 3x to 24x24 by pixel repetition and centred in a
    28x28 frame with a 2-pixel zero border, so models built for MNIST run unchanged. The 1797
    images are split by a fixed-seed permutation into 1437 train and 360 test images.

    Args:
        normalize: ``"unit"`` (pixels in ``[0, 1]``) or ``"standard"`` (zero mean and unit
            standard deviation over the training set).

    Returns:
        A :class:`Dataset` with ``x_train`` ``(1437, 1, 28, 28)``, ``x_test``
        ``(360, 1, 28, 28)`` ``float32`` and labels ``(N,)`` ``int64``.

    Raises:
        DatasetError: scikit-learn is not installed.
    """
    _check_normalize(normalize)
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DatasetError(
            "The digits dataset needs scikit-learn, which is not installed. "
            "Install it with `pip install scikit-learn` (or `pip install xpconv[cli]`)."
        ) from exc
    bunch = load_digits()
    small = np.asarray(bunch.images, dtype=np.float32)  # (1797, 8, 8), values 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    big = small.repeat(3, axis=1).repeat(3, axis=2)  # (n, 24, 24)
    images = np.zeros((small.shape[0], 1, 28, 28), dtype=np.float32)
    images[:, 0, 2:26, 2:26] = big / np.float32(16.0)
    order = np.random.default_rng(_DIGITS_SEED).permutation(images.shape[0])
    train, test = order[:-_DIGITS_TEST], order[-_DIGITS_TEST:]
    x_train, x_test = _normalized(images[train], images[test], normalize)
    return Dataset(
        x_train=x_train,
        y_train=labels[train],
        x_test=x_test,
        y_test=labels[test],
        name="digits",
        source=_DIGITS_SOURCE,
        num_classes=10,
        class_names=_CLASS_NAMES["digits"],
    )


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    normalize: str = "unit",
    download: bool = True,
    allow_fallback: bool = False,
    progress: bool = True,
    mirrors: Sequence[str] | None = None,
) -> Dataset:
    """Load a dataset by name: ``"mnist"``, ``"fashion-mnist"`` (or ``"fashion_mnist"``) or
    ``"digits"``.

    By default the data asked for is returned or a :class:`DatasetError` says why it
    cannot be had. Only with ``allow_fallback=True`` (what the command line passes), when no
    explicit directory is given (neither ``data_dir`` nor ``$XPCONV_DATA``) and the data is
    neither cached nor downloadable, :func:`digits` is returned instead with a
    :class:`UserWarning` that says so, why, and how to get the real data. A broken explicit
    directory always raises.

    Args:
        name: dataset name, case-insensitive.
        data_dir, normalize, download, progress, mirrors: as for :func:`mnist`.
        allow_fallback: fall back to :func:`digits` as described above (default: no).

    Returns:
        A :class:`Dataset`; images ``(N, 1, 28, 28)`` ``float32``, labels ``(N,)`` ``int64``.

    Raises:
        ValueError: unknown ``name`` or ``normalize``.
        DatasetError: the data could not be loaded (and no fallback applied).
    """
    key = _dataset_key(name)
    _check_normalize(normalize)
    if key == "digits":
        return digits(normalize=normalize)
    explicit = _explicit_dir(data_dir)
    kwargs: dict[str, Any] = dict(
        normalize=normalize, download=download, progress=progress, mirrors=mirrors
    )
    if explicit is not None or not allow_fallback:
        return _load_idx_dataset(key, data_dir, **kwargs)
    try:
        return _load_idx_dataset(key, None, **kwargs)
    except DatasetError as exc:
        reason = str(exc)
    title = _TITLES[key]
    message = (
        f"xpconv: could not load {title}, so it fell back to the small scikit-learn 8x8 "
        f"digits set (1797 images upsampled to 28x28). Results are NOT comparable to "
        f"{title}.\nWhy: {reason}\nTo use the full {title} data: pass data_dir=DIR or set "
        f"XPCONV_DATA=DIR pointing at the four IDX files, or go online so they "
        f" can be downloaded into {get_cache_dir(key)}."
    )
    try:
        fallback = digits(normalize=normalize)
    except DatasetError as exc:
        raise DatasetError(
            f"Could not load {title}: {reason}\nThe offline fallback is not available either: {exc}"
        ) from exc
    warnings.warn(message, UserWarning, stacklevel=2)
    return dataclasses.replace(fallback, source=f"fallback: {_DIGITS_SOURCE}")


def get_cache_dir(name: str | None = None) -> Path:
    """The download cache directory, optionally the subfolder for dataset ``name``.

    ``$XPCONV_CACHE`` if set, else ``$XDG_CACHE_HOME/xpconv``, else ``~/.cache/xpconv``.
    """
    root_env = os.environ.get("XPCONV_CACHE")
    if root_env:
        root = Path(root_env).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
        root = base / "xpconv"
    return root if name is None else root / _dataset_key(name)


# --------------------------------------------------------------------------- loading


def _dataset_key(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    if key not in DATASETS:
        allowed = ", ".join(repr(d) for d in DATASETS)
        raise ValueError(f"dataset must be one of {allowed} (or 'fashion_mnist'); got {name!r}")
    return key


def _check_normalize(normalize: str) -> None:
    if normalize not in _NORMALIZE:
        allowed = ", ".join(repr(n) for n in _NORMALIZE)
        raise ValueError(f"normalize must be one of {allowed}; got {normalize!r}")


def _explicit_dir(data_dir: str | os.PathLike[str] | None) -> tuple[Path, str] | None:
    """The explicit data directory and a phrase saying where it came from, or None."""
    if data_dir is not None:
        return Path(data_dir).expanduser(), "data_dir"
    env = os.environ.get("XPCONV_DATA")
    if env:
        return Path(env).expanduser(), "the XPCONV_DATA environment variable"
    return None


def _load_idx_dataset(
    key: str,
    data_dir: str | os.PathLike[str] | None,
    *,
    normalize: str,
    download: bool,
    progress: bool,
    mirrors: Sequence[str] | None,
) -> Dataset:
    _check_normalize(normalize)
    explicit = _explicit_dir(data_dir)
    if explicit is not None:
        paths, source = _from_explicit_dir(key, *explicit)
    else:
        if mirrors is None:
            mirrors = MIRRORS[key]
        elif isinstance(mirrors, str):
            mirrors = [mirrors]
        paths, source = _from_cache(key, download=download, progress=progress, mirrors=mirrors)
    arrays = {role: _read_idx(paths[role], ndim) for role, _, ndim in _FILES}
    _check_pair(paths, arrays, "train")
    _check_pair(paths, arrays, "test")
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise DatasetError(
            f"{paths['test_images']}: expected images of size "
            f"{arrays['train_images'].shape[1:]} like {paths['train_images']}, found "
            f"{arrays['test_images'].shape[1:]}. The files belong to different datasets: "
            f"replace them with a matching set (delete them and download again)."
        )
    x_train, x_test = _normalized(
        _to_float(arrays["train_images"]), _to_float(arrays["test_images"]), normalize
    )
    return Dataset(
        x_train=x_train,
        y_train=arrays["train_labels"].astype(np.int64),
        x_test=x_test,
        y_test=arrays["test_labels"].astype(np.int64),
        name=key,
        source=source,
        num_classes=_NUM_LABELS,
        class_names=_CLASS_NAMES[key],
    )


def _to_float(images: np.ndarray) -> np.ndarray:
    out = images.astype(np.float32)[:, None, :, :]
    out /= np.float32(255.0)
    return out


def _normalized(
    x_train: np.ndarray, x_test: np.ndarray, normalize: str
) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``normalize`` (``x_*`` already in [0, 1]; modified in place)."""
    _check_normalize(normalize)
    if normalize == "standard":
        mean = float(x_train.mean(dtype=np.float64))
        std = float(x_train.std(dtype=np.float64))
        if std == 0.0:
            std = 1.0
        for x in (x_train, x_test):
            x -= np.float32(mean)
            x /= np.float32(std)
    return np.ascontiguousarray(x_train), np.ascontiguousarray(x_test)


def _check_pair(paths: dict[str, Path], arrays: dict[str, np.ndarray], split: str) -> None:
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{paths[split + '_labels']}: expected {images.shape[0]} labels, one per image in "
            f"{paths[split + '_images']}, found {labels.shape[0]}. The files do not belong "
            f"together: delete both and download them again (or pass data_dir=DIR with a "
            f"matching set)."
        )
    if labels.size and int(labels.max()) >= _NUM_LABELS:
        bad = int(np.count_nonzero(labels >= _NUM_LABELS))
        raise DatasetError(
            f"{paths[split + '_labels']}: expected labels 0..{_NUM_LABELS - 1}, found "
            f"{bad} label(s) up to {int(labels.max())}. The file is damaged or not a label "
            f"file: delete it and download it again (or pass data_dir=DIR with the right files)."
        )


# --------------------------------------------------------------------------- finding files


def _candidates(stem: str) -> list[str]:
    """File names accepted for ``stem``, preferred first (the gzipped one can be verified)."""
    dotted = stem.replace("-idx", ".idx")
    return [stem + ".gz", stem, dotted + ".gz", dotted]


def _find_files(directory: Path) -> dict[str, Path | None]:
    found: dict[str, Path | None] = {}
    for role, stem, _ in _FILES:
        found[role] = next(
            (directory / n for n in _candidates(stem) if (directory / n).is_file()), None
        )
    return found


def _from_explicit_dir(key: str, directory: Path, origin: str) -> tuple[dict[str, Path], str]:
    title = _TITLES[key]
    if not directory.is_dir():
        what = "does not exist" if not directory.exists() else "is not a directory"
        raise DatasetError(
            f"{title} data directory {directory} (from {origin}) {what}. Pass data_dir=DIR, "
            f"a directory holding the four {title} IDX files, or leave it unset "
            f"to use the download cache."
        )
    options = [directory / sub for sub in _SUBDIRS[key]] + [directory]
    best_dir, best = directory, _find_files(directory)
    for option in options:
        if not option.is_dir():
            continue
        found = _find_files(option)
        if all(found.values()):
            paths = {role: p for role, p in found.items() if p is not None}
            for path in paths.values():
                _verify_gz(key, path, remedy="explicit")
            return paths, str(option.resolve())
        if sum(p is not None for p in found.values()) > sum(p is not None for p in best.values()):
            best_dir, best = option, found
    missing = ", ".join(stem + "[.gz]" for role, stem, _ in _FILES if best[role] is None)
    looked = ", ".join(str(o) for o in options)
    raise DatasetError(
        f"{title} files not found in {best_dir} (from {origin}; looked in {looked}): "
        f"missing {missing}. Put the four IDX files (gzipped or not) there, pass a different "
        f"data_dir=DIR, or leave data_dir and XPCONV_DATA unset to download into the cache."
    )


def _from_cache(
    key: str, *, download: bool, progress: bool, mirrors: Sequence[str]
) -> tuple[dict[str, Path], str]:
    title = _TITLES[key]
    cache = get_cache_dir(key)
    found = _find_files(cache) if cache.is_dir() else {role: None for role, _, _ in _FILES}
    paths: dict[str, Path] = {}
    to_fetch: list[tuple[str, str]] = []
    problems: list[str] = []
    for role, stem, _ in _FILES:
        path = found[role]
        if path is not None:
            try:
                _verify_gz(key, path, remedy="cache")
            except DatasetError as exc:
                if not download:
                    raise
                warnings.warn(f"{exc} Downloading it again.", UserWarning, stacklevel=4)
                path = None
        if path is None:
            to_fetch.append((role, stem + ".gz"))
            problems.append(stem + ".gz")
        else:
            paths[role] = path
    if not to_fetch:
        return paths, str(cache.resolve())
    if not download:
        raise DatasetError(
            f"{title} is not in the cache {cache} (missing {', '.join(problems)}) and "
            f"download=False. Pass data_dir=DIR or set XPCONV_DATA=DIR to a "
            f"directory with the four IDX files, or allow downloading."
        )
    order = list(mirrors)
    used: list[str] = []
    for role, filename in to_fetch:
        paths[role], base = _download_from_mirrors(key, filename, cache, order, progress)
        # Try the mirror that worked first for the remaining files.
        order.remove(base)
        order.insert(0, base)
        if base not in used:
            used.append(base)
    return paths, f"downloaded from {', '.join(used)} into {cache.resolve()}"


# --------------------------------------------------------------------------- checksums


def _sha256(path: Path) -> str:
    from xpconv.io.files import file_identity  # here: the module also loads on its own, by file

    memo_key = file_identity(path)
    digest = _SHA_MEMO.get(memo_key)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = h.hexdigest()
        _SHA_MEMO[memo_key] = digest
    return digest


def _expected_sha(key: str, path: Path) -> tuple[str, str]:
    """(canonical .gz name, expected digest) for a gzipped file found at ``path``."""
    stem = path.name[: -len(".gz")].replace(".idx", "-idx")
    canonical = stem + ".gz"
    return canonical, CHECKSUMS[key][canonical]


def _verify_gz(key: str, path: Path, *, remedy: str) -> None:
    """Check a ``.gz`` file against its known SHA-256; uncompressed files pass unchecked."""
    if path.suffix != ".gz":
        return
    canonical, expected = _expected_sha(key, path)
    actual = _sha256(path)
    if actual == expected:
        return
    title = _TITLES[key]
    for other, sums in CHECKSUMS.items():
        if other != key and sums.get(canonical) == actual:
            raise DatasetError(
                f"{path}: expected the {title} file {canonical} (SHA-256 {expected}), found "
                f"the {_TITLES[other]} file of that name (SHA-256 {actual}). It is the "
                f"{_TITLES[other]} file, not the {title} one: point data_dir=DIR at "
                f"the {title} files instead."
            )
    if remedy == "cache":
        todo = "Delete it and it will be downloaded again (or call with download=True)."
    else:
        todo = (
            "Delete it and download it again, replace it with the original file, or "
            "decompress it (uncompressed IDX files are read without a checksum); or pass a "
            "different data_dir=DIR."
        )
    raise DatasetError(
        f"{path}: checksum mismatch: expected SHA-256 {expected} (the original {title} "
        f"{canonical}), found {actual}. The file is corrupt or incomplete. {todo}"
    )


# --------------------------------------------------------------------------- IDX parsing


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes with ``ndim`` dimensions (gzipped or not)."""
    redo = "Delete it and download it again (or pass data_dir=DIR with intact files)."
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: could not be read or decompressed ({exc}). {redo}") from exc
    kind = "images" if ndim == 3 else "labels"
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DatasetError(
            f"{path}: not an IDX file: expected the magic bytes 00 00 08 {ndim:02x}, found "
            f"{data[:4].hex(' ') or 'an empty file'}. {redo}"
        )
    if data[2] != 0x08:
        raise DatasetError(
            f"{path}: expected IDX data type 0x08 (unsigned byte), found 0x{data[2]:02x}. {redo}"
        )
    if data[3] != ndim:
        raise DatasetError(
            f"{path}: expected an IDX file of {kind} with {ndim} dimension(s), found "
            f"{data[3]}. Is it the right file? {redo}"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(
            f"{path}: expected a {header}-byte IDX header, found only {len(data)} bytes "
            f"(truncated file). {redo}"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(dims)  # Python ints: a crafted header cannot overflow
    found = len(data) - header
    if found != expected:
        what = "truncated file" if found < expected else "trailing data"
        raise DatasetError(
            f"{path}: expected {expected} bytes of data after the header "
            f"({' x '.join(map(str, dims))}), found {found} ({what}). {redo}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


# --------------------------------------------------------------------------- downloading


def _download_from_mirrors(
    key: str, filename: str, cache: Path, mirrors: Iterable[str], progress: bool
) -> tuple[Path, str]:
    """Fetch ``filename`` from the first mirror that delivers it intact.

    Returns the final path and the mirror used.
    """
    title = _TITLES[key]
    mirrors = list(mirrors)
    if not mirrors:
        raise DatasetError(
            f"No mirrors to download {title} {filename} from. Pass data_dir=DIR "
            f"or set XPCONV_DATA=DIR to a directory with the four IDX files."
        )
    expected = CHECKSUMS[key][filename]
    failures: list[str] = []
    for i, base in enumerate(mirrors):
        url = base.rstrip("/") + "/" + filename
        try:
            path = _download(url, cache / filename, expected, progress)
            return path, base
        except _DownloadFailed as exc:
            failures.append(f"  - {url}: {exc}")
            if i + 1 < len(mirrors):
                warnings.warn(
                    f"xpconv: downloading {url} failed: {exc}; trying the next mirror.",
                    UserWarning,
                    stacklevel=5,
                )
    raise DatasetError(
        f"Could not download {title} {filename} into {cache}; every mirror failed:\n"
        + "\n".join(failures)
        + "\nWhat to do: check the internet connection and try again, or download the four "
        "IDX files yourself and pass data_dir=DIR or set XPCONV_DATA=DIR."
    )


class _DownloadFailed(Exception):
    pass


def _download(url: str, final: Path, expected_sha: str, progress: bool) -> Path:
    """Stream ``url`` into a temp file beside ``final``, verify it, then move it into place.

    Raises _DownloadFailed with a short reason; never leaves a partial file behind.
    """
    from xpconv.io.files import atomic_write, file_identity

    final.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(final, suffix=".part") as out:
        digest, received = _stream(url, out, final.name, progress)
        if digest != expected_sha:  # the temporary file is removed, nothing is renamed
            raise _DownloadFailed(
                f"checksum mismatch: expected SHA-256 {expected_sha}, got {digest} "
                f"({received} bytes)"
            )
    _SHA_MEMO[file_identity(final)] = digest
    return final


def _stream(url: str, out, label: str, progress: bool) -> tuple[str, int]:
    """Copy the body of ``url`` into ``out``; return (SHA-256 hex digest, byte count)."""
    from xpconv.io.files import progress_bar

    request = urllib.request.Request(url, headers={"User-Agent": "xpconv"})
    h = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT) as response:
            length_header = response.headers.get("Content-Length")
            length = int(length_header) if length_header and length_header.isdigit() else None
            bar = progress_bar(progress, length, label, unit="B")
            try:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    h.update(chunk)
                    received += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
    except urllib.error.HTTPError as exc:
        raise _DownloadFailed(f"HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise _DownloadFailed(f"could not connect ({exc.reason})") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise _DownloadFailed(
            f"connection failed after {received} bytes ({type(exc).__name__}: {exc})"
        ) from exc
    if length is not None and received != length:
        raise _DownloadFailed(f"connection closed early: received {received} of {length} bytes")
    return h.hexdigest(), received
