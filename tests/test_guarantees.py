"""The reliability round's cases: each test here failed before its fix.

Activations along an axis keep their axis through PyTorch and ONNX (one table,
``ops.ACTIVATIONS``); hooks are refused by ``from_torch``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

import xpconv as xc
from xpconv import ops as F


def _axis_model(cls: type, axis: int | None) -> xc.Sequential:
    act = cls() if axis is None else cls(axis=axis)
    return xc.Sequential(
        [xc.Conv2D(4, 3), act, xc.Flatten(), xc.Dense(3)], input_shape=(1, 6, 6), seed=0
    )


def _x() -> np.ndarray:
    return np.random.default_rng(0).random((2, 1, 6, 6), dtype=np.float32)


def test_one_activation_table_names_every_layer_and_export() -> None:
    from xpconv.io import onnx as xonnx
    from xpconv.io import schema

    for name, spec in F.ACTIVATIONS.items():
        assert xc.nn.layers.LAYERS[spec.layer].__name__ == spec.layer
        assert schema._ACT_OF[spec.layer] == name
        assert name in xonnx.ONNX_ACTIVATIONS
    assert {"softmax", "log_softmax"} == F.ALONG_AN_AXIS


@pytest.mark.parametrize("cls", [xc.Softmax, xc.LogSoftmax], ids=["softmax", "log_softmax"])
def test_to_torch_keeps_the_softmax_axis(cls: type) -> None:  # case 5
    torch = pytest.importorskip("torch")
    model = _axis_model(cls, 1)
    net = xc.to_torch(model)
    with torch.no_grad():
        got = net(torch.from_numpy(_x())).numpy()
    np.testing.assert_allclose(got, np.asarray(model.predict(_x())), atol=1e-5)


@pytest.mark.parametrize("cls", [xc.Softmax, xc.LogSoftmax], ids=["softmax", "log_softmax"])
def test_onnx_export_keeps_the_softmax_axis(cls: type, tmp_path: Path) -> None:  # case 6
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = _axis_model(cls, 1)
    xc.to_onnx(model, tmp_path / "m.onnx")
    runtime = ort.InferenceSession(str(tmp_path / "m.onnx"))
    got = runtime.run(None, {"input": _x()})[0]
    np.testing.assert_allclose(got, np.asarray(model.predict(_x())), atol=1e-5)


@pytest.mark.parametrize("dim", [None, 1, -3], ids=["implicit", "1", "-3"])
def test_from_torch_reads_the_softmax_dim(dim: int | None) -> None:  # case 7
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    soft = nn.Softmax() if dim is None else nn.Softmax(dim=dim)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), soft, nn.Flatten(), nn.Linear(64, 3))
    model = xc.from_torch(net, (1, 6, 6))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: implicit dim is deprecated
        expected = net(torch.from_numpy(_x())).numpy()
    np.testing.assert_allclose(np.asarray(model.predict(_x())), expected, atol=1e-5)
    assert model.layers[1].get_config() == {"axis": 1}


def test_from_torch_refuses_hooks() -> None:  # case 8
    torch = pytest.importorskip("torch")
    nn = torch.nn
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    handle = net[1].register_forward_hook(lambda module, inputs, out: out * 2)
    with pytest.raises(ValueError, match=r"hooks .* 1: Linear \(forward hook\)"):
        xc.from_torch(net, (1, 6, 6))
    handle.remove()
    handle = net.register_forward_pre_hook(lambda module, inputs: None)
    with pytest.raises(ValueError, match=r"Sequential \(forward pre hook\)"):
        xc.from_torch(net, (1, 6, 6))
    handle.remove()
    xc.from_torch(net, (1, 6, 6))  # no hook left: converted


# ---------------------------------------------------------------- formats follow the name


def _tiny() -> xc.Sequential:
    return xc.Sequential([xc.Flatten(), xc.Dense(3)], input_shape=(1, 4, 4), seed=0)


@pytest.mark.parametrize("suffix", [".h5", ".pt", ".onnx", ".pkl", ""])
def test_save_model_refuses_a_suffix_it_does_not_write(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"m{suffix}"
    with pytest.raises(ValueError, match=r"expected one of \['.npz', '.safetensors'\]"):
        xc.save_model(_tiny(), path)
    assert not path.exists()


@pytest.mark.parametrize("suffix", [".NPZ", ".safetensors"])
def test_saved_and_loaded_in_the_format_the_name_says(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"m{suffix}"
    xc.save_model(_tiny(), path)
    head = path.read_bytes()[:9]
    assert head.startswith(b"PK") == (suffix.lower() == ".npz")
    x = np.ones((2, 1, 4, 4), np.float32)
    np.testing.assert_array_equal(xc.load_model(path).predict(x), _tiny().predict(x))


def test_load_model_refuses_onnx_pt_and_mismatched_first_bytes(tmp_path: Path) -> None:
    from xpconv.io.checkpoint import CheckpointError

    for name, words in (("m.onnx", "onnxruntime"), ("m.pt", "never loads pickles")):
        (tmp_path / name).write_bytes(b"\x08\x07")
        with pytest.raises(CheckpointError, match=words):
            xc.load_model(tmp_path / name)
    xc.save_model(_tiny(), tmp_path / "a.npz")
    xc.save_model(_tiny(), tmp_path / "b.safetensors")
    (tmp_path / "a.npz").rename(tmp_path / "a.safetensors")
    (tmp_path / "b.safetensors").rename(tmp_path / "b.npz")
    with pytest.raises(CheckpointError, match=r"first bytes are those of an \.npz"):
        xc.load_model(tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match="first bytes are those of a safetensors"):
        xc.load_model(tmp_path / "b.npz")


def test_export_writes_every_format_and_never_its_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # case 4, and issue "formats follow the file name"
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from xpconv.cli import main

    source = tmp_path / "m.npz"
    xc.save_model(_tiny(), source)
    before = source.read_bytes()
    (tmp_path / "link.npz").hardlink_to(source)
    for same in (str(source), str(tmp_path / "." / "m.npz"), str(tmp_path / "link.npz")):
        assert main(["export", str(source), same]) == 1
        assert "it is the checkpoint being exported" in capsys.readouterr().err
    assert source.read_bytes() == before
    assert main(["export", str(source), str(tmp_path / "m.h5")]) == 2
    assert "expected one of ['.npz', '.onnx', '.pt', '.safetensors']" in capsys.readouterr().err
    for suffix in (".onnx", ".pt", ".safetensors", ".npz"):
        assert main(["export", str(source), str(tmp_path / f"out{suffix}")]) == 0
    state = torch.load(tmp_path / "out.pt", weights_only=True)
    net = xc.to_torch(_tiny())
    net.load_state_dict(state)
    assert (tmp_path / "out.onnx").read_bytes()[:1] == b"\x08"  # protobuf, not a zip
    for suffix in (".safetensors", ".npz"):
        assert xc.load_model(tmp_path / f"out{suffix}").get_config() == _tiny().get_config()


# ---------------------------------------------------------------- runs of the command


def _training_file(tmp_path: Path, record: dict | None) -> Path:
    """A training checkpoint of a small model, one epoch done, with run ``record``."""
    rng = np.random.default_rng(0)
    x = rng.random((20, 1, 8, 8), dtype=np.float32)
    model = xc.Sequential([xc.Flatten(), xc.Dense(10)], input_shape=(1, 8, 8), seed=0)
    trainer = xc.Trainer(model, xc.SGD(0.1), progress=False)
    trainer.fit(x, rng.integers(0, 10, 20), epochs=1, batch_size=10)
    path = tmp_path / "training.npz"
    xc.save_training(trainer, path, extra=None if record is None else {"run": record})
    return path


RECORD = {"dataset": "digits", "limit": None, "batch_size": 10, "model": "custom"}


@pytest.mark.parametrize(
    "field, value",
    [("limit", "abc"), ("limit", [1]), ("limit", -3), ("limit", 0), ("batch_size", 1.5)],
    ids=["limit-abc", "limit-list", "limit-negative", "limit-0", "batch-1.5"],
)
def test_a_crafted_run_record_is_refused_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str, value: object
) -> None:  # cases 11 and 12
    from xpconv.cli import main

    path = _training_file(tmp_path, {**RECORD, field: value})
    out = tmp_path / "out"
    code = main(["train", "--resume", str(path), "--epochs", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert f"the run record is not valid: run.{field}: expected an integer" in err
    assert "Traceback" not in err and not (out / "training.npz").exists()


def test_a_resumed_run_never_falls_back_to_other_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:  # case 1
    from xpconv.cli import main
    from xpconv.data import datasets as ds

    monkeypatch.setenv("XPCONV_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("XPCONV_DATA", raising=False)
    monkeypatch.setattr(ds, "MIRRORS", {key: ["http://127.0.0.1:9/"] for key in ds.MIRRORS})
    record = {**RECORD, "dataset": "mnist", "dataset_loaded": "mnist"}
    path = _training_file(tmp_path, record)
    out = tmp_path / "out"
    argv = ["train", "--resume", str(path), "--epochs", "2", "--out", str(out), "--no-progress"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1, err
    assert "the run trained on mnist and continues on the same data only" in err
    assert "--data-dir" in err
    assert not (out / "training.npz").exists() and not (out / "metrics.json").exists()


def test_a_run_directory_is_claimed_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:  # case 3
    from xpconv.cli import main
    from xpconv.cli.runs import RunLock, default_out

    out = tmp_path / "run"
    out.mkdir()
    held = RunLock(out)  # another `xpconv train --out run` is running
    try:
        code = main(["train", "--out", str(out), "--dataset", "digits", "--no-progress"])
    finally:
        held.release()
    assert code == 1
    assert "another xpconv train is writing a run into this directory" in capsys.readouterr().err
    assert list(out.iterdir()) == []
    monkeypatch.chdir(tmp_path)
    first, second = default_out("m", "d"), default_out("m", "d")  # in the same second
    assert first != second and first.is_dir() and second.is_dir()


def test_out_naming_an_existing_file_is_refused_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from xpconv.cli import main

    target = tmp_path / "file"
    target.write_text("keep")
    assert main(["train", "--out", str(target), "--dataset", "digits"]) == 1
    err = capsys.readouterr().err
    assert f"--out {target}: expected a directory for the run, found a file" in err
    assert target.read_text() == "keep"


def test_a_seed_out_of_range_is_refused_when_the_model_is_built(
    capsys: pytest.CaptureFixture[str],
) -> None:  # case 10
    from xpconv.cli import main

    with pytest.raises(ValueError, match=r"seed: expected an int from 0 to 2\*\*63 - 1"):
        xc.Sequential([xc.Flatten(), xc.Dense(2)], input_shape=(4,), seed=2**63)
    model = xc.Sequential([xc.Flatten(), xc.Dense(2)], input_shape=(4,), seed=2**63 - 1)
    assert model.seed == 2**63 - 1
    assert main(["train", "--seed", str(2**63)]) == 2
    assert "argument --seed: expected an integer from 0 to 2**63 - 1" in capsys.readouterr().err


# ---------------------------------------------------------------- inputs at the boundary


@pytest.mark.parametrize("pool", [False, True], ids=["dense", "conv-maxpool"])
def test_torch_inputs_that_track_gradients_are_detached(pool: bool) -> None:  # case 9
    torch = pytest.importorskip("torch")
    x = torch.rand(16, 1, 8, 8, requires_grad=True)
    y = torch.randint(0, 3, (16,))
    head = [xc.Conv2D(2, 3), xc.MaxPool2D(2)] if pool else []
    model = xc.Sequential(
        [*head, xc.Flatten(), xc.Dense(3)], input_shape=(1, 8, 8), backend="torch", seed=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no torch warning about tracked tensors either
        xc.Trainer(model, xc.SGD(0.1), progress=False).fit(x, y, epochs=1, batch_size=8)
        assert not model.predict(x).requires_grad
    for param in model.parameters().values():
        assert param.value.grad_fn is None and not param.value.requires_grad
    assert x.grad is None


def test_integer_images_beyond_one_warn_once() -> None:  # "also seen": uint8 0-255
    model = xc.Sequential([xc.Flatten(), xc.Dense(3)], input_shape=(1, 4, 4), seed=0)
    pixels = np.full((2, 1, 4, 4), 200, np.uint8)
    with pytest.warns(UserWarning, match=r"x: uint8 data with values up to 200 .*\(x / 255"):
        model.predict(pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(pixels)  # once per model
        xc.Sequential([xc.Flatten(), xc.Dense(3)], input_shape=(1, 4, 4)).predict(
            np.ones((2, 1, 4, 4), np.uint8)
        )  # 0/1 integers: no warning


def _wide_model() -> xc.Sequential:
    """8 MB of weights whose activations need 0.5 GiB per example (171,196 1x1 filters)."""
    return xc.Sequential(
        [xc.Conv2D(171_196, 1), xc.GlobalAvgPool2D(), xc.Dense(10)], input_shape=(1, 28, 28)
    )


def test_activations_that_do_not_fit_are_refused_before_allocating(
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # case 14
    from xpconv.nn import inputs

    model = _wide_model()
    x, y = np.zeros((600, 1, 28, 28), np.float32), np.zeros(600, np.int64)
    monkeypatch.setattr(inputs, "available_bytes", lambda backend: 8 * 2**30)
    for run in (lambda: model.evaluate(x, y), lambda: model.predict(x)):
        with pytest.raises(MemoryError, match=r"batch_size=512: .* need 256 GiB but 8 GiB is free"):
            run()
    with pytest.raises(MemoryError, match="lower batch_size to 15 or less"):
        model.predict(x, batch_size=16)
    monkeypatch.setattr(inputs, "available_bytes", lambda backend: 2**20)
    with pytest.raises(MemoryError, match="even one example needs 0.501 GiB"):
        model.predict(x[:1])


def test_evaluate_command_names_the_batch_size_that_fits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:  # case 14 on the command line
    pytest.importorskip("sklearn", reason="the digits set needs scikit-learn")
    from xpconv.cli import main
    from xpconv.nn import inputs

    model = xc.Sequential(
        [xc.Conv2D(171_196, 1), xc.GlobalAvgPool2D(), xc.Dense(10)], input_shape=(1, 8, 8)
    )
    xc.save_model(model, tmp_path / "m.npz")
    monkeypatch.setattr(inputs, "available_bytes", lambda backend: 2**30)
    assert main(["evaluate", str(tmp_path / "m.npz"), "--dataset", "digits"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("xpconv: error: batch_size=512: the activations of one batch need")
    assert "lower --batch-size to 24 or less" in err


@pytest.mark.parametrize("value", ["no", 0, None, 1.0])
def test_shuffle_takes_a_bool_only(value: object) -> None:  # "also seen": shuffle="no"
    model = xc.Sequential([xc.Flatten(), xc.Dense(3)], input_shape=(1, 4, 4), seed=0)
    trainer = xc.Trainer(model, xc.SGD(0.1), progress=False)
    x, y = np.zeros((4, 1, 4, 4), np.float32), np.zeros(4, np.int64)
    with pytest.raises(TypeError, match=rf"shuffle: expected True or False, got {value!r}"):
        trainer.fit(x, y, epochs=1, batch_size=2, shuffle=value)  # type: ignore[arg-type]
    assert trainer.epochs_done == 0


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_momentum_is_fixed_after_the_first_step(backend: str) -> None:  # "also seen"
    if backend == "jax":
        pytest.importorskip("jax")
    model = xc.Sequential(
        [xc.Flatten(), xc.Dense(3)], input_shape=(1, 4, 4), seed=0, backend=backend
    )
    opt = xc.SGD(0.1, momentum=0.9)
    opt.momentum = 0.5  # before training: taken
    trainer = xc.Trainer(model, opt, progress=False)
    x, y = np.ones((4, 1, 4, 4), np.float32), np.zeros(4, np.int64)
    trainer.fit(x, y, epochs=1, batch_size=2)
    with pytest.raises(AttributeError, match=r"momentum: fixed after the optimizer's first step"):
        opt.momentum = 0.0
    assert opt.momentum == 0.5
    opt.momentum = 0.5  # the same value: nothing changes


def test_export_command_of_a_softmax_axis_model(tmp_path: Path) -> None:  # case 6, CLI
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from xpconv.cli import main

    xc.save_model(_axis_model(xc.Softmax, 1), tmp_path / "m.npz")
    assert main(["export", str(tmp_path / "m.npz"), str(tmp_path / "m.onnx"), "--check"]) == 0
