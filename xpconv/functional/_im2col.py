"""im2col and its adjoint col2im, written with Array-API operations only.

Layout. For an input ``x`` of shape (N, C, H, W) and a kernel of KH x KW taps, the
column matrix has shape (C * KH * KW, OH * OW * N): row ``(c, i, j)`` holds, for every
output position, the input value under kernel tap ``(i, j)`` of channel ``c``. Rows are
ordered like the flattened PyTorch weight (O, C, KH, KW) -> (O, C * KH * KW), so the
convolution is one matmul ``W2 @ cols``. Columns are ordered (oh, ow, n), batch
innermost: the matmul's output (O, OH * OW * N) is then an (N, O, OH, OW) array whose
memory keeps the batch innermost, so the elementwise ops, pooling and the next im2col
that follow all run over long contiguous rows instead of rows of OW elements.

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

    @property
    def taps(self) -> int:
        return self.kernel[0] * self.kernel[1]

    @property
    def padded_size(self) -> tuple[int, int]:
        (pt, pb), (pl, pr) = self.pad
        return self.in_size[0] + pt + pb, self.in_size[1] + pl + pr

    def window(self, i: int, j: int) -> tuple[slice, slice]:
        """Slices of the padded input read by kernel tap (i, j)."""
        (dh, dw), (sh, sw), (oh, ow) = self.dilation, self.stride, self.out
        top, left = i * dh, j * dw
        return (
            slice(top, top + sh * (oh - 1) + 1, sh),
            slice(left, left + sw * (ow - 1) + 1, sw),
        )

    def tap_index(self, i: int, j: int) -> tuple[slice, slice, slice, slice]:
        """Index of kernel tap (i, j)'s inputs in a padded (C, Hp, Wp, N) array."""
        rows, cols = self.window(i, j)
        return slice(None), rows, cols, slice(None)


def _pad_hw(xp: Any, xt: Array, geom: ConvGeometry) -> Array:
    """Zero-pad axes 1 and 2 (H, W) of a (C, H, W, N) array."""
    (pt, pb), (pl, pr) = geom.pad
    if pt == pb == pl == pr == 0:
        return xt
    return xpx.pad(xt, ((0, 0), (pt, pb), (pl, pr), (0, 0)), xp=xp)


def im2col(xp: Any, x: Array, geom: ConvGeometry) -> Array:
    """Columns of ``x``: (N, C, H, W) -> (C * KH * KW, OH * OW * N)."""
    n, c = geom.batch, geom.in_channels
    oh, ow = geom.out
    xt = _pad_hw(xp, xp.permute_dims(x, (1, 2, 3, 0)), geom)  # (C, Hp, Wp, N)
    kh, kw = geom.kernel
    taps = [xt[geom.tap_index(i, j)] for i in range(kh) for j in range(kw)]
    cols = xp.stack(taps, axis=1)  # (C, KH*KW, OH, OW, N)
    return xp.reshape(cols, (c * geom.taps, oh * ow * n))


def col2im(xp: Any, cols: Array, geom: ConvGeometry) -> Array:
    """The adjoint of :func:`im2col`: (C * KH * KW, OH * OW * N) -> (N, C, H, W).

    Every column entry is added back to the input position it was read from, so
    overlapping windows accumulate. The result's memory keeps the batch innermost.
    """
    n, c = geom.batch, geom.in_channels
    oh, ow = geom.out
    kh, kw = geom.kernel
    hp, wp = geom.padded_size
    cols = xp.reshape(cols, (c, kh, kw, oh, ow, n))
    acc = xp.zeros((c, hp, wp, n), dtype=cols.dtype, device=array_api_compat.device(cols))
    for i in range(kh):
        for j in range(kw):
            acc = xpx.at(acc)[geom.tap_index(i, j)].add(cols[:, i, j, ...])
    (pt, _), (pl, _) = geom.pad
    h, w = geom.in_size
    acc = acc[:, pt : pt + h, pl : pl + w, :]
    return xp.permute_dims(acc, (3, 0, 1, 2))
