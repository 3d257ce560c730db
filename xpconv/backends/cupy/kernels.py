"""CuPy fast path for im2col/col2im: one elementwise CUDA kernel each (contract of ``_im2col``).

The portable path pads the input, takes KH x KW strided slices and stacks them (im2col),
and accumulates KH x KW slices into a zeroed buffer (col2im): several full passes over
memory and as many temporaries. Here each is a single ``cupy.ElementwiseKernel``:

- **im2col**: one thread per element of the column matrix (C * KH * KW, OH * OW * N),
  or of the pool-ordered one that a fused max pool reads (columns (pi, pj, ph, pw, n),
  see ``_im2col``). It works out its row (c, ki, kj) and column, the input pixel under that
  kernel tap, and copies it, or writes 0 where the tap falls in the padding. Padding
  is never materialised, and the input is read through its strides, so a permuted
  view (the batch-innermost outputs of the previous layer) is not copied first.
- **col2im**: one thread per *input* element. It visits the KH x KW taps that can
  have read that pixel and sums the matching column entries: a gather, so no atomics
  and no zero-filled accumulator, and the sum runs tap by tap in the same order as the
  portable path. The result keeps the batch innermost in memory, as the portable
  path's does. Pool-ordered, a tap hits only output rows and columns the pool keeps.

Index arithmetic uses 32-bit integers when every index fits (64-bit division is slow on
a GPU) and 64-bit otherwise. Each kernel allocates only its result (no padded copy, no
accumulator), from CuPy's memory pool, which hands the same blocks back from one
training step to the next.

The formulas are written once, in the expressions below, in a small language that is
valid C and, with :data:`PY_HELPERS`, valid Python: the CUDA source is generated from
them, and :func:`reference_im2col` / :func:`reference_col2im` evaluate the very same
expressions with NumPy so the arithmetic is tested on machines without a GPU.

Not done yet: chunking. The contract returns the whole column matrix (the convolution
keeps it for the backward pass), so a kernel cannot split it; a workspace limit needs
the convolution itself to loop over column blocks (im2col of a block, then its matmul
into the matching slice of the output).

Importing this module does not import CuPy; the loader does, on first use.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xpconv.backends import portable as _im2col
from xpconv.backends.kernels import Kernels, register_fast_path
from xpconv.backends.portable import ConvGeometry

Array = Any

__all__ = [
    "COLUMN_ORDER",
    "PLAIN_COLUMNS",
    "POOLED_COLUMNS",
    "POOLED_COLUMN_ORDER",
    "ColumnFormulas",
    "column_formulas",
    "KERNELS",
    "POOL_BACKWARD_SOURCE",
    "POOL_SOURCE",
    "PREAMBLE",
    "PY_HELPERS",
    "batch_innermost",
    "col2im",
    "col2im_arguments",
    "dense_memory",
    "im2col",
    "im2col_arguments",
    "kernel_spec",
    "make_kernels",
    "max_pool_blocks",
    "max_pool_blocks_backward",
    "output_permutation",
    "output_shape",
    "pool_arguments",
    "pool_backward_arguments",
    "reference_col2im",
    "reference_im2col",
    "reference_max_pool_blocks",
    "reference_max_pool_blocks_backward",
]

# ------------------------------------------------------------------ the formulas

#: Order of the column matrix's columns, outermost first (the ``_im2col`` contract):
#: plain, and pool-ordered for a KP x KQ max pool that follows (``oh = ph * KP + pi``,
#: ``ow = pw * KQ + pj``; rows and columns beyond ``KP * PH``, ``KQ * PW`` are dropped).
COLUMN_ORDER = ("oh", "ow", "n")
POOLED_COLUMN_ORDER = ("pi", "pj", "ph", "pw", "n")
#: Memory order of col2im's result: channels outermost, then the column order with
#: output positions replaced by input positions (so batch innermost, like the columns).
OUTPUT_ORDER = ("c", *({"oh": "h", "ow": "w", "n": "n"}[a] for a in COLUMN_ORDER))

_SIZE = {
    **{"n": "N", "c": "C", "h": "H", "w": "W", "oh": "OH", "ow": "OW", "ki": "KH", "kj": "KW"},
    **{"o": "O", "t": "TAPS", "ph": "PH", "pw": "PW"},  # the pool-ordered blocks
    **{"pi": "KP", "pj": "KQ"},  # pooling taps of pool-ordered columns
}

#: Scalar arguments of the im2col/col2im kernels (sizes of the geometry), in call order;
#: the pool-ordered kernels also take the pool and its output size.
GEOMETRY_PARAMS = (
    "N", "C", "H", "W", "KH", "KW", "SH", "SW", "DH", "DW", "PT", "PL", "OH", "OW", "NCOL",
)  # fmt: skip
POOLED_GEOMETRY_PARAMS = (*GEOMETRY_PARAMS, "KP", "KQ", "PH", "PW")
X_STRIDES = ("XN", "XC", "XH", "XW")  # element strides of im2col's input
COL_STRIDES = ("GR", "GC")  # element strides of col2im's columns
#: Scalars of the pool-ordered max pool: sizes of the (O, TAPS, PH, PW, N) blocks, their
#: element strides, the bias's stride, and whether to add the bias and apply the ReLU.
POOL_SIZES = ("O", "TAPS", "PH", "PW", "N")
POOL_PARAMS = (*POOL_SIZES, "BO", "BT", "BH", "BW", "BN", "BB", "HAS_BIAS", "RELU")
#: Scalars of its backward: the sizes, then the element strides of the (O, PH, PW, N)
#: gradient and of its int8 tap codes.
POOL_BACKWARD_PARAMS = (*POOL_SIZES, "GO", "GH", "GW", "GN", "AO", "AH", "AW", "AN")

#: C macros; :data:`PY_HELPERS` are the same operations on NumPy integer arrays.
#: Division and remainder truncate toward zero, as in C.
PREAMBLE = """
#define XP_DIV(a, b) ((a) / (b))
#define XP_MOD(a, b) ((a) % (b))
#define XP_INSIDE(v, n) ((v) >= 0 && (v) < (n))
#define XP_TAP(a, s, o) ((a) >= 0 && (a) % (s) == 0 && (a) / (s) < (o))
#define XP_WHERE(c, a, b) ((c) ? (a) : (b))
#define XP_MAX(a, b) (((a) != (a) || (a) > (b)) ? (a) : (b))
"""


def _div(a: Any, b: Any) -> Any:
    q = np.abs(a) // np.abs(b)
    return np.where((np.asarray(a) < 0) != (np.asarray(b) < 0), -q, q)


def _mod(a: Any, b: Any) -> Any:
    return a - b * _div(a, b)


PY_HELPERS: dict[str, Callable[..., Any]] = {
    "XP_DIV": _div,
    "XP_MOD": _mod,
    "XP_INSIDE": lambda v, n: (v >= 0) & (v < n),
    "XP_TAP": lambda a, s, o: (a >= 0) & (_mod(a, s) == 0) & (_div(a, s) < o),
    "XP_WHERE": np.where,
    # NaN-propagating, and the second value where both are equal: NumPy's ``maximum``
    "XP_MAX": np.maximum,
}


def _unravel(index: str, axes: Sequence[str]) -> list[tuple[str, str]]:
    """Statements splitting flat ``index`` into ``axes`` (outermost first, C order)."""
    steps = []
    inner = ""  # product of the sizes of the axes inside the current one
    for k, axis in enumerate(reversed(axes)):
        base = f"XP_DIV({index}, {inner})" if inner else index
        outermost = k == len(axes) - 1
        steps.append((axis, base if outermost else f"XP_MOD({base}, {_SIZE[axis]})"))
        inner = f"{inner} * {_SIZE[axis]}" if inner else _SIZE[axis]
    return steps[::-1]


def _ravel(axes: Sequence[str]) -> str:
    """The flat C-order index of ``axes`` (outermost first)."""
    expr = axes[0]
    for axis in axes[1:]:
        expr = f"({expr}) * {_SIZE[axis]} + {axis}"
    return expr


def _c_lines(steps: Sequence[tuple[str, str]], indent: str = "") -> str:
    return "\n".join(f"{indent}const I {name} = {expr};" for name, expr in steps)


def _c_assign(steps: Sequence[tuple[str, str]], indent: str = "") -> str:
    return "\n".join(f"{indent}{name} = {expr};" for name, expr in steps)


@dataclass(frozen=True)
class ColumnFormulas:
    """The im2col and col2im formulas of one column order (plain or pool-ordered).

    im2col runs ``im2col_steps`` per element ``idx`` of the (C * KH * KW, NCOL) column
    matrix and copies ``x[src]`` where ``im2col_valid`` holds (0 in the padding).
    col2im runs ``col2im_pixel`` per element ``idx`` of its result in memory order
    ``OUTPUT_ORDER``; then, for every tap (ki, kj), ``row_tap`` and ``col_tap`` find the
    output position that read this pixel through it, and where ``hit`` holds the
    column entry ``cols[src]`` is added.
    """

    name: str
    order: tuple[str, ...]
    params: tuple[str, ...]
    im2col_steps: tuple[tuple[str, str], ...]
    row_tap: tuple[tuple[str, str], ...]
    col_tap: tuple[tuple[str, str], ...]
    hit: str
    im2col_valid: str = "XP_INSIDE(h, H) && XP_INSIDE(w, W)"
    col2im_pixel: tuple[tuple[str, str], ...] = tuple(_unravel("idx", OUTPUT_ORDER))

    def kernel(self, which: str) -> str:
        """The name in :data:`KERNELS` of this order's ``"im2col"`` or ``"col2im"``."""
        return which if self.name == "plain" else f"{which}_{self.name}"

    @property
    def src(self) -> str:
        return f"((c * KH + ki) * KW + kj) * GR + ({_ravel(self.order)}) * GC"

    @property
    def im2col_source(self) -> str:
        return f"""
const I idx = static_cast<I>(i);
{_c_lines(self.im2col_steps)}
out = ({self.im2col_valid}) ? x[src] : T(0);
"""

    @property
    def col2im_source(self) -> str:
        return f"""
const I idx = static_cast<I>(i);
{_c_lines(self.col2im_pixel)}
T acc = T(0);
for (I ki = 0; ki < KH; ++ki) {{
{_c_lines(self.row_tap, "  ")}
  for (I kj = 0; kj < KW; ++kj) {{
{_c_lines(self.col_tap, "    ")}
    if ({self.hit}) {{
      acc += cols[{self.src}];
    }}
  }}
}}
out = acc;
"""


def _column_formulas(pooled: bool) -> ColumnFormulas:
    order = POOLED_COLUMN_ORDER if pooled else COLUMN_ORDER
    # Pool-ordered: the output position of a column, and the column of an output position.
    positions = (("oh", "ph * KP + pi"), ("ow", "pw * KQ + pj")) if pooled else ()
    row_split = (("pi", "XP_MOD(oh, KP)"), ("ph", "XP_DIV(oh, KP)")) if pooled else ()
    col_split = (("pj", "XP_MOD(ow, KQ)"), ("pw", "XP_DIV(ow, KQ)")) if pooled else ()
    rows, cols = ("KP * PH", "KQ * PW") if pooled else ("OH", "OW")
    return ColumnFormulas(
        name="pooled" if pooled else "plain",
        order=order,
        params=POOLED_GEOMETRY_PARAMS if pooled else GEOMETRY_PARAMS,
        im2col_steps=(
            ("col", "XP_MOD(idx, NCOL)"),
            ("row", "XP_DIV(idx, NCOL)"),
            *_unravel("col", order),
            *positions,
            *_unravel("row", ("c", "ki", "kj")),
            ("h", "oh * SH + ki * DH - PT"),
            ("w", "ow * SW + kj * DW - PL"),
            ("src", "n * XN + c * XC + h * XH + w * XW"),
        ),
        row_tap=(("a", "h + PT - ki * DH"), ("oh", "XP_DIV(a, SH)"), *row_split),
        col_tap=(("b", "w + PL - kj * DW"), ("ow", "XP_DIV(b, SW)"), *col_split),
        hit=f"XP_TAP(a, SH, {rows}) && XP_TAP(b, SW, {cols})",
    )


#: The formulas of plain columns (``geom.pool == (1, 1)``) and of pool-ordered ones.
PLAIN_COLUMNS, POOLED_COLUMNS = _column_formulas(False), _column_formulas(True)


def column_formulas(geom: ConvGeometry) -> ColumnFormulas:
    """The formulas for the column order of ``geom``."""
    return PLAIN_COLUMNS if geom.pool == (1, 1) else POOLED_COLUMNS


#: The pool-ordered max pool (contract of ``_im2col.max_pool_blocks``), per element
#: ``idx`` of the (O, PH, PW, N) output: the first tap's value, then for every later tap
#: ``t`` (in order) the first maximum, ties keeping the earlier tap and NaN winning as
#: in the portable path; then the bias, then the ReLU (code -1 where it is off).
POOL_CELL = (
    *_unravel("idx", ("o", "ph", "pw", "n")),
    ("src", "o * BO + ph * BH + pw * BW + n * BN"),
)
POOL_FIRST = (("best", "blocks[src]"), ("arg", "0"))
POOL_TAP = (
    ("v", "blocks[src + t * BT]"),
    ("arg", "XP_WHERE(v > best, t, arg)"),
    ("best", "XP_MAX(best, v)"),
)
POOL_BIAS = (("best", "best + bias[o * BB]"),)
POOL_RELU = (("arg", "XP_WHERE(best > 0, arg, -1)"), ("best", "XP_MAX(best, 0)"))

#: Its backward, per element ``idx`` of the (O, TAPS, PH, PW, N) result: the window's
#: gradient times "this tap is the recorded one" (0 or 1, so 0 * inf is NaN, as in
#: the portable product).
POOL_GRAD_CELL = (
    *_unravel("idx", ("o", "t", "ph", "pw", "n")),
    ("at_code", "o * AO + ph * AH + pw * AW + n * AN"),
    ("at_grad", "o * GO + ph * GH + pw * GW + n * GN"),
)
POOL_GRAD_VALUE = "grad[at_grad] * (argmax[at_code] == t)"


(_, _best_start), (_, _arg_start) = POOL_FIRST
POOL_SOURCE = f"""
const I idx = static_cast<I>(i);
{_c_lines(POOL_CELL)}
T best = {_best_start};
I arg = {_arg_start};
for (I t = 1; t < TAPS; ++t) {{
  const T v = {POOL_TAP[0][1]};
{_c_assign(POOL_TAP[1:], "  ")}
}}
if (HAS_BIAS) {{
{_c_assign(POOL_BIAS, "  ")}
}}
if (RELU) {{
{_c_assign(POOL_RELU, "  ")}
}}
out = best;
code = static_cast<signed char>(arg);
"""

POOL_BACKWARD_SOURCE = f"""
const I idx = static_cast<I>(i);
{_c_lines(POOL_GRAD_CELL)}
out = {POOL_GRAD_VALUE};
"""

# ------------------------------------------------------------------ shared host logic


def dense_memory(a: Any, ascontiguous: Callable[[Any], Any]) -> tuple[Any, tuple[int, ...]]:
    """``a``'s memory as a flat contiguous array, and ``a``'s strides in elements into it.

    A permuted view of a contiguous array (the usual case) is used as it is; anything
    else (a slice with gaps, negative strides) is copied to C order first. Works for
    NumPy and CuPy arrays (``ascontiguous`` is the library's ``ascontiguousarray``).
    """
    order = sorted(range(a.ndim), key=lambda d: -a.strides[d])
    view = a.transpose(order)
    if not view.flags.c_contiguous or min(a.strides, default=0) < 0:
        a = ascontiguous(a)
        view = a
    return view.reshape(-1), tuple(s // a.itemsize for s in a.strides)


def _geometry_values(geom: ConvGeometry) -> dict[str, int]:
    (pt, _), (pl, _) = geom.pad
    oh, ow = geom.out
    return dict(
        N=geom.batch,
        C=geom.in_channels,
        H=geom.in_size[0],
        W=geom.in_size[1],
        KH=geom.kernel[0],
        KW=geom.kernel[1],
        SH=geom.stride[0],
        SW=geom.stride[1],
        DH=geom.dilation[0],
        DW=geom.dilation[1],
        PT=pt,
        PL=pl,
        OH=oh,
        OW=ow,
        NCOL=geom.columns,
        KP=geom.pool[0],
        KQ=geom.pool[1],
        PH=geom.pooled[0],
        PW=geom.pooled[1],
    )


def im2col_arguments(geom: ConvGeometry, x_strides: Sequence[int]) -> dict[str, int]:
    """The scalars of the im2col kernels by name (``KERNELS[which][1]`` lists them in call
    order)."""
    return {**_geometry_values(geom), **dict(zip(X_STRIDES, x_strides))}


def col2im_arguments(geom: ConvGeometry, col_strides: Sequence[int]) -> dict[str, int]:
    """The scalars of the col2im kernels by name (``KERNELS[which][1]`` lists them in call
    order)."""
    return {**_geometry_values(geom), **dict(zip(COL_STRIDES, col_strides))}


def pool_arguments(
    shape: Sequence[int],
    block_strides: Sequence[int],
    bias_stride: int | None,
    relu: bool,
) -> dict[str, int]:
    """The scalars of the max-pool kernel (``POOL_PARAMS``) by name, for blocks of
    ``shape`` (O, TAPS, PH, PW, N) and element strides ``block_strides``; a bias of
    element stride ``bias_stride``, or None for no bias."""
    return {
        **dict(zip(POOL_SIZES, shape)),
        **dict(zip(("BO", "BT", "BH", "BW", "BN"), block_strides)),
        "BB": 0 if bias_stride is None else bias_stride,
        "HAS_BIAS": int(bias_stride is not None),
        "RELU": int(relu),
    }


def pool_backward_arguments(
    shape: Sequence[int], taps: int, grad_strides: Sequence[int], code_strides: Sequence[int]
) -> dict[str, int]:
    """The scalars of the max-pool backward kernel (``POOL_BACKWARD_PARAMS``) by name,
    for a gradient of ``shape`` (O, PH, PW, N) and ``taps`` pooling taps."""
    o, ph, pw, n = shape
    return {
        **dict(zip(POOL_SIZES, (o, taps, ph, pw, n))),
        **dict(zip(("GO", "GH", "GW", "GN"), grad_strides)),
        **dict(zip(("AO", "AH", "AW", "AN"), code_strides)),
    }


def output_permutation() -> tuple[int, ...]:
    """Axes of the (memory-ordered) col2im buffer that give (N, C, H, W)."""
    return tuple(OUTPUT_ORDER.index(a) for a in ("n", "c", "h", "w"))


def output_shape(geom: ConvGeometry) -> tuple[int, ...]:
    """Shape of col2im's buffer, axes in memory order (``OUTPUT_ORDER``)."""
    sizes = {"n": geom.batch, "c": geom.in_channels, "h": geom.in_size[0], "w": geom.in_size[1]}
    return tuple(sizes[a] for a in OUTPUT_ORDER)


# Half the int32 range: a tap in the padding computes an index a little outside the
# array before the kernel discards it, and that must not overflow either.
_INT32_LIMIT = 2**30


def _fits_int32(*sizes: int) -> bool:
    return max(sizes) < _INT32_LIMIT


# ------------------------------------------------------------------ NumPy reference


def _eval(expr: str, env: dict[str, Any]) -> Any:
    """One formula on NumPy arrays (C's ``&&`` of two comparisons becomes ``&``)."""
    return eval(expr.replace("&&", "&"), {"__builtins__": {}, **PY_HELPERS}, env)


def _evaluate(steps: Sequence[tuple[str, str]], env: dict[str, Any]) -> None:
    for name, expr in steps:
        env[name] = _eval(expr, env)


def reference_im2col(x: np.ndarray, geom: ConvGeometry) -> np.ndarray:
    """im2col computed by evaluating the kernel's own formulas with NumPy, one
    "thread" per column element (for tests; slow)."""
    f = column_formulas(geom)
    memory, strides = dense_memory(np.asarray(x), np.ascontiguousarray)
    rows = geom.in_channels * geom.taps
    env: dict[str, Any] = {k: np.int64(v) for k, v in im2col_arguments(geom, strides).items()}
    env["idx"] = np.arange(rows * env["NCOL"], dtype=np.int64)
    _evaluate(f.im2col_steps, env)
    valid = _eval(f.im2col_valid, env)
    values = np.where(valid, memory[np.where(valid, env["src"], 0)], 0)
    return values.astype(x.dtype).reshape(rows, int(env["NCOL"]))


def reference_col2im(cols: np.ndarray, geom: ConvGeometry) -> np.ndarray:
    """col2im computed by evaluating the kernel's own formulas with NumPy, one
    "thread" per input element, the taps in the kernel's order (for tests; slow)."""
    f = column_formulas(geom)
    rows, ncol = geom.in_channels * geom.taps, geom.columns
    memory, strides = dense_memory(np.asarray(cols).reshape(rows, ncol), np.ascontiguousarray)
    shape = output_shape(geom)
    env: dict[str, Any] = {k: np.int64(v) for k, v in col2im_arguments(geom, strides).items()}
    env["idx"] = np.arange(int(np.prod(shape)), dtype=np.int64)
    _evaluate(f.col2im_pixel, env)
    acc = np.zeros(env["idx"].shape, dtype=cols.dtype)
    for ki in range(geom.kernel[0]):
        env["ki"] = np.int64(ki)
        _evaluate(f.row_tap, env)
        for kj in range(geom.kernel[1]):
            env["kj"] = np.int64(kj)
            _evaluate(f.col_tap, env)
            hit = _eval(f.hit, env)
            src = _eval(f.src, env)
            acc = acc + np.where(hit, memory[np.where(hit, src, 0)], 0).astype(cols.dtype)
    return acc.reshape(shape).transpose(output_permutation())


def _check_bias(blocks: np.ndarray, bias: np.ndarray | None) -> None:
    if bias is not None and bias.dtype != blocks.dtype:
        raise ValueError(f"bias: expected dtype {blocks.dtype} (the blocks'), got {bias.dtype}")


def reference_max_pool_blocks(
    blocks: np.ndarray, bias: np.ndarray | None = None, relu: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The pool-ordered max pool computed by evaluating the kernel's own formulas with
    NumPy, one "thread" per output element, the taps in the kernel's order (for tests;
    slow). ``blocks`` (O, TAPS, PH, PW, N), ``bias`` (O,) of the same dtype."""
    blocks = np.asarray(blocks)
    _check_bias(blocks, bias)
    memory, strides = dense_memory(blocks, np.ascontiguousarray)
    bias_memory, bias_strides = (
        (memory, (None,)) if bias is None else dense_memory(np.asarray(bias), np.ascontiguousarray)
    )
    values = pool_arguments(blocks.shape, strides, bias_strides[0], relu)
    env: dict[str, Any] = {k: np.int64(v) for k, v in values.items()}
    shape = (blocks.shape[0], *blocks.shape[2:])
    env.update(blocks=memory, bias=bias_memory, idx=np.arange(int(np.prod(shape))))
    _evaluate(POOL_CELL + POOL_FIRST, env)
    for t in range(1, blocks.shape[1]):
        env["t"] = np.int64(t)
        _evaluate(POOL_TAP, env)
    if bias is not None:
        _evaluate(POOL_BIAS, env)
    if relu:
        _evaluate(POOL_RELU, env)
    out = np.broadcast_to(env["best"], env["idx"].shape).astype(blocks.dtype)
    code = np.broadcast_to(env["arg"], env["idx"].shape).astype(np.int8)
    return out.reshape(shape), code.reshape(shape)


def reference_max_pool_blocks_backward(
    grad_out: np.ndarray, argmax: np.ndarray, taps: int
) -> np.ndarray:
    """The pool-ordered max-pool backward computed by evaluating the kernel's own
    formula with NumPy, one "thread" per result element (for tests; slow):
    (O, PH, PW, N) and int8 codes -> (O, TAPS, PH, PW, N)."""
    grad_out, argmax = np.asarray(grad_out), np.asarray(argmax)
    grad_memory, grad_strides = dense_memory(grad_out, np.ascontiguousarray)
    code_memory, code_strides = dense_memory(argmax, np.ascontiguousarray)
    values = pool_backward_arguments(grad_out.shape, taps, grad_strides, code_strides)
    env: dict[str, Any] = {k: np.int64(v) for k, v in values.items()}
    shape = (grad_out.shape[0], taps, *grad_out.shape[1:])
    env.update(grad=grad_memory, argmax=code_memory, idx=np.arange(int(np.prod(shape))))
    _evaluate(POOL_GRAD_CELL, env)
    with np.errstate(invalid="ignore"):  # 0 * inf is NaN, silently, as on the GPU
        values = _eval(POOL_GRAD_VALUE, env)
    return values.astype(grad_out.dtype).reshape(shape)


# ------------------------------------------------------------------ CuPy kernels


#: Per kernel: its raw input arrays (type, name), scalar parameters, outputs and body.
KERNELS: dict[str, tuple[tuple[tuple[str, str], ...], tuple[str, ...], str, str]] = {
    **{
        f.kernel("im2col"): ((("T", "x"),), (*f.params, *X_STRIDES), "T out", f.im2col_source)
        for f in (PLAIN_COLUMNS, POOLED_COLUMNS)
    },
    **{
        f.kernel("col2im"): ((("T", "cols"),), (*f.params, *COL_STRIDES), "T out", f.col2im_source)
        for f in (PLAIN_COLUMNS, POOLED_COLUMNS)
    },
    "max_pool_blocks": (
        (("T", "blocks"), ("T", "bias")),
        POOL_PARAMS,
        "T out, int8 code",
        POOL_SOURCE,
    ),
    "max_pool_blocks_backward": (
        (("T", "grad"), ("int8", "argmax")),
        POOL_BACKWARD_PARAMS,
        "T out",
        POOL_BACKWARD_SOURCE,
    ),
}


def kernel_spec(which: str, wide: bool) -> dict[str, str]:
    """The arguments of ``cupy.ElementwiseKernel`` for one of :data:`KERNELS` with
    32-bit (``wide=False``) or 64-bit indices. Scalars get explicit integer types (CuPy
    infers a type placeholder from arrays only); ``I`` is a typedef in the preamble."""
    if which not in KERNELS:
        raise ValueError(f"which: expected one of {sorted(KERNELS)}, got {which!r}")
    raws, params, outputs, body = KERNELS[which]
    dtype, ctype = ("int64", "long long") if wide else ("int32", "int")
    return {
        "in_params": ", ".join(
            [*(f"raw {t} {name}" for t, name in raws), *(f"{dtype} {p}" for p in params)]
        ),
        "out_params": outputs,
        "operation": body,
        "name": f"xpconv_{which}_{dtype}",
        "preamble": f"typedef {ctype} I;\n{PREAMBLE}",
    }


@functools.cache
def _kernel(which: str, wide: bool) -> Any:
    import cupy

    return cupy.ElementwiseKernel(**kernel_spec(which, wide))


def _launch(which: str, inputs: Sequence[Array], values: dict[str, int], *outs: Array) -> None:
    if outs[0].size:
        wide = not _fits_int32(*(a.size for a in (*inputs, *outs)))
        _kernel(which, wide)(*inputs, *(values[p] for p in KERNELS[which][1]), *outs)


def im2col(xp: Any, x: Array, geom: ConvGeometry) -> Array:
    """Columns of ``x``: (N, C, H, W) -> (C * KH * KW, OH * OW * N), plain or
    pool-ordered (the ``_im2col`` contract), one CUDA kernel."""
    import cupy

    with x.device:
        memory, strides = dense_memory(x, cupy.ascontiguousarray)
        values = im2col_arguments(geom, strides)
        out = cupy.empty((geom.in_channels * geom.taps, geom.columns), dtype=x.dtype)
        _launch(column_formulas(geom).kernel("im2col"), [memory], values, out)
    return out


def col2im(xp: Any, cols: Array, geom: ConvGeometry) -> Array:
    """The adjoint of :func:`im2col`: (C * KH * KW, columns) -> (N, C, H, W), one CUDA
    kernel; the result's memory keeps the batch innermost."""
    import cupy

    rows = geom.in_channels * geom.taps
    with cols.device:
        memory, strides = dense_memory(cols.reshape(rows, geom.columns), cupy.ascontiguousarray)
        values = col2im_arguments(geom, strides)
        out = cupy.empty(output_shape(geom), dtype=cols.dtype)
        _launch(column_formulas(geom).kernel("col2im"), [memory], values, out)
    return out.transpose(output_permutation())


_FLOATS = ("float32", "float64")


def max_pool_blocks(
    xp: Any, blocks: Array, bias: Array | None = None, relu: bool = False
) -> tuple[Array, Array]:
    """Pool-ordered max pool, bias and ReLU (contract in ``portable.max_pool_blocks``),
    one CUDA kernel:
    (O, T, PH, PW, N) and (O,) -> (O, PH, PW, N) and its int8 tap codes.

    The blocks are read through their strides. Other dtypes than float32/float64, or a
    bias of another dtype than the blocks (which the portable path promotes), take the
    portable path.
    """
    if blocks.dtype.name not in _FLOATS or (bias is not None and bias.dtype != blocks.dtype):
        return _im2col.max_pool_blocks(xp, blocks, bias, relu)
    import cupy

    with blocks.device:
        memory, strides = dense_memory(blocks, cupy.ascontiguousarray)
        bias_memory, bias_strides = (
            (memory, (None,)) if bias is None else dense_memory(bias, cupy.ascontiguousarray)
        )
        values = pool_arguments(blocks.shape, strides, bias_strides[0], relu)
        shape = (blocks.shape[0], *blocks.shape[2:])
        out = cupy.empty(shape, dtype=blocks.dtype)
        code = cupy.empty(shape, dtype=cupy.int8)
        _launch("max_pool_blocks", [memory, bias_memory], values, out, code)
    return out, code


def max_pool_blocks_backward(xp: Any, grad_out: Array, argmax: Array, taps: int) -> Array:
    """Pool-ordered max-pool backward (contract in ``portable.max_pool_blocks``), one CUDA kernel:
    (O, PH, PW, N) and int8 codes -> (O, T, PH, PW, N); every element is written once,
    so the result needs no zero fill. Other dtypes take the portable path."""
    if grad_out.dtype.name not in _FLOATS or argmax.dtype.name != "int8":
        return _im2col.max_pool_blocks_backward(xp, grad_out, argmax, taps)
    import cupy

    with grad_out.device:
        grad_memory, grad_strides = dense_memory(grad_out, cupy.ascontiguousarray)
        code_memory, code_strides = dense_memory(argmax, cupy.ascontiguousarray)
        values = pool_backward_arguments(grad_out.shape, taps, grad_strides, code_strides)
        out = cupy.empty((grad_out.shape[0], taps, *grad_out.shape[1:]), dtype=grad_out.dtype)
        _launch("max_pool_blocks_backward", [grad_memory, code_memory], values, out)
    return out


def batch_innermost(xp: Any, x: Array) -> bool:
    """Whether the batch axis (0) of ``x`` has the smallest stride."""
    return x.ndim > 1 and x.shape[0] > 1 and x.strides[0] == min(abs(s) for s in x.strides)


def make_kernels() -> Kernels:
    """The CuPy kernels (CuPy itself is imported only when they run)."""
    return Kernels(
        "cupy",
        im2col,
        col2im,
        batch_innermost=batch_innermost,
        max_pool_blocks=max_pool_blocks,
        max_pool_blocks_backward=max_pool_blocks_backward,
    )


@functools.cache
def _load() -> Kernels | None:
    try:
        import cupy  # noqa: F401
    except ImportError:
        return None
    return make_kernels()


register_fast_path("is_cupy_namespace", _load)
