"""The strided-view im2col and in-place col2im, written once for every library with
strides (NumPy, PyTorch); each library's kernels only make the calls.

im2col: the input is written once, transposed to (C, Hp, Wp, N) and zero-padded, into a
buffer (:attr:`StridedPlan.zero` are the padding regions, :attr:`StridedPlan.inside`
the input); the (C, KH, KW, KP, KQ, PH, PW, N) windows are a strided view of that
buffer (:meth:`StridedPlan.window_strides`), and one copy of the view is the column
matrix (C * KH * KW, L) of ``_im2col``.

col2im: a zeroed (C, Hp, Wp, N) accumulator; the inputs read through kernel tap
(i, j) form a strided view starting at padded row ``i * DH`` and column ``j * DW``
(:attr:`StridedPlan.tap_starts`, :meth:`StridedPlan.tap_strides`), laid out like that
tap's columns (C, KP, KQ, PH, PW, N), into which they are added in place. No two
elements of one view share memory, so each in-place add is exact; the taps are added
in row-major order, as the portable path does. The result is the accumulator cropped
to :attr:`StridedPlan.inside` and seen as (N, C, H, W) (batch innermost in memory).
A 1x1 kernel with unit stride and no padding covers every input once: col2im is then
a reshape (:attr:`StridedPlan.reshape_only`).

Strides are in the library's own unit (bytes for NumPy, elements for PyTorch): every
formula here is linear in them. The plan of a geometry is made once and remembered.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from xpconv.backends.portable import ConvGeometry

Index = tuple[slice, ...]


@dataclass(frozen=True)
class StridedPlan:
    """Shapes, regions and stride formulas of one geometry (see the module docstring)."""

    geom: ConvGeometry
    padded: tuple[int, int, int, int]  # (C, Hp, Wp, N)
    zero: tuple[Index, ...]  # regions of the padded buffer outside the input (non-empty)
    inside: Index  # where the input sits in the padded buffer
    windows: tuple[int, ...]  # (C, KH, KW, KP, KQ, PH, PW, N)
    tap_shape: tuple[int, ...]  # (KP, KQ, PH, PW, N): one tap's view, less the channels
    tap_starts: tuple[tuple[int, int, int, int], ...]  # (i, j, row, column), row-major
    reshape_only: bool

    def window_strides(self, sc: int, sh: int, sw: int, sn: int) -> tuple[int, ...]:
        """Strides of the windows view, from those of the (C, Hp, Wp, N) buffer."""
        (dh, dw), (th, tw), (kp, kq) = self.geom.dilation, self.geom.stride, self.geom.pool
        return (sc, sh * dh, sw * dw, sh * th, sw * tw, sh * th * kp, sw * tw * kq, sn)

    def tap_strides(self, sc: int, sh: int, sw: int, sn: int) -> tuple[int, ...]:
        """Strides of one tap's (C, KP, KQ, PH, PW, N) view of the accumulator."""
        (th, tw), (kp, kq) = self.geom.stride, self.geom.pool
        return (sc, sh * th, sw * tw, sh * th * kp, sw * tw * kq, sn)


@functools.cache
def strided_plan(geom: ConvGeometry) -> StridedPlan:
    """The :class:`StridedPlan` of ``geom`` (remembered per geometry)."""
    (pt, pb), (pl, pr) = geom.pad
    h, w = geom.in_size
    hp, wp = geom.padded_size
    every = slice(None)
    rows, cols = slice(pt, pt + h), slice(pl, pl + w)
    regions = (
        ((every, slice(0, pt)), pt),
        ((every, slice(pt + h, hp)), pb),
        ((every, rows, slice(0, pl)), pl),
        ((every, rows, slice(pl + w, wp)), pr),
    )
    (dh, dw), (kh, kw) = geom.dilation, geom.kernel
    plain = geom.pool == (1, 1) and geom.stride == (1, 1) and pt == pl == 0
    return StridedPlan(
        geom=geom,
        padded=(geom.in_channels, hp, wp, geom.batch),
        zero=tuple(index for index, size in regions if size),
        inside=(every, rows, cols, every),
        windows=(geom.in_channels, kh, kw, *geom.pool, *geom.pooled, geom.batch),
        tap_shape=(*geom.pool, *geom.pooled, geom.batch),
        tap_starts=tuple((i, j, i * dh, j * dw) for i in range(kh) for j in range(kw)),
        reshape_only=plain and geom.taps == 1 and geom.out == geom.in_size,
    )
