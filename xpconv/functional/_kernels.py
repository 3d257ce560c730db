"""The one interface behind which backend-specific fast paths live.

The portable Array-API implementations are the default and the reference the tests
check. A backend may register faster versions of the same functions (same signature,
same results); :func:`kernels_for` picks them automatically.

The choice holds no global state that threads share: ``XPCONV_PORTABLE=1`` in the
environment sets the default, :func:`use_portable` forces the portable path inside a
``with`` block for the current thread (or asyncio task) only, and
``kernels_for(xp, portable=True)`` asks for it in one call.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import array_api_compat

from . import _im2col, _pool


def _weight_grad(xp: Any, grad2: Any, cols: Any) -> Any:
    """``grad2 @ cols.T``: (O, L) x (K, L) -> (O, K)."""
    return grad2 @ cols.T


def _tanh(xp: Any, x: Any) -> Any:
    return xp.tanh(x)


def _tanh_backward(xp: Any, grad_out: Any, t: Any) -> Any:
    """``grad_out * (1 - t**2)`` for ``t = tanh(x)``."""
    return grad_out * (1.0 - t * t)


def _row_sums(xp: Any, a: Any) -> Any:
    """Sums of the rows of ``a`` (O, L) -> (O,)."""
    return xp.sum(a, axis=1)


def _per_channel(xp: Any, v: Any, ndim: int) -> Any:
    """(C,) -> (1, C, 1, ...) to broadcast against an array of rank ``ndim``."""
    return xp.reshape(v, (1, -1) + (1,) * (ndim - 2))


def _batch_norm_train(xp: Any, x: Any, weight: Any, bias: Any, eps: float) -> tuple[Any, ...]:
    """Training-mode batch norm of ``x`` (N, C, ...) with the batch statistics:
    ``(y, x_hat, mean, var, invstd)``, the last three (C,), ``var`` biased."""
    nd, axes = x.ndim, (0, *range(2, x.ndim))
    mean = xp.mean(x, axis=axes)
    centred = x - _per_channel(xp, mean, nd)
    var = xp.mean(centred * centred, axis=axes)
    invstd = 1.0 / xp.sqrt(var + eps)
    x_hat = centred * _per_channel(xp, invstd, nd)
    y = x_hat
    if weight is not None:
        y = y * _per_channel(xp, weight, nd)
    if bias is not None:
        y = y + _per_channel(xp, bias, nd)
    return y, x_hat, mean, var, invstd


def _batch_norm_backward(
    xp: Any, grad_out: Any, x_hat: Any, invstd: Any, weight: Any, training: bool
) -> tuple[Any, Any, Any]:
    """``(grad_x, grad_weight, grad_bias)`` of batch norm from the normalized input
    ``x_hat`` (N, C, ...) and ``invstd`` (C,); in training the batch statistics'
    dependence on x is included."""
    nd, axes = grad_out.ndim, (0, *range(2, grad_out.ndim))
    grad_bias = xp.sum(grad_out, axis=axes)
    grad_weight = xp.sum(grad_out * x_hat, axis=axes)
    g_hat = grad_out if weight is None else grad_out * _per_channel(xp, weight, nd)
    if training:
        count = 1
        for d in (grad_out.shape[0], *grad_out.shape[2:]):
            count *= int(d)
        mean_g = xp.sum(g_hat, axis=axes) / count
        if weight is None:
            mean_gx = grad_weight / count
        else:
            mean_gx = xp.sum(g_hat * x_hat, axis=axes) / count
        g_hat = g_hat - _per_channel(xp, mean_g, nd) - x_hat * _per_channel(xp, mean_gx, nd)
    return g_hat * _per_channel(xp, invstd, nd), grad_weight, grad_bias


def _batch_innermost(x: Any) -> bool:
    """Whether ``x`` (N, ...) is stored with its batch axis innermost (unknown: False)."""
    return False


@dataclass(frozen=True)
class Kernels:
    """Kernels a backend may specialise.

    - ``im2col`` / ``col2im``: the data movement of convolution (contract in ``_im2col``).
    - ``weight_grad(xp, grad2, cols)``: ``grad2 @ cols.T``, the weight gradient.
    - ``batch_innermost(x)``: whether ``x`` is stored batch-innermost, so an op can
      return its result in the same memory order (no layout change between layers).
    - ``max_pool_blocks(blocks, bias, relu)`` and
      ``max_pool_blocks_backward(grad, argmax, taps)``: the fused step's pool-ordered
      max pool with the convolution's bias and ReLU (contract in ``_pool``).
    - ``row_sums(xp, a)``: (O, L) -> (O,), the bias gradient of a convolution.
    - ``tanh(xp, x)`` and ``tanh_backward(xp, grad_out, t)``: the lecture's activation
      and ``grad_out * (1 - t**2)``.
    - ``batch_norm_train(xp, x, weight, bias, eps)`` -> ``(y, x_hat, mean, var, invstd)``
      and ``batch_norm_backward(xp, grad_out, x_hat, invstd, weight, training)`` ->
      ``(grad_x, grad_weight, grad_bias)``: batch norm with the batch statistics, and
      its backward in either mode (contract in ``_norm``).
    """

    name: str
    im2col: Callable[..., Any]
    col2im: Callable[..., Any]
    weight_grad: Callable[..., Any] = _weight_grad
    batch_innermost: Callable[[Any], bool] = _batch_innermost
    max_pool_blocks: Callable[..., Any] = _pool.max_pool_blocks
    max_pool_blocks_backward: Callable[..., Any] = _pool.max_pool_blocks_backward
    tanh: Callable[..., Any] = _tanh
    tanh_backward: Callable[..., Any] = _tanh_backward
    row_sums: Callable[..., Any] = _row_sums
    batch_norm_train: Callable[..., Any] = _batch_norm_train
    batch_norm_backward: Callable[..., Any] = _batch_norm_backward


PORTABLE = Kernels("portable", _im2col.im2col, _im2col.col2im)
_FAST: dict[str, Callable[[], Kernels | None]] = {}
_RESOLVED: dict[int, tuple[Any, Kernels]] = {}  # id(namespace) -> (namespace, kernels)
_PORTABLE_ONLY = contextvars.ContextVar(
    "xpconv_portable_only", default=os.environ.get("XPCONV_PORTABLE", "") not in ("", "0")
)


def register_fast_path(namespace_check: str, loader: Callable[[], Kernels | None]) -> None:
    """Register kernels for the namespaces where ``array_api_compat.<namespace_check>``."""
    _FAST[namespace_check] = loader
    _RESOLVED.clear()


def _resolve(xp: Any) -> Kernels:
    for check, loader in _FAST.items():
        if getattr(array_api_compat, check)(xp):
            fast = loader()
            if fast is not None:
                return fast
    return PORTABLE


def kernels_for(xp: Any, *, portable: bool | None = None) -> Kernels:
    """The kernels to use for namespace ``xp``: a registered fast path, else portable.

    ``portable=True`` asks for the portable kernels, ``False`` for the fast path even
    inside :func:`use_portable`; ``None`` (default) follows the current context. The
    lookup per namespace is done once and remembered.
    """
    if portable is None:
        portable = _PORTABLE_ONLY.get()
    if portable:
        return PORTABLE
    found = _RESOLVED.get(id(xp))
    if found is None or found[0] is not xp:
        found = _RESOLVED[id(xp)] = (xp, _resolve(xp))
    return found[1]


@contextmanager
def use_portable(enabled: bool = True) -> Iterator[None]:
    """Force the portable kernels inside a ``with`` block, for the current thread or
    asyncio task only (other threads keep their choice); used by parity tests."""
    token = _PORTABLE_ONLY.set(enabled)
    try:
        yield
    finally:
        _PORTABLE_ONLY.reset(token)
