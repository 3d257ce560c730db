"""PyTorch fast path: the NumPy path's strided-view im2col and in-place col2im, for
tensors (CPU or CUDA), registered for the PyTorch namespace.

The portable path copies the input three times (transpose, pad, stack of the tap
slices). Here the transposed, padded input is written once into a (C, Hp, Wp, N)
buffer, the (C, KH, KW, KP, KQ, PH, PW, N) windows are an ``as_strided`` view of it,
and one copy makes the columns. col2im adds each kernel tap's columns in place into a
buffer it owns, through one strided view per tap. Matrix products stay the portable
path's single large matmul. PyTorch is imported only when the kernels run.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from ._im2col import ConvGeometry
from ._kernels import Kernels, register_fast_path

Array = Any


def _padded_chwn(x: Array, geom: ConvGeometry) -> Array:
    """(N, C, H, W) -> (C, Hp, Wp, N) with zero padding, in one pass."""
    (pt, pb), (pl, pr) = geom.pad
    h, w = geom.in_size
    xt = x.permute(1, 2, 3, 0)
    if pt == pb == pl == pr == 0:
        return xt.contiguous()
    hp, wp = geom.padded_size
    buf = x.new_empty((geom.in_channels, hp, wp, geom.batch))
    buf[:, :pt] = 0
    buf[:, pt + h :] = 0
    buf[:, pt : pt + h, :pl] = 0
    buf[:, pt : pt + h, pl + w :] = 0
    buf[:, pt : pt + h, pl : pl + w] = xt
    return buf


def im2col(xp: Any, x: Array, geom: ConvGeometry) -> Array:
    """Columns of ``x``: (N, C, H, W) -> (C * KH * KW, OH * OW * N)."""
    src = _padded_chwn(x, geom)
    sc, sh, sw, sn = src.stride()
    (dh, dw), (th, tw), (kp, kq) = geom.dilation, geom.stride, geom.pool
    windows = src.as_strided(
        (geom.in_channels, *geom.kernel, kp, kq, *geom.pooled, geom.batch),
        (sc, sh * dh, sw * dw, sh * th, sw * tw, sh * th * kp, sw * tw * kq, sn),
        src.storage_offset(),
    )
    return windows.contiguous().reshape(geom.in_channels * geom.taps, geom.columns)


def col2im(xp: Any, cols: Array, geom: ConvGeometry) -> Array:
    """The adjoint of :func:`im2col`: (C * KH * KW, OH * OW * N) -> (N, C, H, W)."""
    n, c = geom.batch, geom.in_channels
    cols = cols.reshape(c, *geom.kernel, *geom.pool, *geom.pooled, n)
    (pt, _), (pl, _) = geom.pad
    h, w = geom.in_size
    plain = geom.pool == (1, 1) and geom.stride == (1, 1) and pt == pl == 0
    if plain and geom.taps == 1 and geom.out == geom.in_size:
        return cols.reshape(c, h, w, n).permute(3, 0, 1, 2)
    acc = cols.new_zeros((c, *geom.padded_size, n))
    sc, sh, sw, sn = acc.stride()
    (dh, dw), (th, tw), (kp, kq) = geom.dilation, geom.stride, geom.pool
    strides = (sc, sh * th, sw * tw, sh * th * kp, sw * tw * kq, sn)
    shape = (c, kp, kq, *geom.pooled, n)
    for i in range(geom.kernel[0]):
        for j in range(geom.kernel[1]):
            # all inputs under kernel tap (i, j), laid out like cols[:, i, j]; no two
            # elements of one view share memory, so the in-place add is exact
            view = acc.as_strided(shape, strides, i * dh * sh + j * dw * sw)
            view.add_(cols[:, i, j])
    return acc[:, pt : pt + h, pl : pl + w].permute(3, 0, 1, 2)


def max_pool_blocks(
    blocks: Array, bias: Array | None = None, relu: bool = False
) -> tuple[Array, Array]:
    """Pool-ordered max pool, bias and ReLU (contract in ``_pool``) in five operations:
    one ``max`` over the tap axis gives the values and the first maximum's index
    (PyTorch returns the first of equal maxima), then bias and ReLU in place on the
    fresh output (the portable path takes about four operations per tap)."""
    import torch

    out, index = torch.max(blocks, dim=1)
    code = index.to(torch.int8)
    if bias is not None:
        out += bias.reshape(-1, 1, 1, 1)
    if relu:
        code = torch.where(out > 0, code, torch.full_like(code, -1))
        out.clamp_(min=0)
    return out, code


def max_pool_blocks_backward(grad: Array, argmax: Array, taps: int) -> Array:
    """Pool-ordered max-pool backward (contract in ``_pool``): one scatter of the window
    gradients onto their recorded taps; windows marked -1 pass nothing."""
    import torch

    out = grad.new_zeros((grad.shape[0], taps, *grad.shape[1:]))
    passed = argmax >= 0
    index = torch.where(passed, argmax, torch.zeros_like(argmax)).to(torch.int64)
    values = torch.where(passed, grad, torch.zeros_like(grad))
    out.scatter_(1, index.unsqueeze(1), values.unsqueeze(1))
    return out


def tanh_backward(xp: Any, grad_out: Array, t: Array) -> Array:
    """``grad_out * (1 - t**2)`` in one pass (PyTorch's own ``tanh_backward``), where the
    portable formula takes three over the activations (and as many temporaries)."""
    import torch

    if grad_out.dtype != t.dtype:
        return grad_out * (1.0 - t * t)
    return torch.ops.aten.tanh_backward(grad_out, t)


def batch_innermost(x: Array) -> bool:
    """Whether the batch axis (0) of ``x`` has the smallest stride."""
    strides = x.stride()
    return x.ndim > 1 and x.shape[0] > 1 and strides[0] == min(abs(s) for s in strides)


def make_kernels() -> Kernels:
    """The PyTorch kernels."""
    return Kernels(
        "torch",
        im2col,
        col2im,
        batch_innermost=batch_innermost,
        max_pool_blocks=max_pool_blocks,
        max_pool_blocks_backward=max_pool_blocks_backward,
        tanh_backward=tanh_backward,
    )


register_fast_path("is_torch_namespace", cache(make_kernels))
