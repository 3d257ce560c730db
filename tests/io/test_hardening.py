"""What a careful attacker and a careless user used to break: each case a minimal
reproduction that now gets a clear, documented refusal (or the right answer).

Runs on its own: ``python -m pytest tests/io/test_hardening.py``.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import DATA_DIR

import xpconv as xc
import xpconv.ops as F
from xpconv import load_model, load_training, save_model, save_training
from xpconv.cli import main
from xpconv.data.datasets import DatasetError
from xpconv.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from xpconv.nn import layers as L

REPO = Path(__file__).resolve().parents[2]
MNIST = DATA_DIR / "mnist"


def small_model(backend: str = "numpy", seed: int = 0) -> xc.Sequential:
    layers = [L.Conv2D(3, 3, padding=1, activation="relu"), L.MaxPool2D(2), L.Flatten()]
    return xc.Sequential([*layers, L.Dense(4)], backend=backend, seed=seed, input_shape=(1, 6, 6))


def small_data(n: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    return rng.normal(size=(n, 1, 6, 6)).astype(np.float32), rng.integers(0, 4, size=n)


def peak_bytes(call: Any) -> tuple[BaseException | None, int]:
    """Run ``call``; return the exception it raised (or None) and the peak of traced
    allocations (NumPy's included)."""
    tracemalloc.start()
    error = None
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - the caller checks its type
        error = exc
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return error, peak


# ------------------------------------------------------------- 1. validate before allocate


def _dense_checkpoint(path: Path, input_shape: Any) -> Path:
    arch = {
        "layers": [{"type": "Flatten", "config": {}}, {"type": "Dense", "config": {"units": 10}}],
        "loss": "softmax_cross_entropy",
        "dtype": "float32",
        "seed": 0,
        "input_shape": input_shape,
    }
    arrays = {
        "param/dense_0.weight": np.zeros((10, 5), np.float32),
        "param/dense_0.bias": np.zeros(10, np.float32),
    }
    save_checkpoint(path, arrays, {"kind": "model", "architecture": arch})
    return path


@pytest.mark.parametrize(
    "input_shape",
    [[1, 5000, 1000], [1, 4000, 4000], [1, 10**6, 10**6], None, "abc", [1, 2.5, 3], [0, 4]],
    ids=str,
)
def test_crafted_architecture_is_refused_before_any_allocation(
    tmp_path: Path, input_shape: Any
) -> None:
    path = _dense_checkpoint(tmp_path / "model.npz", input_shape)
    assert path.stat().st_size < 100_000
    error, peak = peak_bytes(lambda: load_model(path))
    assert isinstance(error, CheckpointError), repr(error)
    assert "input_shape" in str(error) or "dense_0.weight" in str(error)
    assert peak < 5 * 2**20, f"peak {peak / 2**20:.1f} MiB before the refusal"


@pytest.mark.parametrize("input_shape", [[1, 10**6, 10**6], None], ids=str)
def test_cli_evaluate_of_a_crafted_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], input_shape: Any
) -> None:
    path = _dense_checkpoint(tmp_path / "model.npz", input_shape)
    assert main(["evaluate", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("xpconv: error: ") and "input_shape" in err
    assert "Traceback" not in err


def test_parameter_count_is_checked_against_the_stored_arrays(tmp_path: Path) -> None:
    model = small_model()
    save_model(model, tmp_path / "m.npz")
    arrays, meta = load_checkpoint(tmp_path / "m.npz")
    meta["architecture"]["layers"][-1]["config"]["units"] = 5
    save_checkpoint(tmp_path / "bad.npz", arrays, meta)
    with pytest.raises(CheckpointError, match=r"dense_0\.weight.*\(5, 27\)"):
        load_model(tmp_path / "bad.npz")


# ------------------------------------------------------------- 2. trainer metadata


@pytest.fixture(scope="module")
def training_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = small_model()
    trainer = xc.Trainer(model, xc.SGD(0.05, momentum=0.9, final_lr=0.01), progress=False)
    trainer.fit(*small_data(), epochs=1, batch_size=16)
    path = tmp_path_factory.mktemp("train") / "training.npz"
    save_training(trainer, path)
    return path


def _edit(state: dict, arrays: dict, case: str) -> None:
    t = state["trainer"]
    if case == "missing optimizer":
        del t["optimizer"]
    elif case == "extra optimizer keyword":
        t["optimizer"]["centered"] = True
    elif case == "odd rng state":
        t["shuffle_rng"]["state"] = {"state": "x"}
    elif case == "extra history key":
        t["history"]["gradient_norm"] = [1.0]
    elif case == "velocity broadcast":
        arrays["trainer/optimizer/dense_0.weight/velocity"] = np.zeros(1, np.float32)
    elif case == "velocity of unknown parameter":
        arrays["trainer/optimizer/dense_9.weight/velocity"] = np.zeros((4, 27), np.float32)
    elif case == "negative epochs_done":
        t["epochs_done"] = -3
    elif case == "negative final_lr":
        t["optimizer"]["final_lr"] = -5.0
    elif case == "history too short":
        t["history"]["loss"] = []
    elif case == "integer optimizer state":
        key = "trainer/optimizer/dense_0.bias/velocity"
        arrays[key] = np.zeros(4, np.int64)


TRAINER_CASES = [
    "missing optimizer",
    "extra optimizer keyword",
    "odd rng state",
    "extra history key",
    "velocity broadcast",
    "velocity of unknown parameter",
    "negative epochs_done",
    "negative final_lr",
    "history too short",
    "integer optimizer state",
]


@pytest.mark.parametrize("case", TRAINER_CASES)
def test_crafted_training_metadata_is_refused(training_file: Path, tmp_path: Path, case: str):
    arrays, meta = load_checkpoint(training_file)
    _edit(meta, arrays, case)
    meta = {k: v for k, v in meta.items() if k not in ("format", "version")}
    bad = tmp_path / "training.npz"
    save_checkpoint(bad, arrays, meta)
    with pytest.raises(CheckpointError, match="trainer"):
        load_training(bad, progress=False)


def test_valid_training_checkpoint_still_loads(training_file: Path) -> None:
    trainer = load_training(training_file, progress=False)
    assert trainer.epochs_done == 1 and trainer.optimizer.momentum == 0.9


# ------------------------------------------------------------- 3. one target check


def test_accuracy_with_one_hot_and_probability_targets() -> None:
    model = small_model()
    x, y = small_data(40)
    xc.Trainer(model, xc.SGD(0.1, momentum=0.9), progress=False).fit(x, y, epochs=3)
    by_index = model.evaluate(x, y)
    one_hot = model.evaluate(x, np.eye(4, dtype=np.float32)[y])
    soft = np.full((40, 4), 0.1, np.float32)
    soft[np.arange(40), y] = 0.7
    assert by_index["accuracy"] > 0.3
    assert one_hot["accuracy"] == by_index["accuracy"]
    assert model.evaluate(x, soft)["accuracy"] == by_index["accuracy"]


def test_trainer_accuracy_is_the_same_for_one_hot_targets() -> None:
    x, y = small_data(40)
    runs = []
    for targets in (y, np.eye(4, dtype=np.float32)[y]):
        trainer = xc.Trainer(small_model(), xc.SGD(0.1), progress=False)
        runs.append(trainer.fit(x, targets, epochs=2, batch_size=8).accuracy)
    assert runs[0] == runs[1] and runs[0][-1] > 0


@pytest.mark.parametrize(
    "targets, words",
    [
        (np.zeros((32, 5), np.float32), ["y", "4 columns", "(32, 5)"]),
        (np.zeros(32, np.float32), ["y", "2-D", "integer"]),
        (np.zeros((32, 2), np.int64), ["y", "1-D"]),
        (np.zeros(31, np.int64), ["y", "32 rows", "31"]),
    ],
    ids=["width", "float rank", "int rank", "length"],
)
def test_targets_are_checked_in_one_place(targets: np.ndarray, words: list[str]) -> None:
    x, _ = small_data()
    for call in (
        lambda: small_model().evaluate(x, targets),
        lambda: xc.Trainer(small_model(), xc.SGD(0.1), progress=False).fit(x, targets),
    ):
        with pytest.raises(ValueError) as info:
            call()
        assert all(w in str(info.value) for w in words), str(info.value)


# ------------------------------------------------------------- 4. optimizer arguments


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: xc.SGD(0.1, final_lr=-1.0), "final_lr"),
        (lambda: xc.SGD(0.1, final_lr=float("nan")), "final_lr"),
        (lambda: xc.SGD(float("inf")), "lr"),
        (lambda: xc.SGD(0.1, weight_decay=float("nan")), "weight_decay"),
        (lambda: xc.SGD(0.1, momentum=float("nan")), "momentum"),
        (lambda: xc.Adam(eps=0.0), "eps"),
        (lambda: xc.Adam(eps=-1e-8), "eps"),
        (lambda: xc.Adam(beta1=float("nan")), "beta1"),
        (lambda: xc.Adam(0.1, final_lr=0.0, decay="exponential"), "final_lr"),
        (lambda: xc.SGD("0.1"), "lr"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_optimizer_arguments_are_checked_at_construction(make: Any, name: str) -> None:
    with pytest.raises((ValueError, TypeError), match=f"^{name}:"):
        make()


def test_numpy_scalars_are_accepted_for_rates_and_probabilities() -> None:
    opt = xc.SGD(np.float32(0.1), momentum=np.float64(0.9), final_lr=np.float32(0.05))
    assert opt.get_config()["lr"] == pytest.approx(0.1) and type(opt.get_config()["lr"]) is float
    assert L.Dropout(np.float32(0.25)).p == 0.25
    json.dumps(opt.get_config())


# ------------------------------------------------------------- 5. non-finite inputs


def _device_cases() -> list[Any]:
    cases = []
    for name in ("torch", "array_api_strict"):
        try:
            xc.backends.registry.get_backend(name)
            marks = []
        except xc.backends.registry.BackendError as exc:
            marks = [pytest.mark.skip(reason=str(exc))]
        cases.append(pytest.param(name, marks=marks, id=name))
    return cases


@pytest.mark.parametrize("backend", _device_cases())
def test_non_finite_device_arrays_are_refused_before_compute(backend: str) -> None:
    model = small_model(backend)
    be = model.backend
    x, y = small_data()
    x[5, 0, 2, 3] = np.nan
    xd, yd = be.asarray(x), be.asarray(y)
    before = model.state_dict()
    for call in (
        lambda: model.predict(xd),
        lambda: model.predict_classes(xd),
        lambda: model.evaluate(xd, yd),
        lambda: model.forward(xd),
        lambda: xc.Trainer(model, xc.SGD(0.1), progress=False).fit(xd, yd),
    ):
        with pytest.raises(ValueError, match=r"x: expected finite values.*\(5, 0, 2, 3\)"):
            call()
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("backend", ["numpy", *_device_cases()])
def test_values_beyond_the_model_dtype_are_refused_not_cast_to_inf(backend: str) -> None:
    model = small_model(backend)
    x = np.zeros((2, 1, 6, 6))
    x[1, 0, 0, 0] = 1e300
    data = x if backend == "numpy" else model.backend.asarray(x, dtype="float64")
    with pytest.raises(ValueError, match=r"x: expected values within the float32 range.*1e\+300"):
        model.predict(data)  # refused before the cast, so no cast warning either


def test_the_finiteness_check_can_be_turned_off() -> None:
    model = small_model()
    x, _ = small_data(4)
    x[0, 0, 0, 0] = np.inf
    model.check_finite = False
    with np.errstate(invalid="ignore"):
        assert np.isnan(model.predict(x)).any()


# ------------------------------------------------------------- 6-9. the command line


needs_mnist = pytest.mark.skipif(
    not (MNIST / "train-images-idx3-ubyte.gz").exists(), reason=f"no MNIST in {MNIST}"
)
TRAIN = ["train", "--data-dir", str(MNIST), "--limit", "120", "--no-progress", "--no-plots"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"no MNIST in {MNIST}")
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    return out


@needs_mnist
def test_train_refuses_to_overwrite_a_run(cli_run: Path, capsys) -> None:
    before = (cli_run / "metrics.json").read_bytes()
    assert main([*TRAIN, "--out", str(cli_run)]) == 1
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err and "Traceback" not in err
    assert (cli_run / "metrics.json").read_bytes() == before


@needs_mnist
def test_overwrite_replaces_a_run(cli_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "metrics.json").write_text("{}", encoding="utf-8")
    assert main([*TRAIN, "--out", str(copy), "--overwrite"]) == 0
    assert json.loads((copy / "metrics.json").read_text(encoding="utf-8"))["epochs"] == 1


@needs_mnist
@pytest.mark.parametrize(
    "change, words",
    [
        (["--limit", "60"], ["--limit 60", "120"]),
        (["--limit", "120", "--batch-size", "30"], ["--batch-size 30", "60"]),
        (["--limit", "120", "--dataset", "digits"], ["--dataset digits", "mnist"]),
        (["--limit", "120", "--model", "lenet"], ["--model lenet", "lecture"]),
    ],
    ids=["limit", "batch size", "dataset", "model"],
)
def test_resume_refuses_other_data_settings(
    cli_run: Path, tmp_path: Path, capsys, change: list[str], words: list[str]
) -> None:
    argv = ["train", "--data-dir", str(MNIST), "--no-progress", "--no-plots", *change]
    code = main([*argv, "--resume", str(cli_run / "training.npz"), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 1 and all(w in err for w in words), err
    assert not (tmp_path / "r").exists()


@needs_mnist
def test_resume_takes_the_recorded_settings(cli_run: Path, tmp_path: Path, capsys) -> None:
    argv = ["train", "--data-dir", str(MNIST), "--no-progress", "--no-plots", "--epochs", "2"]
    assert main([*argv, "--resume", str(cli_run / "training.npz"), "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["train_examples"] == 120 and metrics["batch_size"] == 60


@needs_mnist
def test_interrupt_after_resume_names_a_checkpoint_that_exists(
    cli_run: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(xc.Trainer, "fit", interrupted)
    argv = [*TRAIN, "--epochs", "3", "--resume", str(cli_run / "training.npz")]
    assert main([*argv, "--out", str(tmp_path / "new")]) == 130
    err = capsys.readouterr().err
    named = err.split("--resume ")[1].split()[0]
    assert Path(named).exists(), err
    assert named == str(cli_run / "training.npz")


def test_evaluate_missing_file_says_so(tmp_path: Path, capsys) -> None:
    assert main(["evaluate", str(tmp_path / "missing.npz")]) == 1
    err = capsys.readouterr().err
    assert "does not exist" in err and "missing.npz" in err and "Errno" not in err


# ------------------------------------------------------------- 10-11. ownership


def test_a_layer_is_owned_by_one_model() -> None:
    dense = L.Dense(4)
    with pytest.raises(ValueError, match=r"layers\[2\].*twice"):
        xc.Sequential([L.Flatten(), dense, dense], input_shape=(4,))
    shared = L.Dense(4)
    first = xc.Sequential([L.Flatten(), shared], input_shape=(1, 3, 3), seed=1)
    weights = first.state_dict()
    with pytest.raises(ValueError, match=r"layers\[1\].*another model"):
        xc.Sequential([L.Flatten(), shared], input_shape=(1, 5, 5))
    after = first.state_dict()
    assert all(np.array_equal(weights[k], after[k]) for k in weights)


def test_a_layer_of_a_deleted_model_can_be_reused() -> None:
    import gc

    dense = L.Dense(4)
    model = xc.Sequential([L.Flatten(), dense], input_shape=(1, 3, 3))
    del model
    gc.collect()
    assert xc.Sequential([L.Flatten(), dense], input_shape=(1, 3, 3)).num_parameters() == 40


@pytest.mark.parametrize("target", [b for b in _device_cases() if b.id == "array_api_strict"])
def test_training_after_model_to_moves_the_optimizer_state(target: str) -> None:
    x, y = small_data()
    model = small_model()
    trainer = xc.Trainer(model, xc.Adam(0.01), progress=False)
    trainer.fit(x, y, epochs=1, batch_size=16)
    model.to(target)
    with pytest.warns(UserWarning, match="optimizer: moved .* state"):
        trainer.fit(x, y, epochs=2, batch_size=16)
    assert all(model.backend.owns(v) for s in trainer.optimizer.state.values() for v in s.values())
    assert trainer.epochs_done == 2


# ------------------------------------------------------------- 12. clear errors


@pytest.mark.filterwarnings("ignore:.*float64 data cast:UserWarning")
def test_predict_and_evaluate_take_python_lists() -> None:
    model = small_model()
    x, y = small_data(3)
    expected = model.predict(x)
    assert np.array_equal(model.predict(x.tolist()), expected)
    assert model.evaluate(x.tolist(), y.tolist())["loss"] == pytest.approx(
        model.evaluate(x, y)["loss"]
    )


@pytest.mark.parametrize("shape", ["abc", 5, (1, 8.7, 8), (1, True, 3)], ids=str)
def test_input_shape_must_be_ints(shape: Any) -> None:
    with pytest.raises(TypeError, match="input_shape"):
        xc.Sequential([L.Flatten(), L.Dense(2)], input_shape=shape)


def _idx(array: np.ndarray, dims: tuple[int, ...] | None = None) -> bytes:
    dims = array.shape if dims is None else dims
    return bytes([0, 0, 8, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + array.tobytes()


def test_idx_header_that_overflows_int64_names_the_file(tmp_path: Path) -> None:
    from xpconv.data.datasets import mnist

    images, labels = np.zeros((2, 3, 3), np.uint8), np.zeros(2, np.uint8)
    for stem, data in (
        ("train-images-idx3-ubyte", _idx(np.zeros(0, np.uint8), (2**31, 2**31, 4))),
        ("train-labels-idx1-ubyte", _idx(labels)),
        ("t10k-images-idx3-ubyte", _idx(images)),
        ("t10k-labels-idx1-ubyte", _idx(labels)),
    ):
        (tmp_path / stem).write_bytes(data)
    with pytest.raises(
        DatasetError, match=r"train-images-idx3-ubyte: expected 18446744073709551616 bytes"
    ):
        mnist(data_dir=tmp_path)


@pytest.mark.parametrize(
    "call, exc, words",
    [
        (lambda t: t.fit(np.float32(1.0), np.int64(0)), ValueError, ["x", "shape ()"]),
        (lambda t: t.fit(*small_data(), validation_data=(None, None)), TypeError, ["x_val"]),
        (lambda t: t.fit(*small_data(), validation_data=5), ValueError, ["validation_data"]),
    ],
    ids=["0-d", "None pair", "not a pair"],
)
def test_fit_arguments_give_clear_errors(call: Any, exc: type, words: list[str]) -> None:
    trainer = xc.Trainer(small_model(), xc.SGD(0.1), progress=False)
    with pytest.raises(exc) as info:
        call(trainer)
    assert all(w in str(info.value) for w in words), str(info.value)


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: F.conv1d(np.ones((2, 3, 4)), np.ones((5, 3, 7))), ["length 4", "kernel size 7"]),
        (lambda: F.conv1d(np.ones((2, 3, 8)), np.ones((5, 2, 3))), ["(5, 2, 3)"]),
        (
            lambda: F.conv1d_backward(np.ones((2, 5, 1)), np.ones((2, 3, 4)), np.ones((5, 3, 7))),
            ["length 4"],
        ),
        (lambda: xc.Sequential([L.Conv1D(4, 9)], input_shape=(2, 5)), ["conv1d_0", "length 5"]),
    ],
    ids=["short", "channels", "backward", "layer"],
)
def test_conv1d_errors_speak_1d(call: Any, words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert all(w in message for w in words) and ", 1, " not in message, message


def test_pool_padding_is_checked_at_build_by_the_forward_geometry() -> None:
    with pytest.raises(ValueError, match="maxpool2d_0: padding: expected at most half"):
        xc.Sequential([L.MaxPool2D(2, padding=2), L.Flatten(), L.Dense(2)], input_shape=(1, 8, 8))
    model = xc.Sequential([L.AvgPool2D(3, 2, padding=1), L.Flatten()], input_shape=(1, 7, 7))
    assert model.predict(np.ones((1, 1, 7, 7), np.float32)).shape == (1, 16)


def test_cli_traceback_only_with_the_flag(tmp_path: Path) -> None:
    path = _dense_checkpoint(tmp_path / "model.npz", None)
    cmd = [sys.executable, "-m", "xpconv", "evaluate", str(path)]
    quiet = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    loud = subprocess.run(
        [*cmd, "--traceback"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert quiet.returncode == 1 and "Traceback" not in quiet.stderr
    assert "Traceback" in loud.stderr and "CheckpointError" in loud.stderr


class _Gain(L.Layer):
    """A layer type the schema has no shape rule for."""

    def _build(self, input_shape, ctx):
        self._param(ctx, "gain", np.ones(input_shape))
        return input_shape

    def forward(self, x, training):
        return x * self.params["gain"].value


def test_a_new_layer_type_is_validated_by_its_own_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(L.LAYERS, "_Gain", _Gain)
    model = xc.Sequential([L.Flatten(), _Gain(), L.Dense(2)], input_shape=(1, 3, 3))
    save_model(model, tmp_path / "m.npz")
    assert load_model(tmp_path / "m.npz").num_parameters() == model.num_parameters()
    arrays, meta = load_checkpoint(tmp_path / "m.npz")
    arrays["param/_gain_0.gain"] = np.ones(4, np.float32)
    meta = {k: v for k, v in meta.items() if k not in ("format", "version")}
    save_checkpoint(tmp_path / "bad.npz", arrays, meta)
    with pytest.raises(CheckpointError, match=r"_gain_0\.gain.*\(9,\)"):
        load_model(tmp_path / "bad.npz")


def test_compressed_zeros_that_expand_far_beyond_the_file_are_refused_cheaply(tmp_path) -> None:
    """A file of about 100 KB whose deflated entry of zeros declares 100 MB is refused
    from its headers: no array is read, and loading costs far less than 50 MB."""
    import zipfile

    path = tmp_path / "zeros.npz"
    save_checkpoint(path, {"w": np.ones(3, np.float32)}, {"kind": "test"}, compress=True)
    header = b"\x93NUMPY\x01\x00"
    text = "{'descr': '<f4', 'fortran_order': False, 'shape': (26214400,), }"
    text = text + " " * (63 - len(text) % 64) + "\n"
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("big.npy", "w", force_zip64=True) as out:
            out.write(header + struct.pack("<H", len(text)) + text.encode())
            chunk = bytes(2**20)
            for _ in range(100):
                out.write(chunk)
    assert path.stat().st_size < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="times its size"):
            load_checkpoint(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20
    arrays, _ = load_checkpoint(path, max_bytes=None)  # trusted: read as it is
    assert arrays["big"].shape == (26214400,) and not arrays["big"].any()
