"""The one interface behind which backend-specific fast paths live.

The portable Array-API implementations are the default and the reference the tests
check. A backend may register faster versions of the same functions (same signature,
same results); :func:`kernels_for` picks them automatically.

Every entry is a whole op with one calling convention: **the array namespace comes
first**, then the arrays, then plain Python values. A fast path may ignore ``xp`` (it
knows its library), the portable path uses it instead of looking the namespace up
again. The signatures are the ``Protocol`` classes below (parameter names included);
a test checks every registered table against them. Shapes:

- ``im2col(xp, x, geom)``: (N, C, H, W) -> (C * KH * KW, L)
- ``col2im(xp, cols, geom)``: (C * KH * KW, L) -> (N, C, H, W)
- ``matmul(xp, a, b)``: (M, K) and (K, N) -> (M, N), either operand possibly a
  transposed view
- ``conv_matmul(xp, x, weight2d, bias, geom, keep_cols=True, tanh=False)``:
  (N, C, H, W), (O, C // groups * KH * KW) and (O,) or None -> the (O, L) output
  matrix, ``weight2d @ cols + bias`` per group (its tanh with ``tanh``), and the
  (C * KH * KW, L) columns (``None`` allowed when ``keep_cols`` is False)
- ``conv_linear(xp, x, weight2d, bias, geom, head, keep_cols=True, tanh=False)``: as
  ``conv_matmul`` for a geometry without pooling taps, and with a (U, O * OH * OW)
  ``head`` (a dense layer's weight) the product ``head @ flatten(output)`` as a (U, N)
  matrix: the output matrix, the columns and that product
- ``weight_grad(xp, grad2, cols)``: (O, L) and (K, L) -> (O, K)
- ``row_sums(xp, a)``: (O, L) -> (O,)
- ``batch_innermost(xp, x)``: (N, ...) -> bool
- ``max_pool_blocks(xp, blocks, bias=None, relu=False)``: (O, T, PH, PW, N) and (O,)
  -> (O, PH, PW, N) values and their int8 (O, PH, PW, N) tap codes
- ``max_pool_blocks_backward(xp, grad_out, argmax, taps)``: (O, PH, PW, N) values and
  codes -> (O, T, PH, PW, N)
- ``tanh(xp, x)`` and ``tanh_backward(xp, grad_out, t)``: elementwise, any shape
- ``batch_norm_train(xp, x, weight, bias, eps)``: (N, C, ...) and (C,) or None ->
  ``(y, x_hat, mean, var, invstd)``, y and x_hat of x's shape, the others (C,), var
  biased: batch norm with the batch statistics (contract in ``_norm``)
- ``batch_norm_backward(xp, grad_out, x_hat, invstd, weight, training)``: ->
  ``(grad_x, grad_weight, grad_bias)``, in training or inference

``L`` is ``OH * OW * N`` in the column order of ``_im2col`` (pool-ordered when
``geom.pool != (1, 1)``); ``T = KP * KQ`` pooling taps (contract in ``portable.max_pool_blocks``).

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
from typing import Any, Protocol

import array_api_compat

from xpconv.backends import portable as _im2col
from xpconv.backends.portable import ConvGeometry

Array = Any


class Im2col(Protocol):
    def __call__(self, xp: Any, x: Array, geom: ConvGeometry) -> Array: ...


class Col2im(Protocol):
    def __call__(self, xp: Any, cols: Array, geom: ConvGeometry) -> Array: ...


class Matmul(Protocol):
    def __call__(self, xp: Any, a: Array, b: Array) -> Array: ...


class ConvMatmul(Protocol):
    def __call__(
        self,
        xp: Any,
        x: Array,
        weight2d: Array,
        bias: Array | None,
        geom: ConvGeometry,
        keep_cols: bool = True,
        tanh: bool = False,
    ) -> tuple[Array, Array | None]: ...


class ConvLinear(Protocol):
    def __call__(
        self,
        xp: Any,
        x: Array,
        weight2d: Array,
        bias: Array | None,
        geom: ConvGeometry,
        head: Array,
        keep_cols: bool = True,
        tanh: bool = False,
    ) -> tuple[Array, Array | None, Array]: ...


class WeightGrad(Protocol):
    def __call__(self, xp: Any, grad2: Array, cols: Array) -> Array: ...


class RowSums(Protocol):
    def __call__(self, xp: Any, a: Array) -> Array: ...


class BatchInnermost(Protocol):
    def __call__(self, xp: Any, x: Array) -> bool: ...


class MaxPoolBlocks(Protocol):
    def __call__(
        self, xp: Any, blocks: Array, bias: Array | None = None, relu: bool = False
    ) -> tuple[Array, Array]: ...


class MaxPoolBlocksBackward(Protocol):
    def __call__(self, xp: Any, grad_out: Array, argmax: Array, taps: int) -> Array: ...


class Tanh(Protocol):
    def __call__(self, xp: Any, x: Array) -> Array: ...


class TanhBackward(Protocol):
    def __call__(self, xp: Any, grad_out: Array, t: Array) -> Array: ...


class BatchNormTrain(Protocol):
    def __call__(
        self, xp: Any, x: Array, weight: Array | None, bias: Array | None, eps: float
    ) -> tuple[Array, Array, Array, Array, Array]: ...


class BatchNormBackward(Protocol):
    def __call__(
        self,
        xp: Any,
        grad_out: Array,
        x_hat: Array,
        invstd: Array,
        weight: Array | None,
        training: bool,
    ) -> tuple[Array, Array, Array]: ...


def _matmul(xp: Any, a: Any, b: Any) -> Any:
    """``a @ b`` for 2-D ``a`` (M, K) and ``b`` (K, N)."""
    return a @ b


def grouped_matmul(
    xp: Any,
    a: Array,
    b: Array,
    groups: int,
    *,
    transpose_a: bool = False,
    transpose_b: bool = False,
) -> Array:
    """The block-diagonal product of a grouped convolution, the one place it is sliced.

    ``a`` and ``b`` are each split by rows into ``groups`` equal blocks; block ``g``
    of the result is ``op(a_g) @ op(b_g)`` (``op`` transposes where asked), one 2-D
    matmul per group (the backend's ``matmul`` kernel), and the blocks are stacked by
    rows. ``groups == 1`` is one plain matmul.
    """
    matmul = kernels_for(xp).matmul
    if groups == 1:
        return matmul(xp, a.T if transpose_a else a, b.T if transpose_b else b)
    ra, rb = a.shape[0] // groups, b.shape[0] // groups
    parts = []
    for g in range(groups):
        ag, bg = a[g * ra : (g + 1) * ra, ...], b[g * rb : (g + 1) * rb, ...]
        parts.append(matmul(xp, ag.T if transpose_a else ag, bg.T if transpose_b else bg))
    return xp.concat(parts, axis=0)


def _conv_matmul(
    xp: Any,
    x: Any,
    weight2d: Any,
    bias: Any,
    geom: ConvGeometry,
    keep_cols: bool = True,
    tanh: bool = False,
) -> tuple[Any, Any]:
    """``weight2d @ im2col(x) + bias`` (its tanh with ``tanh``) through the ``im2col``,
    ``matmul`` and ``tanh`` entries of the table selected for ``xp``, one product per
    group: the (O, L) output matrix and the columns (kept even when ``keep_cols`` is
    False)."""
    table = kernels_for(xp)
    cols = table.im2col(xp, x, geom)
    out = grouped_matmul(xp, weight2d, cols, geom.groups)  # fresh
    if bias is not None:
        out += xp.reshape(bias, (-1, 1))  # in place: nobody else holds ``out`` yet
    return (table.tanh(xp, out) if tanh else out), cols


def _conv_linear(
    xp: Any,
    x: Any,
    weight2d: Any,
    bias: Any,
    geom: ConvGeometry,
    head: Any,
    keep_cols: bool = True,
    tanh: bool = False,
) -> tuple[Any, Any, Any]:
    """The table's ``conv_matmul``, then ``head @ out`` with the (O, OH * OW * N)
    output read as the (O * OH * OW, N) flattened features it is (the batch is
    innermost): the product a dense layer after the convolution runs."""
    if geom.pool != (1, 1):
        raise ValueError(f"geom: expected no pooling taps (pool (1, 1)), got pool {geom.pool}")
    table = kernels_for(xp)
    out, cols = table.conv_matmul(xp, x, weight2d, bias, geom, keep_cols, tanh)
    return out, cols, table.matmul(xp, head, xp.reshape(out, (-1, geom.batch)))


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


def _batch_innermost(xp: Any, x: Any) -> bool:
    """Whether ``x`` (N, ...) is stored with its batch axis innermost (unknown: False)."""
    return False


@dataclass(frozen=True)
class Kernels:
    """Kernels a backend may specialise (signatures and shapes: the module docstring).

    - ``im2col`` / ``col2im``: the data movement of convolution (contract in ``_im2col``).
    - ``matmul``: the 2-D product every convolution and dense layer runs on (forward,
      input gradient and, unless ``weight_grad`` is specialised, weight gradient).
    - ``conv_matmul``: a convolution's forward as a matrix, ``weight2d @ cols + bias``
      per group, and its tanh when asked; a fast path may build the columns block
      by block and multiply each (and take its tanh) while it is in cache, and keep
      none when ``keep_cols`` is False.
    - ``conv_linear``: ``conv_matmul`` and the product of a dense layer that reads the
      flattened output (``Conv2D``, ``Flatten``, ``Dense`` run as one step); a fast
      path may take each part of that product while the part's outputs are in cache.
    - ``weight_grad``: ``grad2 @ cols.T``, the weight gradient.
    - ``batch_innermost``: whether ``x`` is stored batch-innermost, so an op can
      return its result in the same memory order (no layout change between layers);
      on JAX, whether to treat a traced array so (the layout is XLA's, see
      ``_jax_kernels``).
    - ``max_pool_blocks`` and ``max_pool_blocks_backward``: the fused step's
      pool-ordered max pool with the convolution's bias and ReLU (contract in
      ``portable.max_pool_blocks``).
    - ``row_sums``: the bias gradient of a convolution.
    - ``tanh`` and ``tanh_backward``: the lecture's activation and
      ``grad_out * (1 - t**2)``.
    - ``batch_norm_train`` and ``batch_norm_backward``: batch normalization with the
      batch statistics, and its backward in either mode.

    Entries left out are the portable ones.
    """

    name: str
    im2col: Im2col
    col2im: Col2im
    matmul: Matmul = _matmul
    conv_matmul: ConvMatmul = _conv_matmul
    conv_linear: ConvLinear = _conv_linear
    weight_grad: WeightGrad = _weight_grad
    batch_innermost: BatchInnermost = _batch_innermost
    max_pool_blocks: MaxPoolBlocks = _im2col.max_pool_blocks
    max_pool_blocks_backward: MaxPoolBlocksBackward = _im2col.max_pool_blocks_backward
    tanh: Tanh = _tanh
    tanh_backward: TanhBackward = _tanh_backward
    row_sums: RowSums = _row_sums
    batch_norm_train: BatchNormTrain = _batch_norm_train
    batch_norm_backward: BatchNormBackward = _batch_norm_backward


#: The interface of each entry of :class:`Kernels`, by field name.
INTERFACE: dict[str, type] = {
    "im2col": Im2col,
    "col2im": Col2im,
    "matmul": Matmul,
    "conv_matmul": ConvMatmul,
    "conv_linear": ConvLinear,
    "weight_grad": WeightGrad,
    "batch_innermost": BatchInnermost,
    "max_pool_blocks": MaxPoolBlocks,
    "max_pool_blocks_backward": MaxPoolBlocksBackward,
    "tanh": Tanh,
    "tanh_backward": TanhBackward,
    "row_sums": RowSums,
    "batch_norm_train": BatchNormTrain,
    "batch_norm_backward": BatchNormBackward,
}


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
