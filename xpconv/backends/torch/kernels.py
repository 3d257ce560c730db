"""PyTorch fast path: the strided-view im2col and in-place col2im of ``_strided``
(shared with NumPy), for tensors (CPU or CUDA), registered for the PyTorch namespace.

The portable path copies the input three times (transpose, pad, stack of the tap
slices). Here the transposed, padded input is written once into a (C, Hp, Wp, N)
buffer, the (C, KH, KW, KP, KQ, PH, PW, N) windows are an ``as_strided`` view of it,
and one copy makes the columns. col2im adds each kernel tap's columns in place into a
buffer it owns, through one strided view per tap.

Matrix products stay one 2-D matmul each. On the CPU in float32, a large one goes
to oneDNN's matrix product (the inner-product primitive PyTorch itself compiles
``nn.Linear`` to) instead of ``torch.mm``'s BLAS, for the shapes where it is faster
(:func:`matmul`; measurements in docs/performance.md). PyTorch is imported only when
the kernels run.

In a function traced for ``torch.compile`` (fake tensors, see
:func:`~xpconv.backends.registry.is_traced`) the kernels keep the strided im2col and
col2im but take traceable forms for the rest: ``torch.max`` pooling, a broadcast
comparison for its backward, plain products and ``torch.tanh``, which the compiler
fuses, instead of the NumPy views, oneDNN calls and ``out=`` loops of eager execution.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from xpconv.backends.kernels import PORTABLE, Kernels, register_fast_path
from xpconv.backends.portable import ConvGeometry
from xpconv.backends.registry import is_traced
from xpconv.backends.strided import StridedPlan, strided_plan

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
    and ReLU in place (faster there than ``torch.max(blocks, dim=1)`` with its
    indices). On a GPU ``torch.max`` is one launch for what the loop takes fifteen, so a
    GPU keeps it, and so does a function being compiled (the compiler fuses it; the
    loop's ``out=`` arguments cannot be traced).
    """
    import torch

    if blocks.device.type != "cpu" or is_traced(blocks):
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
    multiplied by the gradient in place (on the CPU faster than comparing the int8
    codes themselves, or a scatter). Windows marked -1 pass nothing. In a function
    being compiled, one broadcast comparison instead, which the compiler fuses."""
    import torch

    if is_traced(grad_out):
        k = torch.arange(taps, dtype=argmax.dtype, device=argmax.device)
        hit = argmax.unsqueeze(1) == k.reshape(1, taps, *(1,) * (argmax.ndim - 1))
        return hit.to(grad_out.dtype) * grad_out.unsqueeze(1)
    out = grad_out.new_empty((grad_out.shape[0], taps, *grad_out.shape[1:]))
    codes = argmax.to(grad_out.dtype)
    for k in range(taps):
        block = out[:, k]
        torch.eq(codes, k, out=block)
        block *= grad_out
    return out


def _host_view(t: Array) -> Any:
    """The NumPy array sharing the memory of a CPU float32/float64 tensor, or None
    (another device or dtype, a tensor that records gradients, or one being traced)."""
    import torch

    if t.device.type != "cpu" or t.requires_grad or t.dtype not in (torch.float32, torch.float64):
        return None
    if is_traced(t):
        return None
    return t.numpy()


def tanh(xp: Any, x: Array) -> Array:
    """``tanh(x)``, a new tensor of ``x``'s shape and dtype. On the CPU (float32 or
    float64, no autograd) it runs NumPy's loop (split over the cores by the NumPy
    kernels) on the tensor's own memory, with the same float32 accuracy as
    ``torch.tanh``."""
    import torch

    from xpconv.backends.numpy import kernels as _numpy_kernels

    host = _host_view(x)
    if host is None:
        return torch.tanh(x)
    return torch.from_numpy(_numpy_kernels.tanh(np, host))


def tanh_backward(xp: Any, grad_out: Array, t: Array) -> Array:
    """``grad_out * (1 - t**2)`` in one pass: PyTorch's own ``tanh_backward`` (the
    portable formula takes three over the activations, and as many temporaries); on
    the CPU NumPy's passes split over the cores, as :func:`tanh`."""
    import torch

    from xpconv.backends.numpy import kernels as _numpy_kernels

    if grad_out.dtype != t.dtype:
        return PORTABLE.tanh_backward(xp, grad_out, t)
    host_grad, host_t = _host_view(grad_out), _host_view(t)
    if host_grad is None or host_t is None:
        return torch.ops.aten.tanh_backward(grad_out, t)
    return torch.from_numpy(_numpy_kernels.tanh_backward(np, host_grad, host_t))


#: Products of at least this many multiply-adds, or with an inner dimension of at
#: least ``_ONEDNN_MIN_INNER``, take oneDNN on the CPU.
_ONEDNN_MIN_MACS = 1 << 27
_ONEDNN_MIN_INNER = 4096


@cache
def _onednn_linear() -> Any:
    """PyTorch's oneDNN linear op (``x @ w.T`` for dense tensors), or None without it."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):  # a build without the op
        return None


#: A transposed ``a`` of at most this many elements (a weight) is copied row-major.
_SMALL = 1 << 16


def _onednn_pays(a: Array, b: Array) -> bool:
    """Whether the 2-D ``a @ b`` is a CPU float32 product large enough for oneDNN (see
    :func:`matmul`), ``a`` row-major or small, nothing recording gradients, nothing
    being traced (a compiled function's products are the compiler's to choose)."""
    import torch

    if a.ndim != 2 or b.ndim != 2:
        return False
    (m, k), n = a.shape, b.shape[1]
    return (
        a.device.type == "cpu"
        and a.dtype == b.dtype == torch.float32
        and (m * k * n >= _ONEDNN_MIN_MACS or k >= _ONEDNN_MIN_INNER)
        and (a.is_contiguous() or a.numel() <= _SMALL)
        and not (a.requires_grad or b.requires_grad)
        and not is_traced(a)
        and _onednn_linear() is not None
    )


def matmul(xp: Any, a: Array, b: Array) -> Array:
    """``a @ b`` for (M, K) and (K, N); large CPU float32 products through oneDNN.

    ``torch.mm`` on the CPU calls the BLAS PyTorch was built with (MKL). A CPU float32
    product without autograd of at least ``_ONEDNN_MIN_MACS`` multiply-adds, or with
    an inner dimension of at least ``_ONEDNN_MIN_INNER`` (a weight gradient's), goes to
    oneDNN's inner product instead, when ``a`` is row-major or small (a transposed
    small ``a``, a weight, is copied first). Other products, among them small ones and
    a first convolution's short inner dimension over a huge output (oneDNN copies
    ``b`` into its own layout first), are ``a @ b``. The result has ``a @ b``'s shape
    and dtype.
    """
    if _onednn_pays(a, b):
        return _onednn_linear()(a.contiguous(), b.T, None, "none", [], "")
    return a @ b


def weight_grad(xp: Any, grad2: Array, cols: Array) -> Array:
    """``grad2 @ cols.T``: (O, L) x (K, L) -> (O, K), through :func:`matmul`."""
    return matmul(xp, grad2, cols.T)


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
        matmul=matmul,
        weight_grad=weight_grad,
        batch_innermost=batch_innermost,
        max_pool_blocks=max_pool_blocks,
        max_pool_blocks_backward=max_pool_blocks_backward,
        tanh=tanh,
        tanh_backward=tanh_backward,
    )


register_fast_path("is_torch_namespace", cache(make_kernels))
