"""Reliability: clear errors at every public boundary, numerical faults, exact resume,
crash safety, untrusted files, memory soak and determinism.

Runs on its own: ``python -m pytest tests/test_reliability.py``.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import xpconv as xc
import xpconv.ops as F
from xpconv.backends.registry import BackendError
from xpconv.data.datasets import load_dataset
from xpconv.io.checkpoint import CheckpointError
from xpconv.nn import layers as L

REPO = Path(__file__).resolve().parents[1]


def tiny_model(seed: int = 0, dropout: bool = False, backend: str = "numpy") -> xc.Sequential:
    layers = [L.Conv2D(3, 3, padding=1, activation="relu"), L.MaxPool2D(2), L.Flatten()]
    if dropout:
        layers.append(L.Dropout(0.25))
    layers.append(L.Dense(4))
    return xc.Sequential(layers, seed=seed, backend=backend, input_shape=(1, 6, 6))


def tiny_data(n: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 1, 6, 6)).astype(np.float32), rng.integers(0, 4, size=n)


def fit(model, x, y, **kw):
    trainer = xc.Trainer(model, xc.SGD(0.05, momentum=0.9), progress=False)
    return trainer.fit(x, y, **kw)


X4 = np.ones((2, 3, 8, 8), dtype=np.float32)
W4 = np.ones((4, 3, 3, 3), dtype=np.float32)
XD, YD = tiny_data()


def _torch_array():
    torch = pytest.importorskip("torch")
    return torch.ones((2, 1, 6, 6))


def _strict_model():
    pytest.importorskip("array_api_strict")
    return tiny_model(backend="array_api_strict")


def _strict_labels(y):
    return xc.get_backend("array_api_strict").asarray(y)


def _nan_data():
    x = XD.copy()
    x[3, 0, 2, 2] = np.nan
    return x


def _inf_data():
    x = XD.copy()
    x[0, 0, 0, 0] = np.inf
    return x


# (description, call, exception type, words the message must contain)
CASES = [
    # functional ops
    ("conv2d wrong rank", lambda: F.conv2d(X4[0], W4), ValueError, ["x", "4-D", "3-D"]),
    ("conv2d wrong channels", lambda: F.conv2d(X4, W4[:, :2]), ValueError, ["weight", "3"]),
    (
        "conv2d image too small",
        lambda: F.conv2d(X4[:, :, :2, :2], W4),
        ValueError,
        ["x", "too small"],
    ),
    (
        "conv2d exact size with stride",
        lambda: F.conv2d(X4, W4, padding="same", stride=2),
        ValueError,
        ["padding", "same", "stride"],
    ),
    ("max_pool2d too small", lambda: F.max_pool2d(X4[:, :, :1, :1], 2), ValueError, ["kernel"]),
    (
        "linear wrong width",
        lambda: F.linear(np.ones((2, 5)), np.ones((3, 4))),
        ValueError,
        ["weight", "5"],
    ),
    (
        "labels out of range",
        lambda: F.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3])),
        ValueError,
        ["labels", "3"],
    ),
    (
        "labels wrong length",
        lambda: F.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1, 2])),
        ValueError,
        ["labels", "2", "3"],
    ),
    (
        "mixed backends",
        lambda: F.conv2d(X4, _torch_array()),
        BackendError,
        ["x", "weight", "torch"],
    ),
    # layers and model
    (
        "layer channel mismatch",
        lambda: xc.Sequential([L.Conv2D(2, 3, in_channels=3)], input_shape=(1, 6, 6)),
        ValueError,
        ["conv2d_0", "in_channels", "3", "1"],
    ),
    (
        "layer image too small",
        lambda: xc.Sequential([L.Conv2D(2, 7)], input_shape=(1, 6, 6)),
        ValueError,
        ["conv2d_0", "too small"],
    ),
    (
        "model wrong example shape",
        lambda: tiny_model().forward(np.ones((2, 1, 5, 5), np.float32)),
        ValueError,
        ["x", "(1, 6, 6)", "(1, 5, 5)"],
    ),
    (
        "model wrong rank",
        lambda: tiny_model().forward(np.ones(36, np.float32)),
        ValueError,
        ["x", "batch"],
    ),
    (
        "model other backend",
        lambda: tiny_model().forward(_torch_array()),
        BackendError,
        ["x", "numpy", "torch"],
    ),
    (
        "model bad dtype name",
        lambda: xc.Sequential([L.Flatten()], dtype="float16"),
        ValueError,
        ["dtype", "float16"],
    ),
    (
        "model unknown backend",
        lambda: xc.Sequential([L.Flatten()], backend="tensorflow"),
        ValueError,
        ["backend", "tensorflow"],
    ),
    ("dropout p", lambda: L.Dropout(1.0), ValueError, ["Dropout", "p", "1.0"]),
    (
        "unknown activation",
        lambda: L.Dense(3, activation="swish"),
        ValueError,
        ["Dense", "activation", "swish"],
    ),
    ("unknown init", lambda: L.Dense(3, init="zeros"), ValueError, ["init", "zeros"]),
    # trainer
    (
        "labels outside classes",
        lambda: fit(tiny_model(), XD, YD + 4),
        ValueError,
        ["y", "[0, 4)", "7"],
    ),
    (
        "device labels outside classes",
        lambda: _strict_model().train_batch(XD, _strict_labels(YD + 4)),
        ValueError,
        ["y", "[0, 4)", "7"],
    ),
    ("negative labels", lambda: fit(tiny_model(), XD, YD - 1), ValueError, ["y", "-1"]),
    (
        "labels wrong length",
        lambda: fit(tiny_model(), XD, YD[:10]),
        ValueError,
        ["y", "48", "(10,)"],
    ),
    (
        "empty dataset",
        lambda: fit(tiny_model(), XD[:0], YD[:0]),
        ValueError,
        ["x", "non-empty", "0"],
    ),
    (
        "batch size zero",
        lambda: fit(tiny_model(), XD, YD, batch_size=0),
        ValueError,
        ["batch_size", "0"],
    ),
    ("epochs zero", lambda: fit(tiny_model(), XD, YD, epochs=0), ValueError, ["epochs", "0"]),
    (
        "NaN in the input",
        lambda: fit(tiny_model(), _nan_data(), YD),
        ValueError,
        ["x", "NaN", "(3, 0, 2, 2)"],
    ),
    ("inf in the input", lambda: tiny_model().evaluate(_inf_data(), YD), ValueError, ["x", "inf"]),
    (
        "float labels for classes",
        lambda: fit(tiny_model(), XD, YD.astype(bool)),
        TypeError,
        ["y", "bool"],
    ),
    # datasets
    ("unknown dataset", lambda: load_dataset("cifar"), ValueError, ["dataset", "cifar"]),
    (
        "missing data dir",
        lambda: load_dataset("mnist", "/nonexistent/xpconv-data"),
        ValueError,
        ["/nonexistent/xpconv-data"],
    ),
]


@pytest.mark.parametrize("call, exc, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_a_clear_error(call, exc, words) -> None:
    with pytest.raises(exc) as info:
        call()
    for word in words:
        assert word in str(info.value), f"{word!r} not in: {info.value}"


def test_float64_data_into_float32_model_is_cast_with_one_warning() -> None:
    model = tiny_model()
    with pytest.warns(UserWarning, match="float64 data cast to the model's float32") as record:
        model.predict(np.ones((3, 1, 6, 6)))
        model.predict(np.ones((3, 1, 6, 6)))
    assert len(record) == 1


# ----------------------------------------------------------- numerical faults


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_nan_loss_stops_training_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    x, y = tiny_data(96)
    model = tiny_model()
    trainer = xc.Trainer(model, xc.SGD(0.01), progress=False, log_every=1)
    path = tmp_path / "training.npz"
    trainer.fit(x, y, epochs=1, batch_size=16, on_epoch_end=lambda t: xc.save_training(t, path))
    saved = path.read_bytes()
    trainer.optimizer = xc.SGD(1e30)  # diverges at once
    with pytest.raises(xc.TrainingError, match=r"loss became (nan|inf) at epoch 2, step \d+"):
        trainer.fit(x, y, epochs=3, batch_size=16, on_epoch_end=lambda t: xc.save_training(t, path))
    assert path.read_bytes() == saved
    assert xc.load_training(path, progress=False).epochs_done == 1


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_nan_step_is_named_exactly() -> None:
    x, y = tiny_data(96)
    x[40] = 3e38  # batch 3 (examples 32..47) overflows to inf in float32
    model = tiny_model()
    trainer = xc.Trainer(model, xc.SGD(0.01), progress=False, log_every=10)
    with pytest.raises(xc.TrainingError, match=r"epoch 1, step 3\b"):
        trainer.fit(x, y, epochs=1, batch_size=16, shuffle=False)


def test_cross_entropy_on_huge_logits_is_finite() -> None:
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5e3]], dtype=np.float32)
    labels = np.array([1, 0])
    loss = F.softmax_cross_entropy(logits, labels)
    grad = F.softmax_cross_entropy_backward(logits, labels)
    assert np.isfinite(loss) and float(loss) == pytest.approx(2e4, rel=1e-6)
    # softmax is one-hot on the largest logit (row 0: class 0, row 1: class 1); the mean
    # over 2 examples halves (softmax - onehot)
    expected = (np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]) - np.eye(3)[labels]) / 2
    np.testing.assert_allclose(np.asarray(grad, dtype=np.float64), expected, atol=1e-6)


# ------------------------------------------------------------------ resume


@pytest.mark.parametrize("backend", ["numpy", "array_api_strict", "torch"])
def test_resume_is_bit_identical(tmp_path: Path, backend: str) -> None:
    if backend == "torch":
        pytest.importorskip("torch")
    x, y = tiny_data(80)
    path = tmp_path / "run.npz"

    def trainer(seed=0):
        model = tiny_model(seed, dropout=True, backend=backend)
        return xc.Trainer(
            model, xc.SGD(0.05, momentum=0.9, final_lr=0.01), seed=seed, progress=False
        )

    full = trainer()
    full.fit(
        x,
        y,
        epochs=3,
        batch_size=16,
        on_epoch_end=lambda t: xc.save_training(t, path) if t.epochs_done == 1 else None,
    )

    resumed = xc.load_training(path, backend=backend, progress=False)
    assert resumed.epochs_done == 1
    resumed.fit(x, y, epochs=3, batch_size=16)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert resumed.history.loss == full.history.loss


def test_determinism_same_seed_same_losses() -> None:
    x, y = tiny_data(64)
    runs = [fit(tiny_model(5, dropout=True), x, y, epochs=2, batch_size=8).loss for _ in range(2)]
    assert runs[0] == runs[1]


# ---------------------------------------------------------------- crash safety

CHILD = """
import sys, numpy as np, xpconv as xc
from xpconv.nn import layers as L
model = xc.Sequential([L.Flatten(), L.Dense(4000)], input_shape=(4000,), seed=0)
trainer = xc.Trainer(model, xc.SGD(0.1, momentum=0.9), progress=False)
trainer.optimizer.step_count = 0
path = sys.argv[1]
for i in range(1000):
    for p in model.parameters().values():
        p.value = p.value + 1.0
    trainer.epochs_done = i
    print("begin", i, flush=True)
    xc.save_training(trainer, path)
    print("done", i, flush=True)
"""


@pytest.mark.slow  # three child processes; tests/io/test_checkpoint_io.py kills one
def test_sigkill_during_checkpoint_write_keeps_previous_loadable(tmp_path: Path) -> None:
    path = tmp_path / "training.npz"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for delay in (0.0, 0.05, 0.12):
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True, env=env
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                line = proc.stdout.readline()
                if line.startswith("begin") and int(line.split()[1]) >= 2:
                    break
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        trainer = xc.load_training(path, progress=False)
        assert trainer.epochs_done >= 1
        weights = trainer.model.state_dict()["dense_0.weight"]
        assert weights.shape == (4000, 4000)


# ------------------------------------------------------------- untrusted files


class _Marker:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_pickle_file_is_refused_without_executing(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "model.npz"
    path.write_bytes(pickle.dumps({"weights": _Marker(marker)}))
    with pytest.raises(CheckpointError, match="pickle"):
        xc.load_model(path)
    assert not marker.exists()


def test_object_array_is_refused_without_executing(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    good = tmp_path / "good.npz"
    xc.save_model(tiny_model(), good)
    bad = tmp_path / "bad.npz"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, src.read(item.filename))
        with dst.open("param/evil.npy", "w") as f:
            np.lib.format.write_array(
                f, np.array([_Marker(marker)], dtype=object), allow_pickle=True
            )
    with pytest.raises(CheckpointError, match="evil"):
        xc.load_model(bad)
    assert not marker.exists()


def test_huge_declared_shape_is_refused_without_allocating(tmp_path: Path) -> None:
    psutil = pytest.importorskip("psutil")
    path = tmp_path / "huge.npz"
    header = {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}
    with zipfile.ZipFile(path, "w") as z:
        with z.open("param/dense_0.weight.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, header)
            f.write(b"\0" * 64)
    before = psutil.Process().memory_info().rss
    with pytest.raises(CheckpointError):
        xc.load_model(path)
    assert psutil.Process().memory_info().rss - before < 100 * 2**20


def test_random_and_foreign_files_are_refused(tmp_path: Path) -> None:
    rnd = tmp_path / "random.npz"
    rnd.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError):
        xc.load_model(rnd)
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.ones(3))
    with pytest.raises(CheckpointError, match="not an xpconv checkpoint"):
        xc.load_model(plain)
    other = tmp_path / "other.npz"
    xc.save_model(xc.models.zoo.lecture(), other)
    arch = xc.load_model(other).get_config()
    arch["layers"][0]["config"]["filters"] = 8
    from xpconv.io.checkpoint import load_checkpoint, save_checkpoint

    arrays, meta = load_checkpoint(other)
    meta["architecture"] = arch
    save_checkpoint(other, arrays, meta)
    with pytest.raises(CheckpointError, match="does not fit its architecture"):
        xc.load_model(other)


# ------------------------------------------------------------------ soak


@pytest.mark.slow
def test_soak_2000_steps_memory_stays_flat() -> None:
    """2,000 steps of the small LeNet on NumPy: resident memory grows < 5% after warm-up."""
    psutil = pytest.importorskip("psutil")
    proc = psutil.Process()
    model = xc.models.zoo.lenet(seed=0)
    opt = xc.SGD(0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 8, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, size=(8, 8))
    rss = []
    for step in range(2000):
        model.train_batch(x[step % 8], y[step % 8])
        opt.step(model.parameters())
        if step in (200, 1999):
            rss.append(proc.memory_info().rss)
    growth = (rss[1] - rss[0]) / rss[0]
    assert growth < 0.05, f"resident memory grew {growth:.1%} from step 200 to 2000"


# ------------------------------------------------------------ command line

CLI_CASES = [
    ("batch size zero", ["train", "--batch-size", "0"], 2, ["--batch-size", "0"]),
    ("epochs zero", ["train", "--epochs", "0"], 2, ["--epochs", "0"]),
    ("unknown backend", ["train", "--backend", "nope"], 2, ["--backend", "nope"]),
    ("empty data dir", ["train", "--data-dir", "{tmp}/none"], 1, ["{tmp}/none"]),
    ("not a checkpoint", ["evaluate", "{tmp}/x.npz"], 1, ["{tmp}/x.npz"]),
]


@pytest.mark.parametrize(
    "argv, code, words", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES]
)
def test_command_line_errors_are_one_clear_line(argv, code, words, tmp_path: Path, capsys) -> None:
    from xpconv.cli import main

    (tmp_path / "x.npz").write_text("not a checkpoint")
    argv = [a.format(tmp=tmp_path) for a in argv]
    if argv[0] == "train":
        argv += ["--out", str(tmp_path / "out"), "--no-progress", "--no-plots"]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err
    for word in words:
        assert word.format(tmp=tmp_path) in err, err
