"""The kernel table: one interface for every backend, and every fast entry against
the portable one.

- Every registered table (portable, NumPy, PyTorch, and CuPy's built here without
  CuPy) has exactly the interface's entries, with the interface's signatures
  (parameter names, kinds and defaults; the namespace first).
- On every backend case, each entry of the table that backend selects equals the
  portable entry on random inputs (ties and several layouts included). The more
  detailed checks of single entries live beside their ops (``ops/test_conv.py``,
  ``ops/test_functional_ops.py``, ``backends/test_gpu.py``).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import array_api_compat
import numpy as np
import pytest
from numerics import assert_scaled_close

from xpconv.backends import strided as _strided
from xpconv.backends.cupy import kernels as _cupy_kernels
from xpconv.backends.jax import kernels as _jax_kernels
from xpconv.backends.kernels import INTERFACE, PORTABLE, Kernels, kernels_for, use_portable
from xpconv.backends.numpy import kernels as _numpy_kernels
from xpconv.backends.torch import kernels as _torch_kernels
from xpconv.ops.geometry import conv_geometry

TABLES: dict[str, Callable[[], Kernels]] = {
    "portable": lambda: PORTABLE,
    "numpy": _numpy_kernels._load,
    "torch": _torch_kernels.make_kernels,  # imports no torch
    "cupy": _cupy_kernels.make_kernels,  # imports no cupy
    "jax": lambda: _jax_kernels.KERNELS,  # imports no jax
}


def _parameters(fn: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def _interface(entry: str) -> list[tuple[str, Any, Any]]:
    return _parameters(INTERFACE[entry].__call__)[1:]  # less ``self``


def test_interface_names_every_entry_namespace_first() -> None:
    entries = {f.name for f in dataclasses.fields(Kernels)} - {"name"}
    assert set(INTERFACE) == entries
    for entry in INTERFACE:
        assert _interface(entry)[0][0] == "xp", entry


def test_signature_check_sees_a_different_convention() -> None:
    """The comparison below fails for an entry without the namespace or renamed."""
    assert _parameters(lambda blocks, bias=None, relu=False: None) != _interface("max_pool_blocks")
    assert _parameters(lambda xp, grad, argmax, taps: None) != _interface(
        "max_pool_blocks_backward"
    )


@pytest.mark.parametrize("entry", list(INTERFACE))
@pytest.mark.parametrize("table", list(TABLES))
def test_every_table_follows_the_interface(table: str, entry: str) -> None:
    kernels = TABLES[table]()
    assert kernels.name == table
    assert _parameters(getattr(kernels, entry)) == _interface(entry), f"{table}.{entry}"


#: the entries each fast table brings itself; every other entry is the portable one.
SPECIALISED = {
    "numpy": {
        "im2col", "col2im", "matmul", "conv_matmul", "conv_linear", "weight_grad",
        "batch_innermost", "max_pool_blocks", "max_pool_blocks_backward", "tanh", "tanh_backward",
        "batch_norm_train", "batch_norm_backward", "row_sums",
    },
    "torch": {
        "im2col", "col2im", "matmul", "weight_grad", "batch_innermost", "max_pool_blocks",
        "max_pool_blocks_backward", "tanh", "tanh_backward",
    },
    "cupy": {"im2col", "col2im", "batch_innermost", "max_pool_blocks", "max_pool_blocks_backward"},
    "jax": {"weight_grad", "batch_innermost"},
}  # fmt: skip
MODULES = {
    "numpy": _numpy_kernels,
    "torch": _torch_kernels,
    "cupy": _cupy_kernels,
    "jax": _jax_kernels,
}


@pytest.mark.parametrize("table", list(SPECIALISED))
def test_fast_tables_bring_their_own_entries(table: str) -> None:
    kernels = TABLES[table]()
    for entry in INTERFACE:
        fn = getattr(kernels, entry)
        if entry in SPECIALISED[table]:
            assert fn is getattr(MODULES[table], entry), f"{table}.{entry}"
        else:
            assert fn is getattr(PORTABLE, entry), f"{table}.{entry}"


def test_fast_tables_are_the_ones_selected() -> None:
    assert kernels_for(np) == _numpy_kernels._load()  # the same entries
    torch = pytest.importorskip("torch")
    assert kernels_for(torch).name == "torch"


# ------------------------------------------------------------------ fast == portable


GEOMETRY_ARGS = [  # (x shape, weight shape, conv options, pool)
    ((2, 3, 7, 6), (4, 3, 3, 3), dict(padding=1), (1, 1)),
    ((3, 1, 9, 9), (2, 1, 5, 5), dict(padding="same"), (1, 1)),
    ((2, 2, 8, 7), (3, 2, 2, 3), dict(stride=(2, 1), dilation=(1, 2), padding=(1, 2)), (1, 1)),
    ((2, 2, 6, 6), (3, 2, 1, 1), {}, (1, 1)),  # col2im is a reshape
    ((2, 3, 8, 8), (4, 3, 3, 3), dict(padding=1), (2, 2)),  # pool-ordered columns
    ((1, 2, 7, 9), (2, 2, 3, 2), dict(padding=(1, 0)), (2, 3)),
]


def _geometries(case: Any) -> list[tuple[Any, Any]]:
    out = []
    for x_shape, w_shape, conv, pool in GEOMETRY_ARGS:
        geom = dataclasses.replace(conv_geometry(x_shape, w_shape, **conv), pool=pool)
        out.append((geom, x_shape))
    return out


def test_im2col_col2im_entries_match_portable(case: Any, rng: np.random.Generator) -> None:
    kernels, xp = kernels_for(case.xp), case.xp
    for geom, x_shape in _geometries(case):
        x = case.asarray(rng.standard_normal(x_shape))
        ref = case.to_numpy(PORTABLE.im2col(xp, x, geom))
        assert ref.shape == (geom.in_channels * geom.taps, geom.columns)
        np.testing.assert_array_equal(case.to_numpy(kernels.im2col(xp, x, geom)), ref, str(geom))
        y = case.asarray(rng.standard_normal(ref.shape))
        case.assert_close(
            kernels.col2im(xp, y, geom), case.to_numpy(PORTABLE.col2im(xp, y, geom)), str(geom)
        )


def test_conv_matmul_entry_matches_portable(case: Any, rng: np.random.Generator) -> None:
    """The table's whole-convolution product against im2col and matmul one after the
    other on the portable path, with and without bias and tanh, columns kept or not; one case
    with enough output rows for the NumPy kernel to build them in several blocks."""
    kernels, xp = kernels_for(case.xp), case.xp
    geometries = _geometries(case)
    big = ((8, 3, 30, 30), (5, 3, 5, 5), dict(padding="same"), (1, 1))
    geometries.append((conv_geometry(big[0], big[1], **big[2]), big[0]))
    for geom, x_shape in geometries:
        x = case.asarray(rng.standard_normal(x_shape))
        w2 = case.asarray(rng.standard_normal((geom.out_channels, geom.in_channels * geom.taps)))
        bias = case.asarray(rng.standard_normal(geom.out_channels))
        with use_portable():
            cols_ref = PORTABLE.im2col(xp, x, geom)
            ref = case.to_numpy(PORTABLE.matmul(xp, w2, cols_ref))
        scale = np.sqrt(geom.in_channels * geom.taps)
        for b, keep, tanh in [(bias, True, False), (None, False, False), (bias, False, True)]:
            out, cols = kernels.conv_matmul(xp, x, w2, b, geom, keep, tanh)
            want = ref + (case.to_numpy(bias)[:, None] if b is not None else 0)
            want = np.tanh(want) if tanh else want
            np.testing.assert_allclose(case.to_numpy(out), want, atol=case.rtol * scale * 4)
            if keep or cols is not None:
                np.testing.assert_array_equal(case.to_numpy(cols), case.to_numpy(cols_ref))


def test_conv_linear_entry_matches_portable(case: Any, rng: np.random.Generator) -> None:
    """The table's convolution with a dense layer's product against the portable
    convolution and ``head @ flatten(output)``: the output matrix, the columns and
    the (U, N) product; one case large enough for the NumPy kernel to split the output
    rows over the cores and add the parts' products."""
    kernels, xp = kernels_for(case.xp), case.xp
    geometries = [(geom, shape) for geom, shape in _geometries(case) if geom.pool == (1, 1)]
    big = ((32, 1, 28, 28), (16, 1, 5, 5), dict(padding="same"), (1, 1))  # the lecture's
    geometries.append((conv_geometry(big[0], big[1], **big[2]), big[0]))
    for geom, x_shape in geometries:
        x = case.asarray(rng.standard_normal(x_shape))
        w2 = case.asarray(rng.standard_normal((geom.out_channels, geom.in_channels * geom.taps)))
        bias = case.asarray(rng.standard_normal(geom.out_channels))
        features = geom.out_channels * geom.out[0] * geom.out[1]
        head = case.asarray(rng.standard_normal((7, features)))
        scale = np.sqrt(geom.in_channels * geom.taps * features)
        for b, keep, tanh in [(bias, True, False), (None, False, True)]:
            with use_portable():
                out_ref, cols_ref = PORTABLE.conv_matmul(xp, x, w2, b, geom, True, tanh)
                flat = case.to_numpy(out_ref).reshape(features, geom.batch)
            out, cols, product = kernels.conv_linear(xp, x, w2, b, geom, head, keep, tanh)
            assert tuple(product.shape) == (7, geom.batch)
            np.testing.assert_allclose(
                case.to_numpy(out), case.to_numpy(out_ref), atol=case.rtol * scale
            )
            np.testing.assert_allclose(
                case.to_numpy(product), case.to_numpy(head) @ flat, atol=case.rtol * scale * 4
            )
            if keep or cols is not None:
                np.testing.assert_array_equal(case.to_numpy(cols), case.to_numpy(cols_ref))
    pooled, x_shape = next((g, s) for g, s in _geometries(case) if g.pool != (1, 1))
    w2 = case.asarray(rng.standard_normal((pooled.out_channels, pooled.in_channels * pooled.taps)))
    with pytest.raises(ValueError, match=r"^geom: expected no pooling taps"):
        kernels.conv_linear(xp, case.asarray(rng.standard_normal(x_shape)), w2, None, pooled, w2)


def test_matrix_entries_match_portable(case: Any, rng: np.random.Generator) -> None:
    kernels, xp = kernels_for(case.xp), case.xp
    # one GEMM; chunked on NumPy; on JAX split (few rows), then plain (odd L, many rows)
    # (odd L: a multiple of 3, so a test of the evenness by another modulus fails)
    for o, k, length in [(4, 27, 96), (16, 25, 256 * 300), (3, 5, 99), (6, 40, 50)]:
        grad2 = case.asarray(rng.standard_normal((o, length)))
        cols = case.asarray(rng.standard_normal((k, length)))
        expected = case.to_numpy(PORTABLE.weight_grad(xp, grad2, cols))
        got = kernels.weight_grad(xp, grad2, cols)
        scale = np.sqrt(length)  # sums of L products of N(0, 1) values
        np.testing.assert_allclose(case.to_numpy(got), expected, rtol=0, atol=case.rtol * scale)
        sums = case.to_numpy(PORTABLE.row_sums(xp, grad2))
        got = case.to_numpy(kernels.row_sums(xp, grad2))
        np.testing.assert_allclose(got, sums, rtol=0, atol=case.rtol * scale)
    # matmul: small; large (oneDNN on PyTorch CPU float32; on NumPy split by columns);
    # a long inner dimension; a transposed small ``a`` (a weight); a transposed large
    # ``a`` (split by rows on NumPy); ``b`` transposed; few rows and columns (split by
    # the inner dimension on NumPy); columns that split off a multiple of 16
    for (m, k, n), a_t, b_t in [
        ((5, 7, 3), False, False),
        ((64, 288, 8192), False, False),
        ((4, 5000, 3), False, True),
        ((288, 64, 8192), True, False),
        ((4096, 64, 600), True, False),
        ((64, 600, 4096), False, True),
        ((10, 12544, 128), False, False),
        ((300, 70, 1001), False, True),
    ]:
        a_host = rng.standard_normal((k, m) if a_t else (m, k))
        b_host = rng.standard_normal((n, k) if b_t else (k, n))
        a, b = case.asarray(a_host), case.asarray(b_host)
        a, b = (a.T if a_t else a), (b.T if b_t else b)
        expected = (a_host.T if a_t else a_host) @ (b_host.T if b_t else b_host)
        got = case.to_numpy(kernels.matmul(xp, a, b))
        assert got.shape == (m, n)
        np.testing.assert_allclose(got, expected, rtol=0, atol=case.rtol * np.sqrt(k) * 4)


def test_elementwise_entries_match_portable(case: Any, rng: np.random.Generator) -> None:
    kernels, xp = kernels_for(case.xp), case.xp
    host = rng.standard_normal((4, 3, 5, 6))
    for x in (
        case.asarray(host),
        xp.permute_dims(
            case.asarray(np.ascontiguousarray(host.transpose(1, 2, 3, 0))), (3, 0, 1, 2)
        ),
    ):
        t = kernels.tanh(xp, x)
        case.assert_close(t, case.to_numpy(PORTABLE.tanh(xp, x)), "tanh")
        g = case.asarray(rng.standard_normal(host.shape))
        ref = case.to_numpy(PORTABLE.tanh_backward(xp, g, t))
        case.assert_close(kernels.tanh_backward(xp, g, t), ref, "tanh_backward")


def test_batch_innermost_entry(case: Any, rng: np.random.Generator) -> None:
    """C-order arrays are not batch-innermost for a table that sees strides; a fast path
    may recognise the batch-innermost layout (the portable answer is always False:
    unknown). JAX has no strides to see: its table says False for concrete arrays and
    True for every batched array it traces (the convolution's own arrangement)."""
    kernels, xp = kernels_for(case.xp), case.xp
    host = rng.standard_normal((4, 3, 5, 6))
    plain = case.asarray(host)
    assert not kernels.batch_innermost(xp, plain) and not PORTABLE.batch_innermost(xp, plain)
    inner = xp.permute_dims(
        case.asarray(np.ascontiguousarray(host.transpose(1, 2, 3, 0))), (3, 0, 1, 2)
    )
    assert not PORTABLE.batch_innermost(xp, inner)
    if kernels.name in ("numpy", "torch", "cupy"):
        assert kernels.batch_innermost(xp, inner)
    if kernels.name == "jax":
        import jax

        seen = []
        jax.jit(lambda a: seen.append(kernels.batch_innermost(xp, a)) or a)(plain)
        assert seen == [True] and not kernels.batch_innermost(xp, inner)


@pytest.mark.parametrize("bias, relu", [(False, False), (True, False), (False, True), (True, True)])
def test_pool_entries_match_portable(
    case: Any, rng: np.random.Generator, bias: bool, relu: bool
) -> None:
    kernels, xp = kernels_for(case.xp), case.xp
    for shape in [(3, 4, 2, 3, 5), (2, 1, 3, 1, 2), (5, 6, 2, 2, 3)]:
        blocks = case.asarray(rng.integers(-3, 4, size=shape).astype(np.float64))  # ties
        b = case.asarray(rng.integers(-1, 2, size=shape[0]).astype(np.float64)) if bias else None
        out, code = kernels.max_pool_blocks(xp, blocks, b, relu)
        ref_out, ref_code = PORTABLE.max_pool_blocks(xp, blocks, b, relu)
        assert out.dtype == ref_out.dtype and code.dtype == ref_code.dtype == xp.int8
        np.testing.assert_array_equal(case.to_numpy(out), case.to_numpy(ref_out), str(shape))
        np.testing.assert_array_equal(case.to_numpy(code), case.to_numpy(ref_code), str(shape))
        grad = case.asarray(rng.standard_normal(tuple(out.shape)))
        got = kernels.max_pool_blocks_backward(xp, grad, code, shape[1])
        ref = PORTABLE.max_pool_blocks_backward(xp, grad, code, shape[1])
        np.testing.assert_array_equal(case.to_numpy(got), case.to_numpy(ref), str(shape))


# ------------------------------------------------------------------ the shared strided plan


def test_strided_plan_regions_tile_the_padded_buffer() -> None:
    """The padding regions and the input region cover the padded buffer exactly once."""
    for x_shape, w_shape, conv, pool in GEOMETRY_ARGS:
        geom = dataclasses.replace(conv_geometry(x_shape, w_shape, **conv), pool=pool)
        plan = _strided.strided_plan(geom)
        count = np.zeros(plan.padded, dtype=int)
        for region in (*plan.zero, plan.inside):
            count[region] += 1
        assert (count == 1).all(), geom
        assert plan.reshape_only == (geom.kernel == (1, 1) and geom.pad == ((0, 0), (0, 0)))
        assert _strided.strided_plan(geom) is plan  # made once per geometry


@pytest.mark.parametrize("table", ["numpy", "torch", "jax"])
def test_batch_innermost_needs_a_batch_and_another_axis(table: str) -> None:
    """One example, or one axis only, is never reported batch-innermost, whatever the
    strides; two examples of one feature in batch-fastest order are (JAX: traced)."""
    kernels = TABLES[table]()
    lib = np if table == "numpy" else pytest.importorskip({"jax": "jax.numpy"}.get(table, table))
    xp = array_api_compat.array_namespace(lib.asarray(np.ones(1)))
    line, bases = np.arange(5.0), [np.ones((3, 1)), np.ones((1, 2))]  # .T: (1, 3), (2, 1)

    def answers(v: Any, *matrices: Any) -> list[bool]:
        return [kernels.batch_innermost(xp, a) for a in (v, *(m.T for m in matrices))]

    if table == "jax":
        import jax

        seen: list[bool] = []
        jax.jit(lambda *a: seen.extend(answers(*a)))(line, *bases)
    else:
        seen = answers(lib.asarray(line), *(lib.asarray(b) for b in bases))
    assert seen == [False, False, True]


def test_numpy_tanh_backward_of_two_dtypes_is_the_portable_one(rng: np.random.Generator) -> None:
    """The fused NumPy kernel runs on one dtype; two dtypes take the portable formula."""
    grad = rng.standard_normal((3, 5)).astype(np.float32)
    t = np.tanh(rng.standard_normal((3, 5)))
    got = _numpy_kernels.tanh_backward(np, grad, t)
    want = PORTABLE.tanh_backward(np, grad, t)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_torch_cpu_products_choose_onednn_by_size() -> None:
    """Large float32 products on the CPU (or with a long inner dimension) go to oneDNN,
    where PyTorch has it; small ones, float64, transposed large ``a`` and tensors that
    record gradients stay with ``torch.mm``. Either way the result is the product."""
    torch = pytest.importorskip("torch")
    if _torch_kernels._onednn_linear() is None:
        pytest.skip("this PyTorch build has no oneDNN linear op")
    f32 = torch.float32
    big_a, big_b = torch.ones(64, 288, dtype=f32), torch.ones(288, 8192, dtype=f32)
    pays = _torch_kernels._onednn_pays
    assert pays(big_a, big_b)
    assert pays(torch.ones(4, 5000, dtype=f32), torch.ones(5000, 3, dtype=f32))
    assert pays(torch.ones(64, 288, dtype=f32).T, torch.ones(64, 8192, dtype=f32))
    assert not pays(torch.ones(16, 25, dtype=f32), torch.ones(25, 1000, dtype=f32))
    assert not pays(big_a.double(), big_b.double())
    assert not pays(torch.ones(600, 4096, dtype=f32).T, torch.ones(600, 64, dtype=f32))
    assert not pays(big_a.requires_grad_(), big_b)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((64, 288)), rng.standard_normal((8192, 288))
    got = _torch_kernels.matmul(None, torch.asarray(a, dtype=f32), torch.asarray(b, dtype=f32).T)
    assert got.dtype == f32 and got.is_contiguous()
    np.testing.assert_allclose(got.numpy(), a @ b.T, rtol=0, atol=1e-4 * np.sqrt(288) * 4)


def test_torch_cpu_tanh_runs_on_the_tensors_memory() -> None:
    """On the CPU, the PyTorch table's tanh and its backward give PyTorch's values
    (float32 and float64, strided layouts, the edge values), as CPU tensors of the
    input's dtype; tensors that record gradients take PyTorch's own functions."""
    torch = pytest.importorskip("torch")
    edges = [0.0, -0.0, 1e-8, -1e-5, 20.0, -100.0, float("inf"), float("-inf"), float("nan")]
    for dtype in (torch.float32, torch.float64):
        x = torch.cat([torch.tensor(edges, dtype=dtype), torch.linspace(-6, 6, 1001, dtype=dtype)])
        for v in (x, x.reshape(10, -1).T[1:]):
            t = _torch_kernels.tanh(None, v)
            assert isinstance(t, torch.Tensor) and t.dtype == dtype and t.shape == v.shape
            torch.testing.assert_close(t, torch.tanh(v), equal_nan=True)
            g = torch.ones_like(v) * 0.5
            got = _torch_kernels.tanh_backward(None, g, t)
            torch.testing.assert_close(got, torch.ops.aten.tanh_backward(g, t), equal_nan=True)
    tracked = torch.linspace(-1, 1, 7, requires_grad=True)
    assert _torch_kernels.tanh(None, tracked).requires_grad


def test_an_explicit_choice_overrides_the_context() -> None:
    from xpconv.backends.kernels import use_portable

    assert kernels_for(np, portable=True).name == "portable"
    assert kernels_for(np).name == "numpy"
    with use_portable():
        assert kernels_for(np).name == "portable"
        assert kernels_for(np, portable=False).name == "numpy"
    with use_portable(False):
        assert kernels_for(np).name == "numpy"


def test_numpy_products_are_right_whether_openblas_or_xpconv_threads_them() -> None:
    """The two ways the NumPy kernels run a large product: one BLAS call that OpenBLAS
    threads (its default) and parts over xpconv's threads while OpenBLAS runs on one
    (``OPENBLAS_NUM_THREADS=1``, ``tune_host``, and the pytest-xdist workers): both
    match the float64 products."""
    from xpconv.backends.numpy import host

    before = host.blas_threads()
    if before is None:
        pytest.skip("no OpenBLAS whose thread count can be set is loaded")
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(512, 256)), rng.normal(size=(256, 520))  # 2**26 multiply-adds
    x, w, bias = rng.normal(size=(32, 1, 28, 28)), rng.normal(size=(16, 25)), rng.normal(size=16)
    geom = conv_geometry(x.shape, (16, 1, 5, 5), padding="same")
    expected = (a @ b, w @ PORTABLE.im2col(np, x, geom) + bias[:, None])
    f32 = [v.astype(np.float32) for v in (a, b, x, w, bias)]
    try:
        for threads in (2, 1):
            host.set_blas_threads(threads)
            assert (host.product_threads() is None) == (threads > 1)
            got = (
                _numpy_kernels.matmul(np, f32[0], f32[1]),
                _numpy_kernels.conv_matmul(np, f32[2], f32[3], f32[4], geom)[0],
            )
            for g, e, what in zip(got, expected, ("matmul", "conv_matmul")):
                assert_scaled_close(g, e, 1e-5, f"{what} with {threads} BLAS threads")
    finally:
        host.set_blas_threads(before)


def test_numpy_piece_cuts_a_row_into_equal_pieces_under_the_limit() -> None:
    piece = _numpy_kernels._piece
    # the lecture's convolution at batch 128: 16 x 25 weight, rows of 28 * 128 columns
    assert piece(28 * 128, _numpy_kernels._UNPACKED_GEMM // (16 * 25)) == 1792
    assert piece(40, 40) == 40  # within the limit: whole
    assert piece(40, 20) == 20
    assert piece(42, 14) == 14  # three pieces
    assert piece(40, 14) == 10  # three do not divide 40: four
    assert piece(40, 9) == 8  # five
    assert piece(28 * 128, 2**18 // (16 * 25)) == 512  # seven: OpenBLAS's one-thread size
    assert piece(40, 2) == 40  # no cut into at most 16 pieces fits: whole
    assert piece(17, 5) == 17  # no equal cut: whole


@pytest.mark.parametrize("limit", [10**9, 3 * 18 * 20, 3 * 18 * 14])
def test_numpy_conv_products_in_pieces_match_float64(
    limit: int, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The NumPy convolution whose block products are cut into pieces (batched over
    the pieces of each row) or not, with the dense head, bias, tanh and kept columns:
    the float64 products, whichever way the blocks were multiplied."""
    monkeypatch.setattr(_numpy_kernels, "_UNPACKED_GEMM", limit)
    x, w = rng.normal(size=(4, 2, 9, 10)), rng.normal(size=(3, 18))  # rows of 10 * 4 columns
    bias, head = rng.normal(size=3), rng.normal(size=(5, 3 * 9 * 10))
    geom = conv_geometry(x.shape, (3, 2, 3, 3), padding="same")
    cols = PORTABLE.im2col(np, x, geom)
    want = np.tanh(w @ cols + bias[:, None])
    f32 = [v.astype(np.float32) for v in (x, w, bias, head)]
    out, got_cols, product = _numpy_kernels.conv_linear(np, *f32[:3], geom, f32[3], True, True)
    assert_scaled_close(out, want, 1e-5, f"conv_linear, limit {limit}")
    assert_scaled_close(product, head @ want.reshape(-1, 4), 1e-5, f"head, limit {limit}")
    np.testing.assert_array_equal(got_cols, cols.astype(np.float32))
    out, _ = _numpy_kernels.conv_matmul(np, *f32[:3], geom, False, False)
    assert_scaled_close(out, w @ cols + bias[:, None], 1e-5, f"conv_matmul, limit {limit}")


def _untuned(monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    """The NumPy kernels as without the host tuning (OpenBLAS threads the products it
    is given), on ``workers`` threads, whatever OpenBLAS's own count is here."""
    from xpconv.backends.numpy import host

    monkeypatch.setattr(host, "product_threads", lambda: None)
    monkeypatch.setattr(host, "parallel_workers", lambda: workers)
    monkeypatch.setattr(_numpy_kernels._BlasThreads, "woken", -1.0)


def test_numpy_one_thread_cuts_keep_each_part_under_openblas_threading() -> None:
    limit = _numpy_kernels._SINGLE_THREAD_GEMM
    for m, n, k in [(128, 12544, 10), (12544, 128, 10), (10, 12544, 128), (32, 100352, 9)]:
        cuts = _numpy_kernels._one_thread_cuts(m, n, k)
        assert cuts is not None and cuts[0] == 0 and cuts[-1] == max(m, n)
        widths = np.diff(cuts)
        assert (widths * k * min(m, n) <= limit).all() and (widths[:-1] % 16 == 0).all()
        assert widths[0] >= 128 and widths[0] + 16 > limit // (k * min(m, n))  # widest
    assert _numpy_kernels._one_thread_cuts(64, 25088, 288) is None  # parts under 128 wide
    assert np.diff(_numpy_kernels._one_thread_cuts(128, 5000, 16))[0] == 128  # just wide enough


@pytest.mark.parametrize(
    "shape", [(128, 10, 12544), (12544, 10, 128), (300, 40, 129), (64, 288, 2000)]
)
def test_numpy_untuned_products_match_float64_on_any_thread_count(
    shape: tuple[int, int, int], rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the host tuning, products cut into parts OpenBLAS keeps on one thread,
    and one it must thread (the last shape): the float64 product, the same bits on one
    thread and two; only the uncut one marks OpenBLAS's threads as woken."""
    m, k, n = shape
    a, b = rng.normal(size=(m, k)), rng.normal(size=(k, n))
    got = []
    for workers in (2, 1):
        _untuned(monkeypatch, workers)
        got.append(_numpy_kernels.matmul(np, a.astype(np.float32), b.astype(np.float32)))
        woken = _numpy_kernels._BlasThreads.woken > 0
        assert woken == (_numpy_kernels._one_thread_cuts(m, n, k) is None)
        assert _numpy_kernels._workers() == (1 if woken else min(workers, _numpy_kernels._cores()))
    assert_scaled_close(got[0], a @ b, 1e-5, f"{shape}")
    np.testing.assert_array_equal(got[0], got[1])


def test_numpy_untuned_row_sums_and_head_products_in_parts(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the host tuning: row sums as NumPy sums, and the convolution with its
    dense head in pieces and head products of a few rows (a small one-thread size here
    so that they are cut): the float64 values, the same bits on one thread and two."""
    monkeypatch.setattr(_numpy_kernels, "_SINGLE_THREAD_GEMM", 400)
    x, w = rng.normal(size=(4, 2, 9, 10)), rng.normal(size=(3, 18))  # rows of 10 * 4 columns
    bias, head = rng.normal(size=3), rng.normal(size=(5, 3 * 9 * 10))
    geom = conv_geometry(x.shape, (3, 2, 3, 3), padding="same")
    want = np.tanh(w @ PORTABLE.im2col(np, x, geom) + bias[:, None])
    f32 = [v.astype(np.float32) for v in (x, w, bias, head)]
    long_rows = rng.normal(size=(6, 5000))
    runs = []
    for workers in (2, 1):
        _untuned(monkeypatch, workers)
        out, _, product = _numpy_kernels.conv_linear(np, *f32[:3], geom, f32[3], True, True)
        sums = _numpy_kernels.row_sums(np, long_rows.astype(np.float32))
        assert _numpy_kernels._BlasThreads.woken < 0  # nothing OpenBLAS would thread
        runs.append((out, product, sums))
    assert_scaled_close(runs[0][0], want, 1e-5, "conv_linear")
    assert_scaled_close(runs[0][1], head @ want.reshape(-1, 4), 1e-5, "head")
    assert_scaled_close(runs[0][2], long_rows.sum(axis=1), 1e-5, "row sums")
    for one, two in zip(*runs):
        np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("size", [9215, 9216])
def test_numpy_row_sums_are_numpy_sums_where_openblas_would_thread_them(
    size: int, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Row sums: a matrix-vector product while OpenBLAS runs on one thread, and below
    9,216 values; NumPy's sums from there while OpenBLAS threads on its own."""
    from xpconv.backends.numpy import host

    a = rng.normal(size=(3, size // 3)).astype(np.float32)
    product, sums = a @ np.ones(a.shape[1], np.float32), np.sum(a, axis=1)
    assert not np.array_equal(product, sums)  # the two ways round differently here
    monkeypatch.setattr(host, "product_threads", lambda: 1)
    np.testing.assert_array_equal(_numpy_kernels.row_sums(np, a), product)
    _untuned(monkeypatch, 2)
    got = _numpy_kernels.row_sums(np, a)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, product if size < 9216 else sums)
    tall = a.reshape(-1, 3)  # more rows than columns: every row summed
    np.testing.assert_array_equal(
        _numpy_kernels.row_sums(np, tall),
        tall @ np.ones(3, np.float32) if size < 9216 else np.sum(tall, axis=1),
    )


def test_numpy_kernels_run_on_one_thread_while_openblas_threads_spin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _untuned(monkeypatch, 2)
    every = min(2, _numpy_kernels._cores())
    assert _numpy_kernels._workers() == every
    _numpy_kernels._blas_wakes()
    assert _numpy_kernels._workers() == 1
    monkeypatch.setattr(_numpy_kernels._BlasThreads, "woken", -1.0)  # long ago
    assert _numpy_kernels._workers() == every
