"""Pooling, dense, flatten, activations, dropout and losses: PyTorch oracle, finite
differences, the max-pool fast path and tie rule, and every bad input."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from conftest import Case, sweep, torch_or_skip
from numerics import assert_matches_differences, central_difference

import xpconv
import xpconv.ops as F
from xpconv.backends import portable as portable_ops
from xpconv.backends.kernels import PORTABLE, kernels_for
from xpconv.backends.numpy import kernels as _numpy_kernels
from xpconv.backends.registry import BackendError, get_backend
from xpconv.ops import pool as _pool
from xpconv.ops.targets import check_targets

# ---------------------------------------------------------------------- utilities


def assert_fd(got, fd: np.ndarray, case: Case) -> None:
    assert_matches_differences(case.to_numpy(got), fd)


def torch_reference(fn, inputs: list[np.ndarray], grad_out: np.ndarray | float | None):
    """Output and input gradients of ``fn`` through torch autograd, in float64."""
    torch = torch_or_skip()
    ts = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in inputs]
    out = fn(*ts)
    g = torch.tensor(grad_out, dtype=torch.float64) if grad_out is not None else None
    out.backward(g)
    return out.detach().numpy(), [t.grad.numpy() for t in ts]


def distinct_values(r: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Values with gaps of at least 0.1: no ties, even after finite-difference steps."""
    return (r.permutation(int(np.prod(shape))).reshape(shape) - np.prod(shape) / 2) * 0.1


# ------------------------------------------------------------------------ pooling


def pool_config(seed: int) -> dict:
    """A random valid pooling: kernel 1-4 (non-square), stride 1-3 or default,
    padding 0..kernel//2, batch 1-4, input just large enough plus a random margin."""
    r = np.random.default_rng(seed)
    kh, kw = (int(v) for v in r.integers(1, 5, size=2))
    square = r.random() < 0.3
    if square:
        kw = kh
    choice = int(r.integers(0, 4))
    if choice == 0:
        stride = None
    elif choice == 1:
        stride = (kh, kw)
    elif choice == 2:
        stride = int(r.integers(1, 4))
    else:
        stride = tuple(int(v) for v in r.integers(1, 4, size=2))
    ph, pw = int(r.integers(0, kh // 2 + 1)), int(r.integers(0, kw // 2 + 1))
    h = max(1, kh - 2 * ph) + int(r.integers(0, 7))
    w = max(1, kw - 2 * pw) + int(r.integers(0, 7))
    return dict(
        shape=(int(r.integers(1, 5)), int(r.integers(1, 4)), h, w),
        pool=dict(
            kernel_size=kh if square else (kh, kw),
            stride=stride,
            padding=ph if square and ph == pw else (ph, pw),
        ),
        seed=seed,
    )


POOL_CONFIGS = [pool_config(s) for s in range(36)]
POOL_IDS = [f"pool{c['seed']}" for c in POOL_CONFIGS]


def out_shape(cfg: dict) -> tuple[int, ...]:
    geom = _pool.pool_geometry(cfg["shape"], **cfg["pool"])
    return (*cfg["shape"][:2], *geom.out)


@pytest.mark.parametrize("cfg", sweep(POOL_CONFIGS, POOL_IDS))
def test_max_pool2d_matches_torch(case: Case, cfg: dict) -> None:
    torch = torch_or_skip()
    r = np.random.default_rng(cfg["seed"])
    x = case.host(r.normal(size=cfg["shape"]))
    g = case.host(r.normal(size=out_shape(cfg)))
    ref, (ref_gx,) = torch_reference(
        lambda t: torch.nn.functional.max_pool2d(t, **cfg["pool"]), [x], g
    )
    xa, ga = case.asarray(x), case.asarray(g)
    case.assert_close(F.max_pool2d(xa, **cfg["pool"]), ref, "max_pool2d")
    case.assert_close(F.max_pool2d_backward(ga, xa, **cfg["pool"]), ref_gx, "grad_x")
    out, saved = F.max_pool2d_forward(xa, **cfg["pool"])
    case.assert_close(out, ref, "max_pool2d_forward")
    case.assert_close(F.max_pool2d_backward(ga, saved), ref_gx, "grad_x from saved")


@pytest.mark.parametrize("cfg", sweep(POOL_CONFIGS, POOL_IDS))
def test_avg_pool2d_matches_torch(case: Case, cfg: dict) -> None:
    torch = torch_or_skip()
    r = np.random.default_rng(cfg["seed"])
    x = case.host(r.normal(size=cfg["shape"]))
    g = case.host(r.normal(size=out_shape(cfg)))
    ref, (ref_gx,) = torch_reference(
        lambda t: torch.nn.functional.avg_pool2d(t, **cfg["pool"]), [x], g
    )
    xa, ga = case.asarray(x), case.asarray(g)
    case.assert_close(F.avg_pool2d(xa, **cfg["pool"]), ref, "avg_pool2d")
    case.assert_close(F.avg_pool2d_backward(ga, xa, **cfg["pool"]), ref_gx, "grad_x")


FD_POOL = [c for c in POOL_CONFIGS if np.prod(c["shape"]) <= 60][:8]


@pytest.mark.parametrize("cfg", FD_POOL, ids=[f"pool{c['seed']}" for c in FD_POOL])
def test_pool_backward_finite_differences(case64: Case, cfg: dict) -> None:
    r = np.random.default_rng(cfg["seed"])
    x = distinct_values(r, cfg["shape"])
    proj = r.normal(size=out_shape(cfg))
    for forward, backward in (
        (F.max_pool2d, F.max_pool2d_backward),
        (F.avg_pool2d, F.avg_pool2d_backward),
    ):

        def loss(v, forward=forward):
            return float(np.sum(case64.to_numpy(forward(case64.asarray(v), **cfg["pool"])) * proj))

        got = backward(case64.asarray(proj), case64.asarray(x), **cfg["pool"])
        assert_fd(got, central_difference(loss, x), case64)


TILED = [c for c in POOL_CONFIGS if _pool.pool_geometry(c["shape"], **c["pool"]).tiled] + [
    dict(shape=(2, 3, 8, 8), pool=dict(kernel_size=2), seed=100),
    dict(shape=(2, 2, 7, 9), pool=dict(kernel_size=(2, 3)), seed=101),  # remainder cropped
    dict(shape=(1, 2, 7, 7), pool=dict(kernel_size=3, padding=1), seed=102),
    dict(shape=(3, 1, 5, 6), pool=dict(kernel_size=(3, 2), stride=(3, 2)), seed=103),
]


@pytest.mark.parametrize("cfg", sweep(TILED, [f"tiled{c['seed']}" for c in TILED]))
def test_tiled_fast_path_equals_general_path(case: Case, cfg: dict) -> None:
    """stride == kernel: the stacked fast path gives the tap loop's results exactly,
    also with ties (small integers), and the forward equals the reshape reduction."""
    r = np.random.default_rng(cfg["seed"])
    xp = case.xp
    for x in (r.normal(size=cfg["shape"]), r.integers(0, 3, size=cfg["shape"]) * 1.0):
        xa = case.asarray(x)
        out, saved = F.max_pool2d_forward(xa, **cfg["pool"])
        assert saved.geometry.tiled
        g = case.asarray(r.normal(size=tuple(out.shape)))
        fast = _pool._max_backward(xp, g, saved, tiled=True)
        general = _pool._max_backward(xp, g, saved, tiled=False)
        np.testing.assert_array_equal(case.to_numpy(fast), case.to_numpy(general))
        geom = saved.geometry
        avg_fast = _pool._avg_backward(xp, g, geom, tiled=True)
        avg_general = _pool._avg_backward(xp, g, geom, tiled=False)
        np.testing.assert_array_equal(case.to_numpy(avg_fast), case.to_numpy(avg_general))
        # the forward equals max over a (N, C, OH, KH, OW, KW) view of the padded input
        (kh, kw), (oh, ow), (ph, pw) = geom.kernel, geom.out, geom.pad
        padded = np.pad(
            case.host(x), ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf
        )[:, :, : oh * kh, : ow * kw]
        blocks = padded.reshape(*padded.shape[:2], oh, kh, ow, kw)
        np.testing.assert_array_equal(case.to_numpy(out), blocks.max(axis=(3, 5)))


@pytest.mark.parametrize("shape", [(6, 4, 3, 5, 4), (40, 4, 14, 14, 64), (5, 6, 2, 3, 4)])
@pytest.mark.parametrize("bias, relu", [(False, False), (True, False), (True, True)])
def test_pool_blocks_fast_path_matches_portable(case: Case, shape, bias: bool, relu: bool) -> None:
    """The selected kernels' pool-ordered max pool (+ bias, + ReLU) equals the portable
    one and a direct reference, ties included (integers: many equal values), small or
    large enough to split over the cores."""
    r = np.random.default_rng(4)
    host = r.integers(-3, 4, size=shape).astype(np.float64)
    host_bias = r.integers(-1, 2, size=shape[0]).astype(np.float64) if bias else None
    blocks = case.asarray(host)
    b = None if host_bias is None else case.asarray(host_bias)
    ref_out, ref_code = portable_ops.max_pool_blocks(case.xp, blocks, b, relu)
    out, code = kernels_for(case.xp).max_pool_blocks(case.xp, blocks, b, relu)
    np.testing.assert_array_equal(case.to_numpy(out), case.to_numpy(ref_out))
    np.testing.assert_array_equal(case.to_numpy(code), case.to_numpy(ref_code))
    expected = host.max(axis=1) + (0 if host_bias is None else host_bias[:, None, None, None])
    expected_code = np.argmax(host, axis=1)  # the first maximum
    if relu:
        expected_code = np.where(expected > 0, expected_code, -1)
        expected = np.maximum(expected, 0)
    np.testing.assert_array_equal(case.to_numpy(ref_out), expected)
    np.testing.assert_array_equal(case.to_numpy(ref_code), expected_code)


def test_pool_blocks_backward_fast_path_matches_portable(case: Case) -> None:
    """The selected kernels' pool-ordered max-pool backward equals the portable one,
    including windows marked -1 (a ReLU after the pool was off: no gradient)."""
    r = np.random.default_rng(5)
    grad = case.asarray(r.normal(size=(6, 3, 5, 4)))  # (O, PH, PW, N)
    argmax = r.integers(-1, 4, size=(6, 3, 5, 4)).astype(np.int8)
    code = case.asarray(argmax)  # int8 stays int8
    ref = case.to_numpy(portable_ops.max_pool_blocks_backward(case.xp, grad, code, 4))
    got = kernels_for(case.xp).max_pool_blocks_backward(case.xp, grad, code, 4)
    np.testing.assert_array_equal(case.to_numpy(got), ref)
    taps = np.arange(4).reshape(1, 4, 1, 1, 1)
    expected = case.to_numpy(grad)[:, None] * (argmax[:, None] == taps)  # -1: all zero
    np.testing.assert_array_equal(ref, expected)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_tanh_fast_path_matches_portable(rng: np.random.Generator, dtype) -> None:
    """Split over the cores for large dense arrays in any memory order; other layouts
    (mixed orders, gaps) take the portable expressions."""
    kernels = kernels_for(np)
    assert kernels.tanh is _numpy_kernels.tanh
    big = rng.normal(size=(16, 28, 28, 160)).astype(dtype)  # > 4 MB in float32
    layouts = {
        "batch-innermost": big.transpose(3, 0, 1, 2),
        "C order": np.ascontiguousarray(big.transpose(3, 0, 1, 2)),
        "gaps": big[:, ::2].transpose(3, 0, 1, 2),
        "small": big[:2, :4].transpose(3, 0, 1, 2),
    }
    for name, x in layouts.items():
        t = kernels.tanh(np, x)
        np.testing.assert_array_equal(t, np.tanh(x), err_msg=name)
        assert t.strides == np.empty_like(x).strides, name
        for grad in (x[::-1], np.ascontiguousarray(x)):  # another layout, or the same
            got = kernels.tanh_backward(np, grad, t)
            np.testing.assert_allclose(got, grad * (1.0 - t * t), rtol=1e-6, err_msg=name)
            assert got.dtype == dtype


def test_tanh_backward_fast_path_matches_portable(case: Case, rng: np.random.Generator) -> None:
    """Each backend's ``tanh_backward`` (one fused pass on PyTorch) equals the formula."""
    t = case.asarray(np.tanh(rng.normal(size=(4, 3, 5, 6))))
    grad = case.asarray(rng.normal(size=(4, 3, 5, 6)))
    got = kernels_for(case.xp).tanh_backward(case.xp, grad, t)
    expected = case.to_numpy(grad) * (1.0 - case.to_numpy(t) ** 2)
    case.assert_close(got, expected, "fast tanh_backward")
    case.assert_close(PORTABLE.tanh_backward(case.xp, grad, t), expected, "portable")


def test_row_sums_fast_path_matches_portable(case: Case, rng: np.random.Generator) -> None:
    """The bias gradient's row sums (a matrix-vector product on NumPy)."""
    for shape in [(3, 5), (32, 4096)]:
        a = case.asarray(rng.normal(size=shape))
        ref = case.to_numpy(kernels_for(case.xp).row_sums(case.xp, a))
        case.assert_close(PORTABLE.row_sums(case.xp, a), ref, str(shape))
        np.testing.assert_allclose(ref, case.to_numpy(a).sum(axis=1), rtol=case.rtol, atol=1e-5)


def test_max_pool_ties_go_to_first_maximum(case: Case) -> None:
    x = np.array([[[[1.0, 1.0, 0.0, 2.0], [1.0, 1.0, 2.0, 2.0]]]])
    g = np.array([[[[3.0, 5.0]]]])
    gx = F.max_pool2d_backward(case.asarray(g), case.asarray(x), 2)
    case.assert_close(gx, np.array([[[[3.0, 0, 0, 5], [0, 0, 0, 0]]]]), "tie rule")


@pytest.mark.parametrize(
    "pool",
    [
        dict(kernel_size=2),
        dict(kernel_size=(2, 3), padding=1),
        dict(kernel_size=3, stride=1),
        dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0)),
    ],
    ids=["2x2", "2x3-pad", "3x3-overlap", "3x2-overlap-pad"],
)
def test_max_pool_ties_match_torch(case: Case, pool: dict) -> None:
    """Many equal values (relu-like zeros): gradients land where torch's CPU kernel puts them."""
    torch = torch_or_skip()
    r = np.random.default_rng(11)
    x = np.maximum(r.integers(-2, 3, size=(2, 3, 7, 8)), 0) * 1.0
    out = torch.nn.functional.max_pool2d(torch.tensor(x), **pool)
    g = r.normal(size=tuple(out.shape))
    _, (ref_gx,) = torch_reference(lambda t: torch.nn.functional.max_pool2d(t, **pool), [x], g)
    gx = F.max_pool2d_backward(case.asarray(g), case.asarray(x), **pool)
    case.assert_close(gx, ref_gx, "grad_x with ties")


# -------------------------------------------------------------- linear, flatten

LINEAR_SHAPES = [(1, 1, 1), (3, 5, 2), (4, 7, 10), (8, 16, 3)]


@pytest.mark.parametrize("shape", LINEAR_SHAPES, ids=[f"{n}x{i}->{o}" for n, i, o in LINEAR_SHAPES])
def test_linear_matches_torch(case: Case, shape: tuple[int, int, int]) -> None:
    torch = torch_or_skip()
    n, fin, fout = shape
    r = np.random.default_rng(n * 100 + fin)
    x, w, b = (case.host(r.normal(size=s)) for s in ((n, fin), (fout, fin), (fout,)))
    g = case.host(r.normal(size=(n, fout)))
    ref, (rgx, rgw, rgb) = torch_reference(torch.nn.functional.linear, [x, w, b], g)
    xa, wa, ba = case.asarray(x), case.asarray(w), case.asarray(b)
    case.assert_close(F.linear(xa, wa, ba), ref, "linear")
    case.assert_close(F.linear(xa, wa), ref - b, "linear without bias")
    gx, gw, gb = F.linear_backward(case.asarray(g), xa, wa)
    case.assert_close(gx, rgx, "grad_x")
    case.assert_close(gw, rgw, "grad_weight")
    case.assert_close(gb, rgb, "grad_bias")


def test_linear_backward_finite_differences(case64: Case, rng: np.random.Generator) -> None:
    x, w, b = (case64.asarray(rng.normal(size=s)) for s in ((3, 4), (2, 4), (2,)))
    report = xpconv.tools.gradcheck(
        F.linear, x, w, b, backward=lambda g, x, w, b: F.linear_backward(g, x, w)
    )
    assert len(report.checks) == 3


@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 4, 5), (1, 1, 1), (3, 2, 1, 4, 1)])
def test_flatten_and_backward(case: Case, shape: tuple[int, ...]) -> None:
    r = np.random.default_rng(len(shape))
    x = case.host(r.normal(size=shape))
    out = F.flatten(case.asarray(x))
    case.assert_close(out, x.reshape(shape[0], -1), "flatten")
    g = case.host(r.normal(size=(shape[0], int(np.prod(shape[1:])))))
    back = F.flatten_backward(case.asarray(g), tuple(out.shape[:1]) + tuple(shape[1:]))
    case.assert_close(back, g.reshape(shape), "flatten_backward")


def test_flatten_backward_finite_differences(case64: Case, rng: np.random.Generator) -> None:
    x, proj = rng.normal(size=(2, 2, 3)), rng.normal(size=(2, 6))

    def loss(v):
        return float(np.sum(case64.to_numpy(F.flatten(case64.asarray(v))) * proj))

    got = F.flatten_backward(case64.asarray(proj), x.shape)
    assert_fd(got, central_difference(loss, x), case64)


def test_flatten_on_a_transposed_view(case: Case, rng: np.random.Generator) -> None:
    x = case.host(rng.normal(size=(3, 4, 2)))
    xt = case.xp.permute_dims(case.asarray(x), (0, 2, 1))
    case.assert_close(F.flatten(xt), np.transpose(x, (0, 2, 1)).reshape(3, -1), "flatten")


# --------------------------------------------------------------------- activations


def torch_activation(name: str, axis: int, slope: float):
    torch = torch_or_skip()
    tf = torch.nn.functional
    return {
        "identity": lambda t: t * 1.0,
        "relu": tf.relu,
        "leaky_relu": lambda t: tf.leaky_relu(t, slope),
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "softmax": lambda t: tf.softmax(t, dim=axis),
        "log_softmax": lambda t: tf.log_softmax(t, dim=axis),
    }[name]


def activation_pair(name: str, axis: int, slope: float):
    forward, backward = F.ACTIVATIONS[name][:2]
    if name in ("softmax", "log_softmax"):
        return (lambda x: forward(x, axis=axis)), (lambda g, x, out=None: backward(g, x, out, axis))
    if name == "leaky_relu":
        return (lambda x: forward(x, slope)), (
            lambda g, x, out=None: backward(g, x, out, negative_slope=slope)
        )
    return forward, backward


ACTIVATION_CASES = [
    ("identity", -1, 0.0),
    ("relu", -1, 0.0),
    ("leaky_relu", -1, 0.01),
    ("leaky_relu", -1, 0.3),
    ("sigmoid", -1, 0.0),
    ("tanh", -1, 0.0),
    ("softmax", -1, 0.0),
    ("softmax", 1, 0.0),
    ("log_softmax", -1, 0.0),
    ("log_softmax", 0, 0.0),
]
ACTIVATION_IDS = [f"{n}-axis{a}-slope{s}" for n, a, s in ACTIVATION_CASES]


@pytest.mark.parametrize("name, axis, slope", ACTIVATION_CASES, ids=ACTIVATION_IDS)
def test_activation_matches_torch(case: Case, name: str, axis: int, slope: float) -> None:
    r = np.random.default_rng(len(name) + axis)
    x = r.normal(scale=3.0, size=(4, 5, 3))
    x[0, 0, :] = 0.0  # the kinks: relu'(0) = 0, leaky_relu'(0) = slope, as torch
    x, g = case.host(x), case.host(r.normal(size=x.shape))
    ref, (ref_gx,) = torch_reference(torch_activation(name, axis, slope), [x], g)
    forward, backward = activation_pair(name, axis, slope)
    xa, ga = case.asarray(x), case.asarray(g)
    out = forward(xa)
    case.assert_close(out, ref, name)
    case.assert_close(backward(ga, xa), ref_gx, f"{name} backward")
    case.assert_close(backward(ga, xa, out), ref_gx, f"{name} backward from out")


@pytest.mark.parametrize("name, axis, slope", ACTIVATION_CASES, ids=ACTIVATION_IDS)
def test_activation_backward_finite_differences(
    case64: Case, name: str, axis: int, slope: float
) -> None:
    r = np.random.default_rng(3)
    x = r.normal(size=(3, 4))
    x = np.where(np.abs(x) < 0.05, 0.5, x)  # away from the kinks
    proj = r.normal(size=x.shape)
    forward, backward = activation_pair(name, axis, slope)

    def loss(v):
        return float(np.sum(case64.to_numpy(forward(case64.asarray(v))) * proj))

    got = backward(case64.asarray(proj), case64.asarray(x))
    assert_fd(got, central_difference(loss, x), case64)


def test_activations_table() -> None:
    assert set(F.ACTIVATIONS) == {
        "identity",
        "relu",
        "leaky_relu",
        "sigmoid",
        "tanh",
        "softmax",
        "log_softmax",
    }
    assert F.ACTIVATIONS["tanh"][:2] == (F.tanh, F.tanh_backward)


def test_sigmoid_and_softmax_are_stable_for_large_inputs(case: Case) -> None:
    x = np.array([[-1e4, -800.0, -50.0, 0.0, 50.0, 800.0, 1e4]])
    xa = case.asarray(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = F.sigmoid(xa)
        gs = F.sigmoid_backward(case.asarray(np.ones_like(x)), xa)
        sm = F.softmax(xa)
        lsm = F.log_softmax(xa)
    expected = np.array([[0.0, 0.0, np.exp(-50.0), 0.5, 1.0, 1.0, 1.0]])
    case.assert_close(s, expected, "sigmoid")
    # sigmoid' = s (1 - s): 1/4 at 0, exp(-50) at +-50, below float64's range beyond
    tail = math.exp(-50.0) / (1 + math.exp(-50.0)) ** 2
    case.assert_close(gs, np.array([[0.0, 0.0, tail, 0.25, tail, 0.0, 0.0]]), "sigmoid'")
    g = case.to_numpy(gs)
    assert g[0, 3] == pytest.approx(0.25, rel=case.rtol) and np.all(g >= 0)
    torch = torch_or_skip()
    t = torch.tensor(x, requires_grad=True)
    torch.sigmoid(t).sum().backward()
    case.assert_close(gs, t.grad.numpy(), "sigmoid' against torch")
    case.assert_close(sm, np.array([[0.0] * 6 + [1.0]]), "softmax")
    case.assert_close(lsm, x - 1e4, "log_softmax")
    assert np.all(case.to_numpy(s) >= 0) and np.all(case.to_numpy(s) <= 1)


# ------------------------------------------------------------------------ dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_matches_torch_with_the_mask(case: Case, p: float) -> None:
    torch = torch_or_skip()
    r = np.random.default_rng(int(p * 10))
    x, g = case.host(r.normal(size=(4, 3, 5))), case.host(r.normal(size=(4, 3, 5)))
    out, mask = F.dropout(case.asarray(x), p, rng=np.random.default_rng(7))
    m = case.to_numpy(mask)
    assert set(np.unique(m)) <= {0.0, float(case.host(1 / (1 - p)))}
    assert tuple(mask.shape) == x.shape and mask.dtype == case.asarray(x).dtype
    ref, (ref_gx,) = torch_reference(lambda t: t * torch.tensor(m), [x], g)
    case.assert_close(out, ref, "dropout")
    case.assert_close(F.dropout_backward(case.asarray(g), mask), ref_gx, "dropout backward")


def test_dropout_same_seed_same_mask_on_every_backend(case: Case) -> None:
    x = np.random.default_rng(1).normal(size=(6, 7, 5)).astype(case.dtype)
    _, mask = F.dropout(case.asarray(x), 0.4, rng=np.random.default_rng(42))
    _, ref = F.dropout(x, 0.4, rng=np.random.default_rng(42))  # the NumPy backend
    np.testing.assert_array_equal(case.to_numpy(mask), ref)


def test_dropout_reuses_a_given_mask(case: Case, rng: np.random.Generator) -> None:
    x = case.host(rng.normal(size=(3, 4)))
    _, mask = F.dropout(case.asarray(x), 0.5, rng=rng)
    out, same = F.dropout(case.asarray(x), 0.5, mask=mask)
    assert same is mask
    case.assert_close(out, x * case.to_numpy(mask), "dropout with a given mask")


def test_dropout_off_at_inference_and_for_p_zero(case: Case, rng: np.random.Generator) -> None:
    xa = case.asarray(rng.normal(size=(3, 4)))
    for kwargs in (dict(p=0.5, training=False), dict(p=0.0, rng=rng), dict(p=0, training=True)):
        out, mask = F.dropout(xa, **kwargs)
        assert out is xa and mask is None
    g = case.asarray(rng.normal(size=(3, 4)))
    assert F.dropout_backward(g, None) is g


def test_dropout_mask_has_mean_one(case: Case) -> None:
    x = case.asarray(np.ones((200, 5000)))
    _, mask = F.dropout(x, 0.3, rng=np.random.default_rng(3))
    m = case.to_numpy(mask)
    assert abs(m.mean() - 1.0) < 5e-3  # the mean's std is sqrt(p / (1 - p) / size) ~ 6.5e-4
    assert abs((m == 0).mean() - 0.3) < 3e-3


def test_max_pool_backward_without_kernel_size_says_what_it_needs() -> None:
    x = np.ones((1, 1, 4, 4))
    with pytest.raises(TypeError) as info:
        F.max_pool2d_backward(np.ones((1, 1, 2, 2)), x)
    assert str(info.value) == (
        "kernel_size: expected an int or a pair with an input x (or x the saved state "
        "that max_pool2d_forward returned), got None"
    )


def test_dropout_refuses_an_rng_that_is_not_a_generator() -> None:
    """The mask is drawn from a NumPy Generator; a seed or the legacy RandomState is
    refused, the message naming the argument, what it takes and what it got."""
    for rng, got in ((7, "int"), (np.random.RandomState(7), "RandomState")):
        with pytest.raises(TypeError) as info:
            F.dropout(np.ones((2, 3)), 0.5, rng=rng)
        assert str(info.value) == (
            "rng: expected a numpy.random.Generator (np.random.default_rng(seed)) to draw "
            f"the dropout mask from, got {got}"
        )


def test_dropout_backward_finite_differences(case64: Case, rng: np.random.Generator) -> None:
    x, proj = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    _, mask = F.dropout(case64.asarray(x), 0.4, rng=rng)

    def loss(v):
        out, _ = F.dropout(case64.asarray(v), 0.4, mask=mask)
        return float(np.sum(case64.to_numpy(out) * proj))

    assert_fd(F.dropout_backward(case64.asarray(proj), mask), central_difference(loss, x), case64)


# ------------------------------------------------------------------------- losses


@pytest.mark.parametrize("n, k", [(1, 2), (5, 3), (16, 10)])
def test_cross_entropy_integer_labels_match_torch(case: Case, n: int, k: int) -> None:
    torch = torch_or_skip()
    r = np.random.default_rng(n * k)
    logits = case.host(r.normal(scale=2.0, size=(n, k)))
    labels = r.integers(0, k, size=n)
    tl = torch.tensor(labels)
    ref, (ref_g,) = torch_reference(
        lambda t: torch.nn.functional.cross_entropy(t, tl), [logits], 0.7
    )
    la, ya = case.asarray(logits), case.asarray(labels)
    loss = F.softmax_cross_entropy(la, ya)
    assert loss.ndim == 0
    case.assert_close(loss, ref, "cross-entropy")
    case.assert_close(F.softmax_cross_entropy_backward(la, ya, 0.7), ref_g, "gradient")
    grad0d = case.asarray(np.asarray(0.7))
    case.assert_close(F.softmax_cross_entropy_backward(la, ya, grad0d), ref_g, "0-d grad")


@pytest.mark.parametrize("n, k", [(1, 2), (5, 3), (16, 10)])
def test_cross_entropy_probability_labels_match_torch(case: Case, n: int, k: int) -> None:
    torch = torch_or_skip()
    r = np.random.default_rng(n + k)
    logits = case.host(r.normal(scale=2.0, size=(n, k)))
    probs = r.random(size=(n, k))
    probs = case.host(probs / probs.sum(axis=1, keepdims=True))
    tp = torch.tensor(probs)
    ref, (ref_g,) = torch_reference(
        lambda t: torch.nn.functional.cross_entropy(t, tp), [logits], 1.3
    )
    la, pa = case.asarray(logits), case.asarray(probs)
    case.assert_close(F.softmax_cross_entropy(la, pa), ref, "cross-entropy")
    case.assert_close(F.softmax_cross_entropy_backward(la, pa, 1.3), ref_g, "gradient")


def test_cross_entropy_integer_and_one_hot_labels_agree(case: Case) -> None:
    r = np.random.default_rng(5)
    logits = case.asarray(r.normal(size=(6, 4)))
    labels = r.integers(0, 4, size=6)
    one_hot = case.asarray(np.eye(4)[labels])
    for f in (F.softmax_cross_entropy, F.softmax_cross_entropy_backward):
        np.testing.assert_array_equal(
            case.to_numpy(f(logits, case.asarray(labels))), case.to_numpy(f(logits, one_hot))
        )


def test_cross_entropy_is_stable_for_huge_logits(case: Case) -> None:
    r = np.random.default_rng(9)
    logits = np.round(r.normal(size=(5, 4)) * 3) * 1e4 / 3  # magnitudes up to ~1e4 and more
    logits[0] = [1e4, -1e4, 1e4, 0.0]
    labels = np.array([1, 0, 3, 2, 1])
    la, ya = case.asarray(logits), case.asarray(labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = case.to_numpy(F.softmax_cross_entropy(la, ya))
        grad = case.to_numpy(F.softmax_cross_entropy_backward(la, ya))
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    x = case.host(logits)
    shifted = x - x.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    onehot = np.eye(4)[labels]
    np.testing.assert_allclose(loss, -np.sum(onehot * log_p) / 5, rtol=case.rtol)
    case.assert_close(F.softmax_cross_entropy_backward(la, ya), (np.exp(log_p) - onehot) / 5)


def test_cross_entropy_backward_finite_differences(case64: Case) -> None:
    r = np.random.default_rng(2)
    logits = r.normal(size=(3, 4))
    labels = np.array([0, 3, 1])
    soft = r.random(size=(3, 4))  # rows need not sum to one
    for targets in (case64.asarray(labels), case64.asarray(soft)):

        def loss(v, targets=targets):
            return float(case64.to_numpy(F.softmax_cross_entropy(case64.asarray(v), targets)))

        got = F.softmax_cross_entropy_backward(case64.asarray(logits), targets, 2.0)
        assert_fd(got, 2.0 * central_difference(loss, logits), case64)


@pytest.mark.parametrize("shape", [(1,), (4, 3), (2, 3, 5)])
def test_mse_matches_torch(case: Case, shape: tuple[int, ...]) -> None:
    torch = torch_or_skip()
    r = np.random.default_rng(len(shape))
    pred, target = case.host(r.normal(size=shape)), case.host(r.normal(size=shape))
    ref, (ref_gp, ref_gt) = torch_reference(torch.nn.functional.mse_loss, [pred, target], 0.5)
    pa, ta = case.asarray(pred), case.asarray(target)
    loss = F.mse(pa, ta)
    assert loss.ndim == 0
    case.assert_close(loss, ref, "mse")
    case.assert_close(F.mse_backward(pa, ta, 0.5), ref_gp, "mse gradient")
    case.assert_close(F.mse_backward(ta, pa, 0.5), ref_gt, "mse gradient for target")


def test_mse_backward_finite_differences(case64: Case, rng: np.random.Generator) -> None:
    pred, target = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    ta = case64.asarray(target)

    def loss(v):
        return float(case64.to_numpy(F.mse(case64.asarray(v), ta)))

    assert_fd(F.mse_backward(case64.asarray(pred), ta), central_difference(loss, pred), case64)


# ------------------------------------------------------------- inputs unchanged


def test_inputs_are_not_modified(rng: np.random.Generator) -> None:
    x4 = rng.normal(size=(2, 3, 5, 5))
    g4 = rng.normal(size=(2, 3, 3, 2))
    x2, w, b, g2 = (rng.normal(size=s) for s in ((4, 5), (3, 5), (3,), (4, 3)))
    labels = np.array([0, 2, 1, 2])
    probs = np.full((4, 3), 1 / 3)
    arrays = (x4, g4, x2, w, b, g2, labels, probs)
    copies = [a.copy() for a in arrays]
    pool = dict(kernel_size=2, padding=(1, 0))
    F.max_pool2d_backward(g4, x4, **pool)
    out, saved = F.max_pool2d_forward(x4, **pool)
    F.max_pool2d_backward(g4, saved)
    F.avg_pool2d_backward(g4, x4, **pool)
    F.avg_pool2d(x4, **pool)
    F.linear(x2, w, b)
    F.linear_backward(g2, x2, w)
    F.flatten_backward(F.flatten(x4), x4.shape)
    for forward, backward, *_ in F.ACTIVATIONS.values():
        backward(x2 * 3, x2, forward(x2))
        backward(x2 * 3, x2)
    _, mask = F.dropout(x2, 0.5, rng=rng)
    F.dropout_backward(x2 * 3, mask)
    for targets in (labels, probs):
        F.softmax_cross_entropy(g2, targets)
        F.softmax_cross_entropy_backward(g2, targets)
    F.mse_backward(x2, x2 * 2)
    for a, c in zip(arrays, copies):
        np.testing.assert_array_equal(a, c)


# ---------------------------------------------------------------------- bad input

X4 = np.ones((2, 3, 6, 6))
G4 = np.ones((2, 3, 3, 3))
X2, W2, G2 = np.ones((4, 5)), np.ones((3, 5)), np.ones((4, 3))
LOGITS = np.zeros((4, 3))

BAD = [
    # (description, call, exception, words the message must contain)
    ("pool rank", lambda: F.max_pool2d(np.ones((3, 6, 6)), 2), ValueError, ["x", "4-D", "3-D"]),
    ("pool integer x", lambda: F.avg_pool2d(X4.astype(int), 2), TypeError, ["x", "floating"]),
    ("pool kernel zero", lambda: F.max_pool2d(X4, 0), ValueError, ["kernel_size", "0"]),
    ("pool kernel float", lambda: F.max_pool2d(X4, 2.0), TypeError, ["kernel_size", "2.0"]),
    ("pool kernel triple", lambda: F.avg_pool2d(X4, (2, 2, 2)), TypeError, ["kernel_size"]),
    ("pool stride zero", lambda: F.max_pool2d(X4, 2, stride=0), ValueError, ["stride", "0"]),
    ("pool padding negative", lambda: F.avg_pool2d(X4, 2, padding=-1), ValueError, ["padding"]),
    (
        "pool padding over half",
        lambda: F.max_pool2d(X4, (3, 4), padding=(1, 3)),
        ValueError,
        ["padding", "kernel_size // 2", "(1, 2)", "(1, 3)"],
    ),
    (
        "pool output below 1",
        lambda: F.max_pool2d(np.ones((1, 1, 2, 5)), 3),
        ValueError,
        ["x", "too small", "(2, 5)"],
    ),
    (
        "pool grad_out shape",
        lambda: F.max_pool2d_backward(np.ones((2, 3, 2, 3)), X4, 2),
        ValueError,
        ["grad_out", "(2, 3, 3, 3)", "(2, 3, 2, 3)"],
    ),
    (
        "avg grad_out dtype",
        lambda: F.avg_pool2d_backward(G4.astype(np.float32), X4, 2),
        TypeError,
        ["grad_out", "float64", "float32"],
    ),
    (
        "pool saved not saved",
        lambda: F.max_pool2d_backward(G4, X4),
        TypeError,
        ["saved", "max_pool2d_forward"],
    ),
    (
        "pool saved grad shape",
        lambda: F.max_pool2d_backward(np.ones((2, 3, 1, 1)), F.max_pool2d_forward(X4, 2)[1]),
        ValueError,
        ["grad_out", "(2, 3, 3, 3)"],
    ),
    ("linear x rank", lambda: F.linear(np.ones(5), W2), ValueError, ["x", "2-D", "1-D"]),
    ("linear weight rank", lambda: F.linear(X2, np.ones(5)), ValueError, ["weight", "2-D"]),
    (
        "linear features",
        lambda: F.linear(X2, np.ones((3, 4))),
        ValueError,
        ["weight", "5", "(3, 4)"],
    ),
    ("linear bias", lambda: F.linear(X2, W2, np.ones(4)), ValueError, ["bias", "(3,)", "(4,)"]),
    (
        "linear dtypes",
        lambda: F.linear(X2, W2.astype(np.float32)),
        TypeError,
        ["weight", "float64", "float32"],
    ),
    (
        "linear grad_out",
        lambda: F.linear_backward(np.ones((4, 2)), X2, W2),
        ValueError,
        ["grad_out", "(4, 3)", "(4, 2)"],
    ),
    ("linear not array", lambda: F.linear([[1.0]], W2), TypeError, ["x", "array"]),
    ("flatten rank", lambda: F.flatten(np.ones(3)), ValueError, ["x", "2 dimensions", "1-D"]),
    (
        "flatten_backward shape",
        lambda: F.flatten_backward(np.ones((2, 5)), (2, 3, 2)),
        ValueError,
        ["grad_out", "(2, 6)", "(2, 5)"],
    ),
    ("relu integer", lambda: F.relu(np.ones(3, dtype=int)), TypeError, ["x", "floating"]),
    ("relu bool", lambda: F.relu(np.ones(3, dtype=bool)), TypeError, ["x", "bool"]),
    (
        "activation grad shape",
        lambda: F.tanh_backward(np.ones(3), np.ones(4)),
        ValueError,
        ["grad_out", "(4,)", "(3,)"],
    ),
    (
        "activation out shape",
        lambda: F.sigmoid_backward(np.ones(4), np.ones(4), np.ones(2)),
        ValueError,
        ["out", "(4,)", "(2,)"],
    ),
    (
        "activation grad dtype",
        lambda: F.relu_backward(np.ones(4, dtype=np.float32), np.ones(4)),
        TypeError,
        ["grad_out", "float32"],
    ),
    ("softmax axis", lambda: F.softmax(X2, axis=2), ValueError, ["axis", "2", "-2"]),
    ("log_softmax axis type", lambda: F.log_softmax(X2, axis=1.0), TypeError, ["axis", "1.0"]),
    ("softmax 0-d", lambda: F.softmax(np.asarray(1.0)), ValueError, ["axis"]),
    (
        "leaky slope",
        lambda: F.leaky_relu(X2, negative_slope="0.1"),
        TypeError,
        ["negative_slope", "'0.1'"],
    ),
    ("dropout p range", lambda: F.dropout(X2, 1.0, rng=np.random.default_rng()), ValueError, ["p"]),
    ("dropout p negative", lambda: F.dropout(X2, -0.1), ValueError, ["p", "-0.1"]),
    ("dropout p nan", lambda: F.dropout(X2, float("nan")), ValueError, ["p", "nan"]),
    ("dropout p type", lambda: F.dropout(X2, "0.5"), TypeError, ["p", "'0.5'"]),
    ("dropout rng missing", lambda: F.dropout(X2, 0.5), TypeError, ["rng", "Generator"]),
    (
        "dropout rng legacy",
        lambda: F.dropout(X2, 0.5, rng=np.random.RandomState(0)),
        TypeError,
        ["rng", "RandomState"],
    ),
    (
        "dropout mask shape",
        lambda: F.dropout(X2, 0.5, mask=np.ones((4, 4))),
        ValueError,
        ["mask", "(4, 5)", "(4, 4)"],
    ),
    ("dropout integer x", lambda: F.dropout(X2.astype(int), 0.5), TypeError, ["x", "floating"]),
    (
        "dropout_backward shape",
        lambda: F.dropout_backward(X2, np.ones((4, 4))),
        ValueError,
        ["mask", "(4, 5)", "(4, 4)"],
    ),
    (
        "labels length",
        lambda: F.softmax_cross_entropy(LOGITS, np.array([0, 1, 2])),
        ValueError,
        ["labels", "4", "3"],
    ),
    (
        "labels too large",
        lambda: F.softmax_cross_entropy(LOGITS, np.array([0, 1, 3, 2])),
        ValueError,
        ["labels", "[0, 3)", "max 3"],
    ),
    (
        "labels negative",
        lambda: F.softmax_cross_entropy_backward(LOGITS, np.array([0, -1, 2, 2])),
        ValueError,
        ["labels", "min -1"],
    ),
    (
        "labels bool",
        lambda: F.softmax_cross_entropy(LOGITS, np.array([True, False, True, True])),
        TypeError,
        ["labels", "bool"],
    ),
    (
        "labels integer rank",
        lambda: F.softmax_cross_entropy(LOGITS, np.zeros((4, 3), dtype=np.int64)),
        ValueError,
        ["labels", "1-D", "2-D"],
    ),
    (
        "labels float rank",
        lambda: F.softmax_cross_entropy(LOGITS, np.zeros(4)),
        ValueError,
        ["labels", "2-D", "integer"],
    ),
    (
        "labels classes",
        lambda: F.softmax_cross_entropy(LOGITS, np.zeros((4, 5))),
        ValueError,
        ["labels", "3 columns", "(4, 5)"],
    ),
    (
        "labels rows",
        lambda: F.softmax_cross_entropy(LOGITS, np.zeros((5, 3))),
        ValueError,
        ["labels", "4 rows", "5"],
    ),
    (
        "labels dtype",
        lambda: F.softmax_cross_entropy(LOGITS, np.zeros((4, 3), dtype=np.float32)),
        TypeError,
        ["labels", "float64", "float32"],
    ),
    (
        "logits rank",
        lambda: F.softmax_cross_entropy(np.zeros(3), np.array([0])),
        ValueError,
        ["logits", "2-D", "1-D"],
    ),
    (
        "logits integer",
        lambda: F.softmax_cross_entropy(np.zeros((2, 3), dtype=int), np.array([0, 1])),
        TypeError,
        ["logits", "floating"],
    ),
    (
        "logits empty",
        lambda: F.softmax_cross_entropy(np.zeros((0, 3)), np.zeros(0, dtype=int)),
        ValueError,
        ["logits", "non-empty"],
    ),
    (
        "loss grad shape",
        lambda: F.softmax_cross_entropy_backward(LOGITS, np.zeros(4, dtype=int), np.ones(2)),
        ValueError,
        ["grad", "0-d", "(2,)"],
    ),
    (
        "loss grad bool",
        lambda: F.mse_backward(X2, X2, True),
        TypeError,
        ["grad", "True"],
    ),
    ("mse shape", lambda: F.mse(X2, np.ones((5, 4))), ValueError, ["target", "(4, 5)", "(5, 4)"]),
    (
        "mse dtype",
        lambda: F.mse(X2, X2.astype(np.float32)),
        TypeError,
        ["target", "float64", "float32"],
    ),
    ("mse empty", lambda: F.mse(np.ones((0, 2)), np.ones((0, 2))), ValueError, ["pred", "empty"]),
]


@pytest.mark.parametrize("call, exc, words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_errors(call, exc, words) -> None:
    with pytest.raises(exc) as info:
        call()
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


def test_mixed_backends_name_both_arguments() -> None:
    torch = torch_or_skip()
    tw = torch.ones((3, 5), dtype=torch.float64)
    with pytest.raises(BackendError, match=r"x is .*numpy.* but weight is .*torch"):
        F.linear(X2, tw)
    with pytest.raises(BackendError, match=r"logits is .*numpy.* but labels is .*torch"):
        F.softmax_cross_entropy(LOGITS, torch.zeros(4, dtype=torch.int64))
    with pytest.raises(BackendError, match=r"x is .*numpy.* but grad_out is .*torch"):
        F.max_pool2d_backward(torch.ones((2, 3, 3, 3), dtype=torch.float64), X4, 2)


def test_mixed_devices_name_both_arguments() -> None:
    strict = pytest.importorskip("array_api_strict")
    x = strict.asarray(X2)
    mask = strict.asarray(X2, device=strict.Device("device1"))
    with pytest.raises(BackendError, match=r"x is .*CPU_DEVICE.* but mask is .*device1"):
        F.dropout(x, 0.5, mask=mask)


def test_results_stay_on_the_input_device() -> None:
    be = get_backend("array_api_strict", device="device1")
    x = be.asarray(np.random.default_rng(0).normal(size=(2, 3, 4, 4)))
    out, saved = F.max_pool2d_forward(x, 2, padding=1)
    for a in (
        out,
        F.max_pool2d_backward(be.asarray(np.ones(tuple(out.shape))), saved),
        F.avg_pool2d_backward(be.asarray(np.ones(tuple(out.shape))), x, 2, padding=1),
        F.relu(x),
        F.dropout(x, 0.5, rng=np.random.default_rng(0))[1],
        F.softmax_cross_entropy(F.flatten(x), be.asarray(np.array([0, 1]))),
    ):
        assert be.owns(a), a


# ------------------------------------------------------- the argument contract of every op
#
# Every public op checks each array argument before any compute: not an array, an
# integer dtype, another backend or device, and (where the op fixes the layout) another
# rank are refused with an error that starts with the argument's name.


def _contract_inputs() -> dict[str, tuple[object, dict[str, np.ndarray], set[str]]]:
    """op name -> (callable taking keyword arrays, valid float64 arrays, rank-checked)."""
    r = np.random.default_rng(11)

    def a(*shape: int) -> np.ndarray:
        return r.normal(size=shape)

    x4, x3, x2 = a(2, 3, 6, 6), a(2, 3, 8), a(2, 3)
    mask = (r.random((2, 3)) >= 0.5) * 2.0
    bn = dict(x=a(4, 3, 2, 2), weight=a(3), bias=a(3), running_mean=a(3), running_var=a(3) ** 2)
    bn_grad = {k: v for k, v in bn.items() if k != "bias"}
    conv2 = dict(x=x4, weight=a(4, 3, 3, 3))
    conv1 = dict(x=x3, weight=a(4, 3, 3))
    unary = {
        "identity": F.identity_backward,
        "relu": F.relu_backward,
        "leaky_relu": F.leaky_relu_backward,
        "sigmoid": F.sigmoid_backward,
        "tanh": F.tanh_backward,
        "softmax": F.softmax_backward,
        "log_softmax": F.log_softmax_backward,
    }
    table = {
        "add": (F.add, dict(a=x2, b=a(2, 3)), set()),
        "avg_pool2d": (lambda **k: F.avg_pool2d(k["x"], 2), dict(x=x4), {"x"}),
        "avg_pool2d_backward": (
            lambda **k: F.avg_pool2d_backward(k["grad_out"], k["x"], 2),
            dict(grad_out=a(2, 3, 3, 3), x=x4),
            {"grad_out", "x"},
        ),
        "max_pool2d": (lambda **k: F.max_pool2d(k["x"], 2), dict(x=x4), {"x"}),
        "max_pool2d_backward": (
            lambda **k: F.max_pool2d_backward(k["grad_out"], k["x"], 2),
            dict(grad_out=a(2, 3, 3, 3), x=x4),
            {"grad_out", "x"},
        ),
        "global_avg_pool2d": (F.global_avg_pool2d, dict(x=x4), {"x"}),
        "batch_norm": (F.batch_norm, bn, {"weight", "bias", "running_mean", "running_var"}),
        "batch_norm_backward": (
            F.batch_norm_backward,
            dict(grad_out=a(4, 3, 2, 2), **bn_grad),
            {"grad_out", "weight"},
        ),
        "conv1d": (F.conv1d, dict(conv1, bias=a(4)), {"x", "weight", "bias"}),
        "conv1d_backward": (
            F.conv1d_backward,
            dict(grad_out=a(2, 4, 6), **conv1),
            {"grad_out", "x", "weight"},
        ),
        "conv2d": (F.conv2d, dict(conv2, bias=a(4)), {"x", "weight", "bias"}),
        "conv2d_backward": (
            F.conv2d_backward,
            dict(grad_out=a(2, 4, 4, 4), **conv2),
            {"grad_out", "x", "weight"},
        ),
        "conv_max_pool2d": (F.conv_max_pool2d, dict(conv2, bias=a(4)), {"x", "weight", "bias"}),
        "dropout": (
            lambda **k: F.dropout(k["x"], 0.5, mask=k["mask"]),
            dict(x=x2, mask=mask),
            set(),
        ),
        "dropout_backward": (F.dropout_backward, dict(grad_out=a(2, 3), mask=mask), set()),
        "linear": (F.linear, dict(x=x2, weight=a(4, 3), bias=a(4)), {"x", "weight", "bias"}),
        "linear_backward": (
            F.linear_backward,
            dict(grad_out=a(2, 4), x=x2, weight=a(4, 3)),
            {"grad_out", "x", "weight"},
        ),
        "mse": (F.mse, dict(pred=x2, target=a(2, 3)), set()),
        "mse_backward": (
            F.mse_backward,
            dict(pred=x2, target=a(2, 3), grad=np.asarray(0.5)),
            set(),
        ),
        "softmax_cross_entropy": (
            F.softmax_cross_entropy,
            dict(logits=x2, labels=np.exp(x2) / np.exp(x2).sum(1, keepdims=True)),
            {"logits"},
        ),
        "softmax_cross_entropy_backward": (
            F.softmax_cross_entropy_backward,
            dict(
                logits=x2,
                labels=np.exp(x2) / np.exp(x2).sum(1, keepdims=True),
                grad=np.asarray(2.0),
            ),
            {"logits"},
        ),
    }
    for name, backward in unary.items():
        forward = getattr(F, name)
        table[f"{name}_backward"] = (backward, dict(grad_out=a(2, 3), x=x2, out=forward(x2)), set())
    return table


CONTRACT = _contract_inputs()
CONTRACT_CASES = [(op, arg) for op, (_, arrays, _) in CONTRACT.items() for arg in arrays]


@pytest.mark.parametrize("op, arg", CONTRACT_CASES, ids=[f"{o}-{a}" for o, a in CONTRACT_CASES])
def test_every_array_argument_is_checked_by_name(op: str, arg: str) -> None:
    fn, arrays, ranked = CONTRACT[op]
    fn(**arrays)  # the valid call runs

    def call_with(value: object) -> None:
        fn(**{**arrays, arg: value})

    with pytest.raises(TypeError, match=rf"^{arg}: expected an array"):
        call_with([arrays[arg].tolist()])
    if arg != "labels":  # integer class indices are labels too
        with pytest.raises(TypeError, match=rf"^{arg}: expected a floating dtype"):
            call_with(np.ones(arrays[arg].shape, dtype=np.int64))
    if arrays[arg].ndim and arg in ranked:
        with pytest.raises(ValueError, match=rf"^{arg}: expected"):
            call_with(arrays[arg][None])


SHARED_CASES = [(op, arg) for op, arg in CONTRACT_CASES if len(CONTRACT[op][1]) > 1]


@pytest.mark.parametrize("op, arg", SHARED_CASES, ids=[f"{o}-{a}" for o, a in SHARED_CASES])
def test_every_array_argument_must_share_the_device(op: str, arg: str) -> None:
    strict = pytest.importorskip("array_api_strict")
    fn, arrays, _ = CONTRACT[op]
    here = {k: strict.asarray(v) for k, v in arrays.items()}
    fn(**here)
    elsewhere = strict.asarray(arrays[arg], device=strict.Device("device1"))
    with pytest.raises(BackendError, match=rf"\b{arg} is "):
        fn(**{**here, arg: elsewhere})


# ------------------------------------------------------------ losses and targets, whole

_LOGITS = np.array([[1.0, 2.0, 0.5], [0.1, 0.2, 0.3]])


_FLOAT_TARGETS = "(integer class indices need an integer dtype)"
TARGET_ERRORS = [
    (
        (np.ones(2), (3,)),
        "labels: expected floating targets as a 2-D array (N, K) of class probabilities "
        f"{_FLOAT_TARGETS}, got 1-D of shape (2,)",
    ),
    (
        (np.ones(2), (3, 2)),
        "labels: expected floating targets as a 3-D array (N, *(3, 2)) "
        f"{_FLOAT_TARGETS}, got 1-D of shape (2,)",
    ),
    (
        (np.array([0, 1]), (3, 2)),
        "labels: integer class indices need outputs (N, K), but the outputs are (N, 3, 2); "
        "give floating targets of that shape",
    ),
]


@pytest.mark.parametrize("args, message", TARGET_ERRORS)
def test_target_shape_errors_are_stated_whole(args, message: str) -> None:
    labels, out = args
    with pytest.raises(ValueError) as info:
        check_targets(np, labels, 2, out)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "call, exc, message",
    [
        (
            lambda: F.softmax_cross_entropy(np.ones(3), np.array([0])),
            ValueError,
            "logits: expected a 2-D array (N, K), got 1-D of shape (3,)",
        ),
        (
            lambda: F.softmax_cross_entropy_forward(_LOGITS, np.array([0, 3])),
            ValueError,
            "labels: expected class indices in [0, 3) for 3 classes, got min 0 and max 3",
        ),
        (
            lambda: F.softmax_cross_entropy_backward("x"),
            TypeError,
            "labels: expected class indices or float targets with logits (or logits the "
            "saved state that softmax_cross_entropy_forward returned), got None",
        ),
        (
            lambda: F.softmax_cross_entropy_backward(
                F.softmax_cross_entropy_forward(_LOGITS, np.array([0, 1]))[1], np.array([0, 1])
            ),
            TypeError,
            "labels: not read with the CrossEntropySaved of softmax_cross_entropy_forward, "
            "got ndarray",
        ),
        (
            lambda: F.pool_geometry((2, 3, 4, 0), 2),
            ValueError,
            "x: expected a non-empty array, got shape (2, 3, 4, 0)",
        ),
        (
            lambda: check_targets(np, np.array([0, 5]), 2, (3,)),
            ValueError,
            "labels: expected class indices in [0, 3) for 3 classes, got min 0 and max 5",
        ),
        (
            lambda: check_targets(np, np.ones((2, 4, 2)), 2, (3, 2)),
            ValueError,
            "labels: expected rows of shape (3, 2) of the outputs (N, 3, 2), "
            "got labels of shape (2, 4, 2)",
        ),
    ],
)
def test_loss_and_target_errors_are_stated_whole(call, exc: type, message: str) -> None:
    with pytest.raises(exc) as info:
        call()
    assert str(info.value) == message


def test_one_class_and_unchecked_ranges_are_allowed() -> None:
    assert float(F.softmax_cross_entropy(np.ones((2, 1)), np.array([0, 0]))) == 0.0
    loss, _ = F.softmax_cross_entropy_forward(_LOGITS, np.array([0, 3]), check_range=False)
    assert np.isfinite(float(loss))  # no check, no error: the caller vouched for the range
    assert check_targets(np, np.array([0, 5]), 2, (3,), check_range=False) is not None


@pytest.mark.parametrize("labels", [np.array([0, 2]), np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])])
def test_cross_entropy_gradient_scales_by_a_0d_grad_of_another_dtype(labels) -> None:
    """A float32 0-d ``grad`` scales a float64 gradient and keeps float64; the saved
    backward agrees with the direct one, for class indices and for probability rows."""
    probs = np.exp(_LOGITS) / np.exp(_LOGITS).sum(axis=1, keepdims=True)
    onehot = np.eye(3)[labels] if labels.ndim == 1 else labels
    want = 2.0 * (probs - onehot) / 2
    grad = np.asarray(2.0, dtype=np.float32)
    direct = F.softmax_cross_entropy_backward(_LOGITS, labels, grad)
    _, saved = F.softmax_cross_entropy_forward(_LOGITS, labels)
    for got in (direct, F.softmax_cross_entropy_backward(saved, grad=grad)):
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: F.relu_backward(np.ones((3, 2)), np.ones((2, 3))),
            "grad_out: expected the shape of x (2, 3), got (3, 2)",
        ),
        (
            lambda: F.tanh_backward(np.ones((2, 3)), np.ones((2, 3)), out=np.ones((3, 2))),
            "out: expected the shape of x (2, 3), got (3, 2)",
        ),
        (
            lambda: F.batch_norm(np.ones((4, 3, 2, 2)), np.ones(3), np.ones(3), training=False),
            "running_mean: inference (training=False) needs the running statistics",
        ),
        (
            lambda: F.add(np.ones((2, 3)), np.ones((3, 2))),
            "b: expected the shape of a, (2, 3), got (3, 2) (a residual branch and its shortcut "
            "must have the same output shape)",
        ),
        (
            lambda: F.conv2d(np.ones((2, 3, 5, 5)), np.ones((4, 3, 3, 3)), dilation=0),
            "dilation: expected positive values, got 0",
        ),
        (
            lambda: F.conv2d(np.ones((0, 3, 5, 5)), np.ones((4, 3, 3, 3))),
            "x, weight: expected non-empty arrays, got x of shape (0, 3, 5, 5) and weight of "
            "shape (4, 3, 3, 3)",
        ),
    ],
)
def test_shape_errors_are_stated_whole(call, message: str) -> None:
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value) == message


class _Group:
    """Processes that share a global batch, run one after another here: a
    ``StatsReducer`` per process. In ``"record"`` mode each process's buffer is kept and
    answered as by a group of one; in ``"share"`` mode ``gather`` answers every
    process's row (and a row of zeros for a process that only fills in) and
    ``backward`` the sum of every process's gradient sums."""

    def __init__(self, xp, processes: int) -> None:  # noqa: ANN001
        self.xp, self.mode = xp, "record"
        self.stats: list = [None] * processes
        self.sums: list = [None] * processes

    def member(self, rank: int):  # noqa: ANN201
        group = self

        class Reducer:
            def gather(self, stats):  # noqa: ANN001, ANN202
                if group.mode == "record":
                    group.stats[rank] = stats
                    return group.xp.stack([stats])
                return group.xp.stack([*group.stats, group.xp.zeros_like(stats)])

            def backward(self, sums):  # noqa: ANN001, ANN202
                if group.mode == "record":
                    group.sums[rank] = sums
                    return sums
                total = group.sums[0]
                for other in group.sums[1:]:
                    total = total + other
                return total

        return Reducer()


def test_synced_batch_norm_of_the_parts_is_batch_norm_of_the_whole_batch(
    case: Case, rng: np.random.Generator
) -> None:
    """Two processes holding 3 and 5 examples of a batch of 8 (with different means),
    and a third that only fills in: each one's output and input gradient are its rows
    of the unsynchronised batch norm of the whole batch, the running statistics are the
    whole batch's, and the parameter gradients add up to the whole batch's."""
    shape, cut = (8, 3, 4, 5), 3
    x = rng.normal(size=shape) * np.array([1.0, 2.0, 0.5])[:, None, None]
    x[cut:] += np.array([0.5, -1.0, 2.0])[:, None, None]
    g = rng.normal(size=shape)
    w, b = rng.normal(size=3), rng.normal(size=3)
    stats = dict(running_mean=case.asarray(np.full(3, 0.2)), running_var=case.asarray(np.ones(3)))
    a = case.asarray
    y, mean, var, saved = F.batch_norm_forward(a(x), a(w), a(b), **stats, momentum=0.3)
    gx, gw, gb = F.batch_norm_backward(a(g), saved)
    parts = [slice(0, cut), slice(cut, None)]
    group = _Group(case.xp, len(parts))
    reducers = [group.member(r) for r in range(len(parts))]

    def forward(r: int) -> tuple:
        kw = dict(momentum=0.3, reducer=reducers[r])
        return F.batch_norm_forward(a(x[parts[r]]), a(w), a(b), **stats, **kw)

    for r in range(len(parts)):
        forward(r)
    group.mode = "share"
    outs = [forward(r) for r in range(len(parts))]
    group.mode = "record"
    for r, out in enumerate(outs):
        F.batch_norm_backward(a(g[parts[r]]), out[3])
    group.mode = "share"
    grads = [F.batch_norm_backward(a(g[parts[r]]), out[3]) for r, out in enumerate(outs)]
    for r, ((y_r, mean_r, var_r, _), (gx_r, _, _)) in enumerate(zip(outs, grads)):
        case.assert_close(y_r, case.to_numpy(y)[parts[r]], f"y of process {r}")
        case.assert_close(mean_r, case.to_numpy(mean), f"running mean of process {r}")
        case.assert_close(var_r, case.to_numpy(var), f"running var of process {r}")
        case.assert_close(gx_r, case.to_numpy(gx)[parts[r]], f"grad_x of process {r}")
    for i, (what, whole) in enumerate((("weight", gw), ("bias", gb)), start=1):
        total = sum(case.to_numpy(grad[i]) for grad in grads)
        np.testing.assert_allclose(total, case.to_numpy(whole), rtol=case.rtol, atol=case.rtol)
        assert total.shape == (3,), what


def test_saved_backwards_check_the_device_of_grad() -> None:
    strict = pytest.importorskip("array_api_strict")
    other = strict.Device("device1")
    x = strict.asarray(np.random.default_rng(0).normal(size=(4, 3, 2, 2)))
    _, _, _, saved = F.batch_norm_forward(x, None, None)
    with pytest.raises(BackendError, match=r"grad_out is .* but x_hat is "):
        F.batch_norm_backward(strict.asarray(np.ones((4, 3, 2, 2)), device=other), saved)
    logits = strict.asarray(_LOGITS)
    _, saved = F.softmax_cross_entropy_forward(logits, strict.asarray(np.array([0, 1])))
    with pytest.raises(BackendError, match=r"logits is .* but grad is "):
        F.softmax_cross_entropy_backward(saved, grad=strict.asarray(2.0, device=other))
    _, saved = F.max_pool2d_forward(x, 2)
    with pytest.raises(BackendError, match=r"out is .* but grad_out is .*device1"):
        F.max_pool2d_backward(strict.asarray(np.ones((4, 3, 1, 1)), device=other), saved)
