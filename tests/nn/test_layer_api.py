"""The public op layers use for the fused convolution + max pool, layer configs that
round-trip every constructor argument, and the explicit input gradient of a model.

The fused op is checked against PyTorch (conv2d, relu, max_pool2d) as the oracle, by
central finite differences in float64, and on every backend of the fixture.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import Case, torch_or_skip

import xpconv as xc
import xpconv.ops as F
from xpconv.backends.kernels import kernels_for
from xpconv.nn import layers as L
from xpconv.nn.initializers import he_normal
from xpconv.nn.layers import LAYERS, layer_from_config
from xpconv.ops.conv import conv2d_matrix, conv2d_matrix_backward

# ----------------------------------------------------------------- the fused op

#: (x shape, weight shape, pool, conv arguments, relu, bias)
FUSED = [
    ((2, 3, 8, 8), (4, 3, 3, 3), 2, dict(padding=1), True, True),
    ((2, 2, 9, 7), (4, 1, 3, 2), (2, 3), dict(groups=2, stride=(1, 1)), False, True),
    ((1, 2, 11, 10), (3, 2, 3, 3), 3, dict(padding=(2, 1), dilation=(2, 1)), True, False),
    ((3, 1, 7, 7), (2, 1, 2, 2), 2, dict(stride=2, padding="valid"), True, True),
]


def _problem(xs, ws, bias, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=xs)
    w = rng.normal(size=ws) * 0.5
    b = rng.normal(size=(ws[0],)) * 0.3 if bias else None
    return x, w, b


def _torch_fused(x, w, b, pool, conv, relu, grad=None):
    torch = torch_or_skip()
    tf = torch.nn.functional
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    tb = None if b is None else torch.tensor(b, requires_grad=True)
    z = tf.conv2d(tx, tw, tb, **conv)
    out = tf.max_pool2d(tf.relu(z) if relu else z, pool)
    if grad is None:
        return out.detach().numpy(), None
    out.backward(torch.tensor(grad))
    grads = (tx.grad.numpy(), tw.grad.numpy(), None if tb is None else tb.grad.numpy())
    return out.detach().numpy(), grads


@pytest.mark.parametrize("xs, ws, pool, conv, relu, bias", FUSED)
def test_fused_conv_pool_matches_torch(xs, ws, pool, conv, relu, bias) -> None:
    x, w, b = _problem(xs, ws, bias)
    out, saved = F.conv_max_pool2d_forward(x, w, b, pool_size=pool, relu=relu, **conv)
    grad = np.random.default_rng(1).normal(size=out.shape)
    ref, (gx_ref, gw_ref, gb_ref) = _torch_fused(x, w, b, pool, conv, relu, grad)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    gx, gw, gb = F.conv_max_pool2d_backward(grad, saved)
    np.testing.assert_allclose(gx, gx_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gw, gw_ref, rtol=1e-12, atol=1e-12)
    if bias:
        np.testing.assert_allclose(gb, gb_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        F.conv_max_pool2d(x, w, b, pool_size=pool, relu=relu, **conv), ref, rtol=1e-12
    )
    skipped = F.conv_max_pool2d_backward(grad, saved, need_input_grad=False)
    assert skipped[0] is None
    np.testing.assert_array_equal(skipped[1], gw)
    np.testing.assert_array_equal(skipped[2], gb)


def test_fused_conv_pool_every_backend(case: Case) -> None:
    xs, ws, pool, conv, relu, _ = FUSED[0]
    x, w, b = _problem(xs, ws, True, seed=4)
    hx, hw, hb = case.host(x), case.host(w), case.host(b)
    grad = case.host(np.random.default_rng(5).normal(size=(2, 4, 4, 4)))
    ref, (gx_ref, gw_ref, gb_ref) = _torch_fused(hx, hw, hb, pool, conv, relu, grad)
    out, saved = F.conv_max_pool2d_forward(
        case.asarray(x), case.asarray(w), case.asarray(b), pool_size=pool, relu=relu, **conv
    )
    case.assert_close(out, ref, "out")
    gx, gw, gb = F.conv_max_pool2d_backward(case.asarray(grad), saved)
    case.assert_close(gx, gx_ref, "grad_x")
    case.assert_close(gw, gw_ref, "grad_weight")
    case.assert_close(gb, gb_ref, "grad_bias")


def test_fused_conv_pool_finite_differences(case64: Case) -> None:
    xs, ws, pool, conv, relu, _ = FUSED[2]
    x, w, b = _problem(xs, ws, True, seed=7)
    proj = np.random.default_rng(8).normal(size=(1, 3, 3, 3))

    def objective(xa, wa, ba) -> float:
        out = F.conv_max_pool2d(
            case64.asarray(xa), case64.asarray(wa), case64.asarray(ba),
            pool_size=pool, relu=relu, **conv,
        )  # fmt: skip
        return float(np.sum(case64.to_numpy(out) * proj))

    _, saved = F.conv_max_pool2d_forward(
        case64.asarray(x), case64.asarray(w), case64.asarray(b), pool_size=pool, relu=relu, **conv
    )
    grads = F.conv_max_pool2d_backward(case64.asarray(proj), saved)
    rng = np.random.default_rng(9)
    h = 1e-6
    for k, (value, grad) in enumerate(zip((x, w, b), grads)):
        grad = case64.to_numpy(grad)
        for _ in range(4):
            idx = tuple(int(rng.integers(0, s)) for s in value.shape)
            args = [x, w, b]
            up, down = value.copy(), value.copy()
            up[idx] += h
            down[idx] -= h
            args[k] = up
            f_up = objective(*args)
            args[k] = down
            numeric = (f_up - objective(*args)) / (2 * h)
            assert abs(numeric - grad[idx]) <= 1e-6 * max(1.0, abs(numeric)), (k, idx)


def test_fused_conv_pool_refuses_bad_arguments() -> None:
    x, w, b = _problem((1, 1, 4, 4), (2, 1, 3, 3), True)
    with pytest.raises(ValueError, match=r"pool_size: expected at most .*\(2, 2\), got \(3, 3\)"):
        F.conv_max_pool2d_forward(x, w, b, pool_size=3)
    with pytest.raises(ValueError, match="pool_size: expected positive"):
        F.conv_max_pool2d_forward(x, w, b, pool_size=0)
    with pytest.raises(ValueError, match="weight: expected 1 input channels per group"):
        F.conv_max_pool2d_forward(x, np.zeros((2, 2, 3, 3)), b)
    out, saved = F.conv_max_pool2d_forward(x, w, b, pool_size=2)
    assert out.shape == (1, 2, 1, 1)
    with pytest.raises(ValueError, match=r"grad_out: expected shape \(1, 2, 1, 1\)"):
        F.conv_max_pool2d_backward(np.zeros((1, 2, 2, 2)), saved)
    with pytest.raises(TypeError, match="saved: expected the ConvPoolSaved"):
        F.conv_max_pool2d_backward(np.zeros((1, 2, 1, 1)), (saved,))


def test_conv_max_pool_layer_is_the_two_layers_in_turn() -> None:
    """As a layer of its own it gives the values and gradients of Conv2D then MaxPool2D."""
    x = np.random.default_rng(2).normal(size=(3, 2, 9, 9))

    def model(layers, fuse):
        return xc.Sequential(layers, backend="numpy", dtype="float64", seed=5,
                             input_shape=(2, 9, 9), fuse=fuse)  # fmt: skip

    fused = model([L.ConvMaxPool(L.Conv2D(4, 3, activation="relu"), L.MaxPool2D(2))], True)
    plain = model([L.Conv2D(4, 3, activation="relu"), L.MaxPool2D(2)], False)
    assert list(fused.parameters()) == ["convmaxpool_0.conv.weight", "convmaxpool_0.conv.bias"]
    assert not any(isinstance(s, L.ConvMaxPool) for s in plain.steps)
    plain.load_state_dict(dict(zip(plain.state_dict(), fused.state_dict().values())))
    out_f, out_p = fused.forward(x, training=True), plain.forward(x, training=True)
    np.testing.assert_allclose(out_f, out_p, rtol=1e-13, atol=1e-13)
    g = np.random.default_rng(3).normal(size=out_f.shape)
    gx_f, gx_p = fused.backward(g, input_grad=True), plain.backward(g, input_grad=True)
    np.testing.assert_allclose(gx_f, gx_p, rtol=1e-12, atol=1e-12)
    for a, b in zip(fused.gradients().values(), plain.gradients().values()):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert "convmaxpool_0.conv: Conv2D(4, 3x3" in fused.summary(print_fn=None)
    with pytest.raises(ValueError, match="ConvMaxPool: expected a Conv2D with a ReLU"):
        L.ConvMaxPool(L.Conv2D(4, 3, activation="tanh"), L.MaxPool2D(2))
    with pytest.raises(ValueError, match="stride == kernel_size"):
        L.ConvMaxPool(L.Conv2D(4, 3), L.MaxPool2D(2, stride=1))


# ----------------------------------------------------------------- explicit input grad


def test_backward_input_grad_is_an_argument_not_a_toggle() -> None:
    for first in (L.Conv2D(3, 3, padding=1, activation="relu"), L.Flatten()):
        rest = [L.MaxPool2D(2), L.Flatten(), L.Dense(4)] if isinstance(first, L.Conv2D) else []
        model = xc.Sequential([first, *rest, L.Dense(3)], backend="numpy", dtype="float64",
                              input_shape=(1, 6, 6))  # fmt: skip
        x = np.random.default_rng(0).normal(size=(2, 1, 6, 6))
        flags = [layer.needs_input_grad for layer in model.layers]
        assert flags[0] is False
        model.forward(x, training=True)
        gx = model.backward(np.ones((2, 3)), input_grad=True)
        assert gx.shape == (2, 1, 6, 6) and float(np.abs(gx).sum()) > 0
        assert [layer.needs_input_grad for layer in model.layers] == flags
        model.forward(x, training=True)
        assert model.backward(np.ones((2, 3))) is None
        assert [layer.needs_input_grad for layer in model.layers] == flags


def test_train_batch_can_return_the_outputs() -> None:
    model = xc.Sequential([L.Flatten(), L.Dense(3)], backend="numpy", input_shape=(4,))
    x, y = np.ones((5, 4), np.float32), np.array([0, 1, 2, 0, 1])
    loss, out = model.train_batch(x, y, return_outputs=True)
    assert out.shape == (5, 3) and out is model.last_output and loss.shape == ()


# ----------------------------------------------------------------- configs


#: An instance of every layer type with arguments away from the defaults, and its input.
EXAMPLES = {
    "Conv2D": (
        lambda: L.Conv2D(4, (3, 2), padding="same", dilation=(1, 2), activation="tanh",
                         use_bias=False, init="he", in_channels=2, algorithm="im2col"),
        (2, 7, 7),
    ),
    "Conv1D": (
        lambda: L.Conv1D(4, 3, stride=2, padding=1, groups=2, activation="relu",
                         init="glorot_uniform", in_channels=2),
        (2, 9),
    ),
    "MaxPool2D": (lambda: L.MaxPool2D(3, stride=1, padding=1), (2, 5, 5)),
    "AvgPool2D": (lambda: L.AvgPool2D((2, 3), stride=(1, 2), padding=(1, 1)), (2, 5, 6)),
    "Flatten": (lambda: L.Flatten(), (2, 3, 3)),
    "Dense": (
        lambda: L.Dense(5, activation="sigmoid", use_bias=False, init=he_normal,
                        in_features=6),
        (6,),
    ),
    "Dropout": (lambda: L.Dropout(0.25), (6,)),
    "Activation": (lambda: L.Activation("leaky_relu", negative_slope=0.2), (6,)),
    "Identity": (lambda: L.Identity(), (6,)),
    "ReLU": (lambda: L.ReLU(), (6,)),
    "LeakyReLU": (lambda: L.LeakyReLU(negative_slope=0.3), (6,)),
    "Sigmoid": (lambda: L.Sigmoid(), (6,)),
    "Tanh": (lambda: L.Tanh(), (6,)),
    "Softmax": (lambda: L.Softmax(), (6,)),
    "LogSoftmax": (lambda: L.LogSoftmax(), (6,)),
    "BatchNorm2D": (lambda: L.BatchNorm2D(momentum=0.2, eps=1e-3, affine=False), (2, 3, 3)),
    "BatchNorm1D": (lambda: L.BatchNorm1D(momentum=0.3, eps=1e-4), (3, 4)),
    "GlobalAvgPool2D": (lambda: L.GlobalAvgPool2D(), (2, 3, 3)),
    "Standardize": (lambda: L.Standardize([0.1, -0.2], [0.5, 2.0]), (2, 3, 4)),
    "Residual": (
        lambda: L.Residual(
            [L.Conv2D(3, 3, padding="same", init="he_uniform"), L.BatchNorm2D(momentum=0.5)],
            shortcut=[L.Conv2D(3, 1, use_bias=False)],
        ),
        (2, 5, 5),
    ),
    "ConvMaxPool": (
        lambda: L.ConvMaxPool(L.Conv2D(3, 3, activation="relu", init="lecture"),
                              L.MaxPool2D((2, 1))),
        (2, 7, 6),
    ),
}  # fmt: skip


def test_every_layer_type_has_a_config_example() -> None:
    assert sorted(EXAMPLES) == sorted(LAYERS)


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_layer_config_round_trips(kind: str) -> None:
    """``from_config(get_config())`` gives an equal config and equal outputs."""
    make, shape = EXAMPLES[kind]
    layer = make()
    config = layer.get_config()
    json.dumps(config)  # JSON data, as checkpoints store it
    clone = layer_from_config(kind, json.loads(json.dumps(config)))
    assert type(clone) is type(layer) and clone.get_config() == config

    def run(one: L.Layer) -> tuple[np.ndarray, np.ndarray]:
        model = xc.Sequential([one], backend="numpy", dtype="float64", seed=3,
                              input_shape=shape, loss="mse")  # fmt: skip
        x = np.random.default_rng(4).normal(size=(4, *shape))
        out = model.forward(x, training=True)
        return out, model.backward(np.ones_like(out), input_grad=True)

    (out_a, gx_a), (out_b, gx_b) = run(layer), run(clone)
    np.testing.assert_array_equal(out_a, out_b)
    np.testing.assert_array_equal(gx_a, gx_b)


def test_model_config_keeps_every_argument() -> None:
    model = xc.Sequential(
        [L.Conv2D(3, 3, activation="relu"), L.MaxPool2D(2), L.Flatten(), L.Dense(2)],
        loss="mse", dtype="float64", seed=4, input_shape=(1, 6, 6), fuse=False,
        backend="numpy",
    )  # fmt: skip
    config = model.get_config()
    assert config["fuse"] is False
    clone = xc.Sequential.from_config(config, backend="numpy")
    assert clone.get_config() == config and clone.fuse is False
    assert not any(isinstance(s, L.ConvMaxPool) for s in clone.steps)
    older = {k: v for k, v in config.items() if k != "fuse"}  # files written before
    assert xc.Sequential.from_config(older, backend="numpy").fuse is True


def test_a_callable_init_is_kept() -> None:
    """A registered initialiser passed as a function is named; another callable is kept
    as it is (the layer rebuilds with it)."""

    def ones(rng, shape, fan_in, fan_out):
        return np.ones(shape)

    assert L.Dense(3, init=he_normal).get_config()["init"] == "he_normal"
    layer = L.Dense(3, init=ones)
    assert layer.get_config()["init"] is ones
    model = xc.Sequential([layer_from_config("Dense", layer.get_config())],
                          backend="numpy", input_shape=(2,))  # fmt: skip
    np.testing.assert_array_equal(model.state_dict()["dense_0.weight"], np.ones((3, 2)))


def test_a_conv_max_pool_layer_is_saved_and_loaded(tmp_path) -> None:
    model = xc.Sequential(
        [L.ConvMaxPool(L.Conv2D(3, 3, activation="relu"), L.MaxPool2D(2)), L.Flatten(),
         L.Dense(2)],
        backend="numpy", input_shape=(1, 8, 8), seed=2,
    )  # fmt: skip
    xc.save_model(model, tmp_path / "m.npz")
    loaded = xc.load_model(tmp_path / "m.npz")
    assert loaded.get_config() == model.get_config()
    x = np.random.default_rng(0).normal(size=(2, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


# ------------------------------------------------------------------ public defaults

_CONV = dict(stride=1, padding=0, dilation=1, groups=1)  # torch.nn.functional.conv2d's
_POOL = dict(stride=None, padding=0)  # stride None: the kernel size, as in PyTorch
_BN = dict(running_mean=None, running_var=None, training=True, eps=1e-5)
_LAYER_CONV = dict(
    _CONV, activation=None, use_bias=True, init="glorot_normal", in_channels=None, algorithm="auto"
)
_FUSED = dict(bias=None, pool_size=2, relu=False, **_CONV)

#: every defaulted parameter of the public functional ops, and of the layers.
OP_DEFAULTS = {
    "avg_pool2d": _POOL,
    "avg_pool2d_backward": _POOL,
    "max_pool2d": _POOL,
    "max_pool2d_backward": dict(_POOL, kernel_size=None),
    "max_pool2d_forward": _POOL,
    "pool_geometry": _POOL,
    "batch_norm": dict(_BN, momentum=0.1),
    "batch_norm_forward": dict(_BN, momentum=0.1, reducer=None),
    "batch_norm_backward": dict(_BN, weight=None),
    "conv_geometry": _CONV,
    "conv1d": dict(_CONV, bias=None),
    "conv2d": dict(_CONV, bias=None, algorithm="im2col", tile=2),
    "conv1d_backward": _CONV,
    "conv2d_backward": dict(_CONV, algorithm="im2col", tile=2),
    "conv_max_pool2d": _FUSED,
    "conv_max_pool2d_forward": dict(_FUSED, geometry=None),
    "conv_max_pool2d_backward": dict(need_input_grad=True),
    "dropout": dict(rng=None, training=True, mask=None),
    "linear": dict(bias=None),
    "leaky_relu": dict(negative_slope=0.01),
    "leaky_relu_backward": dict(out=None, negative_slope=0.01),
    "softmax": dict(axis=-1),
    "log_softmax": dict(axis=-1),
    "softmax_backward": dict(out=None, axis=-1),
    "log_softmax_backward": dict(out=None, axis=-1),
    **{f"{a}_backward": dict(out=None) for a in ("identity", "relu", "sigmoid", "tanh")},
    "mse_backward": dict(grad=1.0),
    "softmax_cross_entropy_backward": dict(labels=None, grad=1.0),
    "softmax_cross_entropy_forward": dict(check_range=True),
}
LAYER_DEFAULTS = {
    "AvgPool2D": _POOL,
    "MaxPool2D": _POOL,
    "BatchNorm1D": dict(momentum=0.1, eps=1e-5, affine=True),
    "BatchNorm2D": dict(momentum=0.1, eps=1e-5, affine=True),
    "Conv1D": _LAYER_CONV,
    "Conv2D": _LAYER_CONV,
    "Dense": dict(
        units=None,
        neurons=None,
        activation=None,
        use_bias=True,
        init="glorot_normal",
        in_features=None,
    ),
    "Dropout": dict(p=0.5),
    "Residual": dict(shortcut=None),
}


def _defaults(fn) -> dict:
    import inspect

    params = inspect.signature(fn).parameters.values()
    return {p.name: p.default for p in params if p.default is not p.empty}


def _same(got: dict, want: dict) -> bool:
    # 1 == True == 1.0 in Python: compare types too
    return got == want and all(type(got[k]) is type(want[k]) for k in want)


def test_public_ops_have_the_documented_defaults() -> None:
    ops = [n for n in F.__all__ if callable(getattr(F, n)) and not isinstance(getattr(F, n), type)]
    got = {n: _defaults(getattr(F, n)) for n in ops}
    got = {n: d for n, d in got.items() if d}
    assert set(got) == set(OP_DEFAULTS)
    for name, want in OP_DEFAULTS.items():
        assert _same(got[name], want), (name, got[name])


def _calls() -> dict[str, list]:
    """op name -> factories of minimal calls ``(args, kwargs)``, fresh arrays each time;
    several where one call cannot show every default (running statistics, ranges)."""

    def a(*shape):  # the same values in both calls of a comparison
        return lambda: np.random.default_rng(sum(shape)).normal(size=shape)

    x4, x3, x2, g3 = a(2, 3, 6, 6), a(2, 3, 8), a(2, 3), a(2, 3, 3, 3)
    w4, w3, w2 = a(4, 3, 3, 3), a(4, 3, 3), a(4, 3)
    bn = lambda: (a(4, 3, 2, 2)(), a(3)(), a(3)())  # noqa: E731
    stats = lambda: (np.zeros(3), np.ones(3))  # noqa: E731
    labels = np.array([0, 2])
    geom = lambda: F.conv_geometry((2, 3, 6, 6), (4, 3, 3, 3))  # noqa: E731
    pooled = lambda: F.conv_pool_geometry(geom(), 2)  # noqa: E731
    fused = lambda: F.conv_max_pool2d_forward(x4(), w4(), a(4)())[1]  # noqa: E731
    ce = lambda: F.softmax_cross_entropy_forward(x2(), labels)[1]  # noqa: E731

    def call(*args, **kwargs):
        return lambda: ([v() if callable(v) else v for v in args], kwargs)

    pool = [call(x4, 2)]
    return {
        "avg_pool2d": pool,
        "max_pool2d": pool,
        "max_pool2d_forward": pool,
        "avg_pool2d_backward": [call(g3, x4, 2)],
        "max_pool2d_backward": [
            call(g3, x4, 2),
            call(g3, lambda: F.max_pool2d_forward(x4(), 2)[1]),
        ],
        "pool_geometry": [call((2, 3, 6, 6), 2)],
        "batch_norm": [lambda: (list(bn()), {}), lambda: ([*bn(), *stats()], {})],
        "batch_norm_forward": [lambda: (list(bn()), {}), lambda: ([*bn(), *stats()], {})],
        "batch_norm_backward": [
            lambda: ([a(4, 3, 2, 2)(), *bn()[:2]], {}),
            lambda: ([a(4, 3, 2, 2)(), *bn()[:2], *stats()], {"training": False}),
            lambda: ([a(4, 3, 2, 2)(), F.batch_norm_forward(*bn())[3]], {}),
        ],
        "conv_geometry": [call((2, 3, 6, 6), (4, 3, 3, 3))],
        "conv1d": [call(x3, w3)],
        "conv2d": [call(x4, w4), call(x4, w4, algorithm="winograd")],
        "conv1d_backward": [call(a(2, 4, 6), x3, w3)],
        "conv2d_backward": [call(a(2, 4, 4, 4), x4, w4), call(a(2, 4, 4, 4), x4, w4, tile=4)],
        "conv_max_pool2d": [call(x4, w4)],
        "conv_max_pool2d_forward": [call(x4, w4), lambda: ([x4(), w4()], {"geometry": pooled()})],
        "conv_max_pool2d_backward": [call(a(2, 4, 2, 2), fused)],
        "dropout": [call(x2, 0.5, mask=np.full((2, 3), 2.0))],
        "linear": [call(x2, w2)],
        "leaky_relu": [call(x2)],
        "leaky_relu_backward": [call(x2, x2)],
        "softmax": [call(x2)],
        "log_softmax": [call(x2)],
        "softmax_backward": [call(x2, x2)],
        "log_softmax_backward": [call(x2, x2)],
        **{f"{n}_backward": [call(x2, x2)] for n in ("identity", "relu", "sigmoid", "tanh")},
        "mse_backward": [call(x2, x2)],
        "softmax_cross_entropy_backward": [call(x2, labels), call(ce)],
        "softmax_cross_entropy_forward": [call(x2, labels), call(x2, np.array([0, 3]))],
    }


def _outcome(fn, args, kwargs):
    """What a call gives: its values (arrays as NumPy, dataclasses field by field), or
    its error."""
    import dataclasses

    def plain(v):
        if isinstance(v, np.ndarray):
            return ("array", v.dtype.str, v.shape, v.tobytes())
        if isinstance(v, (tuple, list)):
            return tuple(plain(e) for e in v)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return tuple(plain(getattr(v, f.name)) for f in dataclasses.fields(v))
        return v

    try:
        result = fn(*args, **kwargs)
        return plain(result)
    except (TypeError, ValueError) as exc:
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize("name", sorted(OP_DEFAULTS))
def test_leaving_out_a_default_is_passing_it(name: str) -> None:
    """Each call gives the same with every defaulted argument left out as with the
    documented defaults written out."""
    fn, calls = getattr(F, name), _calls()[name]
    for make in calls:
        args, kwargs = make()
        written = {**OP_DEFAULTS[name], **kwargs}
        written = {k: v for k, v in written.items() if k not in _positional(fn, len(args))}
        args2, _ = make()
        assert _outcome(fn, args, kwargs) == _outcome(fn, args2, written), name


def _positional(fn, count: int) -> set[str]:
    import inspect

    return set(list(inspect.signature(fn).parameters)[:count])


#: the required arguments of the layers with defaults
LAYER_REQUIRED = {
    "AvgPool2D": (2,),
    "MaxPool2D": (2,),
    "Conv1D": (4, 3),
    "Conv2D": (4, 3),
    "Dense": (3,),
    "Residual": ([L.ReLU()],),
}


def test_layers_have_the_documented_defaults() -> None:
    got = {n: _defaults(cls.__init__) for n, cls in LAYERS.items()}
    assert {n for n, d in got.items() if d} == set(LAYER_DEFAULTS)
    for name, want in LAYER_DEFAULTS.items():
        assert _same(got[name], want), (name, got[name])
        args = LAYER_REQUIRED.get(name, ())
        written = {k: v for k, v in want.items() if k not in ("units",)}
        left_out = LAYERS[name](*args).get_config()
        assert left_out == LAYERS[name](*args, **written).get_config(), name


def test_layer_repr_lists_its_config() -> None:
    assert repr(L.Dense(3)) == (
        "Dense(units=3, activation=None, use_bias=True, init='glorot_normal', in_features=None)"
    )
    assert repr(L.Dropout(0.25)) == "Dropout(p=0.25)"


@pytest.mark.parametrize("activation, use_bias", [("relu", False), ("tanh", True)])
def test_conv1d_layer_matches_torch_with_every_argument(activation: str, use_bias: bool) -> None:
    torch = torch_or_skip()
    rng = np.random.default_rng(5)
    conv = dict(stride=2, padding=2, dilation=2, groups=2)
    layer = L.Conv1D(4, 3, activation=activation, use_bias=use_bias, **conv)
    model = xc.Sequential([layer], input_shape=(6, 17), seed=0, dtype="float64")
    x = rng.normal(size=(3, 6, 17))
    ref = torch.nn.Conv1d(6, 4, 3, bias=use_bias, dtype=torch.float64, **conv)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(layer.params["weight"].value))
        if use_bias:
            layer.params["bias"].value = rng.normal(size=4)
            ref.bias.copy_(torch.tensor(layer.params["bias"].value))
    tx = torch.tensor(x, requires_grad=True)
    out = getattr(torch, activation)(ref(tx))
    np.testing.assert_allclose(model.forward(x), out.detach().numpy(), rtol=1e-10, atol=1e-12)
    grad = rng.normal(size=tuple(out.shape))
    out.backward(torch.tensor(grad))
    model.forward(x, training=True)
    gx = model.backward(grad, input_grad=True)
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    gw = layer.params["weight"].grad
    np.testing.assert_allclose(gw, ref.weight.grad.numpy(), rtol=1e-10, atol=1e-12)
    assert ("bias" in layer.params) is use_bias
    config = layer.get_config()
    assert {k: config[k] for k in (*conv, "activation", "use_bias")} == dict(
        conv, activation=activation, use_bias=use_bias
    )


def test_layer_descriptions_name_the_activation() -> None:
    model = xc.Sequential(
        [
            L.Conv2D(4, 3, activation="relu"),
            L.Conv2D(2, 1),
            L.Flatten(),
            L.Dense(3, activation="tanh"),
            L.Dense(2),
        ],
        input_shape=(1, 5, 5),
    )
    assert [layer.describe() for layer in model.layers] == [
        "Conv2D(4, 3x3, padding=0, relu)",
        "Conv2D(2, 1x1, padding=0)",
        "Flatten",
        "Dense(3, tanh)",
        "Dense(2)",
    ]
    # the second convolution, the Flatten and the first Dense run as one step
    assert [step.describe() for step in model.steps] == [
        "Conv2D(4, 3x3, padding=0, relu)",
        "Conv2D(2, 1x1, padding=0) + Flatten + Dense(3, tanh)",
        "Dense(2)",
    ]


@pytest.mark.parametrize("x_shape, out", [((1, 1, 6, 3), (4, 1)), ((1, 1, 3, 6), (1, 4))])
def test_fused_pool_larger_than_one_side_of_the_output_is_refused(x_shape, out) -> None:
    message = f"pool_size: expected at most the convolution's output size {out}, got (2, 2)"
    with pytest.raises(ValueError) as info:
        F.conv_max_pool2d(np.ones(x_shape), np.ones((1, 1, 3, 3)), pool_size=2)
    assert str(info.value) == message


def test_fused_backward_needs_its_saved_state() -> None:
    with pytest.raises(TypeError) as info:
        F.conv_max_pool2d_backward(np.ones(2), "saved")
    assert str(info.value) == (
        "saved: expected the ConvPoolSaved returned by conv_max_pool2d_forward, got str"
    )


@pytest.mark.parametrize("cls", [L.MaxPool2D, L.AvgPool2D])
def test_pool_layer_errors_name_the_layer_and_argument(cls) -> None:
    kind = cls.__name__
    with pytest.raises(ValueError) as info:
        cls(0)
    assert str(info.value).startswith(f"{kind}: kernel_size: ")
    with pytest.raises(ValueError) as info:
        cls(2, stride=0)
    assert str(info.value).startswith(f"{kind}: stride: ")


def test_block_descriptions_and_summary_rows_name_the_inner_layers() -> None:
    assert L.Residual([L.ReLU()]).describe() == "Residual(1 layers, shortcut identity)"
    short = L.Residual([L.ReLU()], shortcut=[L.Conv2D(2, 1)])
    assert short.describe() == "Residual(1 layers, shortcut 1 layer(s))"
    assert [L.MaxPool2D(2).describe(), L.AvgPool2D(3).describe()] == [
        "MaxPool2D(2x2)",
        "AvgPool2D(3x3)",
    ]
    fused = L.ConvMaxPool(L.Conv2D(2, 3), L.MaxPool2D(2))
    model = xc.Sequential([fused, L.Flatten(), L.Dense(2)], input_shape=(1, 6, 6))
    assert (fused.conv.name, fused.pool.name) == ("conv", "pool")
    lines = model.summary().splitlines()
    assert lines[1].split() == ["layer", "output", "shape", "params"], lines[1]  # the header
    # the input row: its shape with the batch axis open, and no parameter count
    assert lines[3].split() == ["input", "(None,", "1,", "6,", "6)"], lines[3]
    for row in (
        "  convmaxpool_0.conv: Conv2D(2, 3x3, padding=0) ",
        "  convmaxpool_0.pool: MaxPool2D(2x2) ",
    ):
        assert any(line.startswith(row) for line in lines), row


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: F.conv2d(np.ones((2, 3, 5, 5)), np.ones((4, 3, 3))),
            "weight: expected a 4-D array (O, C // groups, KH, KW), got 3-D of shape (4, 3, 3)",
        ),
        (
            lambda: F.conv2d(np.ones((2, 3, 5)), np.ones((4, 3, 3, 3))),
            "x: expected a 4-D array (N, C, H, W), got 3-D of shape (2, 3, 5)",
        ),
        (
            lambda: F.conv1d_backward(np.ones((2, 4)), np.ones((2, 3, 8)), np.ones((4, 3, 3))),
            "grad_out: expected a 3-D array (N, O, OL), got 2-D of shape (2, 4)",
        ),
        (
            lambda: F.linear(np.ones((2, 3)), np.ones(3)),
            "weight: expected a 2-D array (OUT, IN), got 1-D of shape (3,)",
        ),
        (
            lambda: F.max_pool2d(np.ones((2, 3, 5)), 2),
            "x: expected a 4-D array (N, C, H, W), got 3-D of shape (2, 3, 5)",
        ),
        (
            lambda: F.avg_pool2d(np.ones((2, 3, 5)), 2),
            "x: expected a 4-D array (N, C, H, W), got 3-D of shape (2, 3, 5)",
        ),
        (
            lambda: F.global_avg_pool2d(np.ones((2, 3, 5))),
            "x: expected a 4-D array (N, C, H, W), got 3-D of shape (2, 3, 5)",
        ),
    ],
)
def test_rank_errors_state_the_layout(call, message: str) -> None:
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value) == message


def test_pool_backward_from_saved_state_names_the_dtypes() -> None:
    out, saved = F.max_pool2d_forward(np.ones((1, 1, 4, 4)), 2)
    with pytest.raises(TypeError) as info:
        F.max_pool2d_backward(np.ones(out.shape, dtype=np.float32), saved)
    assert str(info.value) == (
        "grad_out: expected dtype float64 (the dtype of out), got float32; cast both to one dtype"
    )


def test_unknown_layers_and_bad_shortcuts_are_refused_whole() -> None:
    with pytest.raises(ValueError) as info:
        layer_from_config("Nope", {})
    assert str(info.value) == f"layer: expected one of {sorted(LAYERS)}, got 'Nope'"
    with pytest.raises(TypeError) as info:
        L.Residual([L.ReLU()], shortcut=[1])
    assert str(info.value) == "Residual: shortcut expected a list of Layer or None, got [1]"


def test_layer_build_errors_are_stated_whole() -> None:
    for layers, shape, message in [
        ([L.Conv2D(4, 3)], (3, 5), "conv2d_0: expected input (C, H, W), got (3, 5)"),
        (
            [L.Dense(4)],
            (3, 5),
            "dense_0: expected flat input (features,), got (3, 5); put a Flatten() layer before it",
        ),
    ]:
        with pytest.raises(ValueError) as info:
            xc.Sequential(layers, input_shape=shape)
        assert str(info.value) == message
    with pytest.raises(ValueError) as info:
        L.Conv2D(4, 3, groups=0)
    assert str(info.value) == "Conv2D: groups: expected a positive int, got 0"


def test_conv1d_passes_init_and_channels_on() -> None:
    config = L.Conv1D(4, 3, init="he_normal", in_channels=6).get_config()
    assert (config["init"], config["in_channels"]) == ("he_normal", 6)
    assert L.Parameter(np.ones(2), "w").name == "w"


def test_conv_backward_after_an_inference_pass_rebuilds_its_columns() -> None:
    """An inference pass stores no columns; a backward after it (a gradient check in
    eval mode, say) builds them again and gives the training pass's gradients."""
    rng = np.random.default_rng(3)
    x, g = rng.normal(size=(2, 3, 7, 7)), rng.normal(size=(2, 4, 7, 7))
    grads = []
    for training in (True, False):
        layer = xc.Conv2D(4, 3, padding="same", activation="tanh")
        xc.Sequential([layer], input_shape=(3, 7, 7), dtype="float64", seed=0)
        layer.forward(x, training)
        gx = layer.backward(g, input_grad=True)
        grads.append((gx, layer.params["weight"].grad, layer.params["bias"].grad))
    for trained, inferred in zip(*grads):
        np.testing.assert_allclose(inferred, trained, rtol=1e-12, atol=1e-12)


def test_conv_backward_matrix_without_columns_needs_the_input() -> None:
    x, w = np.ones((1, 1, 4, 4)), np.ones((2, 1, 3, 3))
    geom = F.conv_geometry(x.shape, w.shape)
    out, cols = conv2d_matrix(np, x, w, None, geom, keep_cols=False)
    g2 = np.ones_like(out)
    with pytest.raises(ValueError, match="x: the forward's input is needed"):
        conv2d_matrix_backward(np, g2, None, w, geom)
    got = conv2d_matrix_backward(np, g2, None, w, geom, x=x)
    want = conv2d_matrix_backward(np, g2, kernels_for(np).im2col(np, x, geom), w, geom)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_layer_states_the_shapes_its_build_makes(kind: str) -> None:
    """``shapes_for`` (from ints, nothing allocated) agrees with a real build: the
    output, every parameter and every buffer, by name."""
    make, shape = EXAMPLES[kind]
    stated = make().shapes_for(shape)
    built = xc.Sequential([make()], backend="numpy", input_shape=shape, loss="mse")
    layer = built.layers[0]
    assert stated.output == layer.output_shape == make().output_shape_for(shape)
    assert stated.params == {k: tuple(p.shape) for k, p in layer.params.items()}
    assert stated.buffers == {k: tuple(v.shape) for k, v in layer.buffers.items()}
    assert make().param_shapes(shape) == stated.params
    assert make().buffer_shapes(shape) == stated.buffers


class _Counted(L.Layer):
    """A user layer that overrides ``_build`` only: a scale per channel and a buffer."""

    def _build(self, input_shape, ctx):  # noqa: ANN001, ANN202
        channels = input_shape[0]
        self._param(ctx, "scale", np.ones(channels))
        self._buffer(ctx, "seen", np.zeros((channels, 2)))
        return (channels, 2 * input_shape[1])


def test_a_layer_that_only_builds_states_its_shapes_from_a_built_copy() -> None:
    """A subclass without its own ``shapes_for`` gets the output, parameter and buffer
    shapes of a throwaway build, and stays unbuilt itself."""
    layer = _Counted()
    assert layer.shapes_for((3, 4)) == ((3, 8), {"scale": (3,)}, {"seen": (3, 2)})
    assert layer.buffer_shapes((5, 1)) == {"seen": (5, 2)}
    assert not layer.built and not layer.params and not layer.buffers


def test_layer_shapes_refuse_what_build_refuses() -> None:
    with pytest.raises(ValueError, match="padding: expected at most half"):
        L.MaxPool2D(2, padding=2).shapes_for((1, 8, 8))
    with pytest.raises(ValueError, match="expected input \\(C, H, W\\)"):
        L.Conv2D(2, 3).shapes_for((8, 8))
    with pytest.raises(ValueError, match="in_features expected 5"):
        L.Dense(2, in_features=5).shapes_for((4,))


def test_checkpoint_schema_asks_the_layers_and_refuses_a_padded_pool() -> None:
    from xpconv.io.checkpoint import CheckpointError
    from xpconv.io.schema import validate_architecture

    model = xc.Sequential([L.MaxPool2D(2), L.Flatten(), L.Dense(2)], input_shape=(1, 8, 8))
    config = json.loads(json.dumps(model.get_config()))
    stored = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    validate_architecture(config, stored)
    config["layers"][0]["config"]["padding"] = [2, 2]
    with pytest.raises(CheckpointError, match="padding: expected at most half"):
        validate_architecture(config, stored)


@pytest.mark.parametrize(
    ("activation", "fused"),
    [(None, True), ("identity", True), ("relu", True), ("tanh", False), ("sigmoid", False)],
)
def test_a_conv_fuses_with_its_max_pool_with_no_activation_or_relu(
    activation: str | None, fused: bool
) -> None:
    conv = L.Conv2D(2, 3, activation=activation)
    assert L.ConvMaxPool.fits(conv, L.MaxPool2D(2)) is fused
    assert not L.ConvMaxPool.fits(conv, L.MaxPool2D(2, stride=1))  # overlapping windows
    assert not L.ConvMaxPool.fits(conv, L.AvgPool2D(2))
