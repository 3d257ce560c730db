"""Interop: ONNX export checked in onnxruntime, PyTorch exchange, safetensors files."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest

import xpconv as xc
from xpconv import io as interop
from xpconv.io.checkpoint import CheckpointError
from xpconv.nn.layers import Layer

onnx = pytest.importorskip("onnx", reason="ONNX export needs the onnx package")
ort = pytest.importorskip("onnxruntime", reason="the export is checked in onnxruntime")
torch = pytest.importorskip("torch", reason="PyTorch is the exchange partner and oracle")
pytest.importorskip("safetensors", reason="safetensors files need the safetensors package")

RTOL = 1e-5


def _atol(reference: np.ndarray) -> float:
    """float32 summation-order noise of long dot products: ~40 ulps of the largest value."""
    return 5e-6 * max(1.0, float(np.max(np.abs(reference))))


def _runtime(path: os.PathLike | str) -> ort.InferenceSession:
    return ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])


def _run_onnx(path: os.PathLike | str, x: np.ndarray) -> np.ndarray:
    return _runtime(path).run([interop.OUTPUT_NAME], {interop.INPUT_NAME: x})[0]


def _predict(model: xc.Sequential, x: np.ndarray) -> np.ndarray:
    return model.backend.to_numpy(model.predict(x))


# --------------------------------------------------------------- every layer config

LAYER_CASES = {
    "conv-stride2-pad1-relu": (
        (3, 9, 8),
        lambda: [xc.Conv2D(4, 3, stride=2, padding=1, activation="relu")],
    ),
    "conv-same-even-dilated": ((2, 9, 9), lambda: [xc.Conv2D(3, 4, padding="same", dilation=2)]),
    "conv-same-even-2x3-tanh": (
        (2, 7, 6),
        lambda: [xc.Conv2D(3, (2, 3), padding="same", activation="tanh")],
    ),
    "conv-full-nobias-sigmoid": (
        (1, 5, 5),
        lambda: [xc.Conv2D(2, 3, padding="full", use_bias=False, activation="sigmoid")],
    ),
    "conv-groups-valid": (
        (4, 8, 8),
        lambda: [xc.Conv2D(6, 3, groups=2, padding="valid", stride=(1, 2))],
    ),
    "conv-depthwise-leaky": (
        (3, 6, 6),
        lambda: [xc.Conv2D(3, 3, groups=3, padding=(1, 0), activation="leaky_relu")],
    ),
    "conv1d-stride-dilation": (
        (3, 17),
        lambda: [xc.Conv1D(4, 3, stride=2, dilation=2, padding=1, activation="relu")],
    ),
    "conv1d-same-even-groups": ((4, 11), lambda: [xc.Conv1D(2, 4, padding="same", groups=2)]),
    "maxpool-pad-stride": ((2, 9, 9), lambda: [xc.MaxPool2D(3, stride=2, padding=1)]),
    "maxpool-nonsquare": ((2, 8, 9), lambda: [xc.MaxPool2D((2, 3))]),
    "avgpool-pad-counts": ((2, 7, 7), lambda: [xc.AvgPool2D(3, stride=2, padding=1)]),
    "avgpool-plain": ((1, 8, 6), lambda: [xc.AvgPool2D(2)]),
    "dense-relu-dropout-softmax": (
        (12,),
        lambda: [xc.Dense(7, activation="relu"), xc.Dropout(0.4), xc.Dense(5), xc.Softmax()],
    ),
    "dense-nobias-logsoftmax": (
        (6,),
        lambda: [xc.Dense(4, use_bias=False, activation="tanh"), xc.LogSoftmax()],
    ),
    "activation-layers": (
        (3, 4, 4),
        lambda: [
            xc.ReLU(),
            xc.Tanh(),
            xc.Sigmoid(),
            xc.Identity(),
            xc.LeakyReLU(negative_slope=0.2),
            xc.Activation("leaky_relu", negative_slope=0.3),
            xc.Activation("relu"),
        ],
    ),
    "conv-pool-flatten-dense": (
        (1, 12, 12),
        lambda: [
            xc.Conv2D(4, 3, padding="same", activation="relu"),
            xc.MaxPool2D(2),
            xc.Conv2D(5, 3, activation="relu"),
            xc.AvgPool2D(2),
            xc.Flatten(),
            xc.Dense(6, activation="sigmoid"),
            xc.Dense(3),
        ],
    ),
}


def _layer_model(name: str, backend: str = "numpy", dtype: str = "float32") -> xc.Sequential:
    shape, make = LAYER_CASES[name]
    return xc.Sequential(make(), backend=backend, dtype=dtype, seed=3, input_shape=shape)


def _input(model: xc.Sequential, n: int = 5, seed: int = 1) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, *model.input_shape))
    return x.astype(model.dtype_name)


def _exported_matching(model, path, x):
    """Export ``model`` to ``path``, check the file (ONNX's full check; what was written
    is what ``to_onnx`` returned), check that onnxruntime's outputs for ``x`` match the
    model's, and return the loaded ``ModelProto``."""
    proto = interop.to_onnx(model, path)
    loaded = onnx.load(path)
    onnx.checker.check_model(loaded, full_check=True)
    assert loaded.SerializeToString() == proto.SerializeToString()
    want = _predict(model, x)
    got = _run_onnx(path, x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=_atol(want))
    return loaded


@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_every_layer_config_exports_and_matches_onnxruntime(name: str, tmp_path) -> None:
    model = _layer_model(name)
    # biases are zero at initialisation: give them values so that they are checked too
    state = {k: v + (0.1 if k.endswith("bias") else 0.0) for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    loaded = _exported_matching(model, tmp_path / "m.onnx", _input(model))
    ops = {node.op_type for node in loaded.graph.node}
    # the graph is made of ONNX's own operators
    assert ops <= {
        "Conv",
        "MaxPool",
        "AveragePool",
        "Gemm",
        "Flatten",
        "Relu",
        "Tanh",
        "Sigmoid",
        "LeakyRelu",
        "Softmax",
        "LogSoftmax",
        "Identity",
    }


def test_exported_graph_names_and_dynamic_batch(tmp_path) -> None:
    model = xc.models.zoo.lenet(backend="numpy", seed=2)
    path = tmp_path / "lenet.onnx"
    interop.to_onnx(model, path, opset=13)
    proto = onnx.load(path)
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, out.name) == ("input", "output")
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["N", 1, 28, 28]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["N", 10]
    assert proto.opset_import[0].version == 13
    assert {n.op_type for n in proto.graph.node} >= {"Conv", "MaxPool", "Gemm", "Relu"}
    # the model's doc string lists its layers in order, as the summary describes them
    assert proto.doc_string == " -> ".join(layer.describe() for layer in model.layers)
    assert proto.doc_string.startswith(model.layers[0].describe() + " -> ")
    runtime = _runtime(path)
    for n in (1, 3, 17):
        x = _input(model, n, seed=n)
        got = runtime.run(None, {"input": x})[0]
        assert got.shape == (n, 10)
        want = _predict(model, x)
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=_atol(want))


def test_export_from_every_backend(case, tmp_path) -> None:
    """A model living on any backend exports the same graph; float64 ones as float32."""
    model = _layer_model("conv-pool-flatten-dense", dtype=case.dtype).to(case.backend)
    path = tmp_path / "m.onnx"
    interop.to_onnx(model, path, dtype="float32")
    x = _input(model, 4).astype(np.float32)
    want = case.to_numpy(model.predict(case.asarray(x)))
    got = _run_onnx(path, x)
    tol = RTOL if case.dtype == "float32" else 1e-4  # float32 weights of a float64 model
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


def test_float64_graph_and_dtype_option(tmp_path) -> None:
    model = _layer_model("dense-relu-dropout-softmax", dtype="float64")
    proto = interop.to_onnx(model, tmp_path / "m64.onnx")
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    x = _input(model)
    np.testing.assert_allclose(
        _run_onnx(tmp_path / "m64.onnx", x), _predict(model, x), rtol=1e-12, atol=1e-12
    )
    proto = interop.to_onnx(model, tmp_path / "m32.onnx", dtype="float32")
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


class _Scale(Layer):
    """A layer no converter knows."""

    def forward(self, x, training):  # noqa: ANN001, ANN201
        return 2.0 * x


def test_export_refuses_unsupported_layers_and_bad_arguments(tmp_path) -> None:
    model = xc.Sequential([xc.Flatten(), _Scale(), xc.Dense(3), _Scale()], input_shape=(2, 2))
    with pytest.raises(ValueError, match=r"_scale_0 \(_Scale\), _scale_1 \(_Scale\)"):
        interop.to_onnx(model, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(ValueError, match=r"_scale_0 \(_Scale\)"):
        interop.to_torch(model)
    good = _layer_model("avgpool-plain")
    for opset in (12, 10_000, "17", True):
        with pytest.raises(ValueError, match="opset: expected an int from 13"):
            interop.to_onnx(good, opset=opset)
    with pytest.raises(ValueError, match="dtype: expected"):
        interop.to_onnx(good, dtype="float16")
    with pytest.raises(ValueError, match="model: expected a built Sequential"):
        interop.to_onnx(xc.Sequential([xc.Dense(3)]))


def test_onnx_activation_exporter_names_unexpected_arguments() -> None:
    """The public exporters of ``ONNX_ACTIVATIONS`` refuse an argument the activation
    does not take, naming the activation, the argument and the ones it takes."""
    from xpconv.io.onnx import OnnxGraph

    graph = OnnxGraph(np.dtype(np.float32), 17, np.asarray)
    with pytest.raises(ValueError) as info:
        interop.ONNX_ACTIVATIONS["leaky_relu"](graph, "x", "act", negative_slope=0.2, beta=1.0)
    assert str(info.value) == (
        "to_onnx: activation 'leaky_relu': unexpected arguments ['beta']; expected some "
        "of ['negative_slope']"
    )


def test_export_without_onnx_names_the_extra_to_install(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)  # import onnx -> ImportError
    with pytest.raises(ImportError) as info:
        interop.to_onnx(_layer_model("avgpool-plain"), tmp_path / "x.onnx")
    assert str(info.value) == "to_onnx needs the onnx package: pip install 'xpconv[interop]'"


def test_from_torch_refuses_global_hooks_and_mixed_dtypes_naming_them() -> None:
    """A global module hook (it may change every module's outputs) is named in the
    refusal; parameters of two dtypes are refused, listing the dtypes found."""
    from torch.nn.modules import module as torch_module

    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    handle = torch_module.register_module_forward_hook(lambda m, args, out: out)
    try:
        with pytest.raises(ValueError) as info:
            interop.from_torch(net, input_shape=(4,))
    finally:
        handle.remove()
    assert "hooks cannot be converted" in str(info.value)
    assert ": global module forward hook; remove them" in str(info.value)
    interop.from_torch(net, input_shape=(4,))  # the hook removed: converted
    net[2].double()
    with pytest.raises(ValueError) as info:
        interop.from_torch(net, input_shape=(4,))
    assert str(info.value) == (
        "from_torch: module: expected float32 or float64 parameters of one dtype, got "
        "['torch.float32', 'torch.float64']"
    )


def test_export_uses_layers_not_fused_steps(tmp_path) -> None:
    """The Sequential runs Conv2D + MaxPool2D as one fused step; the graph has both."""
    plain = xc.models.zoo.lenet(batch_norm=False, backend="numpy")
    assert any(isinstance(step, xc.nn.layers.ConvMaxPool) for step in plain.steps)
    ops = [n.op_type for n in interop.to_onnx(plain).graph.node]
    assert ops == [
        "Conv",
        "Relu",
        "MaxPool",
        "Conv",
        "Relu",
        "MaxPool",
        "Flatten",
        "Gemm",
        "Relu",
        "Gemm",
    ]
    model = xc.models.zoo.lenet(backend="numpy")  # conv (no bias) + pool fused, then batch norm
    assert any(isinstance(step, xc.nn.layers.ConvMaxPool) for step in model.steps)
    block = ["Conv", "MaxPool", "BatchNormalization", "Relu"]
    ops = [n.op_type for n in interop.to_onnx(model).graph.node]
    assert ops == [*block, *block, "Flatten", "Gemm", "BatchNormalization", "Relu", "Gemm"]


# --------------------------------------------------------------- MNIST, trained models

TRAIN_BACKENDS = [("numpy", None), ("torch", "cpu"), ("array_api_strict", None)]


def _backend_or_skip(name: str, device: str | None) -> xc.Backend:
    try:
        return xc.get_backend(name, device)
    except xc.BackendError as exc:
        pytest.skip(f"{name}: {exc}")


@pytest.fixture(scope="module")
def mnist_data(mnist_dir):
    from xpconv.data.datasets import mnist

    return mnist(mnist_dir, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("backend_name, device", TRAIN_BACKENDS, ids=[b for b, _ in TRAIN_BACKENDS])
@pytest.mark.parametrize("model_name", ["lecture", "lenet"])
def test_onnxruntime_logits_equal_xpconv_on_mnist_test_set(
    model_name: str, backend_name: str, device: str | None, mnist_data, tmp_path
) -> None:
    """A few training steps on each backend, then the whole MNIST test set: the exported
    graph in onnxruntime gives xpconv's logits (float32, rtol 1e-5)."""
    backend = _backend_or_skip(backend_name, device)
    model = xc.models.zoo.build_model(model_name, backend=backend, seed=0)
    optimizer = xc.SGD(0.05, momentum=0.9)
    for step in range(6):
        batch = slice(64 * step, 64 * (step + 1))
        model.train_batch(mnist_data.x_train[batch], mnist_data.y_train[batch])
        optimizer.step(model.parameters())
    path = tmp_path / f"{model_name}.onnx"
    interop.to_onnx(model, path)
    x = mnist_data.x_test
    want = _predict(model, x)
    got = _run_onnx(path, x)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=_atol(want))
    assert (got.argmax(1) == want.argmax(1)).mean() > 0.999
    assert (want.argmax(1) == mnist_data.y_test).mean() > 0.5  # it learned something


def test_cli_export_writes_a_checked_onnx_file(tmp_path, capsys) -> None:
    from xpconv.cli import main

    model = xc.models.zoo.lecture(backend="numpy", seed=5)
    for suffix in (".npz", ".safetensors"):
        checkpoint = tmp_path / f"model{suffix}"
        xc.save_model(model, checkpoint, extra={"dataset": "digits"})
        out = tmp_path / f"model{suffix}.onnx"
        assert main(["export", str(checkpoint), str(out), "--check"]) == 0
        printed = capsys.readouterr().out
        assert "input 'input' (N, 1, 28, 28) -> output 'output' (N, 10)" in printed
        assert "onnxruntime against xpconv on a random batch of 8: max abs" in printed
        x = _input(model, 4)
        np.testing.assert_allclose(_run_onnx(out, x), _predict(model, x), rtol=RTOL, atol=1e-5)
    assert main(["evaluate", str(checkpoint), "--no-progress"]) == 0  # the .safetensors one
    assert '"dataset": "digits"' in capsys.readouterr().out
    out64 = str(tmp_path / "m64.onnx")  # onnxruntime has no float64 Conv: a clean error
    assert main(["export", str(checkpoint), out64, "--dtype", "float64", "--check"]) == 1
    assert "--check: onnxruntime could not run" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing.npz"), str(tmp_path / "x.onnx")]) == 1
    assert "checkpoint: expected an existing file" in capsys.readouterr().err
    assert main(["export", str(checkpoint), str(tmp_path / "y.onnx"), "--opset", "9"]) == 2
    assert "argument --opset: expected 13 to" in capsys.readouterr().err
    assert not (tmp_path / "y.onnx").exists()


# --------------------------------------------------------------- PyTorch exchange


def _kind(layer: Layer) -> tuple:
    """What a layer computes (``Activation("relu")`` and ``ReLU()`` are the same)."""
    if isinstance(layer, xc.Activation):
        kwargs = {k: v for k, v in layer.get_config().items() if k != "activation"}
        return ("activation", layer.activation, kwargs)
    config = {
        k: v
        for k, v in layer.get_config().items()
        if k not in ("init", "in_channels", "in_features")
    }
    if isinstance(layer, xc.Conv2D):  # the resolved geometry: 'valid' is (0, 0), 1 is (1, 1)
        geom = layer._geom
        for key in ("kernel_size", "stride", "padding", "dilation"):
            config.pop(key)
        config["geometry"] = (geom.kernel, geom.stride, geom.pad, geom.dilation)
    return (type(layer).__name__, config)


@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_to_torch_computes_the_same_function_and_from_torch_rebuilds_it(name: str) -> None:
    model = _layer_model(name, dtype="float64")
    model.load_state_dict({k: v + 0.1 for k, v in model.state_dict().items()})
    net = interop.to_torch(model).eval()
    x = _input(model)
    want = _predict(model, x)
    got = net(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert interop.from_torch(net, input_shape=model.input_shape).dtype_name == (
        "float64" if model.parameters() else "float32"
    )
    back = interop.from_torch(net, input_shape=model.input_shape, dtype="float64")
    assert [_kind(la) for la in back.layers] == [_kind(la) for la in model.layers]
    assert back.dtype_name == "float64"
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[key], value)
    np.testing.assert_allclose(_predict(back, x), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend_name, device", TRAIN_BACKENDS, ids=[b for b, _ in TRAIN_BACKENDS])
def test_to_torch_gradients_and_sgd_step_equal_xpconv(backend_name: str, device) -> None:
    backend = _backend_or_skip(backend_name, device)
    model = xc.Sequential(
        [
            xc.Conv2D(4, 3, padding="same", activation="relu"),
            xc.MaxPool2D(2),
            xc.Conv2D(6, 3, padding=1, activation="tanh"),
            xc.AvgPool2D(2),
            xc.Flatten(),
            xc.Dense(12, activation="relu"),
            xc.Dense(5),
        ],
        backend=backend,
        input_shape=(1, 12, 12),
        seed=7,
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 1, 12, 12)).astype(np.float32)
    y = rng.integers(0, 5, size=8)
    net = interop.to_torch(model)
    loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
    loss.backward()
    ours = float(model.train_batch(x, y))
    assert abs(ours - loss.item()) < 1e-5
    torch_grads = [p.grad.numpy() for p in net.parameters()]
    our_grads = [model.backend.to_numpy(g) for g in model.gradients().values()]
    assert len(torch_grads) == len(our_grads)
    for g_torch, g_ours in zip(torch_grads, our_grads):
        np.testing.assert_allclose(g_ours, g_torch, rtol=1e-4, atol=1e-6 * np.abs(g_torch).max())
    xc.SGD(0.1).step(model.parameters())
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    for (key, ours_after), theirs in zip(model.state_dict().items(), net.state_dict().values()):
        np.testing.assert_allclose(ours_after, theirs.numpy(), rtol=1e-5, atol=1e-7, err_msg=key)


def test_from_torch_builds_the_model_of_a_torch_network() -> None:
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding="same", groups=2, bias=False), nn.Tanh()),
        nn.AvgPool2d(2, padding=1),
        nn.Flatten(),
        nn.Dropout(0.25),
        nn.Linear(128, 10),
        nn.LeakyReLU(0.1),
        nn.LogSoftmax(dim=1),
    ).eval()
    model = interop.from_torch(net, input_shape=(1, 12, 12), backend="numpy")
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == [
        "Conv2D",
        "MaxPool2D",
        "Conv2D",
        "AvgPool2D",
        "Flatten",
        "Dropout",
        "Dense",
        "LeakyReLU",
        "LogSoftmax",
    ]
    assert model.layers[0].activation == "relu" and model.layers[2].activation == "tanh"
    x = np.random.default_rng(0).normal(size=(4, 1, 12, 12)).astype(np.float32)
    want = net(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(_predict(model, x), want, rtol=1e-5, atol=1e-6)


def test_from_torch_refuses_unsupported_modules_naming_them() -> None:
    nn = torch.nn
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4, track_running_stats=False),
        nn.Sequential(nn.GELU()),
        nn.Conv2d(4, 4, 3, padding_mode="reflect", padding=1),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.Flatten(0),
    )
    with pytest.raises(ValueError, match="unsupported module") as info:
        interop.from_torch(net, input_shape=(1, 10, 10))
    message = str(info.value)
    for part in (
        "1: BatchNorm2d (track_running_stats=False",
        "2.0: GELU",
        "3: Conv2d (padding_mode='reflect'",
        "ceil_mode",
        "5: Flatten",
    ):
        assert part in message, (part, message)

    class Custom(nn.Module):
        def forward(self, x):  # noqa: ANN001, ANN201
            return x

    with pytest.raises(ValueError, match="Custom"):
        interop.from_torch(Custom(), input_shape=(3,))
    with pytest.raises(ValueError, match=r"Softmax\(dim=0\) at layers\[0\]: .* batch axis"):
        interop.from_torch(nn.Sequential(nn.Softmax(dim=0)), input_shape=(3, 4))
    with pytest.raises(TypeError, match="module: expected a torch.nn.Module"):
        interop.from_torch([nn.ReLU()], input_shape=(3,))
    with pytest.raises(ValueError, match="in_channels expected 3"):
        interop.from_torch(nn.Sequential(nn.Conv2d(3, 4, 3)), input_shape=(1, 8, 8))


def test_state_dict_round_trip_through_torch() -> None:
    model = xc.models.zoo.lenet(backend="numpy", seed=11)
    net = interop.to_torch(model)
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    fresh = interop.to_torch(xc.models.zoo.lenet(backend="numpy", seed=99))
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    back = interop.from_torch(fresh, input_shape=(1, 28, 28))
    assert [_kind(la) for la in back.layers] == [_kind(la) for la in model.layers]
    state = model.state_dict()
    assert list(back.state_dict()) == list(state)
    assert any(key.endswith("running_var") for key in state)
    for key, value in back.state_dict().items():
        np.testing.assert_array_equal(value, state[key])
    # the module holds the same arrays, plus PyTorch's num_batches_tracked counters
    theirs = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(theirs) == len(state)
    assert sorted(tuple(v.shape) for v in theirs.values()) == sorted(
        v.shape for v in state.values()
    )


# --------------------------------------------------------------- normalization and blocks

BLOCK_CASES = {
    "batchnorm2d": (
        (3, 6, 5),
        lambda: [xc.Conv2D(4, 3, padding=1), xc.BatchNorm2D(momentum=0.3, eps=1e-3), xc.ReLU()],
    ),
    "batchnorm1d-features": ((7,), lambda: [xc.Dense(6), xc.BatchNorm1D(), xc.Tanh()]),
    "batchnorm1d-sequence-no-affine": (
        (3, 9),
        lambda: [xc.Conv1D(4, 3), xc.BatchNorm1D(momentum=0.5, affine=False)],
    ),
    "global-avg-pool": (
        (3, 7, 6),
        lambda: [xc.Conv2D(5, 3, activation="relu"), xc.GlobalAvgPool2D(), xc.Dense(4)],
    ),
    "residual-identity": (
        (4, 6, 6),
        lambda: [
            xc.Residual(
                [
                    xc.Conv2D(4, 3, padding=1, use_bias=False),
                    xc.BatchNorm2D(),
                    xc.ReLU(),
                    xc.Conv2D(4, 3, padding=1),
                ]
            ),
            xc.ReLU(),
        ],
    ),
    "residual-shortcut": (
        (3, 8, 8),
        lambda: [
            xc.Residual(
                [xc.Conv2D(5, 3, stride=2, padding=1, activation="relu"), xc.BatchNorm2D()],
                [xc.Conv2D(5, 1, stride=2, use_bias=False), xc.BatchNorm2D(momentum=0.2)],
            ),
            xc.ReLU(),
            xc.GlobalAvgPool2D(),
        ],
    ),
}


def _data(model: xc.Sequential, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs off zero mean and unit variance (so running statistics move), mse targets."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.5, 2.0, size=(n, *model.input_shape)).astype(model.dtype_name)
    y = rng.normal(size=(n, *model.output_shape)).astype(model.dtype_name)
    return x, y


def _trained_block_model(name: str, dtype: str = "float32") -> xc.Sequential:
    """The case's model after two SGD steps: non-trivial weights and running statistics."""
    shape, make = BLOCK_CASES[name]
    model = xc.Sequential(
        make(), backend="numpy", dtype=dtype, seed=5, input_shape=shape, loss="mse"
    )
    optimizer = xc.SGD(0.05, momentum=0.9)
    for step in range(2):
        model.train_batch(*_data(model, 8, seed=step))
        optimizer.step(model.parameters())
    for key, value in model.buffers().items():
        trivial = 0.0 if key.endswith("running_mean") else 1.0
        assert np.abs(value - trivial).max() > 1e-3, key
    return model


def _kinds(layers: list[Layer]) -> list:
    """:func:`_kind` of each layer, a block's inner layers included."""
    return [
        (_kinds(la.layers), _kinds(la.shortcut)) if isinstance(la, xc.Residual) else _kind(la)
        for la in layers
    ]


@pytest.mark.parametrize("name", sorted(BLOCK_CASES))
def test_norm_pool_and_residual_layers_export_and_match_onnxruntime(name: str, tmp_path) -> None:
    model = _trained_block_model(name)
    x, _ = _data(model, 6, seed=9)  # predicted in inference mode: the running statistics
    loaded = _exported_matching(model, tmp_path / "m.onnx", x)
    ops = {node.op_type for node in loaded.graph.node}
    assert ops <= {
        "Conv",
        "Gemm",
        "Relu",
        "Tanh",
        "BatchNormalization",
        "GlobalAveragePool",
        "Flatten",
        "Add",
    }
    if "batchnorm" in name:
        (bn,) = [node for node in loaded.graph.node if node.op_type == "BatchNormalization"]
        assert len(bn.output) == 1  # inference form: no running-statistics outputs
    if "residual" in name:
        assert "Add" in ops
        assert any(node.name.startswith("residual_0.") for node in loaded.graph.node)


@pytest.mark.parametrize("name", sorted(BLOCK_CASES))
def test_norm_pool_and_residual_layers_exchange_with_torch(name: str) -> None:
    model = _trained_block_model(name, dtype="float64")
    net = interop.to_torch(model)
    x, y = _data(model, 6, seed=9)
    want = _predict(model, x)
    got = net.eval()(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    back = interop.from_torch(net, input_shape=model.input_shape)
    assert _kinds(back.layers) == _kinds(model.layers)
    assert list(back.state_dict()) == list(model.state_dict())
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[key], value, err_msg=key)
    np.testing.assert_allclose(_predict(back, x), want, rtol=1e-12, atol=1e-12)
    # one training step: batch statistics, gradients, SGD update and running statistics
    net.train()
    loss = torch.nn.functional.mse_loss(net(torch.from_numpy(x)), torch.from_numpy(y))
    loss.backward()
    ours = float(model.train_batch(x, y))
    assert abs(ours - loss.item()) < 1e-10 * max(1.0, abs(ours))
    our_grads = [model.backend.to_numpy(g) for g in model.gradients().values()]
    torch_grads = [p.grad.numpy() for p in net.parameters()]
    assert len(our_grads) == len(torch_grads)
    for g_ours, g_torch in zip(our_grads, torch_grads):
        np.testing.assert_allclose(g_ours, g_torch, rtol=1e-9, atol=1e-12)
    xc.SGD(0.1).step(model.parameters())
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    after = interop.from_torch(net, input_shape=model.input_shape).state_dict()
    for key, value in model.state_dict().items():
        np.testing.assert_allclose(after[key], value, rtol=1e-10, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("model_name", ["lenet", "resnet"])
def test_zoo_batch_norm_models_export_and_exchange(model_name: str, tmp_path) -> None:
    """Zoo LeNet (batch norm) and ResNet after two SGD steps: ONNX in onnxruntime, the
    PyTorch module in eval mode and the model rebuilt from it give the same logits."""
    model = xc.models.zoo.build_model(model_name, backend="numpy", seed=1)
    rng = np.random.default_rng(3)
    optimizer = xc.SGD(0.05, momentum=0.9)
    for _ in range(2):
        x = rng.random((8, 1, 28, 28)).astype(np.float32)
        model.train_batch(x, rng.integers(0, 10, size=8))
        optimizer.step(model.parameters())
    path = tmp_path / f"{model_name}.onnx"
    interop.to_onnx(model, path)
    x = rng.random((5, 1, 28, 28)).astype(np.float32)
    want = _predict(model, x)
    np.testing.assert_allclose(_run_onnx(path, x), want, rtol=RTOL, atol=_atol(want))
    net = interop.to_torch(model).eval()
    got = net(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=_atol(want))
    back = interop.from_torch(net, input_shape=(1, 28, 28))
    assert _kinds(back.layers) == _kinds(model.layers)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[key], value, err_msg=key)


def test_from_torch_batch_norm_and_global_pool_of_a_torch_network() -> None:
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6, momentum=0.2, eps=1e-4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
        nn.Linear(6, 5),
        nn.BatchNorm1d(5, affine=False),
    )
    net.train()
    for _ in range(3):  # running statistics away from zeros and ones
        net(torch.randn(16, 2, 7, 7) * 2 + 1)
    net.eval()
    model = interop.from_torch(net, input_shape=(2, 7, 7))
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Conv2D", "BatchNorm2D", "ReLU", "GlobalAvgPool2D", "Dense", "BatchNorm1D"]
    bn = model.layers[1]
    assert (bn.momentum, bn.eps, bn.affine) == (0.2, 1e-4, True)
    assert model.layers[-1].affine is False
    np.testing.assert_array_equal(
        model.state_dict()["batchnorm2d_0.running_var"], net[1].running_var.numpy()
    )
    x = np.random.default_rng(0).normal(1.0, 2.0, size=(4, 2, 7, 7)).astype(np.float32)
    want = net(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(_predict(model, x), want, rtol=1e-5, atol=1e-6)


def test_norm_pool_and_block_refusals_name_the_module_and_layer(tmp_path) -> None:
    nn = torch.nn
    block = interop.torch_residual_class()

    class Residual(nn.Module):  # a custom block of the same name is not ours
        def forward(self, x):  # noqa: ANN001, ANN201
            return x

    net = nn.Sequential(
        nn.BatchNorm2d(3, momentum=None),
        nn.AdaptiveAvgPool2d(2),
        nn.AdaptiveAvgPool2d(1),
        nn.ReLU(),
        Residual(),
        block(nn.Sequential(nn.Conv2d(3, 3, 1), nn.GELU()), nn.Sequential()),
    )
    with pytest.raises(ValueError, match="unsupported module") as info:
        interop.from_torch(net, input_shape=(3, 4, 4))
    message = str(info.value)
    for part in (
        "0: BatchNorm2d (momentum=None",
        "1: AdaptiveAvgPool2d (output_size=2",
        "2: AdaptiveAvgPool2d (output (N, C, 1, 1): expected Flatten()",
        "4: Residual;",
        "5: Residual (layers.1: GELU)",
    ):
        assert part in message, (part, message)
    inner = xc.Sequential(
        [xc.Residual([xc.Conv2D(2, 1), _Scale()]), xc.Flatten()], input_shape=(2, 3, 3)
    )
    with pytest.raises(ValueError, match=r"residual_0\._scale_0 \(_Scale\)"):
        interop.to_onnx(inner, tmp_path / "x.onnx")
    with pytest.raises(ValueError, match=r"residual_0\._scale_0 \(_Scale\)"):
        interop.to_torch(inner)


# --------------------------------------------------------------- safetensors


def _saved(tmp_path, name: str = "m.safetensors") -> tuple[xc.Sequential, os.PathLike]:
    model = xc.models.zoo.lenet(backend="numpy", seed=4)
    path = tmp_path / name
    xc.save_model(model, path, extra={"note": "hello"})
    return model, path


def test_safetensors_round_trip_on_every_backend(case, tmp_path) -> None:
    model, path = _saved(tmp_path)
    from safetensors.numpy import load_file

    plain = load_file(path)  # an ordinary safetensors file
    assert set(plain) == set(model.state_dict())
    loaded = xc.load_model(path, backend=case.backend)
    assert loaded.get_config() == model.get_config()
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key], value)
    x = _input(model, 3)
    np.testing.assert_allclose(
        case.to_numpy(loaded.predict(case.asarray(x, dtype="float32"))),
        _predict(model, x),
        rtol=1e-5,
        atol=1e-5,
    )
    arrays, meta = interop.load_safetensors(path)
    assert meta["kind"] == "model" and meta["note"] == "hello"
    assert meta["format"] == "xpconv-checkpoint" and meta["version"] == 1


def test_safetensors_write_is_atomic(tmp_path, monkeypatch) -> None:
    model, path = _saved(tmp_path)
    before = path.read_bytes()

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="disk full"):
        xc.save_model(xc.models.zoo.lenet(backend="numpy", seed=5), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left


def _header(raw: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _pack(header: dict, data: bytes, length: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    return (len(text) if length is None else length).to_bytes(8, "little") + text + data


def _crafted(raw: bytes) -> dict[str, bytes]:
    header, data = _header(raw)
    meta = header["__metadata__"]
    name = next(k for k in header if k != "__metadata__")
    spec = header[name]

    def edited(**changes) -> bytes:  # noqa: ANN003
        return _pack({**header, name: {**spec, **changes}}, data)

    begin, end = spec["data_offsets"]
    arch = json.loads(meta["xpconv"])
    return {
        "empty": b"",
        "short-prefix": raw[:5],
        "huge-header-length": (2**60).to_bytes(8, "little") + raw[8:],
        "header-past-end": _pack(header, b"", length=len(raw)),
        "not-json": _pack({}, b"")[:8] + b"{not json" + b" " * 10,
        "json-list": _pack([1, 2], b""),  # type: ignore[arg-type]
        "no-metadata": _pack({k: v for k, v in header.items() if k != "__metadata__"}, data),
        "foreign-format": _pack(
            {**header, "__metadata__": {"xpconv": json.dumps({"format": "x"})}}, data
        ),
        "future-version": _pack(
            {**header, "__metadata__": {"xpconv": json.dumps({**arch, "version": 99})}}, data
        ),
        "bad-dtype": edited(dtype="O"),
        "bool-shape": edited(shape=[True] * len(spec["shape"])),
        "negative-shape": edited(shape=[-1, *spec["shape"][1:]]),
        "shape-vs-bytes": edited(shape=[2 * spec["shape"][0], *spec["shape"][1:]]),
        "overlap": edited(data_offsets=[begin + 4, end + 4]),
        "extra-key": edited(extra=1),
        "declares-more-than-there": edited(
            shape=[10**12], data_offsets=[begin, begin + 4 * 10**12]
        ),
        "truncated-data": raw[:-100],
        "trailing-bytes": raw + b"\0" * 8,
    }


def test_safetensors_refuses_truncated_crafted_and_oversized_files(tmp_path) -> None:
    _, path = _saved(tmp_path)
    raw = path.read_bytes()
    cases = _crafted(raw)
    header_text = raw[8 : 8 + int.from_bytes(raw[:8], "little")].decode()
    dup = header_text.replace('{"__metadata__"', '{"a":1,"a":2,"__metadata__"', 1).encode()
    cases["duplicate-key"] = len(dup).to_bytes(8, "little") + dup + raw[8 + len(header_text) :]
    for cut in (8, 9, len(raw) // 2, len(raw) - 1):
        cases[f"cut-at-{cut}"] = raw[:cut]
    for label, content in cases.items():
        bad = tmp_path / f"{label}.safetensors"
        bad.write_bytes(content)
        with pytest.raises(CheckpointError) as info:
            xc.load_model(bad)
        assert str(bad) in str(info.value), (label, str(info.value))
    with pytest.raises(CheckpointError, match="more than max_bytes=1000"):
        interop.load_safetensors(path, max_bytes=1000)
    with pytest.raises(CheckpointError, match="does not exist"):
        xc.load_model(tmp_path / "absent.safetensors")


def test_safetensors_says_whether_the_data_is_truncated_or_has_trailing_bytes(tmp_path) -> None:
    """A file whose data section is shorter or longer than its header declares is
    refused with both sizes and which of the two it is."""
    _, path = _saved(tmp_path)
    raw = path.read_bytes()
    for label, content, detail in (
        ("truncated", raw[:-100], "the file is truncated"),
        ("trailing", raw + b"\0" * 8, "it has trailing bytes"),
    ):
        bad = tmp_path / f"{label}.safetensors"
        bad.write_bytes(content)
        with pytest.raises(CheckpointError) as info:
            xc.load_model(bad)
        assert str(info.value).endswith(f"; {detail}"), str(info.value)
        assert "its tensors declare" in str(info.value)


def test_safetensors_checks_weights_against_the_architecture(tmp_path) -> None:
    model, path = _saved(tmp_path)
    state = model.state_dict()
    meta = {"kind": "model", "architecture": model.get_config()}
    wrong_dtype = {k: v.astype(np.float64) for k, v in state.items()}
    interop.save_safetensors(tmp_path / "f64.safetensors", wrong_dtype, meta)
    with pytest.raises(CheckpointError, match="has dtype float64, expected float32") as info:
        xc.load_model(tmp_path / "f64.safetensors")
    assert str(info.value).endswith("expected float32 (the architecture's dtype)")
    wrong_shape = dict(state)
    wrong_shape["dense_0.weight"] = np.zeros((3, 3), np.float32)
    interop.save_safetensors(tmp_path / "shape.safetensors", wrong_shape, meta)
    with pytest.raises(CheckpointError, match="does not fit its architecture"):
        xc.load_model(tmp_path / "shape.safetensors")
    for gone in ("dense_0.weight", "batchnorm2d_1.running_var"):
        missing = {k: v for k, v in state.items() if k != gone}
        interop.save_safetensors(tmp_path / "missing.safetensors", missing, meta)
        with pytest.raises(CheckpointError, match=gone):
            xc.load_model(tmp_path / "missing.safetensors")
    with pytest.raises(TypeError, match="expected a NumPy array"):
        interop.save_safetensors(tmp_path / "obj.safetensors", {"a": np.array([None])}, meta)
    # a plain safetensors file without xpconv metadata
    from safetensors.numpy import save_file

    save_file(state, tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="not an xpconv file"):
        xc.load_model(tmp_path / "plain.safetensors")


def test_onnx_benchmark_runs_at_tiny_scale(tmp_path, monkeypatch) -> None:
    """The benchmark's record, never its speed."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))
    from benchmarks import onnx as bench

    out = tmp_path / "onnx.json"
    argv = ["--same-process", "--batch", "3", "--rounds", "1", "--alternations", "1"]
    assert bench.main([*argv, "--target-s", "0", "--threads", "1", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["batch"] == 3 and record["process"] == "same"
    assert set(record["images_per_s"]) == {"xpconv-numpy", "onnxruntime"}
    assert record["ratio_onnxruntime_vs_xpconv"] > 0
    assert record["versions"]["onnxruntime"] == ort.__version__
