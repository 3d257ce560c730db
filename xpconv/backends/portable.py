"""im2col and its adjoint col2im, written with Array-API operations only.

Layout. For an input ``x`` of shape (N, C, H, W) and a kernel of KH x KW taps, the
column matrix has shape (C * KH * KW, OH * OW * N): row ``(c, i, j)`` holds, for every
output position, the input value under kernel tap ``(i, j)`` of channel ``c``. Rows are
ordered like the flattened PyTorch weight (O, C, KH, KW) -> (O, C * KH * KW), so the
convolution is one matmul ``W2 @ cols``. Columns are ordered (oh, ow, n), batch
innermost: the matmul's output (O, OH * OW * N) is then an (N, O, OH, OW) array whose
memory keeps the batch innermost, so the elementwise ops, pooling and the next im2col
that follow all run over long contiguous rows instead of rows of OW elements.

Pool-ordered columns. When a tiled KP x KQ max pool follows the convolution, the
geometry's ``pool`` is (KP, KQ) and the columns are ordered (pi, pj, ph, pw, n) with
``oh = KP * ph + pi``: the matmul output is then KP * KQ contiguous blocks, one per
pooling tap, and the pool is an elementwise max over whole blocks. Output rows and
columns beyond ``KP * PH`` and ``KQ * PW`` (which the pool drops) are not computed.
With ``pool == (1, 1)`` this is the plain (oh, ow, n) order.

im2col is a loop over the KH x KW kernel offsets, each taking one strided slice of the
padded input (no ``as_strided``); col2im is its adjoint and accumulates those slices.
Slice stops are kept in bounds (``start + stride * (out - 1) + 1``), as array-api-strict
requires.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import array_api_compat
import array_api_extra as xpx

Array = Any


@dataclass(frozen=True)
class ConvGeometry:
    """Every size of one 2-D convolution, validated.

    ``pad`` is ((top, bottom), (left, right)); ``out`` is (OH, OW).
    """

    batch: int
    in_channels: int
    in_size: tuple[int, int]
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pad: tuple[tuple[int, int], tuple[int, int]]
    groups: int
    out: tuple[int, int]
    pool: tuple[int, int] = (1, 1)

    @property
    def taps(self) -> int:
        return self.kernel[0] * self.kernel[1]

    @property
    def pooled(self) -> tuple[int, int]:
        """(PH, PW): output rows and columns per pooling tap."""
        return self.out[0] // self.pool[0], self.out[1] // self.pool[1]

    @property
    def columns(self) -> int:
        """Columns of the column matrix: KP * KQ * PH * PW * N."""
        (kp, kq), (ph, pw) = self.pool, self.pooled
        return kp * kq * ph * pw * self.batch

    @property
    def padded_size(self) -> tuple[int, int]:
        (pt, pb), (pl, pr) = self.pad
        return self.in_size[0] + pt + pb, self.in_size[1] + pl + pr

    def window(self, i: int, j: int, pi: int, pj: int) -> tuple[slice, slice]:
        """Slices of the padded input read by kernel tap (i, j) for pooling tap (pi, pj)."""
        (dh, dw), (sh, sw), (kp, kq), (ph, pw) = self.dilation, self.stride, self.pool, self.pooled
        top, left = i * dh + pi * sh, j * dw + pj * sw
        return (
            slice(top, top + sh * kp * (ph - 1) + 1, sh * kp),
            slice(left, left + sw * kq * (pw - 1) + 1, sw * kq),
        )

    def tap_index(self, i: int, j: int, pi: int, pj: int) -> tuple[slice, slice, slice, slice]:
        """Index of the inputs of kernel tap (i, j), pooling tap (pi, pj), in a padded
        (C, Hp, Wp, N) array."""
        rows, cols = self.window(i, j, pi, pj)
        return slice(None), rows, cols, slice(None)

    def all_taps(self) -> list[tuple[int, int, int, int]]:
        """(i, j, pi, pj) in column-matrix order."""
        (kh, kw), (kp, kq) = self.kernel, self.pool
        return [
            (i, j, pi, pj)
            for i in range(kh)
            for j in range(kw)
            for pi in range(kp)
            for pj in range(kq)
        ]


def _pad_hw(xp: Any, xt: Array, geom: ConvGeometry) -> Array:
    """Zero-pad axes 1 and 2 (H, W) of a (C, H, W, N) array."""
    (pt, pb), (pl, pr) = geom.pad
    if pt == pb == pl == pr == 0:
        return xt
    return xpx.pad(xt, ((0, 0), (pt, pb), (pl, pr), (0, 0)), xp=xp)


def im2col(xp: Any, x: Array, geom: ConvGeometry) -> Array:
    """Columns of ``x``: (N, C, H, W) -> (C * KH * KW, OH * OW * N) (or pool-ordered)."""
    xt = _pad_hw(xp, xp.permute_dims(x, (1, 2, 3, 0)), geom)  # (C, Hp, Wp, N)
    taps = [xt[geom.tap_index(*tap)] for tap in geom.all_taps()]
    cols = xp.stack(taps, axis=1)  # (C, KH*KW*KP*KQ, PH, PW, N)
    return xp.reshape(cols, (geom.in_channels * geom.taps, geom.columns))


def col2im(xp: Any, cols: Array, geom: ConvGeometry) -> Array:
    """The adjoint of :func:`im2col`: (C * KH * KW, OH * OW * N) -> (N, C, H, W).

    Every column entry is added back to the input position it was read from, so
    overlapping windows accumulate. The result's memory keeps the batch innermost.
    """
    n, c = geom.batch, geom.in_channels
    hp, wp = geom.padded_size
    cols = xp.reshape(cols, (c, *geom.kernel, *geom.pool, *geom.pooled, n))
    acc = xp.zeros((c, hp, wp, n), dtype=cols.dtype, device=array_api_compat.device(cols))
    for i, j, pi, pj in geom.all_taps():
        acc = xpx.at(acc)[geom.tap_index(i, j, pi, pj)].add(cols[:, i, j, pi, pj, ...])
    (pt, _), (pl, _) = geom.pad
    h, w = geom.in_size
    acc = acc[:, pt : pt + h, pl : pl + w, :]
    return xp.permute_dims(acc, (3, 0, 1, 2))


def first_max(xp: Any, taps: list[Array]) -> tuple[Array, Array]:
    """Elementwise maximum of same-shaped ``taps`` and the int8 index of the first one
    that reaches it (ties keep the earlier tap).

    Arithmetic on masks rather than ``where``, and ``zeros_like`` so the index array
    keeps the taps' memory layout: both are several times faster on NumPy.
    """
    best = taps[0]
    code = xp.zeros_like(best, dtype=xp.int8)
    for k, tap in enumerate(taps[1:], start=1):
        later = xp.astype(tap > best, xp.int8)  # strictly greater: ties keep the earlier tap
        best = xp.maximum(best, tap)
        code = code + later * (k - code)
    return best, code


def max_pool_blocks(
    xp: Any, blocks: Array, bias: Array | None = None, relu: bool = False
) -> tuple[Array, Array]:
    """Max pooling of a convolution output in pool-ordered columns (see ``_im2col``),
    then the convolution's bias and ReLU (they commute with the max).

    ``blocks`` (O, T, PH, PW, N) holds the T = KP * KQ pooling taps as contiguous
    blocks; ``bias`` is (O,). Returns the output (O, PH, PW, N) and the int8 index of
    each window's first maximum (row-major tap order, as :func:`max_pool2d`), or -1
    where the ReLU is off: such a window passes no gradient to any tap. ``xp`` is the
    namespace of the arrays.
    """
    out, code = first_max(xp, [blocks[:, k, ...] for k in range(blocks.shape[1])])
    if bias is not None:
        out = out + xp.reshape(bias, (-1, 1, 1, 1))
    if relu:
        code = (code + 1) * xp.astype(out > 0, xp.int8) - 1
        out = xp.maximum(out, xp.zeros((), dtype=out.dtype, device=array_api_compat.device(out)))
    return out, code


def max_pool_blocks_backward(xp: Any, grad_out: Array, argmax: Array, taps: int) -> Array:
    """Vector-Jacobian product of :func:`max_pool_blocks`: ``grad_out`` (O, PH, PW, N)
    and its int8 ``argmax`` codes -> (O, T, PH, PW, N), T = ``taps``."""
    shape = (grad_out.shape[0], taps, *grad_out.shape[1:])
    dev = array_api_compat.device(grad_out)
    grad = xp.empty(shape, dtype=grad_out.dtype, device=dev)  # every block is written
    for k in range(taps):
        grad = xpx.at(grad)[:, k, ...].set(grad_out * xp.astype(argmax == k, grad_out.dtype))
    return grad
