"""NumPy fast path for im2col/col2im (same contract as ``_im2col``).

The portable path copies the input three times (transpose, pad, stack of the tap
slices). Here the transposed, padded input is written once into a zero buffer, the
(C, KH, KW, N, OH, OW) windows are a strided view of it, and one copy makes the
columns. col2im accumulates into a buffer it owns, in place.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ._im2col import ConvGeometry
from ._kernels import Kernels, register_fast_path

Array = Any


def _padded_channels_first(x: np.ndarray, geom: ConvGeometry) -> np.ndarray:
    """(N, C, H, W) -> (C, N, Hp, Wp) with zero padding, in one pass."""
    (pt, pb), (pl, pr) = geom.pad
    n, c = geom.batch, geom.in_channels
    h, w = geom.in_size
    xt = x.transpose(1, 0, 2, 3)
    if pt == pb == pl == pr == 0:
        return np.ascontiguousarray(xt)
    hp, wp = geom.padded_size
    buf = np.empty((c, n, hp, wp), dtype=x.dtype)
    buf[:, :, :pt, :] = 0
    buf[:, :, pt + h :, :] = 0
    buf[:, :, pt : pt + h, :pl] = 0
    buf[:, :, pt : pt + h, pl + w :] = 0
    buf[:, :, pt : pt + h, pl : pl + w] = xt
    return buf


def im2col(xp: Any, x: np.ndarray, geom: ConvGeometry) -> np.ndarray:
    """Columns of ``x``: (N, C, H, W) -> (C * KH * KW, N * OH * OW)."""
    src = _padded_channels_first(np.asarray(x), geom)
    sc, sn, sh, sw = src.strides
    (dh, dw), (th, tw) = geom.dilation, geom.stride
    kh, kw = geom.kernel
    oh, ow = geom.out
    windows = as_strided(
        src,
        shape=(geom.in_channels, kh, kw, geom.batch, oh, ow),
        strides=(sc, sh * dh, sw * dw, sn, sh * th, sw * tw),
        writeable=False,
    )
    cols = np.empty(windows.shape, dtype=src.dtype)
    np.copyto(cols, windows)
    return cols.reshape(geom.in_channels * geom.taps, geom.batch * oh * ow)


def col2im(xp: Any, cols: np.ndarray, geom: ConvGeometry) -> np.ndarray:
    """The adjoint of :func:`im2col`: (C * KH * KW, N * OH * OW) -> (N, C, H, W)."""
    n, c = geom.batch, geom.in_channels
    oh, ow = geom.out
    kh, kw = geom.kernel
    cols = np.asarray(cols).reshape(c, kh, kw, n, oh, ow)
    (pt, _), (pl, _) = geom.pad
    h, w = geom.in_size
    if geom.taps == 1 and geom.stride == (1, 1) and geom.out == geom.in_size and pt == pl == 0:
        return cols.reshape(c, n, h, w).transpose(1, 0, 2, 3)
    acc = np.zeros((c, n, *geom.padded_size), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            acc[(..., *geom.window(i, j))] += cols[:, i, j]
    return acc[:, :, pt : pt + h, pl : pl + w].transpose(1, 0, 2, 3)


def _load() -> Kernels:
    return Kernels("numpy", im2col, col2im)


register_fast_path("is_numpy_namespace", _load)
