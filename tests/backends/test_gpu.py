"""The GPU path: CuPy kernels, the GPU test runner and the GPU benchmarks.

Without a GPU this checks everything the CPU can check:

- the index arithmetic of the CuPy im2col/col2im kernels, by evaluating with NumPy the
  very formulas the CUDA source is generated from, against the portable path;
- the generated kernel bodies, compiled as C++ for the host (32- and 64-bit indices);
- ``ci/gpu-test.sh`` and ``python -m benchmarks --gpu`` stop with status 2 and say what
  is missing; ``ci/fetch-wheels.sh`` asks pip for the right wheels;
- the GPU benchmark's code in a dry run on the CPU, and its records and tables.

With CuPy and a CUDA device, the kernels themselves are compared with the portable path
(the ``gpu`` tests; skipped visibly elsewhere).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # the benchmarks package is not installed with xpconv
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import __main__ as bench_cli  # noqa: E402
from benchmarks import gpu  # noqa: E402
from benchmarks.report import RECORD_KEYS  # noqa: E402
from benchmarks.timing import Timing  # noqa: E402
from xpconv.backends import portable as _im2col  # noqa: E402
from xpconv.backends import registry as xb  # noqa: E402
from xpconv.backends.cupy import kernels as ck  # noqa: E402
from xpconv.backends.kernels import kernels_for, use_portable  # noqa: E402
from xpconv.backends.portable import ConvGeometry  # noqa: E402

NO_GPU_ENV = {"CUDA_VISIBLE_DEVICES": ""}  # hides any GPU from CuPy and PyTorch


# ------------------------------------------------------------------ geometries


def random_geometries(rng: np.random.Generator, count: int) -> list[ConvGeometry]:
    """Valid convolutions with every knob varied: strides, dilations, uneven padding."""
    out: list[ConvGeometry] = []
    while len(out) < count:
        n, c = (int(v) for v in rng.integers(1, 4, 2))
        h, w = (int(v) for v in rng.integers(1, 10, 2))
        kh, kw = (int(v) for v in rng.integers(1, 4, 2))
        sh, sw = (int(v) for v in rng.integers(1, 4, 2))
        dh, dw = (int(v) for v in rng.integers(1, 3, 2))
        pt, pb, pl, pr = (int(v) for v in rng.integers(0, 3, 4))
        oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
        ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
        if oh < 1 or ow < 1:
            continue
        out.append(
            ConvGeometry(
                n, c, (h, w), 1, (kh, kw), (sh, sw), (dh, dw), ((pt, pb), (pl, pr)), 1, (oh, ow)
            )
        )
    return out


def pooled(geometries: list[ConvGeometry], rng: np.random.Generator) -> list[ConvGeometry]:
    """The same convolutions with pool-ordered columns for a tiled KP x KQ max pool that
    fits their output (sizes that leave a remainder included)."""
    out = []
    for geom in geometries:
        kp, kq = (int(rng.integers(1, size + 1)) for size in geom.out)
        if (kp, kq) != (1, 1):
            out.append(replace(geom, pool=(kp, kq)))
    return out


GEOMETRIES = random_geometries(np.random.default_rng(20261125), 40)
POOLED = pooled(GEOMETRIES, np.random.default_rng(20261202))
#: Every column order: plain, then pool-ordered.
ALL_GEOMETRIES = GEOMETRIES + POOLED
LAYOUTS = ("nchw", "batch-innermost", "reversed", "sliced")


def laid_out(x: Any, layout: str, lib: Any = np) -> Any:
    """``x`` (N, C, H, W) with the same values stored in another way (``lib``: NumPy or
    CuPy)."""
    if layout == "nchw":
        return x
    if layout == "batch-innermost":  # how layers hand arrays to each other
        return lib.ascontiguousarray(x.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)
    if layout == "reversed":  # negative strides: copied before the kernel
        return lib.ascontiguousarray(x[:, :, ::-1])[:, :, ::-1]
    if layout == "sliced":  # a view with gaps: copied before the kernel
        wide = lib.zeros((*x.shape[:3], x.shape[3] + 2), dtype=x.dtype)
        wide[..., 1:-1] = x
        return wide[..., 1:-1]
    raise ValueError(layout)


def portable(xp_name: str = "numpy") -> Any:
    return xb.get_backend(xp_name).xp


# ------------------------------------------------------------------ index arithmetic (CPU)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reference_im2col_matches_portable(layout: str, rng: np.random.Generator) -> None:
    xp = portable()
    for geom in ALL_GEOMETRIES:
        x = laid_out(rng.standard_normal((geom.batch, geom.in_channels, *geom.in_size)), layout)
        expected = np.asarray(_im2col.im2col(xp, x, geom))
        got = ck.reference_im2col(x, geom)
        assert got.shape == expected.shape, geom
        np.testing.assert_array_equal(got, expected, err_msg=str(geom))


def test_reference_col2im_matches_portable(rng: np.random.Generator) -> None:
    xp = portable()
    for geom in ALL_GEOMETRIES:
        cols = rng.standard_normal((geom.in_channels * geom.taps, geom.columns))
        expected = np.asarray(_im2col.col2im(xp, cols, geom))
        got = ck.reference_col2im(cols, geom)
        assert got.shape == expected.shape == (geom.batch, geom.in_channels, *geom.in_size)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12, err_msg=str(geom))
        if geom.batch > 1:  # the result keeps the batch innermost, like the portable path
            assert got.strides[0] == min(got.strides)


def test_kernel_formulas_follow_the_column_contract() -> None:
    """Columns (oh, ow, n), or (pi, pj, ph, pw, n) pool-ordered, as ``_im2col``
    documents; rows (c, ki, kj)."""
    assert ck.COLUMN_ORDER == ("oh", "ow", "n")
    assert "OH * OW * N" in _im2col.__doc__
    assert ck.POOLED_COLUMN_ORDER == ("pi", "pj", "ph", "pw", "n")
    assert "(pi, pj, ph, pw, n)" in _im2col.__doc__
    assert ck.OUTPUT_ORDER == ("c", "h", "w", "n")
    plain, pool = random_geometries(np.random.default_rng(3), 1)[0], POOLED[0]
    assert ck.column_formulas(plain) is ck.PLAIN_COLUMNS
    assert ck.column_formulas(pool) is ck.POOLED_COLUMNS


@pytest.mark.parametrize("formulas", [ck.PLAIN_COLUMNS, ck.POOLED_COLUMNS], ids=lambda f: f.name)
def test_cuda_source_is_built_from_the_tested_formulas(formulas: ck.ColumnFormulas) -> None:
    for name, expr in formulas.im2col_steps:
        assert f"const I {name} = {expr};" in formulas.im2col_source
    assert formulas.im2col_valid in formulas.im2col_source
    for name, expr in formulas.col2im_pixel + formulas.row_tap + formulas.col_tap:
        assert f"const I {name} = {expr};" in formulas.col2im_source
    assert formulas.hit in formulas.col2im_source and formulas.src in formulas.col2im_source
    assert ck.KERNELS[formulas.kernel("im2col")][3] == formulas.im2col_source
    assert ck.KERNELS[formulas.kernel("col2im")][3] == formulas.col2im_source
    for macro in ck.PY_HELPERS:
        assert f"#define {macro}(" in ck.PREAMBLE


def test_pool_source_is_built_from_the_tested_formulas() -> None:
    for name, expr in ck.POOL_CELL:
        assert f"const I {name} = {expr};" in ck.POOL_SOURCE
    for name, expr in ck.POOL_FIRST + ck.POOL_TAP + ck.POOL_BIAS + ck.POOL_RELU:
        assert f"{name} = {expr};" in ck.POOL_SOURCE
    for name, expr in ck.POOL_GRAD_CELL:
        assert f"const I {name} = {expr};" in ck.POOL_BACKWARD_SOURCE
    assert f"out = {ck.POOL_GRAD_VALUE};" in ck.POOL_BACKWARD_SOURCE


def test_python_helpers_pick_like_c() -> None:
    """``XP_MAX`` propagates NaN and gives the second value of equal ones (signed
    zeros), like NumPy's ``maximum``; ``XP_WHERE`` is C's ``?:``."""
    a = np.array([1.0, np.nan, 2.0, 0.0, -0.0, -np.inf])
    b = np.array([2.0, 1.0, np.nan, -0.0, 0.0, -np.inf])
    got = ck.PY_HELPERS["XP_MAX"](a, b)
    np.testing.assert_array_equal(got, [2.0, np.nan, np.nan, 0.0, 0.0, -np.inf])
    assert np.signbit(got[3]) and not np.signbit(got[4])
    assert ck.PY_HELPERS["XP_WHERE"](a > 0.5, 1, -1).tolist() == [1, -1, 1, -1, -1, -1]


def test_python_helpers_divide_like_c() -> None:
    a = np.array([-7, -6, -1, 0, 1, 6, 7], dtype=np.int64)
    assert ck.PY_HELPERS["XP_DIV"](a, 3).tolist() == [-2, -2, 0, 0, 0, 2, 2]
    assert ck.PY_HELPERS["XP_MOD"](a, 3).tolist() == [-1, 0, -1, 0, 1, 0, 1]
    assert ck.PY_HELPERS["XP_TAP"](a, 3, 3).tolist() == [False] * 3 + [True, False, True, False]


def random_blocks(rng: np.random.Generator, count: int) -> list[tuple[int, ...]]:
    """(O, T, PH, PW, N) shapes of pool-ordered blocks, T from 1 (no pooling) to 9."""
    return [
        (int(rng.integers(1, 5)), int(rng.integers(1, 10)), *map(int, rng.integers(1, 5, 3)))
        for _ in range(count)
    ]


BLOCKS = random_blocks(np.random.default_rng(20261201), 24)
POOL_OPTIONS = [(False, False), (True, False), (False, True), (True, True)]  # bias, relu


def block_values(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Few distinct values (many ties), a NaN and infinities in some windows."""
    values = rng.integers(-3, 4, size=shape).astype(dtype)
    flat = values.reshape(-1)
    specials = np.array([np.nan, np.inf, -np.inf, -0.0], dtype=dtype)
    spots = rng.choice(flat.size, size=min(flat.size // 8, 4), replace=False)
    flat[spots] = specials[: spots.size]
    return values


def portable_pool(
    blocks: np.ndarray, bias: np.ndarray | None, relu: bool
) -> tuple[np.ndarray, np.ndarray]:
    from xpconv.backends import portable as portable_ops

    with np.errstate(invalid="ignore"):
        return portable_ops.max_pool_blocks(portable(), blocks, bias, relu)


def portable_pool_backward(grad: np.ndarray, code: np.ndarray, taps: int) -> np.ndarray:
    from xpconv.backends import portable as portable_ops

    with np.errstate(invalid="ignore"):  # 0 * inf: NaN, as the kernels give
        return np.asarray(portable_ops.max_pool_blocks_backward(portable(), grad, code, taps))


def pool_layout(a: np.ndarray, k: int, lib: Any = np) -> Any:
    """``a`` as it is, in the reversed memory order, or a view with gaps (``lib``)."""
    if k % 3 == 1:
        axes = tuple(range(a.ndim))[::-1]
        return lib.ascontiguousarray(a.transpose(axes)).transpose(axes)
    if k % 3 == 2:
        wide = lib.zeros((*a.shape[:-1], a.shape[-1] * 2), dtype=a.dtype)
        wide[..., ::2] = a
        return wide[..., ::2]
    return a


@pytest.mark.parametrize("bias, relu", POOL_OPTIONS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_reference_max_pool_blocks_matches_portable(
    bias: bool, relu: bool, dtype: str, rng: np.random.Generator
) -> None:
    """The pool kernel's formulas, evaluated with NumPy, give the portable values and
    codes exactly: first maximum on ties, NaN wins, dtype kept, any memory layout."""
    for k, shape in enumerate(BLOCKS):
        blocks = pool_layout(block_values(rng, shape, dtype), k)
        b = rng.standard_normal(shape[0]).astype(dtype) if bias else None
        out, code = ck.reference_max_pool_blocks(blocks, b, relu)
        ref_out, ref_code = portable_pool(blocks, b, relu)
        assert out.dtype == ref_out.dtype == dtype and code.dtype == ref_code.dtype == np.int8
        np.testing.assert_array_equal(out, ref_out, err_msg=str(shape))
        np.testing.assert_array_equal(code, ref_code, err_msg=str(shape))


def test_reference_max_pool_blocks_wants_one_dtype() -> None:
    blocks = np.ones((2, 4, 1, 1, 1), dtype=np.float32)
    with pytest.raises(ValueError, match="bias: expected dtype float32"):
        ck.reference_max_pool_blocks(blocks, np.ones(2), False)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_reference_max_pool_blocks_backward_matches_portable(
    dtype: str, rng: np.random.Generator
) -> None:
    """Windows marked -1 pass nothing; an infinite gradient times a 0 mask is NaN, as
    in the portable product."""
    for k, (o, taps, ph, pw, n) in enumerate(BLOCKS):
        grad = block_values(rng, (o, ph, pw, n), dtype)
        code = pool_layout(rng.integers(-1, taps, size=grad.shape).astype(np.int8), k + 1)
        grad = pool_layout(grad, k)
        got = ck.reference_max_pool_blocks_backward(grad, code, taps)
        assert got.dtype == dtype and got.shape == (o, taps, ph, pw, n)
        np.testing.assert_array_equal(got, portable_pool_backward(grad, code, taps))


# ------------------------------------------------------------------ the C source, on the host


_HOST_TYPES = {"int8": "signed char"}  # the others: T (the array type) or I (index)


def _cast(typ: str, ctype: str, const: bool) -> str:
    """C++ cast of a ``void*`` to a pointer to a kernel parameter of type ``typ``."""
    name = ctype if typ == "T" else _HOST_TYPES.get(typ, typ)
    return f"static_cast<{'const ' if const else ''}{name}*>"


def _host_source() -> str:
    """The CuPy kernels as C++ functions for the host: each kernel's own preamble (its
    index type and macros) and body text, a loop over ``i`` in place of CUDA's threads,
    and pointers in place of CuPy's raw arrays and outputs.

    ``extern "C" void <kernel>_<i32|i64>_<float32|float64>(ins, outs, size, params)``
    takes the raw input arrays and the outputs as arrays of pointers, in parameter
    order, and the scalars as int64 values."""
    parts = ["#include <cstddef>"]
    for which in ck.KERNELS:
        for wide in (False, True):
            spec = ck.kernel_spec(which, wide)
            inputs = [p.split() for p in spec["in_params"].split(",")]
            raws = [(p[1], p[2]) for p in inputs if p[0] == "raw"]
            params = [p[-1] for p in inputs if p[0] != "raw"]
            outs = [tuple(p.split()) for p in spec["out_params"].split(",")]
            space = f"{which}_{'i64' if wide else 'i32'}"
            pointers = [f"const {_HOST_TYPES.get(t, t)}* {name}" for t, name in raws]
            pointers += [f"{_HOST_TYPES.get(t, t)}* {name}_" for t, name in outs]
            refs = "".join(f"    {_HOST_TYPES.get(t, t)}& {n} = {n}_[i];\n" for t, n in outs)
            args = ", ".join([*pointers, "std::ptrdiff_t size", *(f"I {p}" for p in params)])
            parts.append(
                f"namespace {space} {{\n{spec['preamble']}\n"
                f"template <typename T>\n"
                f"void run({args}) {{\n"
                f"  for (std::ptrdiff_t i = 0; i < size; ++i) {{\n"
                f"{refs}{spec['operation']}\n  }}\n}}\n}}"
            )
            for tname, ctype in (("float64", "double"), ("float32", "float")):
                arrays = [f"{_cast(t, ctype, True)}(ins[{k}])" for k, (t, _) in enumerate(raws)]
                arrays += [f"{_cast(t, ctype, False)}(outs[{k}])" for k, (t, _) in enumerate(outs)]
                unpack = [f"static_cast<I>(p[{k}])" for k in range(len(params))]
                parts.append(
                    f'extern "C" void {space}_{tname}(const void* const* ins, '
                    f"void* const* outs, long long size, const long long* p) {{\n"
                    f"  typedef {space}::I I;\n"
                    f"  {space}::run<{ctype}>({', '.join([*arrays, 'size', *unpack])});\n}}"
                )
    return "\n".join(parts)


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    compiler = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("no C++ compiler (g++, c++, clang++) to build the kernel source on the host")
    folder = tmp_path_factory.mktemp("kernels")
    source, library = folder / "kernels.cpp", folder / "kernels.so"
    source.write_text(_host_source())
    proc = subprocess.run(
        [compiler, "-std=c++11", "-O1", "-Wall", "-Werror", "-shared", "-fPIC"]
        + ["-o", str(library), str(source)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, f"the generated kernel source does not compile:\n{proc.stderr}"
    return ctypes.CDLL(str(library))


def _call(
    lib: ctypes.CDLL,
    name: str,
    inputs: list[np.ndarray],
    outputs: list[np.ndarray],
    args: list[int],
) -> None:
    """Run host kernel ``name`` over every element of ``outputs[0]``."""
    ins = (ctypes.c_void_p * len(inputs))(*(a.ctypes.data for a in inputs))
    outs = (ctypes.c_void_p * len(outputs))(*(a.ctypes.data for a in outputs))
    params = np.asarray(args, dtype=np.int64)
    getattr(lib, name)(
        ins, outs, ctypes.c_longlong(outputs[0].size), params.ctypes.data_as(ctypes.c_void_p)
    )


@pytest.mark.parametrize("index", ["i32", "i64"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_kernel_source_compiled_for_the_host_matches_portable(
    host_kernels: ctypes.CDLL, index: str, dtype: str, rng: np.random.Generator
) -> None:
    xp = portable()
    for k, geom in enumerate(ALL_GEOMETRIES):
        forward, adjoint = (ck.column_formulas(geom).kernel(w) for w in ("im2col", "col2im"))
        x = rng.standard_normal((geom.batch, geom.in_channels, *geom.in_size)).astype(dtype)
        x = laid_out(x, LAYOUTS[k % len(LAYOUTS)])
        memory, strides = ck.dense_memory(x, np.ascontiguousarray)
        values = ck.im2col_arguments(geom, strides)
        cols = np.empty((geom.in_channels * geom.taps, geom.columns), dtype=dtype)
        args = [values[p] for p in ck.KERNELS[forward][1]]
        _call(host_kernels, f"{forward}_{index}_{dtype}", [memory], [cols], args)
        np.testing.assert_array_equal(cols, np.asarray(_im2col.im2col(xp, x, geom)), str(geom))

        grad = rng.standard_normal(cols.shape).astype(dtype)
        memory, strides = ck.dense_memory(grad, np.ascontiguousarray)
        values = ck.col2im_arguments(geom, strides)
        buf = np.empty(ck.output_shape(geom), dtype=dtype)
        args = [values[p] for p in ck.KERNELS[adjoint][1]]
        _call(host_kernels, f"{adjoint}_{index}_{dtype}", [memory], [buf], args)
        got = buf.transpose(ck.output_permutation())
        expected = np.asarray(_im2col.col2im(xp, grad, geom))
        tol = 1e-12 if dtype == "float64" else 1e-5
        np.testing.assert_allclose(got, expected, rtol=tol, atol=tol, err_msg=str(geom))


@pytest.mark.parametrize("index", ["i32", "i64"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_pool_source_compiled_for_the_host_matches_portable(
    host_kernels: ctypes.CDLL, index: str, dtype: str, rng: np.random.Generator
) -> None:
    """The max-pool kernels' C source, compiled for the host, against the portable ops
    (bit for bit), in every bias/ReLU combination and memory layout."""
    for k, shape in enumerate(BLOCKS):
        bias, relu = POOL_OPTIONS[k % len(POOL_OPTIONS)]
        blocks = pool_layout(block_values(rng, shape, dtype), k)
        b = pool_layout(rng.standard_normal(shape[0]).astype(dtype), k) if bias else None
        memory, strides = ck.dense_memory(blocks, np.ascontiguousarray)
        bias_memory, bias_strides = (
            (memory, (None,)) if b is None else ck.dense_memory(b, np.ascontiguousarray)
        )
        values = ck.pool_arguments(shape, strides, bias_strides[0], relu)
        out = np.empty((shape[0], *shape[2:]), dtype=dtype)
        code = np.empty(out.shape, dtype=np.int8)
        args = [values[p] for p in ck.POOL_PARAMS]
        name = f"max_pool_blocks_{index}_{dtype}"
        _call(host_kernels, name, [memory, bias_memory], [out, code], args)
        ref_out, ref_code = portable_pool(blocks, b, relu)
        np.testing.assert_array_equal(out, ref_out, err_msg=f"{shape} bias={bias} relu={relu}")
        np.testing.assert_array_equal(code, ref_code, err_msg=f"{shape} bias={bias} relu={relu}")

        taps = shape[1]
        grad = pool_layout(block_values(rng, out.shape, dtype), k + 1)
        grad_memory, grad_strides = ck.dense_memory(grad, np.ascontiguousarray)
        code_memory, code_strides = ck.dense_memory(code, np.ascontiguousarray)
        values = ck.pool_backward_arguments(grad.shape, taps, grad_strides, code_strides)
        back = np.empty((shape[0], taps, *shape[2:]), dtype=dtype)
        args = [values[p] for p in ck.POOL_BACKWARD_PARAMS]
        name = f"max_pool_blocks_backward_{index}_{dtype}"
        _call(host_kernels, name, [grad_memory, code_memory], [back], args)
        np.testing.assert_array_equal(back, portable_pool_backward(grad, code, taps), str(shape))


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("which", list(ck.KERNELS))
def test_kernel_spec_follows_cupys_parameter_rules(which: str, wide: bool) -> None:
    """What ``cupy.ElementwiseKernel`` accepts: "[raw] TYPE NAME" parameters where TYPE
    is a NumPy dtype name or a one-letter placeholder that an *array* argument fixes
    (scalars do not), no parameter called ``i``, and a valid kernel name."""
    spec = ck.kernel_spec(which, wide)
    inputs = [p.split() for p in spec["in_params"].split(",")]
    outputs = [p.split() for p in spec["out_params"].split(",")]  # always arrays
    params = inputs + outputs
    # In these kernels the arrays are the raw inputs and the outputs; the rest are scalars.
    fixed_by_arrays = {p[-2] for p in inputs if p[0] == "raw"} | {p[-2] for p in outputs}
    names = []
    for words in params:
        *keywords, typ, name = words
        assert set(keywords) <= {"raw"} and name.isidentifier() and name != "i"
        if len(typ) == 1:
            assert typ in fixed_by_arrays, f"placeholder {typ} of {name} is fixed by no array"
        else:
            assert np.dtype(typ).name == typ
        names.append(name)
    assert len(set(names)) == len(names)
    assert spec["name"].isidentifier()
    index_type = "long long" if wide else "int"
    assert spec["preamble"].startswith(f"typedef {index_type} I;")
    raws, scalars, _, _ = ck.KERNELS[which]
    assert [p[-1] for p in inputs if p[0] == "raw"] == [name for _, name in raws]
    assert [p[-1] for p in inputs if p[0] != "raw"] == list(scalars)
    assert all(p[-2] == ("int64" if wide else "int32") for p in inputs if p[0] != "raw")
    assert names[len(raws) : len(raws) + len(scalars)] == list(scalars)


# ------------------------------------------------------------------ registration (CPU)


def test_importing_the_kernels_does_not_import_cupy() -> None:
    code = (
        "import sys; import xpconv.backends.cupy.kernels as k; "
        "assert 'cupy' not in sys.modules, 'cupy was imported'; print(k.make_kernels().name)"
    )
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "cupy"


def test_loader_returns_none_without_cupy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    ck._load.cache_clear()
    try:
        assert ck._load() is None
    finally:
        ck._load.cache_clear()


def test_kernels_match_the_fast_path_interface() -> None:
    kernels = ck.make_kernels()
    assert (kernels.name, kernels.im2col, kernels.col2im) == ("cupy", ck.im2col, ck.col2im)
    assert kernels.max_pool_blocks is ck.max_pool_blocks  # the fused conv+pool step
    assert kernels.max_pool_blocks_backward is ck.max_pool_blocks_backward
    x = np.zeros((4, 3, 5, 5))
    assert not kernels.batch_innermost(np, x)
    assert kernels.batch_innermost(np, laid_out(x, "batch-innermost"))
    assert kernels_for(portable()).name == "numpy"  # registering CuPy changes nothing here


# ------------------------------------------------------------------ the kernels on a GPU


@pytest.fixture
def cupy_backend() -> xb.Backend:
    try:
        return xb.get_backend("cupy")
    except xb.BackendError as exc:
        pytest.skip(f"cupy kernels: {exc}")


@pytest.mark.gpu
def test_cupy_fast_path_is_selected(cupy_backend: xb.Backend) -> None:
    assert kernels_for(cupy_backend.xp).name == "cupy"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("wide", [False, True], ids=["int32", "int64"])
def test_cupy_kernels_match_portable(
    cupy_backend: xb.Backend,
    dtype: str,
    wide: bool,
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if wide:  # force the 64-bit index kernels on small arrays
        monkeypatch.setattr(ck, "_INT32_LIMIT", 0)
    xp = cupy_backend.xp
    tol = 1e-12 if dtype == "float64" else 1e-5
    for k, geom in enumerate(ALL_GEOMETRIES):
        import cupy

        host = rng.standard_normal((geom.batch, geom.in_channels, *geom.in_size)).astype(dtype)
        x = laid_out(cupy.asarray(host), LAYOUTS[k % len(LAYOUTS)], cupy)
        fast = ck.im2col(xp, x, geom)
        slow = _im2col.im2col(xp, x, geom)
        np.testing.assert_array_equal(cupy_backend.to_numpy(fast), cupy_backend.to_numpy(slow))

        grad = cupy_backend.asarray(rng.standard_normal(fast.shape), dtype=dtype)
        fast = ck.col2im(xp, grad, geom)
        slow = _im2col.col2im(xp, grad, geom)
        assert fast.shape == slow.shape
        np.testing.assert_allclose(
            cupy_backend.to_numpy(fast), cupy_backend.to_numpy(slow), rtol=tol, atol=tol
        )


def fused_conv_pool_pass(backend: str, x: np.ndarray) -> dict[str, Any]:
    """Output, input gradient and parameter gradients of a fused Conv2D + ReLU +
    MaxPool2D step, float64, on ``backend``."""
    import xpconv

    layers = [xpconv.Conv2D(6, 3, padding="same", activation="relu"), xpconv.MaxPool2D(2)]
    model = xpconv.Sequential(
        layers, backend=backend, dtype="float64", seed=3, input_shape=x.shape[1:]
    )
    assert isinstance(model.steps[0], xpconv.nn.layers.ConvMaxPool)
    out = model.forward(x, training=True)
    seen = {"out": out, "grad_x": model.backward(out, input_grad=True)}
    return {**seen, **{name: p.grad for name, p in model.parameters().items()}}


def test_fused_conv_pool_pass_matches_portable_on_numpy() -> None:
    """The comparison the CuPy test below makes, on NumPy's kernels."""
    x = np.random.default_rng(7).standard_normal((5, 2, 8, 8))
    fast = fused_conv_pool_pass("numpy", x)
    with use_portable():
        slow = fused_conv_pool_pass("numpy", x)
    assert fast.keys() == slow.keys() and len(fast) == 4
    for name in fast:
        np.testing.assert_allclose(fast[name], slow[name], rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("wide", [False, True], ids=["int32", "int64"])
def test_cupy_pool_kernels_match_portable(
    cupy_backend: xb.Backend,
    dtype: str,
    wide: bool,
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CUDA max pool of pool-ordered blocks and its backward against the portable
    ops on the same device, bit for bit (ties, NaN, infinities, layouts)."""
    import cupy

    from xpconv.backends import portable as portable_ops

    if wide:
        monkeypatch.setattr(ck, "_INT32_LIMIT", 0)
    xp = cupy_backend.xp
    for k, shape in enumerate(BLOCKS):
        bias, relu = POOL_OPTIONS[k % len(POOL_OPTIONS)]
        blocks = pool_layout(cupy.asarray(block_values(rng, shape, dtype)), k, cupy)
        b = cupy.asarray(rng.standard_normal(shape[0]).astype(dtype)) if bias else None
        out, code = ck.max_pool_blocks(xp, blocks, b, relu)
        ref_out, ref_code = portable_ops.max_pool_blocks(xp, blocks, b, relu)
        assert out.dtype == ref_out.dtype and code.dtype == ref_code.dtype == np.int8
        np.testing.assert_array_equal(cupy.asnumpy(out), cupy.asnumpy(ref_out), str(shape))
        np.testing.assert_array_equal(cupy.asnumpy(code), cupy.asnumpy(ref_code), str(shape))
        grad = pool_layout(cupy.asarray(block_values(rng, out.shape, dtype)), k + 1, cupy)
        got = ck.max_pool_blocks_backward(xp, grad, code, shape[1])
        ref = portable_ops.max_pool_blocks_backward(xp, grad, code, shape[1])
        np.testing.assert_array_equal(cupy.asnumpy(got), cupy.asnumpy(ref), str(shape))


@pytest.mark.gpu
def test_cupy_fused_conv_pool_runs_the_pool_kernels(
    cupy_backend: xb.Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Conv2D + ReLU + MaxPool2D model's forward and backward on CuPy call the CUDA
    kernels of pool-ordered im2col/col2im and of the pool (no portable fallback) and
    give the portable path's results."""
    import cupy

    from xpconv.backends import portable

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the fused step fell back to a portable kernel")

    x = np.random.default_rng(7).standard_normal((5, 2, 8, 8))
    with monkeypatch.context() as patched:
        for name in ("max_pool_blocks", "max_pool_blocks_backward"):
            patched.setattr(portable, name, refuse)
        for name in ("im2col", "col2im"):
            patched.setattr(portable, name, refuse)
        fast = fused_conv_pool_pass("cupy", x)
    with use_portable():
        slow = fused_conv_pool_pass("cupy", x)
    assert fast.keys() == slow.keys()
    for name in fast:
        got, want = cupy.asnumpy(fast[name]), cupy.asnumpy(slow[name])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.gpu
def test_cupy_conv2d_fast_path_matches_portable(
    cupy_backend: xb.Backend, rng: np.random.Generator
) -> None:
    import xpconv.ops as F

    xp = cupy_backend.xp
    x = cupy_backend.asarray(rng.standard_normal((4, 3, 11, 9)), dtype="float64")
    w = cupy_backend.asarray(rng.standard_normal((5, 3, 3, 2)), dtype="float64")
    b = cupy_backend.asarray(rng.standard_normal(5), dtype="float64")
    conv = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    out = F.conv2d(x, w, b, **conv)
    grads = F.conv2d_backward(xp.ones_like(out), x, w, **conv)
    with use_portable():
        out_ref = F.conv2d(x, w, b, **conv)
        grads_ref = F.conv2d_backward(xp.ones_like(out_ref), x, w, **conv)
    for got, ref in zip((out, *grads), (out_ref, *grads_ref)):
        np.testing.assert_allclose(
            cupy_backend.to_numpy(got), cupy_backend.to_numpy(ref), rtol=1e-12, atol=1e-12
        )


@pytest.mark.gpu
def test_cupy_kernels_reuse_pool_memory(cupy_backend: xb.Backend) -> None:
    import cupy

    geom = random_geometries(np.random.default_rng(1), 1)[0]
    x = cupy_backend.asarray(np.ones((geom.batch, geom.in_channels, *geom.in_size)))
    pool = cupy.get_default_memory_pool()
    for _ in range(2):  # warm-up: the pool gets the blocks once
        ck.col2im(cupy_backend.xp, ck.im2col(cupy_backend.xp, x, geom), geom)
    held = pool.total_bytes()
    for _ in range(20):
        ck.col2im(cupy_backend.xp, ck.im2col(cupy_backend.xp, x, geom), geom)
    assert pool.total_bytes() == held


# ------------------------------------------------------------------ scripts (CPU)


def _bash() -> str:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is needed to run the ci scripts")
    return bash


@pytest.mark.parametrize("script", ["ci/gpu-test.sh", "ci/fetch-wheels.sh"])
def test_ci_script_parses(script: str) -> None:
    proc = subprocess.run([_bash(), "-n", script], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_gpu_test_script_without_a_gpu_exits_2(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    env = {**os.environ, **NO_GPU_ENV, "PYTHON": sys.executable, "XPCONV_GPU_VENV": str(venv)}
    env.pop("XPCONV_GPU_REHEARSAL", None)
    proc = subprocess.run(
        [_bash(), "ci/gpu-test.sh", str(tmp_path / "wheels")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no usable CUDA device was found, so nothing was installed or run" in proc.stderr
    for what in ("nvidia-smi:", "CuPy:", "PyTorch:", "CUDA build of PyTorch"):
        assert what in proc.stderr
    assert not venv.exists(), "nothing may be installed without a GPU"


def test_gpu_test_script_names_a_missing_interpreter() -> None:
    env = {**os.environ, "PYTHON": "no-such-python-here"}
    proc = subprocess.run(
        [_bash(), "ci/gpu-test.sh"], cwd=REPO_ROOT, capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2
    assert "no-such-python-here" in proc.stderr


def test_fetch_wheels_asks_for_every_test_dependency() -> None:
    env = {**os.environ, "XPCONV_WHEEL_PYTHON": "3.12", "XPCONV_WHEEL_EXTRA": "matplotlib"}
    proc = subprocess.run(
        [_bash(), "ci/fetch-wheels.sh", "--dry-run", "some/dir"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    command = proc.stdout
    assert " download --dest some/dir --only-binary=:all: --python-version 3.12 " in command
    assert "--platform manylinux2014_x86_64" in command
    for package in (
        "array-api-compat",
        "array-api-extra",
        "array-api-strict",
        "pytest",
        "hypothesis",
        "tqdm",
        "psutil",
        "setuptools",
        "matplotlib",
    ):
        assert package in command


# ------------------------------------------------------------------ GPU benchmarks (CPU)


def test_benchmarks_gpu_without_a_device_exits_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--gpu", "--json", "never-written.json"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **NO_GPU_ENV},
        timeout=120,
    )
    assert proc.returncode == gpu.EXIT_NO_DEVICE, proc.stderr
    assert "no CUDA device was found" in proc.stderr
    assert "CuPy" in proc.stderr and "CUDA build of PyTorch" in proc.stderr
    assert "--gpu-dry-run" in proc.stderr
    assert not (REPO_ROOT / "never-written.json").exists()


@pytest.mark.slow  # every GPU workload's record, without a device
def test_gpu_dry_run_writes_records_and_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "results" / "gpu.json"
    assert bench_cli.main(["--gpu-dry-run", "--markdown", "--json", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "DRY RUN" in printed and "| Workload | Batch |" in printed
    report = json.loads(path.read_text())
    assert report["dry_run"] is True
    assert {"machine", "versions", "gpu", "tf32", "settings", "results", "memory"} <= set(report)
    assert report["tf32"]["requested"] is False and report["tf32"]["CUPY_TF32"] == "0"
    records = report["results"]
    assert {(r["workload"], r["mode"]) for r in records} == {("W2", "train"), ("block", "fwd+bwd")}
    for r in records:
        assert set(RECORD_KEYS) <= set(r)
        assert r["finite"] and r["images_per_s"] > 0 and r["device"] == "cpu (dry run)"
        if "torch" in {q["backend"] for q in records}:
            assert r["ratio_vs_torch"] is not None
    for check in report["peer_check"]:
        assert check["ok"], check
    assert path.with_suffix(".md").read_text().startswith("| Workload |")


def test_tf32_mode_sets_and_restores_torch_flags() -> None:
    torch = pytest.importorskip("torch")
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    env_before = os.environ.get("CUPY_TF32")
    with gpu.tf32_mode(True):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert os.environ["CUPY_TF32"] == "1" and torch.backends.cudnn.benchmark
        assert gpu.tf32_settings(True, dry_run=False)["torch.backends.cudnn.allow_tf32"]
    with gpu.tf32_mode(False):
        assert not torch.backends.cuda.matmul.allow_tf32
        assert not torch.backends.cudnn.allow_tf32 and os.environ["CUPY_TF32"] == "0"
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    assert os.environ.get("CUPY_TF32") == env_before


def _timing(seconds: list[float], steps: int = 2, value: float = 1.5) -> Timing:
    return Timing(steps, list(seconds), value)


def test_build_records_ratios_against_torch() -> None:
    timings = {"xpconv-cupy": _timing([0.2, 0.1, 0.3]), "torch": _timing([0.05, 0.05])}
    walls = {"xpconv-cupy": [0.25, 0.15, 0.35], "torch": [0.06, 0.06]}
    kinds = {name: "CUDA events (x)" for name in timings}
    records = gpu.build_records(
        "W2", "train", 128, timings, walls, warmup=3, device="GPU", timer_kinds=kinds, tf32=False
    )
    ours, theirs = records
    assert ours["images_per_s"] == pytest.approx(128 / 0.2)
    assert ours["ratio_vs_torch"] == pytest.approx(0.05 / 0.2)
    assert theirs["ratio_vs_torch"] == pytest.approx(1.0)
    assert ours["wall_median_s"] == pytest.approx(0.25) and ours["warmup_steps"] == 4
    assert ours["device"] == "GPU" and ours["tf32"] is False
    only = {"xpconv-cupy": timings["xpconv-cupy"]}
    alone = gpu.build_records(
        "W2", "train", 128, only, walls, warmup=1, device="GPU", timer_kinds=kinds, tf32=True
    )
    assert alone[0]["ratio_vs_torch"] is None
    table = gpu.format_table(records)
    assert "xpconv-cupy" in table and "torch+cuDNN" in table and "0.25" in table
    markdown = gpu.markdown_table(records)
    assert "| W2 train | 128 | 640 | - | 2,560 | 0.25 | - |" in markdown


def test_gpu_settings_and_contenders() -> None:
    parser = bench_cli.build_parser()
    full = gpu.settings_from(parser.parse_args(["--gpu"]))
    assert full.w2_batches == (128, 1024) and full.block == gpu.BlockShape(64, 64, 56)
    assert not full.tf32 and not full.dry_run
    custom = gpu.settings_from(parser.parse_args(["--gpu", "--tf32", "--batch", "256", "--quick"]))
    assert custom.tf32 and custom.w2_batches == (256,) and custom.rounds == gpu.QUICK["rounds"]
    assert gpu.settings_from(parser.parse_args(["--gpu-dry-run"])).dry_run
    assert gpu.device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"

    only_cupy = gpu.available_contenders({"cupy": 1, "torch.cuda.is_available()": False})
    assert only_cupy["xpconv-cupy"] is None
    assert "no CUDA device" in only_cupy["torch"] and only_cupy["xpconv-torch-cuda"]
    only_torch = gpu.available_contenders(
        {"cupy": "not installed", "torch.cuda.is_available()": True}
    )
    assert only_torch["torch"] is None and "not installed" in only_torch["xpconv-cupy"]
    assert not gpu.has_device({"cupy": "not installed", "torch.cuda.is_available()": False})
