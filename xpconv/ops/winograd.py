"""Winograd minimal filtering F(m x m, 3 x 3) for stride-1 3x3 convolutions.

The output is cut into m x m tiles; each reads an alpha x alpha input tile
(``alpha = m + 2``). With the constant matrices ``B^T`` (alpha, alpha), ``G`` (alpha, 3)
and ``A^T`` (m, alpha) of the chosen tile size:

- filter transform ``U = G g G^T`` per (output, input) channel pair;
- input transform ``V = B^T d B`` per input tile and channel;
- ``M[k] = U[k] @ V[k]`` for each of the alpha * alpha tile positions ``k``: a
  (O, C) by (C, tiles * N) product, so the channel sum is a matmul;
- output transform ``Y = A^T M A`` per output tile.

F(2x2, 3x3) does 16 multiplies per 2x2 output tile and channel pair where direct
convolution does 36 (2.25 times fewer); F(4x4, 3x3) 36 where direct does 144 (4 times
fewer), at a larger float32 rounding error (its transforms hold 4, 5, 8 and 1/6).

Backward is the adjoint of each linear step: ``dM = A dY A^T``, ``dU[k] = dM[k] @ V[k]^T``,
``dV[k] = U[k]^T @ dM[k]``, ``dg = G^T dU G`` and ``dd = B dV B^T`` with the
overlapping input tiles added back (a fold that interleaves shifted copies, no in-place
writes, so every Array API library runs it).

Layout: the transforms work on (C, N, H, W) and the tile positions lie on the leading
axis of (alpha * alpha, C, N * TH * TW) (TH, TW: tiles per column and row). The input is
zero-padded so that whole tiles cover the output; outputs past the convolution's own
size are cropped (so any output size works, odd ones included).

The transformed input ``V`` holds ``alpha**2 / m**2`` values per output position and
input channel (4 for F(2, 3), 2.25 for F(4, 3)) where im2col's columns hold 9: a
training pass keeps less than im2col does. A forward pass that no backward follows
(``keep=False``) runs the batch in chunks whose ``V`` and ``M`` stay under
:data:`WINOGRAD_BLOCK_BYTES`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import array_api_compat
import array_api_extra as xpx

from xpconv.backends.kernels import kernels_for
from xpconv.backends.portable import ConvGeometry
from xpconv.backends.registry import get_backend

Array = Any
Matrix = tuple[tuple[float, ...], ...]

__all__ = [
    "ALGORITHMS",
    "AUTO_MIN_CHANNELS",
    "TILES",
    "WINOGRAD_BLOCK_BYTES",
    "WinogradSaved",
    "WinogradTransforms",
    "choose_algorithm",
    "winograd_conv2d_backward",
    "winograd_conv2d",
    "winograd_saved",
    "winograd_supported",
]

#: bytes of transformed input and tile products one chunk of an inference pass may hold
WINOGRAD_BLOCK_BYTES = 1 << 22


@dataclass(frozen=True)
class WinogradTransforms:
    """The constant matrices of F(m x m, 3 x 3): ``bt`` (alpha, alpha), ``g`` (alpha, 3),
    ``at`` (m, alpha)."""

    m: int
    bt: Matrix
    g: Matrix
    at: Matrix

    @property
    def alpha(self) -> int:
        return self.m + 2


_F2 = WinogradTransforms(
    2,
    bt=((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
    g=((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1)),
    at=((1, 1, 1, 0), (0, 1, -1, -1)),
)
_F4 = WinogradTransforms(
    4,
    bt=(
        (4, 0, -5, 0, 1, 0),
        (0, -4, -4, 1, 1, 0),
        (0, 4, -4, -1, 1, 0),
        (0, -2, -1, 2, 1, 0),
        (0, 2, -1, -2, 1, 0),
        (0, 4, 0, -5, 0, 1),
    ),
    g=(
        (1 / 4, 0, 0),
        (-1 / 6, -1 / 6, -1 / 6),
        (-1 / 6, 1 / 6, -1 / 6),
        (1 / 24, 1 / 12, 1 / 6),
        (1 / 24, -1 / 12, 1 / 6),
        (0, 0, 1),
    ),
    at=((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1)),
)
#: output tile size -> its transforms
TILES = {2: _F2, 4: _F4}


def _transpose(matrix: Matrix) -> Matrix:
    return tuple(zip(*matrix))


def winograd_supported(geom: ConvGeometry) -> str | None:
    """``None`` when Winograd F(m, 3) runs the convolution of ``geom``, else the reason."""
    if geom.kernel != (3, 3):
        return f"kernel_size: Winograd needs a 3x3 kernel, got {geom.kernel}"
    if geom.stride != (1, 1):
        return f"stride: Winograd needs stride 1, got {geom.stride}"
    if geom.dilation != (1, 1):
        return f"dilation: Winograd needs dilation 1, got {geom.dilation}"
    if geom.groups != 1:
        return f"groups: Winograd needs groups=1, got {geom.groups}"
    return None


#: the values of a convolution layer's ``algorithm``
ALGORITHMS = ("auto", "im2col", "winograd")

#: ``algorithm="auto"``: the fewest input channels from which a convolution Winograd
#: supports runs it, per backend name; a backend not listed always runs im2col. Empty:
#: on the CPUs measured (docs/performance.md) im2col's tuned NumPy and PyTorch paths
#: beat these transforms on every shape timed, LeNet's layers included.
AUTO_MIN_CHANNELS: dict[str, int] = {}


def choose_algorithm(geom: ConvGeometry, backend: str) -> str:
    """``"winograd"`` or ``"im2col"`` for ``algorithm="auto"``: a fixed rule by shape and
    backend (see :data:`AUTO_MIN_CHANNELS`), the same on every call and every machine."""
    least = AUTO_MIN_CHANNELS.get(backend)
    if least is None or winograd_supported(geom) is not None:
        return "im2col"
    return "winograd" if geom.in_channels >= least else "im2col"


def _transforms(tile: Any) -> WinogradTransforms:
    if isinstance(tile, bool) or tile not in TILES:
        raise ValueError(f"tile: expected one of {sorted(TILES)}, got {tile!r}")
    return TILES[tile]


# ------------------------------------------------------------------ linear helpers


def _combine(parts: Any, row: tuple[float, ...]) -> Array:
    """``sum(row[i] * parts[i])``: zeros skipped, ones added or subtracted."""
    total = None
    for coef, part in zip(row, parts):
        if coef == 0:
            continue
        if total is None:
            total = part if coef == 1 else (-part if coef == -1 else coef * part)
        elif coef == 1:
            total = total + part
        elif coef == -1:
            total = total - part
        else:
            total = total + coef * part
    assert total is not None  # every row of the transforms has a non-zero entry
    return total


def _apply(parts: Any, matrix: Matrix) -> list[Array]:
    """``matrix @ parts`` over the leading index of ``parts`` (a list or an array)."""
    return [_combine(parts, row) for row in matrix]


def _axis_slices(a: Array, axis: int, m: int, alpha: int, tiles: int) -> list[Array]:
    """The alpha strided slices ``a[..., i : i + m * (tiles - 1) + 1 : m, ...]`` along
    ``axis``: slice ``i`` holds row ``i`` of every tile."""
    out = []
    for i in range(alpha):
        index = [slice(None)] * a.ndim
        index[axis] = slice(i, i + m * (tiles - 1) + 1, m)
        out.append(a[tuple(index)])
    return out


def _zeros_like_axis(xp: Any, a: Array, axis: int) -> Array:
    shape = list(a.shape)
    shape[axis] = 1
    return xp.zeros(tuple(shape), dtype=a.dtype, device=array_api_compat.device(a))


def _fold(xp: Any, parts: list[Array], axis: int, m: int) -> Array:
    """The adjoint of :func:`_axis_slices`: alpha arrays of ``tiles`` along ``axis`` ->
    one of ``m * tiles + 2`` along it, the overlapping tile rows added."""
    alpha, tiles = len(parts), parts[0].shape[axis]
    zero = _zeros_like_axis(xp, parts[0], axis)
    residues = []
    for rho in range(m):  # rows m * t + rho of the result: tile t's row rho, tile t-1's rho+m
        q = xp.concat([parts[rho], zero], axis=axis)
        if rho + m < alpha:
            q = q + xp.concat([zero, parts[rho + m]], axis=axis)
        residues.append(q)
    stacked = xp.stack(residues, axis=axis + 1)  # (..., tiles + 1, m, ...)
    shape = list(parts[0].shape)
    shape[axis] = m * (tiles + 1)
    folded = xp.reshape(stacked, tuple(shape))
    index = [slice(None)] * folded.ndim
    index[axis] = slice(0, m * tiles + 2)
    return folded[tuple(index)]


def _constant(xp: Any, matrix: Matrix, like: Array) -> Array:
    return xp.asarray(matrix, dtype=like.dtype, device=array_api_compat.device(like))


# ------------------------------------------------------------------ plan and transforms


@dataclass(frozen=True)
class _Plan:
    """Tiles per column and row, and the padding that makes whole tiles."""

    t: WinogradTransforms
    tiles: tuple[int, int]
    pad: tuple[tuple[int, int], tuple[int, int]]


def _plan(geom: ConvGeometry, t: WinogradTransforms) -> _Plan:
    tiles = tuple(math.ceil(o / t.m) for o in geom.out)
    pad = tuple(
        (before, t.m * n + 2 - size - before)
        for (before, _), n, size in zip(geom.pad, tiles, geom.in_size)
    )
    return _Plan(t, tiles, pad)  # type: ignore[arg-type]


def _filter_transform(xp: Any, weight: Array, t: WinogradTransforms) -> Array:
    """(O, C, 3, 3) -> U (alpha * alpha, O, C)."""
    g = _constant(xp, t.g, weight)
    u = xp.matmul(xp.matmul(g, weight), g.T)  # (O, C, alpha, alpha)
    o, c = weight.shape[0], weight.shape[1]
    return xp.reshape(xp.permute_dims(u, (2, 3, 0, 1)), (t.alpha * t.alpha, o, c))


def _filter_adjoint(xp: Any, du: Array, t: WinogradTransforms) -> Array:
    """dU (alpha * alpha, O, C) -> dg (O, C, 3, 3)."""
    g = _constant(xp, t.g, du)
    d4 = xp.permute_dims(xp.reshape(du, (t.alpha, t.alpha, *du.shape[1:])), (2, 3, 0, 1))
    return xp.matmul(xp.matmul(g.T, d4), g)


def _two_axis(
    a: Array, matrix: Matrix, stride: int, tiles: tuple[int, int], xp: Any
) -> list[Array]:
    """``matrix @ tile @ matrix^T`` for every len(matrix[0])-square tile (``stride``
    apart) of the (K, Hp, Wp, N) array ``a``: len(matrix)**2 arrays (K, TH * TW * N)."""
    size, (th, tw) = len(matrix[0]), tiles
    rows = _apply(_axis_slices(a, 1, stride, size, th), matrix)  # each (K, TH, Wp, N)
    k, n = a.shape[0], a.shape[3]
    return [
        xp.reshape(val, (k, th * tw * n))
        for r in rows
        for val in _apply(_axis_slices(r, 2, stride, size, tw), matrix)
    ]


def _two_axis_fold(
    xp: Any, parts: list[Array], matrix: Matrix, stride: int, shape: tuple[int, ...]
) -> Array:
    """The adjoint of :func:`_two_axis` for ``matrix`` (so here its transpose is applied):
    len(matrix)**2 arrays (K, TH * TW * N) -> (K, stride * TH + 2, stride * TW + 2, N)
    for ``shape`` (K, TH, TW, N); overlapping tile rows are added."""
    grid = [xp.reshape(p, shape) for p in parts]
    mt = _transpose(matrix)
    rows = [
        _fold(xp, _apply(grid[a * len(matrix) : (a + 1) * len(matrix)], mt), 2, stride)
        for a in range(len(matrix))
    ]
    return _fold(xp, _apply(rows, mt), 1, stride)


def _input_transform(xp: Any, x: Array, plan: _Plan) -> list[Array]:
    """x (N, C, H, W) -> V: alpha * alpha arrays (C, TH * TW * N), one per tile position."""
    t = plan.t
    xt = xpx.pad(xp.permute_dims(x, (1, 2, 3, 0)), ((0, 0), *plan.pad, (0, 0)), xp=xp)
    return _two_axis(xt, t.bt, t.m, plan.tiles, xp)


def _input_adjoint(xp: Any, dv: list[Array], geom: ConvGeometry, plan: _Plan) -> Array:
    """dV (alpha * alpha arrays (C, TH * TW * N)) -> dx (N, C, H, W) (a permuted view
    where the library has views: its memory keeps the batch innermost)."""
    t, (h, w) = plan.t, geom.in_size
    shape = (geom.in_channels, *plan.tiles, geom.batch)
    dxt = _two_axis_fold(xp, dv, t.bt, t.m, shape)  # (C, Hp, Wp, N)
    (pt, _), (pl, _) = plan.pad
    return xp.permute_dims(dxt[:, pt : pt + h, pl : pl + w, :], (3, 0, 1, 2))


def _output_transform(xp: Any, mm: list[Array], geom: ConvGeometry, plan: _Plan) -> Array:
    """M (alpha * alpha arrays (O, TH * TW * N)) -> y (N, O, OH, OW) (a permuted view
    where the library has views: its memory keeps the batch innermost)."""
    t, (th, tw) = plan.t, plan.tiles
    shape = (geom.out_channels, th, tw, geom.batch)
    grid = [xp.reshape(p, shape) for p in mm]
    rows = [
        _interleave(xp, _apply(grid[i * t.alpha : (i + 1) * t.alpha], t.at), 2)
        for i in range(t.alpha)
    ]
    y = _interleave(xp, _apply(rows, t.at), 1)  # (O, m * TH, m * TW, N)
    oh, ow = geom.out
    return xp.permute_dims(y[:, :oh, :ow, :], (3, 0, 1, 2))


def _interleave(xp: Any, parts: list[Array], axis: int) -> Array:
    """m arrays of ``tiles`` along ``axis`` -> one of ``m * tiles``: element ``t`` of
    part ``r`` goes to ``m * t + r`` (the adjoint of non-overlapping stride-m slices)."""
    stacked = xp.stack(parts, axis=axis + 1)
    shape = list(parts[0].shape)
    shape[axis] *= len(parts)
    return xp.reshape(stacked, tuple(shape))


def _output_adjoint(xp: Any, grad: Array, geom: ConvGeometry, plan: _Plan) -> list[Array]:
    """dy (N, O, OH, OW) -> dM: alpha * alpha arrays (O, TH * TW * N)."""
    t, (th, tw) = plan.t, plan.tiles
    (oh, ow) = geom.out
    pad = ((0, 0), (0, t.m * th - oh), (0, t.m * tw - ow), (0, 0))
    gt = xpx.pad(xp.permute_dims(grad, (1, 2, 3, 0)), pad, xp=xp)
    return _two_axis(gt, _transpose(t.at), t.m, plan.tiles, xp)


def _run(xp: Any, fn: Callable[..., Any], array: Any, *static: Any) -> Any:
    """``fn(xp, array, *static)``; on JAX compiled once per ``static`` (the geometry
    and plan): its transforms are many small slices and sums, each compiled on its own
    and dispatched one by one otherwise."""
    if not array_api_compat.is_jax_namespace(xp):
        return fn(xp, array, *static)
    return _jax_compiled(fn, static)(array)


@functools.cache
def _jax_compiled(fn: Callable[..., Any], static: tuple) -> Callable[..., Any]:
    backend = get_backend("jax")
    return backend.compile(lambda a: fn(backend.xp, a, *static))


# ------------------------------------------------------------------ tile products


def _batched_matmul(xp: Any) -> bool:
    """Whether the alpha * alpha tile products run as one batched matmul on this
    backend (else one 2-D product each, through the backend's ``matmul`` kernel): only
    on JAX, where XLA gets one operation; the 2-D products were faster on NumPy and
    PyTorch CPU (docs/performance.md)."""
    return array_api_compat.is_jax_namespace(xp)


def _tile_products(
    xp: Any, a: Any, b: list[Array], ta: bool = False, tb: bool = False
) -> list[Array]:
    """``a[k] @ b[k]`` (each operand transposed on request) for every tile position k;
    ``a`` is a list or an array whose leading axis is the tile position."""
    if _batched_matmul(xp):
        sa = a if not isinstance(a, list) else xp.stack(a)
        sb = xp.stack(b)
        sa = xp.permute_dims(sa, (0, 2, 1)) if ta else sa
        sb = xp.permute_dims(sb, (0, 2, 1)) if tb else sb
        out = xp.matmul(sa, sb)
        return [out[k, ...] for k in range(out.shape[0])]
    matmul = kernels_for(xp).matmul
    parts = a if isinstance(a, list) else [a[k, ...] for k in range(a.shape[0])]
    return [matmul(xp, p.T if ta else p, q.T if tb else q) for p, q in zip(parts, b)]


# ------------------------------------------------------------------ unchecked entry points


@dataclass(frozen=True)
class WinogradSaved:
    """What a Winograd backward pass reads: the transformed filter U and input V
    (``None`` after a forward pass with ``keep=False``), the input (for V then) and
    the geometry."""

    u: Array
    v: Array | None
    x: Array | None
    geom: ConvGeometry
    tile: int


def _chunk(geom: ConvGeometry, t: WinogradTransforms, itemsize: int) -> int:
    """Images per chunk of an inference pass: their transformed input V and products M
    (alpha * alpha * (C + O) values per tile) stay under the block bytes."""
    th, tw = (math.ceil(o / t.m) for o in geom.out)
    per_image = t.alpha * t.alpha * (geom.in_channels + geom.out_channels) * th * tw * itemsize
    return max(1, WINOGRAD_BLOCK_BYTES // per_image)


def _forward_part(xp: Any, x: Array, u: Array, geom: ConvGeometry, plan: _Plan) -> tuple:
    v = _run(xp, _input_transform, x, plan)
    return _run(xp, _output_transform, _tile_products(xp, u, v), geom, plan), v


def winograd_conv2d(
    xp: Any,
    x: Array,
    weight: Array,
    bias: Array | None,
    geom: ConvGeometry,
    *,
    tile: int = 2,
    keep: bool = True,
) -> tuple[Array, WinogradSaved]:
    """The convolution for a checked ``geom`` that ``winograd_supported`` accepts: the
    output (N, O, OH, OW) and what the backward pass reads. With ``keep=False`` V is
    not kept and the batch runs in chunks (see :data:`WINOGRAD_BLOCK_BYTES`)."""
    t = _transforms(tile)
    geom = replace(geom, batch=int(x.shape[0]))
    u = _filter_transform(xp, weight, t)
    step = geom.batch if keep else _chunk(geom, t, xp.finfo(x.dtype).bits // 8)
    if step >= geom.batch:
        out, v = _forward_part(xp, x, u, geom, _plan(geom, t))
    else:
        parts = []
        for lo in range(0, geom.batch, step):
            sub = replace(geom, batch=min(step, geom.batch - lo))
            parts.append(_forward_part(xp, x[lo : lo + sub.batch], u, sub, _plan(sub, t))[0])
        out, v = xp.concat(parts, axis=0), None
    if bias is not None:
        out = out + xp.reshape(bias, (1, -1, 1, 1))
    saved = WinogradSaved(u, v if keep else None, None if keep else x, geom, tile)
    return out, saved


def winograd_saved(
    xp: Any, x: Array, weight: Array, geom: ConvGeometry, tile: int = 2
) -> WinogradSaved:
    """What :func:`winograd_conv2d_backward` reads, for the input ``x`` of a forward pass
    that kept nothing (the filter transformed again; the input transformed on demand)."""
    return WinogradSaved(_filter_transform(xp, weight, _transforms(tile)), None, x, geom, tile)


def winograd_conv2d_backward(
    xp: Any, grad_out: Array, saved: WinogradSaved, *, need_input_grad: bool = True
) -> tuple[Array | None, Array, Array]:
    """Vector-Jacobian product of :func:`winograd_conv2d` for a checked ``saved.geom``:
    (grad_x or ``None``, grad_weight (O, C, 3, 3), grad_bias (O,))."""
    t, geom = _transforms(saved.tile), saved.geom
    plan = _plan(geom, t)
    v = saved.v if saved.v is not None else _run(xp, _input_transform, saved.x, plan)
    dm = _run(xp, _output_adjoint, grad_out, geom, plan)
    grad_w = _filter_adjoint(xp, xp.stack(_tile_products(xp, dm, v, tb=True)), t)
    grad_b = xp.sum(grad_out, axis=(0, 2, 3))
    if not need_input_grad:
        return None, grad_w, grad_b
    dv = _tile_products(xp, saved.u, dm, ta=True)
    return _run(xp, _input_adjoint, dv, geom, plan), grad_w, grad_b
