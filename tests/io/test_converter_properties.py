"""Property-based tests of the geometry-heavy converters: random convolution and pooling
configurations whose height and width differ (kernel, stride, padding, dilation), with
groups and non-square inputs, through ONNX export (checked in onnxruntime) and through
``to_torch`` / ``from_torch`` (checked against PyTorch's own modules).

Each drawn configuration is one that xpconv accepts; a configuration xpconv refuses is
skipped (``assume``), one PyTorch refuses must be refused by the converter too.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the property tests need hypothesis")
onnx = pytest.importorskip("onnx", reason="ONNX export needs the onnx package")
ort = pytest.importorskip("onnxruntime", reason="the export is checked in onnxruntime")
torch = pytest.importorskip("torch", reason="PyTorch is the exchange partner and oracle")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import xpconv as xc  # noqa: E402
from xpconv import io as interop  # noqa: E402

#: Examples per property (the file runs in seconds); raise it for a thorough search.
EXAMPLES = int(os.environ.get("XPCONV_PROPERTY_EXAMPLES", "25"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

small = st.integers(1, 4)


@st.composite
def pairs(draw: st.DrawFn, low: int, high: int) -> tuple[int, int]:
    """(height, width) values, usually different."""
    return draw(st.integers(low, high)), draw(st.integers(low, high))


@st.composite
def conv_configs(draw: st.DrawFn) -> dict:
    """A Conv2D's arguments and a non-square input shape (C, H, W)."""
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    in_channels = groups * draw(st.integers(1, 2))
    filters = groups * draw(st.integers(1, 2))
    kernel = draw(pairs(1, 4))
    dilation = draw(st.one_of(st.just((1, 1)), pairs(1, 3)))
    stride = draw(st.one_of(st.just((1, 1)), pairs(1, 3)))
    padding = draw(st.one_of(pairs(0, 3), st.sampled_from(["valid", "same", "full"])))
    if padding == "same":
        stride = (1, 1)  # PyTorch's 'same' takes stride 1 only; xpconv's too
    height, width = draw(pairs(3, 11))
    activation = draw(st.sampled_from([None, "relu", "tanh"]))
    return dict(
        filters=filters,
        kernel_size=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        activation=activation,
        use_bias=draw(st.booleans()),
        input_shape=(in_channels, height, width),
    )


@st.composite
def pool_configs(draw: st.DrawFn) -> dict:
    """A pooling layer's arguments (kind, kernel, stride, padding) and an input shape."""
    kernel = draw(pairs(1, 4))
    stride = draw(st.one_of(st.none(), pairs(1, 3)))
    # PyTorch takes padding up to half the kernel; so does the drawn padding
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    height, width = draw(pairs(4, 11))
    return dict(
        kind=draw(st.sampled_from(["max", "avg"])),
        kernel_size=kernel,
        stride=stride,
        padding=padding,
        input_shape=(draw(st.integers(1, 3)), height, width),
    )


def _conv_model(config: dict, dtype: str, tail: str = "none") -> xc.Sequential:
    """Conv2D of ``config``, then ``tail``: nothing, a MaxPool2D(2) (a fused step in
    xpconv), or Flatten + Dense(3) (the ConvDense step); skipped when xpconv refuses."""
    args = dict(config)
    shape = args.pop("input_shape")
    layers = [xc.Conv2D(**args)]
    if tail == "pool":
        layers.append(xc.MaxPool2D(2))
    elif tail == "dense":
        layers += [xc.Flatten(), xc.Dense(3)]
    try:
        model = xc.Sequential(layers, input_shape=shape, dtype=dtype, seed=1)
    except ValueError:
        assume(False)  # the geometry leaves no output (xpconv refuses it, with a message)
        raise
    _nonzero_biases(model)
    return model


def _pool_model(config: dict, dtype: str) -> xc.Sequential:
    cls = xc.MaxPool2D if config["kind"] == "max" else xc.AvgPool2D
    layer = cls(config["kernel_size"], config["stride"], config["padding"])
    try:
        return xc.Sequential([layer], input_shape=config["input_shape"], dtype=dtype)
    except ValueError:
        assume(False)
        raise


def _nonzero_biases(model: xc.Sequential) -> None:
    state = model.state_dict()
    model.load_state_dict({k: v + (0.25 if k.endswith("bias") else 0.0) for k, v in state.items()})


def _input(model: xc.Sequential, n: int = 3) -> np.ndarray:
    rng = np.random.default_rng(sum(model.input_shape))
    return rng.normal(size=(n, *model.input_shape)).astype(model.dtype_name)


def _onnx_output(model: xc.Sequential, x: np.ndarray, tmp_path_factory) -> np.ndarray:
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    interop.to_onnx(model, path)
    onnx.checker.check_model(onnx.load(path), full_check=True)
    runtime = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    return runtime.run([interop.OUTPUT_NAME], {interop.INPUT_NAME: x})[0]


def _close32(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=5e-6 * max(1.0, np.abs(want).max()))


# ------------------------------------------------------------------------ ONNX


@SETTINGS
@given(config=conv_configs(), tail=st.sampled_from(["none", "pool", "dense"]))
def test_conv_geometries_export_to_onnx(config: dict, tail: str, tmp_path_factory) -> None:
    model = _conv_model(config, "float32", tail)
    x = _input(model)
    _close32(_onnx_output(model, x, tmp_path_factory), np.asarray(model.predict(x)))


@SETTINGS
@given(config=pool_configs())
def test_pool_geometries_export_to_onnx(config: dict, tmp_path_factory) -> None:
    model = _pool_model(config, "float32")
    x = _input(model)
    _close32(_onnx_output(model, x, tmp_path_factory), np.asarray(model.predict(x)))


@SETTINGS
@given(config=conv_configs())
def test_conv1d_geometries_export_to_onnx(config: dict, tmp_path_factory) -> None:
    args = {k: v for k, v in config.items() if k != "input_shape"}
    one_d = {
        k: (v[1] if isinstance(v, tuple) else v)
        for k, v in args.items()
        if k in ("kernel_size", "stride", "padding", "dilation")
    }
    channels, _, length = config["input_shape"]
    try:
        model = xc.Sequential(
            [xc.Conv1D(**{**args, **one_d})], input_shape=(channels, length), seed=2
        )
    except ValueError:
        assume(False)
        raise
    _nonzero_biases(model)
    x = _input(model)
    _close32(_onnx_output(model, x, tmp_path_factory), np.asarray(model.predict(x)))


# ----------------------------------------------------------------------- PyTorch


def _torch_output(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module.eval()(torch.from_numpy(x)).numpy()


@SETTINGS
@given(config=conv_configs(), tail=st.sampled_from(["none", "pool", "dense"]))
def test_conv_geometries_to_torch_and_back(config: dict, tail: str) -> None:
    """to_torch computes the model's function in PyTorch (float64, to rounding), and
    from_torch of that module gives back the same layers and weights."""
    model = _conv_model(config, "float64", tail)
    x = _input(model)
    want = np.asarray(model.predict(x))
    module = interop.to_torch(model)
    np.testing.assert_allclose(_torch_output(module, x), want, rtol=1e-10, atol=1e-10)
    back = interop.from_torch(module, model.input_shape)
    assert [type(la) for la in back.layers] == [type(la) for la in model.layers]
    assert back.layers[0].activation == model.layers[0].activation
    state, restored = model.state_dict(), back.state_dict()
    assert state.keys() == restored.keys()
    for key in state:
        np.testing.assert_array_equal(restored[key], state[key])
    np.testing.assert_array_equal(np.asarray(back.predict(x)), want)


@SETTINGS
@given(config=pool_configs())
def test_pool_geometries_to_torch_and_back(config: dict) -> None:
    model = _pool_model(config, "float64")
    x = _input(model)
    want = np.asarray(model.predict(x))
    module = interop.to_torch(model)
    np.testing.assert_allclose(_torch_output(module, x), want, rtol=1e-12, atol=1e-12)
    back = interop.from_torch(module, model.input_shape, dtype="float64")
    assert [type(la) for la in back.layers] == [type(la) for la in model.layers]
    np.testing.assert_array_equal(np.asarray(back.predict(x)), want)


def _torch_conv(config: dict) -> torch.nn.Conv2d:
    padding = config["padding"]
    conv = torch.nn.Conv2d(
        config["input_shape"][0],
        config["filters"],
        config["kernel_size"],
        stride=config["stride"],
        padding=padding,
        dilation=config["dilation"],
        groups=config["groups"],
        bias=config["use_bias"],
    ).double()
    with torch.no_grad():
        generator = torch.Generator().manual_seed(3)
        for p in conv.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64))
    return conv


@SETTINGS
@given(config=conv_configs())
def test_torch_conv_geometries_from_torch(config: dict) -> None:
    """A PyTorch Conv2d of any geometry it accepts converts to a Conv2D that computes
    its function (float64, to rounding), or is refused with a ValueError that names it
    when xpconv cannot represent it."""
    assume(config["padding"] != "full")  # not a PyTorch padding
    conv = _torch_conv(config)
    x = np.random.default_rng(4).normal(size=(2, *config["input_shape"]))
    try:
        want = _torch_output(conv, x)
    except RuntimeError:
        assume(False)  # PyTorch itself finds no output for this geometry
        raise
    model = interop.from_torch(torch.nn.Sequential(conv), config["input_shape"])
    assert model.dtype_name == "float64"
    np.testing.assert_allclose(np.asarray(model.predict(x)), want, rtol=1e-10, atol=1e-10)


@SETTINGS
@given(config=pool_configs())
def test_torch_pool_geometries_from_torch(config: dict) -> None:
    cls = torch.nn.MaxPool2d if config["kind"] == "max" else torch.nn.AvgPool2d
    pool = cls(config["kernel_size"], config["stride"], config["padding"])
    x = np.random.default_rng(5).normal(size=(2, *config["input_shape"]))
    try:
        want = _torch_output(pool, x)
    except RuntimeError:
        assume(False)
        raise
    model = interop.from_torch(torch.nn.Sequential(pool), config["input_shape"], dtype="float64")
    np.testing.assert_allclose(np.asarray(model.predict(x)), want, rtol=1e-12, atol=1e-12)
