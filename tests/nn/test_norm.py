"""Batch normalization, global average pooling, the residual sum and conv2d without a
bias: PyTorch oracle over random shapes in training and inference, finite differences
through xpconv.tools.gradcheck, and bad input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import Case, close_composed, torch_or_skip

import xpconv as xc
import xpconv.ops as F
from xpconv.tools import gradcheck

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def bn_shape(seed: int) -> tuple[int, ...]:
    r = np.random.default_rng(seed)
    rank = int(r.integers(2, 5))
    n, c = int(r.integers(2, 6)), int(r.integers(1, 5))
    return (n, c, *(int(v) for v in r.integers(1, 6, size=rank - 2)))


def bn_data(case: Case, shape: tuple[int, ...], seed: int) -> dict[str, np.ndarray]:
    r = np.random.default_rng([seed, 7])
    c = shape[1]
    return {
        name: case.host(a)
        for name, a in dict(
            x=r.normal(1.5, 2.0, size=shape),
            weight=r.normal(1.0, 0.5, size=c),
            bias=r.normal(0.0, 0.5, size=c),
            mean=r.normal(0.0, 1.0, size=c),
            var=r.uniform(0.5, 2.0, size=c),
            grad=r.normal(size=shape),
        ).items()
    }


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_matches_torch(case: Case, seed: int, training: bool) -> None:
    torch = torch_or_skip()
    shape = bn_shape(seed)
    d = bn_data(case, shape, seed)
    momentum = float(np.random.default_rng(seed).uniform(0.05, 0.9))
    t = {k: torch.tensor(v, dtype=torch.float64) for k, v in d.items()}
    tx = t["x"].clone().requires_grad_(True)
    tw = t["weight"].clone().requires_grad_(True)
    tb = t["bias"].clone().requires_grad_(True)
    rm, rv = t["mean"].clone(), t["var"].clone()
    ty = torch.nn.functional.batch_norm(
        tx, rm, rv, tw, tb, training=training, momentum=momentum, eps=1e-5
    )
    ty.backward(t["grad"])

    a = {k: case.asarray(v) for k, v in d.items()}
    y, new_mean, new_var, saved = F.batch_norm_forward(
        a["x"], a["weight"], a["bias"], a["mean"], a["var"], training=training, momentum=momentum
    )
    close_composed(case, y, ty.detach().numpy(), "y")
    close_composed(case, new_mean, rm.numpy(), "running_mean")
    close_composed(case, new_var, rv.numpy(), "running_var")
    gx, gw, gb = F.batch_norm_backward(a["grad"], saved)
    close_composed(case, gx, tx.grad.numpy(), "grad_x")
    close_composed(case, gw, tw.grad.numpy(), "grad_weight")
    close_composed(case, gb, tb.grad.numpy(), "grad_bias")
    # the stateless pair gives the same
    y2, m2, v2 = F.batch_norm(
        a["x"], a["weight"], a["bias"], a["mean"], a["var"], training=training, momentum=momentum
    )
    close_composed(case, y2, ty.detach().numpy(), "batch_norm y")
    g2 = F.batch_norm_backward(
        a["grad"], a["x"], a["weight"], a["mean"], a["var"], training=training
    )
    close_composed(case, g2[0], tx.grad.numpy(), "batch_norm_backward grad_x")
    # the caller's running statistics are untouched
    close_composed(case, a["mean"], d["mean"], "running_mean input")


def test_batch_norm_without_affine_or_running_stats_matches_torch(case: Case) -> None:
    torch = torch_or_skip()
    d = bn_data(case, (4, 3, 5, 2), 11)
    tx = torch.tensor(d["x"], requires_grad=True)
    ty = torch.nn.functional.batch_norm(tx, None, None, training=True)
    ty.backward(torch.tensor(d["grad"]))
    y, m, v, saved = F.batch_norm_forward(case.asarray(d["x"]), None, None, training=True)
    assert m is None and v is None
    close_composed(case, y, ty.detach().numpy(), "y")
    gx, _, _ = F.batch_norm_backward(case.asarray(d["grad"]), saved)
    close_composed(case, gx, tx.grad.numpy(), "grad_x")


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(3, 2), (2, 3, 4), (3, 2, 3, 2)])
def test_batch_norm_gradcheck(case64: Case, training: bool, shape) -> None:
    d = bn_data(case64, shape, 3)
    mean, var = case64.asarray(d["mean"]), case64.asarray(d["var"])

    def f(x, w, b):
        return F.batch_norm(x, w, b, mean, var, training=training)[0]

    def backward(g, x, w, b):
        return F.batch_norm_backward(g, x, w, mean, var, training=training)

    report = gradcheck(
        f,
        case64.asarray(d["x"]),
        case64.asarray(d["weight"]),
        case64.asarray(d["bias"]),
        backward=backward,
    )
    assert report.passed and len(report.checks) == 3


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 1, 1, 1), (3, 2, 7, 1)])
def test_global_avg_pool_matches_torch(case: Case, shape) -> None:
    torch = torch_or_skip()
    r = np.random.default_rng(sum(shape))
    x, g = case.host(r.normal(size=shape)), case.host(r.normal(size=shape[:2]))
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.adaptive_avg_pool2d(tx, 1)
    ty.backward(torch.tensor(g).reshape(ty.shape))
    y = F.global_avg_pool2d(case.asarray(x))
    close_composed(case, y, ty.detach().numpy().reshape(shape[:2]), "y")
    gx = F.global_avg_pool2d_backward(case.asarray(g), shape)
    close_composed(case, gx, tx.grad.numpy(), "grad_x")


def test_global_avg_pool_and_add_gradcheck(case64: Case, rng: np.random.Generator) -> None:
    x = case64.asarray(rng.normal(size=(2, 3, 4, 3)))
    gradcheck(
        F.global_avg_pool2d,
        x,
        backward=lambda g, x: F.global_avg_pool2d_backward(g, tuple(x.shape)),
    )
    a, b = case64.asarray(rng.normal(size=(2, 3))), case64.asarray(rng.normal(size=(2, 3)))
    report = gradcheck(F.add, a, b, backward=lambda g, a, b: F.add_backward(g))
    assert [c.name for c in report.checks] == ["input 0", "input 1"]


def test_add_matches_numpy(case: Case, rng: np.random.Generator) -> None:
    a, b = case.host(rng.normal(size=(3, 4))), case.host(rng.normal(size=(3, 4)))
    close_composed(case, F.add(case.asarray(a), case.asarray(b)), a + b, "a + b")
    ga, gb = F.add_backward(case.asarray(a))
    close_composed(case, ga, a, "grad a")
    close_composed(case, gb, a, "grad b")


@pytest.mark.parametrize("seed", range(4))
def test_conv2d_without_bias_matches_torch(case: Case, seed: int) -> None:
    torch = torch_or_skip()
    r = np.random.default_rng(seed)
    n, c, o = (int(v) for v in r.integers(1, 4, size=3))
    stride = int(r.integers(1, 3))
    x = case.host(r.normal(size=(n, c, 6, 5)))
    w = case.host(r.normal(size=(o, c, 3, 3)))
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, None, stride=stride, padding=1)
    g = case.host(r.normal(size=tuple(ty.shape)))
    ty.backward(torch.tensor(g))
    y = F.conv2d(case.asarray(x), case.asarray(w), None, stride=stride, padding=1)
    close_composed(case, y, ty.detach().numpy(), "y")
    gx, gw, _ = F.conv2d_backward(
        case.asarray(g), case.asarray(x), case.asarray(w), stride=stride, padding=1
    )
    close_composed(case, gx, tx.grad.numpy(), "grad_x")
    close_composed(case, gw, tw.grad.numpy(), "grad_weight")


def _arr(shape, dtype="float64"):
    return np.ones(shape, dtype=dtype)


@pytest.mark.parametrize(
    ("call", "exc", "words"),
    [
        (lambda: F.batch_norm(_arr((4,)), None, None), ValueError, ["x", "1-D"]),
        (lambda: F.batch_norm(_arr((2, 3)), _arr((2,)), None), ValueError, ["weight", "(3,)"]),
        (lambda: F.batch_norm(_arr((1, 3)), None, None), ValueError, ["more than one value"]),
        (
            lambda: F.batch_norm(_arr((2, 3)), None, None, training=False),
            ValueError,
            ["running_mean", "inference"],
        ),
        (
            lambda: F.batch_norm(_arr((2, 3)), None, None, _arr((3,)), None),
            ValueError,
            ["both"],
        ),
        (lambda: F.batch_norm(_arr((2, 3)), None, None, momentum=2.0), ValueError, ["momentum"]),
        (lambda: F.batch_norm(_arr((2, 3)), None, None, eps=0.0), ValueError, ["eps"]),
        (
            lambda: F.batch_norm(_arr((2, 3)), _arr((3,), "float32"), None),
            TypeError,
            ["weight", "float64"],
        ),
        (lambda: F.global_avg_pool2d(_arr((2, 3))), ValueError, ["x", "(N, C, H, W)"]),
        (
            lambda: F.global_avg_pool2d_backward(_arr((2, 4)), (2, 3, 4, 4)),
            ValueError,
            ["grad_out", "(2, 3)"],
        ),
        (lambda: F.add(_arr((2, 3)), _arr((3, 2))), ValueError, ["b", "(2, 3)", "(3, 2)"]),
    ],
)
def test_bad_input_errors(call, exc, words) -> None:
    with pytest.raises(exc) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def _batch_innermost(a: np.ndarray) -> np.ndarray:
    """The same values, stored with the batch axis innermost (as a convolution leaves them)."""
    return np.moveaxis(np.ascontiguousarray(np.moveaxis(a, 0, -1)), -1, 0)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize(
    "shape, layout",
    [
        ((6, 5, 7, 9), "batch-innermost"),
        ((6, 5, 7, 9), "C order"),
        ((1, 3, 4, 4), "C order"),
        ((12, 7), "F order"),
        ((12, 7), "C order"),
        ((4, 3, 10), "batch-innermost"),
        ((64, 8, 20, 20), "batch-innermost"),  # several channels per block, several blocks
    ],
)
def test_numpy_batch_norm_kernels_match_portable(dtype, affine, shape, layout) -> None:
    """The NumPy kernels (channel block by channel block) give the portable results in
    every memory order, keep the input's memory order, and hand back layouts they do
    not cover (the portable code runs then)."""
    from xpconv.backends.kernels import PORTABLE, kernels_for, use_portable
    from xpconv.backends.numpy import kernels as _numpy_kernels

    rng = np.random.default_rng(3)
    arrange = {
        "batch-innermost": _batch_innermost,
        "C order": np.ascontiguousarray,
        "F order": np.asfortranarray,
    }[layout]
    x = arrange(rng.normal(2.0, 3.0, size=shape).astype(dtype))
    g = arrange(rng.normal(size=shape).astype(dtype))
    c = shape[1]
    weight = rng.normal(size=c).astype(dtype) if affine else None
    bias = rng.normal(size=c).astype(dtype) if affine else None
    stats = np.zeros(c, dtype), np.ones(c, dtype)
    fast = kernels_for(np)
    assert fast.batch_norm_train is _numpy_kernels.batch_norm_train
    assert fast.batch_norm_backward is _numpy_kernels.batch_norm_backward
    y, mean, var, saved = F.batch_norm_forward(x, weight, bias, *stats)
    grads = F.batch_norm_backward(g, saved)
    with use_portable():
        y_ref, mean_ref, var_ref, saved_ref = F.batch_norm_forward(x, weight, bias, *stats)
        grads_ref = F.batch_norm_backward(g, saved_ref)
    rtol = 1e-12 if dtype == "float64" else 2e-5
    for got, ref, what in [
        (y, y_ref, "y"),
        (mean, mean_ref, "running mean"),
        (var, var_ref, "running var"),
        (saved.x_hat, saved_ref.x_hat, "x_hat"),
        *zip(grads, grads_ref, ["grad_x", "grad_weight", "grad_bias"]),
    ]:
        scale = max(float(np.max(np.abs(ref))), 1.0)
        np.testing.assert_allclose(got, ref, rtol=0, atol=rtol * scale * 10, err_msg=what)
        assert got.dtype == dtype, what
    kept = [(a, b) for a, b, n in zip(y.strides, np.empty_like(x).strides, shape) if n > 1]
    assert all(a == b for a, b in kept), "y keeps the memory order of x"
    covered = (
        layout == "batch-innermost" or shape[0] == 1 or (len(shape) == 2 and layout == "F order")
    )
    assert (_numpy_kernels._channel_rows(x) is not None) == covered
    # inference, and a gradient in another memory order than x_hat: the portable backward
    other = np.ascontiguousarray(g) if layout == "batch-innermost" else g
    for training in (True, False):
        got = fast.batch_norm_backward(np, other, saved.x_hat, saved.invstd, weight, training)
        ref = PORTABLE.batch_norm_backward(np, other, saved.x_hat, saved.invstd, weight, training)
        for a, b in zip(got, ref):
            np.testing.assert_allclose(a, b, rtol=rtol * 10, atol=rtol * 10)


def test_numpy_batch_norm_kernels_are_as_accurate_as_portable_in_float32() -> None:
    """Against float64, the NumPy kernels' float32 statistics, output and gradients are
    as accurate as the portable path's: a ResNet's float32 training follows its float64
    run as closely on NumPy as on the other backends only if they are."""
    from xpconv.backends.kernels import PORTABLE, kernels_for

    rng = np.random.default_rng(5)
    shape = (32, 16, 28, 28)  # a ResNet stem's activations at batch 32
    x = _batch_innermost(rng.normal(0.5, 1.0, size=shape).astype(np.float32))
    g = _batch_innermost(rng.normal(size=shape).astype(np.float32))
    w = rng.normal(1.0, 0.1, size=16).astype(np.float32)
    b = rng.normal(size=16).astype(np.float32)
    fast = kernels_for(np)

    def run(table: Any, dtype: type) -> list[np.ndarray]:
        cast = [a.astype(dtype) for a in (x, g, w, b)]
        y, x_hat, mean, var, invstd = table.batch_norm_train(np, cast[0], cast[2], cast[3], 1e-5)
        grads = table.batch_norm_backward(np, cast[1], x_hat, invstd, cast[2], True)
        return [np.asarray(a, dtype=np.float64) for a in (y, mean, var, *grads)]

    exact = run(PORTABLE, np.float64)
    names = ["y", "mean", "var", "grad_x", "grad_weight", "grad_bias"]
    fast_f32, portable_f32 = run(fast, np.float32), run(PORTABLE, np.float32)
    for name, got, ref, truth in zip(names, fast_f32, portable_f32, exact):
        scale = np.max(np.abs(truth))
        err_fast, err_ref = (np.max(np.abs(a - truth)) / scale for a in (got, ref))
        assert err_fast <= 1.5 * err_ref + 1e-9, f"{name}: {err_fast:.1e} against {err_ref:.1e}"


_X, _C = np.ones((4, 3, 2, 2)), np.ones(3)
_PER_CHANNEL = "expected shape (3,) (one value per channel of x, shape (4, 3, 2, 2)), got (4,)"


@pytest.mark.parametrize(
    "kwargs, exc, message",
    [
        (dict(running_var=None), ValueError, "running_mean, running_var: give both or neither"),
        (dict(running_mean=None), ValueError, "running_mean, running_var: give both or neither"),
        (dict(momentum=True), TypeError, "momentum: expected a real number, got True"),
        (dict(momentum=1.5), ValueError, "momentum: expected a number in [0, 1], got 1.5"),
        (dict(eps="a"), TypeError, "eps: expected a real number, got 'a'"),
        (dict(eps=0.0), ValueError, "eps: expected a number in (0, inf), got 0.0"),
        *[
            (dict([(name, np.ones(4))]), ValueError, f"{name}: {_PER_CHANNEL}")
            for name in ("weight", "bias", "running_mean", "running_var")
        ],
    ],
)
def test_batch_norm_errors_are_stated_whole(kwargs: dict, exc: type, message: str) -> None:
    args = {"weight": _C, "bias": _C, "running_mean": _C * 0, "running_var": _C, **kwargs}
    with pytest.raises(exc) as info:
        F.batch_norm(_X, args.pop("weight"), args.pop("bias"), **args)
    assert str(info.value) == message


def test_batch_norm_layer_hyperparameters() -> None:
    assert xc.nn.layers.BatchNorm2D(momentum=1.0, eps=1e-3).get_config()["momentum"] == 1.0
    for kwargs, exc, message in [
        (dict(momentum=True), TypeError, "BatchNorm2D: momentum: expected a real number, got True"),
        (dict(eps=True), TypeError, "BatchNorm2D: eps: expected a real number, got True"),
        (dict(eps=0), ValueError, "BatchNorm2D: eps: expected a number in (0, inf), got 0.0"),
        (
            dict(momentum=-0.1),
            ValueError,
            "BatchNorm2D: momentum: expected a number in [0, 1], got -0.1",
        ),
    ]:
        with pytest.raises(exc) as info:
            xc.nn.layers.BatchNorm2D(**kwargs)
        assert str(info.value) == message
