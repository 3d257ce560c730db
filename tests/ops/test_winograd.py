"""Winograd F(2x2, 3x3) and F(4x4, 3x3): against direct convolution and PyTorch on every
backend, finite differences in float64, its errors, and the Conv2D ``algorithm``."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import Case
from numerics import assert_matches_differences, central_difference
from test_conv import torch_conv2d_reference

import xpconv as xc
from xpconv import ops as F
from xpconv.io.checkpoint import CheckpointError
from xpconv.io.schema import validate_architecture
from xpconv.nn import layers as L
from xpconv.ops import winograd as W

#: (N, C, O, (H, W), padding): non-square inputs, odd output sizes, every padding form
SHAPES = [
    (2, 3, 4, (7, 9), 1),
    (1, 2, 3, (5, 6), 0),
    (3, 2, 5, (8, 5), "same"),
    (2, 1, 2, (6, 11), (2, 1)),
    (1, 2, 2, (3, 4), "full"),
    (2, 4, 3, (4, 4), "valid"),
]
IDS = [f"{s[3][0]}x{s[3][1]}-pad{s[4]}" for s in SHAPES]


def _data(case: Case, shape: tuple, seed: int = 0):
    n, c, o, (h, w), padding = shape
    r = np.random.default_rng(seed)
    x = case.host(r.normal(size=(n, c, h, w)))
    wt = case.host(r.normal(size=(o, c, 3, 3)))
    b = case.host(r.normal(size=(o,)))
    geom = F.conv_geometry(x.shape, wt.shape, padding=padding)
    g = case.host(r.normal(size=(n, o, *geom.out)))
    return x, wt, b, g, dict(padding=padding)


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_winograd_matches_torch(case: Case, shape: tuple, tile: int) -> None:
    x, wt, b, g, conv = _data(case, shape)
    full = dict(conv, stride=(1, 1), dilation=(1, 1), groups=1)
    ref_out, ref_gx, ref_gw, ref_gb = torch_conv2d_reference(x, wt, b, g, full, (3, 3))
    xa, wa, ba, ga = (case.asarray(a) for a in (x, wt, b, g))
    case.assert_close(
        F.conv2d(xa, wa, ba, algorithm="winograd", tile=tile, **conv), ref_out, "winograd"
    )
    gx, gw, gb = F.conv2d_backward(ga, xa, wa, algorithm="winograd", tile=tile, **conv)
    case.assert_close(gx, ref_gx, "winograd grad_x")
    case.assert_close(gw, ref_gw, "winograd grad_weight")
    case.assert_close(gb, ref_gb, "winograd grad_bias")


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_winograd_matches_direct_convolution_in_float64(
    case64: Case, shape: tuple, tile: int
) -> None:
    x, wt, b, g, conv = _data(case64, shape, seed=1)
    xa, wa, ba, ga = (case64.asarray(a) for a in (x, wt, b, g))
    want = [
        case64.to_numpy(a)
        for a in (F.conv2d(xa, wa, ba, **conv), *F.conv2d_backward(ga, xa, wa, **conv))
    ]
    got = (
        F.conv2d(xa, wa, ba, algorithm="winograd", tile=tile, **conv),
        *F.conv2d_backward(ga, xa, wa, algorithm="winograd", tile=tile, **conv),
    )
    for what, a, ref in zip(("out", "grad_x", "grad_weight", "grad_bias"), got, want):
        case64.assert_close(a, ref, f"F({tile}, 3) {what}")  # rtol 1e-10


@pytest.mark.parametrize("tile", [2, 4])
def test_winograd_backward_finite_differences(case64: Case, tile: int) -> None:
    x, wt, b, proj, conv = _data(case64, (1, 2, 2, (5, 3), 1), seed=2)

    def loss(xh, wh, bh):
        args = (case64.asarray(a) for a in (xh, wh, bh))
        return float(
            np.sum(case64.to_numpy(F.conv2d(*args, algorithm="winograd", tile=tile, **conv)) * proj)
        )

    gx, gw, gb = F.conv2d_backward(
        case64.asarray(proj),
        case64.asarray(x),
        case64.asarray(wt),
        algorithm="winograd",
        tile=tile,
        **conv,
    )
    for got, fd in (
        (gx, central_difference(lambda v: loss(v, wt, b), x)),
        (gw, central_difference(lambda v: loss(x, v, b), wt)),
        (gb, central_difference(lambda v: loss(x, wt, v), b)),
    ):
        assert_matches_differences(case64.to_numpy(got), fd)


def test_float32_error_against_direct_convolution() -> None:
    """F(2, 3) in float32 stays within a few float32 roundings of the exact result on
    LeNet's second convolution (32 -> 64 channels, 14x14), F(4, 3) within ten times that;
    docs/performance.md gives the measured figures."""
    r = np.random.default_rng(3)
    x, wt = r.random((8, 32, 14, 14)), r.normal(size=(64, 32, 3, 3)) * 0.08
    exact = F.conv2d(x, wt, padding=1)
    scale = np.max(np.abs(exact))
    x32, w32 = x.astype(np.float32), wt.astype(np.float32)
    direct = np.max(np.abs(F.conv2d(x32, w32, padding=1) - exact)) / scale
    errors = {
        t: np.max(np.abs(F.conv2d(x32, w32, padding=1, algorithm="winograd", tile=t) - exact))
        / scale
        for t in (2, 4)
    }
    eps = np.finfo(np.float32).eps
    assert direct < 8 * eps
    assert errors[2] < 8 * eps, errors
    assert errors[4] < 80 * eps, errors
    assert errors[4] > errors[2]  # the larger tile's transforms round more


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(stride=2), "stride: Winograd needs stride 1"),
        (dict(dilation=2), "dilation: Winograd needs dilation 1"),
        (dict(groups=2), "groups: Winograd needs groups=1"),
        (dict(tile=3), r"tile: expected one of \[2, 4\], got 3"),
        (dict(tile=True), "tile: expected one of"),
        (dict(algorithm="fft"), "algorithm: expected 'im2col' or 'winograd', got 'fft'"),
    ],
)
def test_winograd_refuses_what_it_does_not_run(kwargs: dict, message: str) -> None:
    x, w = np.ones((1, 2, 6, 6)), np.ones((2, 1 if "groups" in kwargs else 2, 3, 3))
    with pytest.raises(ValueError, match=message):
        F.conv2d(x, w, **{"algorithm": "winograd", **kwargs})
    with pytest.raises(ValueError, match="kernel_size: Winograd needs a 3x3 kernel"):
        F.conv2d(x, np.ones((2, 2, 5, 5)), algorithm="winograd")
    with pytest.raises(ValueError, match=r"grad_out: expected shape \(1, 2, 4, 4\)"):
        F.conv2d_backward(np.ones((1, 2, 6, 6)), x, np.ones((2, 2, 3, 3)), algorithm="winograd")


def test_inference_runs_the_batch_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A forward pass without backward keeps its transformed input under the bound:
    chunks of images, the same values as the whole batch at once."""
    r = np.random.default_rng(4)
    x, wt = r.normal(size=(5, 3, 6, 7)), r.normal(size=(2, 3, 3, 3))
    geom = F.conv_geometry(x.shape, wt.shape, padding=1)
    whole, saved = W.winograd_conv2d(np, x, wt, None, geom, keep=True)
    assert saved.v is not None and saved.x is None
    per_image = 16 * (3 + 2) * 3 * 4 * 8  # alpha^2 * (C + O) * TH * TW * 8 bytes
    monkeypatch.setattr(W, "WINOGRAD_BLOCK_BYTES", 2 * per_image)
    assert W._chunk(geom, W.TILES[2], 8) == 2
    chunked, saved = W.winograd_conv2d(np, x, wt, None, geom, keep=False)
    assert saved.v is None and saved.x is x
    np.testing.assert_allclose(chunked, whole, rtol=1e-13, atol=1e-13)


# ------------------------------------------------------------------ the layer


def _pair(algorithm: str, **extra):
    layers = [
        L.Conv2D(4, 3, padding="same", activation="relu", algorithm=algorithm, **extra),
        L.MaxPool2D(2),
        L.Conv2D(3, 3, padding=1, activation="tanh", algorithm=algorithm),
        L.Flatten(),
        L.Dense(2),
    ]
    return xc.Sequential(layers, backend="numpy", dtype="float64", seed=7, input_shape=(2, 9, 8))


def test_winograd_layers_match_im2col_layers() -> None:
    wino, plain = _pair("winograd"), _pair("im2col")
    assert [layer.uses_winograd for layer in wino.layers if isinstance(layer, L.Conv2D)] == [
        True,
        True,
    ]
    assert not any(isinstance(s, (L.ConvMaxPool, L.ConvDense)) for s in wino.steps)
    assert any(isinstance(s, L.ConvMaxPool) for s in plain.steps)
    x = np.random.default_rng(5).normal(size=(3, 2, 9, 8))
    out_w, out_p = wino.forward(x, training=True), plain.forward(x, training=True)
    np.testing.assert_allclose(out_w, out_p, rtol=1e-12, atol=1e-12)
    g = np.random.default_rng(6).normal(size=out_w.shape)
    gx_w, gx_p = wino.backward(g, input_grad=True), plain.backward(g, input_grad=True)
    np.testing.assert_allclose(gx_w, gx_p, rtol=1e-12, atol=1e-12)
    for (name, a), b in zip(wino.gradients().items(), plain.gradients().values()):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-11, err_msg=name)
    np.testing.assert_allclose(wino.predict(x), plain.predict(x), rtol=1e-12, atol=1e-12)


def test_algorithm_is_saved_and_checked() -> None:
    model = _pair("winograd")
    config = model.get_config()
    assert config["layers"][0]["config"]["algorithm"] == "winograd"
    again = xc.Sequential.from_config(config)
    assert again.layers[0].algorithm == "winograd" and again.layers[0].uses_winograd
    with pytest.raises(ValueError, match="algorithm: expected one of"):
        L.Conv2D(4, 3, algorithm="fft")
    with pytest.raises(ValueError, match="algorithm='winograd': kernel_size: Winograd needs a 3x3"):
        xc.Sequential([L.Conv2D(2, 5, algorithm="winograd")], input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="stride: Winograd needs stride 1"):
        xc.Sequential([L.Conv2D(2, 3, stride=2, algorithm="winograd")], input_shape=(1, 8, 8))
    first = config["layers"][0]
    bad = dict(config, layers=[dict(first, config=dict(first["config"], dilation=2))])
    shapes = {"conv2d_0.weight": (4, 2, 3, 3), "conv2d_0.bias": (4,)}
    with pytest.raises(CheckpointError, match="dilation: Winograd needs dilation 1"):
        validate_architecture(bad, shapes)


def test_auto_is_a_fixed_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """``auto`` follows :data:`AUTO_MIN_CHANNELS` by backend and input channels only."""
    geom = F.conv_geometry((1, 32, 14, 14), (64, 32, 3, 3), padding=1)
    monkeypatch.setattr(W, "AUTO_MIN_CHANNELS", {"numpy": 16})
    assert W.choose_algorithm(geom, "numpy") == "winograd"
    assert W.choose_algorithm(geom, "torch") == "im2col"
    assert W.choose_algorithm(F.conv_geometry((1, 8, 9, 9), (4, 8, 3, 3)), "numpy") == "im2col"
    strided = F.conv_geometry((1, 32, 9, 9), (4, 32, 3, 3), stride=2)
    assert W.choose_algorithm(strided, "numpy") == "im2col"
    model = xc.Sequential([L.Conv2D(2, 3), L.Conv2D(2, 3)], input_shape=(16, 8, 8), backend="numpy")
    assert [layer.uses_winograd for layer in model.layers] == [True, False]
