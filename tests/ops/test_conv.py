"""conv2d / conv1d and their backward: PyTorch oracle, finite differences, adjoint,
the lecture's worked numbers and every bad configuration."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import Case, sweep, torch_or_skip
from numerics import FD_TOL, assert_matches_differences, central_difference

import xpconv
import xpconv.ops as F
from xpconv.backends import portable as _im2col
from xpconv.backends.kernels import PORTABLE, kernels_for
from xpconv.backends.registry import BackendError, get_backend
from xpconv.ops.conv import check_conv1d
from xpconv.ops.geometry import conv_geometry


def random_config(seed: int) -> dict:
    """A random valid convolution: shapes, stride 1-3, dilation 1-2, groups 1-4, padding."""
    r = np.random.default_rng(seed)
    groups = int(r.integers(1, 5))
    c = groups * int(r.integers(1, 3))
    o = groups * int(r.integers(1, 3))
    kh, kw = (int(v) for v in r.integers(1, 5, size=2))
    stride = tuple(int(v) for v in r.integers(1, 4, size=2))
    dilation = tuple(int(v) for v in r.integers(1, 3, size=2))
    choice = r.integers(0, 5)
    if choice == 0:
        padding = int(r.integers(0, 3))
    elif choice == 1:
        padding = tuple(int(v) for v in r.integers(0, 3, size=2))
    elif choice == 2:
        padding = "valid"
    elif choice == 3:
        padding, stride = "same", (1, 1)
    else:
        padding = "full"
    # smallest input that gives at least one output row/column, plus a random margin
    h = max(1, dilation[0] * (kh - 1) + 1 - (0 if isinstance(padding, str) else 0))
    w = max(1, dilation[1] * (kw - 1) + 1)
    h += int(r.integers(0, 7))
    w += int(r.integers(0, 7))
    return dict(
        n=int(r.integers(1, 6)),
        c=c,
        o=o,
        hw=(h, w),
        k=(kh, kw),
        conv=dict(stride=stride, padding=padding, dilation=dilation, groups=groups),
        seed=seed,
    )


CONFIGS = [random_config(s) for s in range(200)]


def torch_padding(conv: dict, k: tuple[int, int]) -> dict:
    """Our padding argument in terms torch accepts ('full' is ours only)."""
    conv = dict(conv)
    if conv["padding"] == "full":
        conv["padding"] = tuple(d * (kk - 1) for d, kk in zip(conv["dilation"], k))
    return conv


def torch_conv2d_reference(x, w, b, grad_out, conv, k):
    """Output and gradients from torch.nn.functional.conv2d and autograd, in float64."""
    torch = torch_or_skip()
    tx, tw, tb = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, w, b))
    out = torch.nn.functional.conv2d(tx, tw, tb, **torch_padding(conv, k))
    out.backward(torch.tensor(grad_out, dtype=torch.float64))
    return [t.detach().numpy() for t in (out, tx.grad, tw.grad, tb.grad)]


def make_data(cfg: dict, case: Case):
    r = np.random.default_rng(cfg["seed"] + 1000)
    n, c, o, (h, w), (kh, kw) = cfg["n"], cfg["c"], cfg["o"], cfg["hw"], cfg["k"]
    groups = cfg["conv"]["groups"]
    x = case.host(r.normal(size=(n, c, h, w)))
    wt = case.host(r.normal(size=(o, c // groups, kh, kw)))
    b = case.host(r.normal(size=(o,)))
    return x, wt, b


@pytest.mark.parametrize("cfg", sweep(CONFIGS, [f"cfg{c['seed']}" for c in CONFIGS]))
def test_conv2d_matches_torch(case: Case, cfg: dict) -> None:
    x, w, b = make_data(cfg, case)
    geom = conv_geometry(x.shape, w.shape, **cfg["conv"])
    grad_out = case.host(
        np.random.default_rng(cfg["seed"]).normal(size=(x.shape[0], w.shape[0], *geom.out))
    )
    ref_out, ref_gx, ref_gw, ref_gb = torch_conv2d_reference(
        x, w, b, grad_out, cfg["conv"], cfg["k"]
    )
    xa, wa, ba, ga = (case.asarray(a) for a in (x, w, b, grad_out))
    out = F.conv2d(xa, wa, ba, **cfg["conv"])
    case.assert_close(out, ref_out, "conv2d")
    gx, gw, gb = F.conv2d_backward(ga, xa, wa, **cfg["conv"])
    case.assert_close(gx, ref_gx, "grad_x")
    case.assert_close(gw, ref_gw, "grad_weight")
    case.assert_close(gb, ref_gb, "grad_bias")


@pytest.mark.parametrize("cfg", sweep(CONFIGS[:40], [f"cfg{c['seed']}" for c in CONFIGS[:40]]))
def test_conv1d_matches_torch(case: Case, cfg: dict) -> None:
    torch = torch_or_skip()
    r = np.random.default_rng(cfg["seed"])
    groups = cfg["conv"]["groups"]
    k, length = cfg["k"][1], cfg["hw"][1]
    stride, dilation = cfg["conv"]["stride"][1], cfg["conv"]["dilation"][1]
    padding = cfg["conv"]["padding"]
    if isinstance(padding, tuple):
        padding = padding[1]
    if padding == "same":
        stride = 1
    x = case.host(r.normal(size=(cfg["n"], cfg["c"], length)))
    w = case.host(r.normal(size=(cfg["o"], cfg["c"] // groups, k)))
    b = case.host(r.normal(size=(cfg["o"],)))
    conv = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    tconv = dict(conv, padding=dilation * (k - 1) if padding == "full" else padding)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ref = torch.nn.functional.conv1d(tx, tw, tb, **tconv)
    g = case.host(r.normal(size=tuple(ref.shape)))
    ref.backward(torch.tensor(g))
    xa, wa, ba = (case.asarray(a) for a in (x, w, b))
    case.assert_close(F.conv1d(xa, wa, ba, **conv), ref.detach().numpy(), "conv1d")
    gx, gw, gb = F.conv1d_backward(case.asarray(g), xa, wa, **conv)
    case.assert_close(gx, tx.grad.numpy(), "conv1d grad_x")
    case.assert_close(gw, tw.grad.numpy(), "conv1d grad_weight")
    case.assert_close(gb, tb.grad.numpy(), "conv1d grad_bias")


# ------------------------------------------------------------- finite differences


FD_CONFIGS = [c for c in CONFIGS if c["n"] * c["c"] * np.prod(c["hw"]) <= 120][:12]


@pytest.mark.parametrize("cfg", FD_CONFIGS, ids=[f"cfg{c['seed']}" for c in FD_CONFIGS])
def test_conv2d_backward_finite_differences(case64: Case, cfg: dict) -> None:
    x, w, b = make_data(cfg, case64)
    conv = cfg["conv"]
    geom = conv_geometry(x.shape, w.shape, **conv)
    r = np.random.default_rng(cfg["seed"] + 7)
    proj = r.normal(size=(x.shape[0], w.shape[0], *geom.out))

    def loss(xh, wh, bh):
        out = F.conv2d(case64.asarray(xh), case64.asarray(wh), case64.asarray(bh), **conv)
        return float(np.sum(case64.to_numpy(out) * proj))

    gx, gw, gb = F.conv2d_backward(
        case64.asarray(proj), case64.asarray(x), case64.asarray(w), **conv
    )
    for got, fd in (
        (gx, central_difference(lambda v: loss(v, w, b), x)),
        (gw, central_difference(lambda v: loss(x, v, b), w)),
        (gb, central_difference(lambda v: loss(x, w, v), b)),
    ):
        assert_matches_differences(case64.to_numpy(got), fd)


def test_finite_difference_tolerance_is_meaningful(rng: np.random.Generator) -> None:
    """A wrong gradient (the lecture's unflipped kernel) fails the same comparison."""
    x = rng.normal(size=(1, 1, 5, 5))
    w = rng.normal(size=(1, 1, 3, 3))
    proj = rng.normal(size=(1, 1, 5, 5))
    gx, _, _ = F.conv2d_backward(proj, x, w, padding=1)
    wrong = F.conv2d(proj, np.ascontiguousarray(w.transpose(1, 0, 2, 3)), padding=1)  # no flip
    fd = central_difference(lambda v: float(np.sum(F.conv2d(v, w, padding=1) * proj)), x)
    assert_matches_differences(gx, fd)
    assert np.max(np.abs(wrong - fd)) > 1e4 * FD_TOL


# ------------------------------------------------------------------- adjoint


ADJOINT_CONFIGS = CONFIGS[:30]


@pytest.mark.parametrize(
    "cfg", sweep(ADJOINT_CONFIGS, [f"cfg{c['seed']}" for c in ADJOINT_CONFIGS])
)
def test_im2col_col2im_adjoint(case: Case, cfg: dict) -> None:
    """<im2col(x), y> == <x, col2im(y)> for the portable and the selected kernels."""
    x, w, _ = make_data(cfg, case)
    geom = conv_geometry(x.shape, w.shape, **cfg["conv"])
    rows = geom.in_channels * geom.taps
    y = case.host(
        np.random.default_rng(cfg["seed"]).normal(size=(rows, geom.batch * np.prod(geom.out)))
    )
    xa, ya = case.asarray(x), case.asarray(y)
    for kernels in {PORTABLE, kernels_for(case.xp)}:
        cols = case.to_numpy(kernels.im2col(case.xp, xa, geom))
        back = case.to_numpy(kernels.col2im(case.xp, ya, geom))
        lhs, rhs = float(np.sum(cols * y)), float(np.sum(x * back))
        assert abs(lhs - rhs) <= case.rtol * 10 * max(1.0, abs(lhs)), (kernels.name, lhs, rhs)


def test_fast_path_matches_portable(case: Case, rng: np.random.Generator) -> None:
    """Whatever fast path the backend selects gives the portable path's columns."""
    kernels = kernels_for(case.xp)
    for cfg in CONFIGS[:25]:
        x, w, _ = make_data(cfg, case)
        geom = conv_geometry(x.shape, w.shape, **cfg["conv"])
        xa = case.asarray(x)
        ref = case.to_numpy(PORTABLE.im2col(case.xp, xa, geom))
        np.testing.assert_array_equal(case.to_numpy(kernels.im2col(case.xp, xa, geom)), ref)
        y = case.asarray(rng.normal(size=ref.shape))
        case.assert_close(
            kernels.col2im(case.xp, y, geom), case.to_numpy(PORTABLE.col2im(case.xp, y, geom))
        )


def test_portable_im2col_known_values() -> None:
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    geom = conv_geometry(x.shape, (1, 1, 2, 2), stride=2)
    cols = _im2col.im2col(get_backend("numpy").xp, x, geom)
    np.testing.assert_array_equal(
        cols, [[0, 2, 8, 10], [1, 3, 9, 11], [4, 6, 12, 14], [5, 7, 13, 15]]
    )


# ------------------------------------------------------------- the lecture's numbers


def test_lecture_1d_single(case: Case) -> None:
    x = case.asarray(np.array([[[1.0, 2, 3, 4, 5]]]))
    w = case.asarray(np.array([[[1.0, 1, 1]]]))
    out = F.conv1d(x, w, padding=1)
    case.assert_close(out, np.array([[[3.0, 6, 9, 12, 9]]]), "output")
    assert float(case.to_numpy(out).sum()) == 39
    gx, gw, _ = F.conv1d_backward(case.asarray(np.ones((1, 1, 5))), x, w, padding=1)
    case.assert_close(gx, np.array([[[2.0, 3, 3, 3, 2]]]), "input gradient")
    case.assert_close(gw, np.array([[[10.0, 15, 14]]]), "kernel gradient")


def test_lecture_1d_batch(case: Case) -> None:
    x = case.asarray(np.array([[[0.0, 1, 2, 3, 4, 5, 6]], [[1.0, 2, 3, 4, 5, 6, 7]]]))
    w = case.asarray(np.array([[[1.0, 1, 1]]]))
    out = F.conv1d(x, w, padding=1)
    expected = np.array([[[1.0, 3, 6, 9, 12, 15, 11]], [[3.0, 6, 9, 12, 15, 18, 13]]])
    case.assert_close(out, expected, "output")
    _, gw, _ = F.conv1d_backward(case.asarray(np.ones((2, 1, 7))), x, w, padding=1)
    case.assert_close(gw, np.array([[[36.0, 49, 48]]]), "kernel gradient")


def test_same_padding_even_kernel_places_extra_at_bottom_right() -> None:
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 0, 0] = 1.0
    w = np.zeros((1, 1, 2, 2))
    w[0, 0, 0, 0] = 1.0
    out = F.conv2d(x, w, padding="same")
    assert out.shape == (1, 1, 4, 4)
    assert out[0, 0, 0, 0] == 1.0  # the extra zero row/column is after the image


def test_inputs_are_not_modified(rng: np.random.Generator) -> None:
    x, w, b = rng.normal(size=(2, 2, 5, 5)), rng.normal(size=(3, 2, 3, 3)), rng.normal(size=3)
    copies = [a.copy() for a in (x, w, b)]
    out = F.conv2d(x, w, b, padding=1)
    F.conv2d_backward(out, x, w, padding=1)
    for a, c in zip((x, w, b), copies):
        np.testing.assert_array_equal(a, c)


# ------------------------------------------------------------- bad configurations

X = np.ones((2, 4, 6, 6))
W = np.ones((8, 4, 3, 3))

BAD = [
    # (description, call, exception, words the message must contain)
    (
        "output below 1",
        lambda: F.conv2d(np.ones((1, 1, 2, 2)), np.ones((1, 1, 3, 3))),
        ValueError,
        ["x", "too small", "(2, 2)"],
    ),
    (
        "groups divide channels",
        lambda: F.conv2d(X, np.ones((8, 2, 3, 3)), groups=3),
        ValueError,
        ["groups", "divisible", "3"],
    ),
    (
        "groups divide outputs",
        lambda: F.conv2d(X, np.ones((6, 2, 3, 3)), groups=4),
        ValueError,
        ["groups", "6"],
    ),
    (
        "weight channel mismatch",
        lambda: F.conv2d(X, np.ones((8, 3, 3, 3))),
        ValueError,
        ["weight", "4", "(8, 3, 3, 3)"],
    ),
    ("rank of x", lambda: F.conv2d(np.ones((4, 6, 6)), W), ValueError, ["x", "4-D", "3-D"]),
    ("rank of weight", lambda: F.conv2d(X, np.ones((8, 4, 3))), ValueError, ["weight", "4-D"]),
    ("rank conv1d", lambda: F.conv1d(X, np.ones((8, 4, 3))), ValueError, ["x", "3-D", "4-D"]),
    ("stride zero", lambda: F.conv2d(X, W, stride=0), ValueError, ["stride", "positive", "0"]),
    ("stride negative pair", lambda: F.conv2d(X, W, stride=(1, -2)), ValueError, ["stride", "-2"]),
    ("stride float", lambda: F.conv2d(X, W, stride=1.5), TypeError, ["stride", "1.5"]),
    ("stride bool", lambda: F.conv2d(X, W, stride=True), TypeError, ["stride", "True"]),
    ("dilation zero", lambda: F.conv2d(X, W, dilation=0), ValueError, ["dilation", "0"]),
    (
        "padding negative",
        lambda: F.conv2d(X, W, padding=-1),
        ValueError,
        ["padding", "non-negative", "-1"],
    ),
    (
        "padding unknown mode",
        lambda: F.conv2d(X, W, padding="sam"),
        ValueError,
        ["padding", "'sam'", "same"],
    ),
    (
        "same with stride",
        lambda: F.conv2d(X, W, padding="same", stride=2),
        ValueError,
        ["padding", "same", "stride"],
    ),
    ("groups zero", lambda: F.conv2d(X, W, groups=0), ValueError, ["groups", "0"]),
    (
        "integer x",
        lambda: F.conv2d(np.ones((2, 4, 6, 6), dtype=np.int64), W),
        TypeError,
        ["x", "floating", "int64"],
    ),
    (
        "bool weight",
        lambda: F.conv2d(X, np.ones((8, 4, 3, 3), dtype=bool)),
        TypeError,
        ["weight", "floating", "bool"],
    ),
    (
        "mixed dtypes",
        lambda: F.conv2d(X, W.astype(np.float32)),
        TypeError,
        ["weight", "float64", "float32"],
    ),
    ("bias shape", lambda: F.conv2d(X, W, np.ones(7)), ValueError, ["bias", "(8,)", "(7,)"]),
    (
        "grad_out shape",
        lambda: F.conv2d_backward(np.ones((2, 8, 5, 5)), X, W),
        ValueError,
        ["grad_out", "(2, 8, 4, 4)"],
    ),
    ("not an array", lambda: F.conv2d([[1.0]], W), TypeError, ["x", "array"]),
    (
        "conv1d pair stride",
        lambda: F.conv1d(np.ones((1, 1, 5)), np.ones((1, 1, 3)), stride=(1, 2)),
        TypeError,
        ["stride"],
    ),
]


@pytest.mark.parametrize("call, exc, words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_configuration_errors(call, exc, words) -> None:
    with pytest.raises(exc) as info:
        call()
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


X1, W1 = np.ones((2, 3, 8)), np.ones((4, 3, 3))
#: conv1d states its errors in 1-D terms, whole: (keyword arguments, exception, message)
BAD_1D = [
    (
        dict(x=X1[None]),
        ValueError,
        "x: expected a 3-D array (N, C, L), got 4-D of shape (1, 2, 3, 8)",
    ),
    (
        dict(weight=W1[None]),
        ValueError,
        "weight: expected a 3-D array (O, C // groups, K), got 4-D of shape (1, 4, 3, 3)",
    ),
    (dict(stride=0), ValueError, "stride: expected a positive int, got 0"),
    (dict(dilation=0), ValueError, "dilation: expected a positive int, got 0"),
    (
        dict(padding=-1),
        ValueError,
        "padding: expected a non-negative int, 'same' or 'valid', got -1",
    ),
    (dict(stride=1.5), TypeError, "stride: expected an int, got 1.5"),
    (dict(dilation=True), TypeError, "dilation: expected an int, got True"),
    (dict(padding=0.5), TypeError, "padding: expected an int, got 0.5"),
    (dict(stride="same"), TypeError, "stride: expected an int, got 'same'"),
    (dict(dilation="valid"), TypeError, "dilation: expected an int, got 'valid'"),
    (
        dict(stride=(1, 2)),
        TypeError,
        "stride: expected an int (or a 1-tuple) for conv1d, got (1, 2)",
    ),
    (dict(padding="same", stride=2), ValueError, "padding: 'same' needs stride 1, got stride 2"),
    (
        dict(x=np.ones((2, 3, 2))),
        ValueError,
        "x: input of length 2 with padding 0 is too short for kernel size 3 with dilation 1 "
        "and stride 1: output length would be 0, expected at least 1",
    ),
    (
        dict(x=np.ones((2, 3, 6)), dilation=3),
        ValueError,
        "x: input of length 6 with padding 0 is too short for kernel size 3 with dilation 3 "
        "and stride 1: output length would be 0, expected at least 1",
    ),
    (
        dict(weight=np.ones((4, 2, 3))),
        ValueError,
        "weight: expected 3 input channels per group (x has 3 channels, groups=1), "
        "got weight of shape (4, 2, 3)",
    ),
]


@pytest.mark.parametrize(
    "kwargs, exc, message",
    BAD_1D,
    ids=[m.split(":")[0] + str(i) for i, (_, _, m) in enumerate(BAD_1D)],
)
def test_conv1d_errors_speak_1d(kwargs: dict, exc: type, message: str) -> None:
    args = {"x": X1, "weight": W1, **kwargs}
    x, weight = args.pop("x"), args.pop("weight")
    with pytest.raises(exc) as info:
        F.conv1d(x, weight, **args)
    assert str(info.value) == message
    if x.ndim == 3 and weight.ndim == 3:  # the shape-level check the layer builds with
        with pytest.raises(exc) as info:
            check_conv1d(tuple(x.shape), tuple(weight.shape), **args)
        assert str(info.value) == message
    with pytest.raises(exc) as info:
        F.conv1d_backward(np.ones((2, 4, 6)), x, weight, **args)
    assert str(info.value) == message


def test_conv1d_layer_errors_name_the_layer() -> None:
    with pytest.raises(ValueError, match=r"^conv1d_0: dilation: expected a positive int, got 0$"):
        xpconv.Sequential([xpconv.nn.layers.Conv1D(4, 3, dilation=0)], input_shape=(3, 8))
    with pytest.raises(TypeError, match=r"^dilation: expected an int, got 1.5$"):
        xpconv.nn.layers.Conv1D(4, 3, dilation=1.5)
    with pytest.raises(ValueError) as info:  # stated in the layer's 1-D stride
        xpconv.Sequential(
            [xpconv.nn.layers.Conv1D(4, 3, stride=2, padding="same")], input_shape=(3, 8)
        )
    assert str(info.value) == "conv1d_0: padding: 'same' needs stride 1, got stride 2"


def test_mixed_backends_name_both_arguments() -> None:
    torch = torch_or_skip()
    with pytest.raises(BackendError, match=r"x is .*numpy.* but weight is .*torch"):
        F.conv2d(X, torch.ones((8, 4, 3, 3), dtype=torch.float64))


def test_mixed_devices_name_both_arguments() -> None:
    strict = pytest.importorskip("array_api_strict")
    x = strict.asarray(X)
    w = strict.asarray(W, device=strict.Device("device1"))
    with pytest.raises(BackendError, match=r"x is .*CPU_DEVICE.* but weight is .*device1"):
        F.conv2d(x, w)


def test_batch_innermost_inputs_give_the_same_results(rng: np.random.Generator) -> None:
    """The NumPy path picks other matmul orientations for batch-innermost arrays."""
    x_c = rng.normal(size=(6, 40))
    x_f = np.asfortranarray(x_c)  # batch innermost, as a flattened convolution output
    w, g = rng.normal(size=(5, 40)), rng.normal(size=(6, 5))
    kernels = kernels_for(get_backend("numpy").xp)
    assert kernels.batch_innermost(np, x_f) and not kernels.batch_innermost(np, x_c)
    np.testing.assert_allclose(F.linear(x_f, w), F.linear(x_c, w), rtol=1e-12)
    for a, b in zip(F.linear_backward(g, x_f, w), F.linear_backward(g, x_c, w)):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    assert F.linear_backward(g, x_f, w)[0].flags["F_CONTIGUOUS"]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_numpy_weight_grad_chunks_match_one_product(rng: np.random.Generator, dtype) -> None:
    """A first layer's weight gradient runs in chunks split over the cores: the same
    values as one product, and the same bits on every call."""
    kernels = kernels_for(get_backend("numpy").xp)
    grad2 = rng.normal(size=(16, 256 * 256)).astype(dtype)
    cols = rng.normal(size=(25, 256 * 256)).astype(dtype)
    got = kernels.weight_grad(np, grad2, cols)
    assert got.shape == (16, 25) and got.dtype == dtype
    tol = (1e-4 if dtype == "float32" else 1e-12) * np.sqrt(grad2.shape[1])  # sums ~ N(0, L)
    np.testing.assert_allclose(got, grad2 @ cols.T, rtol=0, atol=tol)
    np.testing.assert_array_equal(kernels.weight_grad(np, grad2, cols), got)


def test_numpy_im2col_of_one_channel_splits_taps(rng: np.random.Generator) -> None:
    """A one-channel input large enough to split (the lecture's layer) gives the
    portable columns."""
    xp = get_backend("numpy").xp
    x = rng.normal(size=(128, 1, 28, 28)).astype(np.float32)
    geom = conv_geometry(x.shape, (16, 1, 5, 5), padding="same")
    np.testing.assert_array_equal(kernels_for(xp).im2col(xp, x, geom), PORTABLE.im2col(xp, x, geom))


POOLED = [(c, pool) for c in CONFIGS[:40] for pool in [(2, 2), (2, 3)]]


@pytest.mark.parametrize(
    "cfg, pool", sweep(POOLED, [f"cfg{c['seed']}-pool{p[0]}x{p[1]}" for c, p in POOLED])
)
def test_pool_ordered_columns(case: Case, cfg: dict, pool: tuple[int, int]) -> None:
    """Pool-ordered im2col holds the plain columns of the pooled region, permuted;
    its col2im is still the adjoint, on the portable and the selected kernels."""
    from dataclasses import replace

    x, w, _ = make_data(cfg, case)
    plain = conv_geometry(x.shape, w.shape, **cfg["conv"])
    if plain.out[0] < pool[0] or plain.out[1] < pool[1]:
        pytest.skip("output smaller than the pooling window")
    geom = replace(plain, pool=pool)
    (kp, kq), (ph, pw), n = pool, geom.pooled, geom.batch
    xa = case.asarray(x)
    ref = case.to_numpy(PORTABLE.im2col(case.xp, xa, plain))
    ref = ref.reshape(-1, *plain.out, n)[:, : kp * ph, : kq * pw, :]
    ref = ref.reshape(-1, ph, kp, pw, kq, n).transpose(0, 2, 4, 1, 3, 5).reshape(ref.shape[0], -1)
    y = case.host(np.random.default_rng(cfg["seed"]).normal(size=ref.shape))
    for kernels in {PORTABLE, kernels_for(case.xp)}:
        np.testing.assert_array_equal(case.to_numpy(kernels.im2col(case.xp, xa, geom)), ref)
        back = case.to_numpy(kernels.col2im(case.xp, case.asarray(y), geom))
        lhs, rhs = float(np.sum(ref * y)), float(np.sum(x * back))
        assert abs(lhs - rhs) <= case.rtol * 10 * max(1.0, abs(lhs)), (kernels.name, lhs, rhs)


_FORK_CHILD = """
import multiprocessing
import numpy as np
import xpconv.ops as F

x = np.random.default_rng(0).normal(size=(64, 32, 16, 16)).astype(np.float32)  # > 4 MB
w = np.ones((8, 32, 3, 3), dtype=np.float32)
expected = F.conv2d(x, w, padding=1)  # starts the threads in this process
with multiprocessing.get_context("fork").Pool(1) as pool:
    got = pool.apply_async(F.conv2d, (x, w), {"padding": 1}).get(timeout=60)
np.testing.assert_array_equal(got, expected)
print("ok")
"""


def test_numpy_kernels_work_in_a_forked_child() -> None:
    """The copy threads are recreated after fork instead of waited on forever. Run in a
    fresh interpreter: this process has other libraries' threads (JAX) that must not be
    forked."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _FORK_CHILD], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_fast_col2im_matches_portable(case: Case, rng: np.random.Generator) -> None:
    """Whatever fast path the backend selects gives the portable path's col2im."""
    kernels = kernels_for(case.xp)
    for cfg in CONFIGS[:25]:
        x, w, _ = make_data(cfg, case)
        geom = conv_geometry(x.shape, w.shape, **cfg["conv"])
        y = case.asarray(rng.normal(size=(geom.in_channels * geom.taps, geom.columns)))
        ref = case.to_numpy(PORTABLE.col2im(case.xp, y, geom))
        got = case.to_numpy(kernels.col2im(case.xp, y, geom))
        np.testing.assert_allclose(got, ref, rtol=case.rtol, atol=case.rtol)


def test_portable_choice_is_per_thread() -> None:
    """``use_portable`` in one thread leaves another thread's fast path alone."""
    import threading

    from xpconv.backends.kernels import use_portable

    xp = get_backend("numpy").xp
    inside, barrier, seen = threading.Event(), threading.Barrier(2), {}

    def portable_thread() -> None:
        with use_portable():
            inside.set()
            barrier.wait(timeout=10)
            seen["portable"] = kernels_for(xp).name
            barrier.wait(timeout=10)

    worker = threading.Thread(target=portable_thread)
    worker.start()
    inside.wait(timeout=10)
    barrier.wait(timeout=10)
    seen["main"] = kernels_for(xp).name
    barrier.wait(timeout=10)
    worker.join()
    assert seen == {"portable": "portable", "main": "numpy"}
    assert kernels_for(xp, portable=True).name == "portable"
    with use_portable():
        assert kernels_for(xp).name == "portable"
        assert kernels_for(xp, portable=False).name == "numpy"
