"""The kernel table: one interface for every backend, and every fast entry against
the portable one.

- Every registered table (portable, NumPy, PyTorch, and CuPy's built here without
  CuPy) has exactly the interface's entries, with the interface's signatures
  (parameter names, kinds and defaults; the namespace first).
- On every backend case, each entry of the table that backend selects equals the
  portable entry on random inputs (ties and several layouts included). The more
  detailed checks of single entries live beside their ops (``test_conv.py``,
  ``test_functional_ops.py``, ``test_gpu.py``).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import array_api_compat
import numpy as np
import pytest

from xpconv.functional import (
    _cupy_kernels,
    _jax_kernels,
    _numpy_kernels,
    _strided,
    _torch_kernels,
)
from xpconv.functional._conv import conv_geometry
from xpconv.functional._kernels import INTERFACE, PORTABLE, Kernels, kernels_for

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
        "im2col", "col2im", "weight_grad", "batch_innermost", "max_pool_blocks",
        "max_pool_blocks_backward", "tanh", "tanh_backward", "batch_norm_train",
        "batch_norm_backward", "row_sums",
    },
    "torch": {
        "im2col", "col2im", "batch_innermost", "max_pool_blocks",
        "max_pool_blocks_backward", "tanh_backward",
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


def test_matrix_entries_match_portable(case: Any, rng: np.random.Generator) -> None:
    kernels, xp = kernels_for(case.xp), case.xp
    # one GEMM; chunked on NumPy; on JAX split (few rows), then plain (odd L, many rows)
    for o, k, length in [(4, 27, 96), (16, 25, 256 * 300), (3, 5, 97), (6, 40, 50)]:
        grad2 = case.asarray(rng.standard_normal((o, length)))
        cols = case.asarray(rng.standard_normal((k, length)))
        expected = case.to_numpy(PORTABLE.weight_grad(xp, grad2, cols))
        got = kernels.weight_grad(xp, grad2, cols)
        scale = np.sqrt(length)  # sums of L products of N(0, 1) values
        np.testing.assert_allclose(case.to_numpy(got), expected, rtol=0, atol=case.rtol * scale)
        sums = case.to_numpy(PORTABLE.row_sums(xp, grad2))
        got = case.to_numpy(kernels.row_sums(xp, grad2))
        np.testing.assert_allclose(got, sums, rtol=0, atol=case.rtol * scale)


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


def test_an_explicit_choice_overrides_the_context() -> None:
    from xpconv.functional import use_portable

    assert kernels_for(np, portable=True).name == "portable"
    assert kernels_for(np).name == "numpy"
    with use_portable():
        assert kernels_for(np).name == "portable"
        assert kernels_for(np, portable=False).name == "numpy"
    with use_portable(False):
        assert kernels_for(np).name == "numpy"
