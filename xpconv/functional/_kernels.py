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
- ``weight_grad(xp, grad2, cols)``: (O, L) and (K, L) -> (O, K)
- ``row_sums(xp, a)``: (O, L) -> (O,)
- ``batch_innermost(xp, x)``: (N, ...) -> bool
- ``max_pool_blocks(xp, blocks, bias=None, relu=False)``: (O, T, PH, PW, N) and (O,)
  -> (O, PH, PW, N) values and their int8 (O, PH, PW, N) tap codes
- ``max_pool_blocks_backward(xp, grad_out, argmax, taps)``: (O, PH, PW, N) values and
  codes -> (O, T, PH, PW, N)
- ``tanh(xp, x)`` and ``tanh_backward(xp, grad_out, t)``: elementwise, any shape

``L`` is ``OH * OW * N`` in the column order of ``_im2col`` (pool-ordered when
``geom.pool != (1, 1)``); ``T = KP * KQ`` pooling taps (contract in ``_pool``).

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

from . import _im2col, _pool
from ._im2col import ConvGeometry

Array = Any


class Im2col(Protocol):
    def __call__(self, xp: Any, x: Array, geom: ConvGeometry) -> Array: ...


class Col2im(Protocol):
    def __call__(self, xp: Any, cols: Array, geom: ConvGeometry) -> Array: ...


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


def _batch_innermost(xp: Any, x: Any) -> bool:
    """Whether ``x`` (N, ...) is stored with its batch axis innermost (unknown: False)."""
    return False


@dataclass(frozen=True)
class Kernels:
    """Kernels a backend may specialise (signatures and shapes: the module docstring).

    - ``im2col`` / ``col2im``: the data movement of convolution (contract in ``_im2col``).
    - ``weight_grad``: ``grad2 @ cols.T``, the weight gradient.
    - ``batch_innermost``: whether ``x`` is stored batch-innermost, so an op can
      return its result in the same memory order (no layout change between layers).
    - ``max_pool_blocks`` and ``max_pool_blocks_backward``: the fused step's
      pool-ordered max pool with the convolution's bias and ReLU (contract in ``_pool``).
    - ``row_sums``: the bias gradient of a convolution.
    - ``tanh`` and ``tanh_backward``: the lecture's activation and
      ``grad_out * (1 - t**2)``.

    Entries left out are the portable ones.
    """

    name: str
    im2col: Im2col
    col2im: Col2im
    weight_grad: WeightGrad = _weight_grad
    batch_innermost: BatchInnermost = _batch_innermost
    max_pool_blocks: MaxPoolBlocks = _pool.max_pool_blocks
    max_pool_blocks_backward: MaxPoolBlocksBackward = _pool.max_pool_blocks_backward
    tanh: Tanh = _tanh
    tanh_backward: TanhBackward = _tanh_backward
    row_sums: RowSums = _row_sums


#: The interface of each entry of :class:`Kernels`, by field name.
INTERFACE: dict[str, type] = {
    "im2col": Im2col,
    "col2im": Col2im,
    "weight_grad": WeightGrad,
    "batch_innermost": BatchInnermost,
    "max_pool_blocks": MaxPoolBlocks,
    "max_pool_blocks_backward": MaxPoolBlocksBackward,
    "tanh": Tanh,
    "tanh_backward": TanhBackward,
    "row_sums": RowSums,
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
