"""PyTorch fast path: the strided-view im2col and in-place col2im of ``_strided``
(shared with NumPy), for tensors (CPU or CUDA), registered for the PyTorch namespace.

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
from ._strided import StridedPlan, strided_plan

Array = Any


def _padded_chwn(x: Array, plan: StridedPlan) -> Array:
    """(N, C, H, W) -> (C, Hp, Wp, N) with zero padding, in one pass."""
    xt = x.permute(1, 2, 3, 0)
    if not plan.zero:
        return xt.contiguous()
    buf = x.new_empty(plan.padded)
    for region in plan.zero:
        buf[region] = 0
    buf[plan.inside] = xt
    return buf


def im2col(xp: Any, x: Array, geom: ConvGeometry) -> Array:
    """Columns of ``x``: (N, C, H, W) -> (C * KH * KW, OH * OW * N)."""
    plan = strided_plan(geom)
    src = _padded_chwn(x, plan)
    windows = src.as_strided(plan.windows, plan.window_strides(*src.stride()), src.storage_offset())
    return windows.contiguous().reshape(geom.in_channels * geom.taps, geom.columns)


def col2im(xp: Any, cols: Array, geom: ConvGeometry) -> Array:
    """The adjoint of :func:`im2col`: (C * KH * KW, OH * OW * N) -> (N, C, H, W)."""
    plan = strided_plan(geom)
    c = geom.in_channels
    cols = cols.reshape(plan.windows)
    if plan.reshape_only:
        return cols.reshape(c, *geom.in_size, geom.batch).permute(3, 0, 1, 2)
    acc = cols.new_zeros(plan.padded)
    sc, sh, sw, sn = acc.stride()
    strides = plan.tap_strides(sc, sh, sw, sn)
    shape = (c, *plan.tap_shape)
    for i, j, row, col in plan.tap_starts:
        acc.as_strided(shape, strides, row * sh + col * sw).add_(cols[:, i, j])
    return acc[plan.inside].permute(3, 0, 1, 2)


def max_pool_blocks(
    xp: Any, blocks: Array, bias: Array | None = None, relu: bool = False
) -> tuple[Array, Array]:
    """Pool-ordered max pool, bias and ReLU (contract in ``_pool``).

    On the CPU, tap by tap into buffers it owns: per tap one comparison, one maximum
    and three int8 operations on the code (``(k - code) * later`` added), then bias
    and ReLU in place. ``torch.max(blocks, dim=1)`` with its indices was 3 to 4 times
    slower there (W2's first layer at batch 128: 9.8 against 2.3 ms); on a GPU it is
    one launch for what the loop takes fifteen, so a GPU keeps it.
    """
    import torch

    if blocks.device.type != "cpu":
        out, index = torch.max(blocks, dim=1)  # PyTorch returns the first of equal maxima
        code = index.to(torch.int8)
    else:
        out = blocks[:, 0].clone()
        code = torch.zeros(out.shape, dtype=torch.int8, device=out.device)
        for k in range(1, blocks.shape[1]):
            tap = blocks[:, k]
            later = torch.gt(tap, out).view(torch.int8)  # ties keep the earlier tap
            torch.maximum(out, tap, out=out)
            step = torch.sub(k, code)
            step *= later
            code += step
    if bias is not None:
        out += bias.reshape(-1, 1, 1, 1)
    if relu:
        code += 1
        code *= torch.gt(out, 0).view(torch.int8)
        code -= 1
        out.clamp_(min=0)
    return out, code


def max_pool_blocks_backward(xp: Any, grad_out: Array, argmax: Array, taps: int) -> Array:
    """Pool-ordered max-pool backward (contract in ``_pool``): each tap's block is
    ``argmax == k`` compared in the gradient's dtype straight into the output, then
    multiplied by the gradient in place. Comparing the int8 codes themselves, or a
    scatter, was 4 to 5 times slower on the CPU (W2's first layer: 5.2 against 1.0 ms).
    Windows marked -1 pass nothing."""
    import torch

    out = grad_out.new_empty((grad_out.shape[0], taps, *grad_out.shape[1:]))
    codes = argmax.to(grad_out.dtype)
    for k in range(taps):
        block = out[:, k]
        torch.eq(codes, k, out=block)
        block *= grad_out
    return out


def tanh_backward(xp: Any, grad_out: Array, t: Array) -> Array:
    """``grad_out * (1 - t**2)`` in one pass (PyTorch's own ``tanh_backward``), where the
    portable formula takes three over the activations (and as many temporaries)."""
    import torch

    if grad_out.dtype != t.dtype:
        return grad_out * (1.0 - t * t)
    return torch.ops.aten.tanh_backward(grad_out, t)


def batch_innermost(xp: Any, x: Array) -> bool:
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
