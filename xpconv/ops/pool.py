"""2-D max and average pooling, forward and backward, with PyTorch's semantics.

Shapes use the PyTorch layout: x (N, C, H, W) -> (N, C, OH, OW) with
``OH = floor((H + 2 * PH - KH) / SH) + 1`` (floor mode; ``ceil_mode`` is not offered).

- Max pooling pads with ``-inf``; average pooling pads with zeros that count in the
  divisor (``count_include_pad=True``), so every window divides by ``KH * KW``.
- ``padding`` may be at most ``kernel_size // 2`` in each direction (PyTorch's rule): a
  window then always covers at least one real input element.
- Max-pool backward sends each output gradient to the *first* maximum of its window,
  in row-major order over the kernel taps (top row first, left to right), which is the
  element PyTorch's ``max_pool2d`` picks. Overlapping windows add their gradients.
  NaN inputs are not supported by the backward pass (their gradient is dropped).

Both ops take window maxima/sums separably: first over the KH rows of each window,
then over the KW columns, so a window costs ``KH + KW - 2`` elementwise operations on
strided slices, not ``KH * KW``. (Reductions such as ``max(axis=(3, 5))`` over a
reshaped (N, C, OH, KH, OW, KW) view were measured several times slower than these
slices on NumPy and PyTorch CPU, because they reduce over tiny, non-contiguous axes:
docs/performance.md, "Notes from the kernels".)

When ``stride == kernel_size`` the windows tile the input and the backward pass has a
fast path: the gradient of every tap is computed on a (N, C, OH, KH, OW, KW) view and
stacked into place, without a zero-filled accumulator and slice-wise additions. It
gives exactly the results of the general path (each input receives at most one term).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import array_api_compat
import array_api_extra as xpx

from xpconv.backends.portable import first_max
from xpconv.ops.checks import check_float, check_rank, int_pair, namespace

Array = Any
IntOrPair = int | tuple[int, int]

__all__ = [
    "MaxPoolSaved",
    "PoolGeometry",
    "avg_pool2d",
    "avg_pool2d_backward",
    "max_pool2d",
    "max_pool2d_backward",
    "max_pool2d_forward",
    "pool_geometry",
]


@dataclass(frozen=True)
class PoolGeometry:
    """Every size of one 2-D pooling, validated.

    ``pad`` is (PH, PW), applied on both sides; ``out`` is (OH, OW).
    """

    batch: int
    channels: int
    in_size: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    out: tuple[int, int]

    @property
    def tiled(self) -> bool:
        """Whether the windows tile the input (stride == kernel): the fast path."""
        return self.stride == self.kernel

    @property
    def taps(self) -> int:
        return self.kernel[0] * self.kernel[1]

    def rows(self, i: int) -> slice:
        """Rows of the padded input read by kernel row ``i``, one per output row."""
        s, o = self.stride[0], self.out[0]
        return slice(i, i + s * (o - 1) + 1, s)

    def cols(self, j: int) -> slice:
        """Columns of the padded input read by kernel column ``j``."""
        s, o = self.stride[1], self.out[1]
        return slice(j, j + s * (o - 1) + 1, s)

    @property
    def source_size(self) -> tuple[int, int]:
        """Size of the padded input region the windows read (trailing rest cropped)."""
        return tuple(  # type: ignore[return-value]
            s * (o - 1) + k for s, o, k in zip(self.stride, self.out, self.kernel)
        )


def pool_geometry(
    x_shape: tuple[int, ...],
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
) -> PoolGeometry:
    """Validate a 2-D pooling of an input of shape ``x_shape`` and compute its sizes.

    Raises ValueError/TypeError naming the argument, the expected and the actual value.
    """
    n, c, h, w = x_shape
    kernel = int_pair(kernel_size, "kernel_size", minimum=1)
    stride_ = kernel if stride is None else int_pair(stride, "stride", minimum=1)
    pad = int_pair(padding, "padding", minimum=0)
    half = (kernel[0] // 2, kernel[1] // 2)
    if pad[0] > half[0] or pad[1] > half[1]:
        raise ValueError(
            f"padding: expected at most half the kernel size (kernel_size // 2 = {half}) "
            f"for kernel_size {kernel}, got {pad}"
        )
    if min(n, c, h, w) < 1:
        raise ValueError(f"x: expected a non-empty array, got shape {tuple(x_shape)}")
    out = tuple((size + 2 * p - k) // s + 1 for size, p, k, s in zip((h, w), pad, kernel, stride_))
    if min(out) < 1:
        raise ValueError(
            f"x: input of spatial size {(h, w)} with padding {pad} is too small for "
            f"kernel_size {kernel}: output size would be {out}, expected at least (1, 1)"
        )
    return PoolGeometry(n, c, (h, w), kernel, stride_, pad, out)  # type: ignore[arg-type]


@dataclass(frozen=True)
class MaxPoolSaved:
    """What :func:`max_pool2d_forward` keeps for :func:`max_pool2d_backward`.

    ``source`` is the ``-inf``-padded input cropped to the region the windows read,
    ``out`` the pooled output. Treat it as opaque.
    """

    geometry: PoolGeometry
    source: Array
    out: Array
    argmax: Array | None = None  # tiled windows: int8 row-major tap index of the first max


# ----------------------------------------------------------------------- internals


def _prepare(
    x: Array, kernel_size: Any, stride: Any, padding: Any, grad_out: Array | None = None
) -> tuple[Any, PoolGeometry]:
    xp = namespace(x=x, grad_out=grad_out)  # once per call
    check_rank(x, "x", 4, "(N, C, H, W)")
    check_float(xp, x=x)
    return xp, pool_geometry(tuple(x.shape), kernel_size, stride, padding)


def _check_grad(xp: Any, grad_out: Array, like: Array, like_name: str, geom: PoolGeometry) -> None:
    """``grad_out`` fits the output; ``xp`` was found over both arrays by the caller."""
    check_float(xp, **{like_name: like, "grad_out": grad_out})
    expected = (geom.batch, geom.channels, *geom.out)
    if tuple(grad_out.shape) != expected:
        raise ValueError(f"grad_out: expected shape {expected}, got {tuple(grad_out.shape)}")


def _source(xp: Any, x: Array, geom: PoolGeometry, fill: float) -> Array:
    """The input padded with ``fill`` and cropped to the rows/columns windows read."""
    (ph, pw), (rh, rw) = geom.pad, geom.source_size
    if ph or pw:
        x = xpx.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill, xp=xp)
    if tuple(x.shape[2:]) != (rh, rw):
        x = x[:, :, :rh, :rw]
    return x


def _to_input(xp: Any, grad_src: Array, geom: PoolGeometry) -> Array:
    """Gradient over the (cropped, padded) source -> gradient over x (N, C, H, W)."""
    (ph, pw), (h, w) = geom.pad, geom.in_size
    rh, rw = grad_src.shape[2], grad_src.shape[3]
    if (ph, pw) == (0, 0) and (rh, rw) == (h, w):
        return grad_src
    keep_h, keep_w = min(rh, ph + h) - ph, min(rw, pw + w) - pw
    g = grad_src[:, :, ph : ph + keep_h, pw : pw + keep_w]
    if (keep_h, keep_w) != (h, w):
        g = xpx.pad(g, ((0, 0), (0, 0), (0, h - keep_h), (0, w - keep_w)), xp=xp)
    return g


def _reduce_windows(src: Array, geom: PoolGeometry, op: Any) -> Array:
    """``op``-reduce every window of ``src``: first over kernel rows, then columns."""
    kh, kw = geom.kernel
    rows = src[:, :, geom.rows(0), :]
    for i in range(1, kh):
        rows = op(rows, src[:, :, geom.rows(i), :])
    out = rows[:, :, :, geom.cols(0)]
    for j in range(1, kw):
        out = op(out, rows[:, :, :, geom.cols(j)])
    return out


def _first_max_masks(xp: Any, taps: Any, out: Array, dtype: Any) -> Any:
    """For each tap in row-major order, a float mask: "this tap is the window's first max".

    ``taps`` yields (i, j, values) with values shaped like ``out``.
    """
    found = None
    for i, j, values in taps:
        hit = values == out
        if found is None:
            take, found = hit, hit
        else:
            take = xp.logical_and(hit, xp.logical_not(found))
            found = xp.logical_or(found, hit)
        yield i, j, xp.astype(take, dtype)


def _max_backward_general(xp: Any, grad_out: Array, saved: MaxPoolSaved) -> Array:
    geom, src, out = saved.geometry, saved.source, saved.out
    kh, kw = geom.kernel
    acc = xp.zeros(src.shape, dtype=grad_out.dtype, device=array_api_compat.device(grad_out))
    taps = ((i, j, src[:, :, geom.rows(i), geom.cols(j)]) for i in range(kh) for j in range(kw))
    for i, j, mask in _first_max_masks(xp, taps, out, grad_out.dtype):
        acc = xpx.at(acc)[:, :, geom.rows(i), geom.cols(j)].add(grad_out * mask)
    return _to_input(xp, acc, geom)


def _tiled_taps(xp: Any, src: Array, geom: PoolGeometry) -> list[Array]:
    """The taps of tiled windows in row-major order, each shaped like the output."""
    kh, kw = geom.kernel
    return [src[:, :, geom.rows(i), geom.cols(j)] for i in range(kh) for j in range(kw)]


def _max_forward_tiled(xp: Any, src: Array, geom: PoolGeometry) -> tuple[Array, Array]:
    """Window maxima and the index of each window's first maximum, in one sweep."""
    return first_max(xp, _tiled_taps(xp, src, geom))


def _max_backward_tiled(xp: Any, grad_out: Array, saved: MaxPoolSaved) -> Array:
    """Each tap's inputs get the window gradient where that tap is the recorded first
    maximum; written tap by tap into a buffer laid out like the saved input."""
    geom, src = saved.geometry, saved.source
    kh, kw = geom.kernel
    code = saved.argmax if saved.argmax is not None else _max_forward_tiled(xp, src, geom)[1]
    grad_src = xp.empty_like(src, dtype=grad_out.dtype)  # the taps tile it: all written
    for i in range(kh):
        for j in range(kw):
            mask = xp.astype(code == i * kw + j, grad_out.dtype)
            grad_src = xpx.at(grad_src)[:, :, geom.rows(i), geom.cols(j)].set(grad_out * mask)
    return _to_input(xp, grad_src, geom)


def _max_forward(xp: Any, x: Array, geom: PoolGeometry) -> tuple[Array, MaxPoolSaved]:
    src = _source(xp, x, geom, -math.inf)
    if geom.tiled:
        out, code = _max_forward_tiled(xp, src, geom)
        return out, MaxPoolSaved(geom, src, out, code)
    out = _reduce_windows(src, geom, xp.maximum)
    return out, MaxPoolSaved(geom, src, out)


def _max_backward(xp: Any, grad_out: Array, saved: MaxPoolSaved, tiled: bool | None) -> Array:
    """``tiled``: force the fast (True) or general (False) path; None chooses."""
    if tiled is None:
        tiled = saved.geometry.tiled
    if tiled:
        return _max_backward_tiled(xp, grad_out, saved)
    return _max_backward_general(xp, grad_out, saved)


# --------------------------------------------------------------------------- max


def max_pool2d(
    x: Array, kernel_size: IntOrPair, stride: IntOrPair | None = None, padding: IntOrPair = 0
) -> Array:
    """2-D max pooling, as ``torch.nn.functional.max_pool2d``.

    Args:
        x: input (N, C, H, W), float32 or float64.
        kernel_size: window (KH, KW), an int or a pair, positive.
        stride: an int or a pair, positive; default ``kernel_size``.
        padding: ``-inf`` rows/columns added on both sides, an int or a pair, at most
            ``kernel_size // 2``.

    Returns:
        (N, C, OH, OW) with ``OH = floor((H + 2 * PH - KH) / SH) + 1``.
    """
    xp, geom = _prepare(x, kernel_size, stride, padding)
    return _max_forward(xp, x, geom)[0]


def max_pool2d_forward(
    x: Array, kernel_size: IntOrPair, stride: IntOrPair | None = None, padding: IntOrPair = 0
) -> tuple[Array, MaxPoolSaved]:
    """:func:`max_pool2d` that also returns what the backward pass needs.

    Returns:
        ``(out, saved)``: out (N, C, OH, OW), and an opaque :class:`MaxPoolSaved` to
        pass to :func:`max_pool2d_backward`.
    """
    xp, geom = _prepare(x, kernel_size, stride, padding)
    return _max_forward(xp, x, geom)


def _backward_from_saved(grad_out: Array, saved: MaxPoolSaved, given: dict[str, Any]) -> Array:
    for name, value in given.items():
        if value is not None:
            raise TypeError(
                f"{name}: not read with the MaxPoolSaved of max_pool2d_forward (it holds "
                f"the geometry), got {value!r}"
            )
    xp = namespace(out=saved.out, grad_out=grad_out)
    _check_grad(xp, grad_out, saved.out, "out", saved.geometry)
    return _max_backward(xp, grad_out, saved, None)


def max_pool2d_backward(
    grad_out: Array,
    x: Array | MaxPoolSaved,
    kernel_size: IntOrPair | None = None,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
) -> Array:
    """Vector-Jacobian product of :func:`max_pool2d`.

    Args:
        grad_out: gradient with respect to the output, (N, C, OH, OW).
        x: the input (N, C, H, W), with ``kernel_size``, ``stride`` and ``padding`` as
            given to :func:`max_pool2d` (the forward pass is recomputed); or the
            :class:`MaxPoolSaved` that :func:`max_pool2d_forward` returned, alone.

    Returns:
        grad_x (N, C, H, W): each output gradient goes to the first maximum of its
        window (row-major tap order, as in PyTorch); overlapping windows add up.
    """
    if isinstance(x, MaxPoolSaved):
        given = dict(kernel_size=kernel_size, stride=stride, padding=padding or None)
        return _backward_from_saved(grad_out, x, given)
    if kernel_size is None:
        raise TypeError(
            "kernel_size: expected an int or a pair with an input x (or x the saved state "
            "that max_pool2d_forward returned), got None"
        )
    xp, geom = _prepare(x, kernel_size, stride, padding, grad_out)
    _check_grad(xp, grad_out, x, "x", geom)
    _, saved = _max_forward(xp, x, geom)
    return _max_backward(xp, grad_out, saved, None)


# ----------------------------------------------------------------------- average


def avg_pool2d(
    x: Array, kernel_size: IntOrPair, stride: IntOrPair | None = None, padding: IntOrPair = 0
) -> Array:
    """2-D average pooling, as ``torch.nn.functional.avg_pool2d`` with its defaults.

    Zero padding counts in the divisor (``count_include_pad=True``), so every window
    is divided by ``KH * KW``; floor output size (``ceil_mode=False``).

    Args:
        x: input (N, C, H, W), float32 or float64.
        kernel_size, stride, padding: as for :func:`max_pool2d`.

    Returns:
        (N, C, OH, OW) with ``OH = floor((H + 2 * PH - KH) / SH) + 1``.
    """
    xp, geom = _prepare(x, kernel_size, stride, padding)
    src = _source(xp, x, geom, 0.0)
    return _reduce_windows(src, geom, xp.add) / geom.taps


def avg_pool2d_backward(
    grad_out: Array,
    x: Array,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
) -> Array:
    """Vector-Jacobian product of :func:`avg_pool2d`.

    Args:
        grad_out: gradient with respect to the output, (N, C, OH, OW).
        x, kernel_size, stride, padding: as given to :func:`avg_pool2d` (only the
            shape, dtype and device of ``x`` are used).

    Returns:
        grad_x (N, C, H, W): every output gradient divided by ``KH * KW`` and added to
        each input of its window.
    """
    xp, geom = _prepare(x, kernel_size, stride, padding, grad_out)
    _check_grad(xp, grad_out, x, "x", geom)
    return _avg_backward(xp, grad_out, geom, None)


def _avg_backward(xp: Any, grad_out: Array, geom: PoolGeometry, tiled: bool | None) -> Array:
    """``tiled``: force the fast (True) or general (False) path; None chooses."""
    g = grad_out / geom.taps
    (kh, kw), (oh, ow) = geom.kernel, geom.out
    n, c = geom.batch, geom.channels
    if geom.tiled if tiled is None else tiled:
        spread = xp.broadcast_to(g[:, :, :, None, :, None], (n, c, oh, kh, ow, kw))
        return _to_input(xp, xp.reshape(spread, (n, c, oh * kh, ow * kw)), geom)
    # the adjoint of the separable sum: spread over kernel columns, then over rows
    rh, rw = geom.source_size
    dev = array_api_compat.device(grad_out)
    by_rows = xp.zeros((n, c, oh, rw), dtype=g.dtype, device=dev)
    for j in range(kw):
        by_rows = xpx.at(by_rows)[:, :, :, geom.cols(j)].add(g)
    acc = xp.zeros((n, c, rh, rw), dtype=g.dtype, device=dev)
    for i in range(kh):
        acc = xpx.at(acc)[:, :, geom.rows(i), :].add(by_rows)
    return _to_input(xp, acc, geom)
