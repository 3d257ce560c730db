"""NumPy fast path for im2col/col2im (same contract as ``_im2col``).

The portable path copies the input three times (transpose, pad, stack of the tap
slices). Here the transposed, padded input is written once into a buffer, the
(C, KH, KW, OH, OW, N) windows are a strided view of it, and one copy makes the
columns. col2im accumulates into a buffer it owns, in place.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ._im2col import ConvGeometry
from ._kernels import Kernels, register_fast_path

Array = Any


def _padded_chwn(x: np.ndarray, geom: ConvGeometry) -> np.ndarray:
    """(N, C, H, W) -> (C, Hp, Wp, N) with zero padding, in one pass."""
    (pt, pb), (pl, pr) = geom.pad
    n, c = geom.batch, geom.in_channels
    h, w = geom.in_size
    xt = x.transpose(1, 2, 3, 0)
    if pt == pb == pl == pr == 0:
        return np.ascontiguousarray(xt)
    hp, wp = geom.padded_size
    buf = np.empty((c, hp, wp, n), dtype=x.dtype)
    buf[:, :pt] = 0
    buf[:, pt + h :] = 0
    buf[:, pt : pt + h, :pl] = 0
    buf[:, pt : pt + h, pl + w :] = 0
    buf[:, pt : pt + h, pl : pl + w] = xt
    return buf


def im2col(xp: Any, x: np.ndarray, geom: ConvGeometry) -> np.ndarray:
    """Columns of ``x``: (N, C, H, W) -> (C * KH * KW, OH * OW * N)."""
    src = _padded_chwn(np.asarray(x), geom)
    sc, sh, sw, sn = src.strides
    (dh, dw), (th, tw), (kp, kq) = geom.dilation, geom.stride, geom.pool
    windows = as_strided(
        src,
        shape=(geom.in_channels, *geom.kernel, kp, kq, *geom.pooled, geom.batch),
        strides=(sc, sh * dh, sw * dw, sh * th, sw * tw, sh * th * kp, sw * tw * kq, sn),
        writeable=False,
    )
    cols = np.empty(windows.shape, dtype=src.dtype)
    np.copyto(cols, windows)
    return cols.reshape(geom.in_channels * geom.taps, geom.columns)


def col2im(xp: Any, cols: np.ndarray, geom: ConvGeometry) -> np.ndarray:
    """The adjoint of :func:`im2col`: (C * KH * KW, OH * OW * N) -> (N, C, H, W)."""
    n, c = geom.batch, geom.in_channels
    cols = np.asarray(cols).reshape(c, *geom.kernel, *geom.pool, *geom.pooled, n)
    (pt, _), (pl, _) = geom.pad
    h, w = geom.in_size
    plain = geom.pool == (1, 1) and geom.stride == (1, 1) and pt == pl == 0
    if plain and geom.taps == 1 and geom.out == geom.in_size:
        return cols.reshape(c, h, w, n).transpose(3, 0, 1, 2)
    acc = np.zeros((c, *geom.padded_size, n), dtype=cols.dtype)
    for i, j, pi, pj in geom.all_taps():
        acc[geom.tap_index(i, j, pi, pj)] += cols[:, i, j, pi, pj]
    return acc[:, pt : pt + h, pl : pl + w].transpose(3, 0, 1, 2)


def weight_grad(xp: Any, grad2: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``grad2 @ cols.T`` for (O, L) and (K, L).

    A small output with a huge inner dimension (a first layer: O * K of a few hundred,
    L of a hundred thousand) runs two to three times faster as a batched matmul over
    128 chunks of L followed by a sum than as one GEMM.
    """
    (o, length), k = grad2.shape, cols.shape[0]
    chunks = 128
    if o * k > 4096 or length % chunks or length < 64 * chunks:
        return grad2 @ cols.T
    m = length // chunks
    g3 = grad2.reshape(o, chunks, m).transpose(1, 0, 2)  # (B, O, M) views, no copies
    c3 = cols.reshape(k, chunks, m).transpose(1, 2, 0)  # (B, M, K)
    return np.matmul(g3, c3).sum(axis=0)


def batch_innermost(x: np.ndarray) -> bool:
    """Whether the batch axis (0) of ``x`` has the smallest stride."""
    strides = np.asarray(x).strides
    return x.ndim > 1 and x.shape[0] > 1 and strides[0] == min(abs(s) for s in strides)


def _load() -> Kernels:
    return Kernels("numpy", im2col, col2im, weight_grad, batch_innermost)


register_fast_path("is_numpy_namespace", _load)
