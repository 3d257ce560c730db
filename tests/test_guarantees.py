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
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    got = session.run(None, {"input": _x()})[0]
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
