"""Convolution: forward by im2col and one matmul, backward by the transposed matmuls.

Shapes use the PyTorch layout, so weights and results compare with PyTorch directly:

- ``conv2d``: x (N, C, H, W), weight (O, C // groups, KH, KW), bias (O,)
  -> (N, O, OH, OW), with ``OH = floor((H + PT + PB - DH * (KH - 1) - 1) / SH) + 1``.
- ``conv1d``: x (N, C, L), weight (O, C // groups, K), bias (O,) -> (N, O, OL).
"""

from __future__ import annotations

from typing import Any

from xpconv.backends.kernels import grouped_matmul, kernels_for
from xpconv.backends.portable import ConvGeometry
from xpconv.ops.checks import check_float, check_rank, namespace, positive_int
from xpconv.ops.geometry import IntOrPair, Padding, conv_output_size, prepare_conv2d
from xpconv.ops.winograd import (
    TILES,
    winograd_conv2d,
    winograd_conv2d_backward,
    winograd_saved,
    winograd_supported,
)

Array = Any

__all__ = [
    "conv1d",
    "conv1d_backward",
    "conv2d",
    "conv2d_backward",
]


def conv2d_matrix(
    xp: Any,
    x: Array,
    weight: Array,
    bias: Array | None,
    geom: ConvGeometry,
    *,
    keep_cols: bool = True,
    tanh: bool = False,
) -> tuple[Array, Array | None]:
    """The convolution for a checked ``geom``, as a (O, columns) matrix in the column
    order of ``geom`` (see ``im2col``), its tanh with ``tanh=True``, and the columns for
    backward (possibly ``None`` with ``keep_cols=False``, for a forward pass that no
    backward follows)."""
    w2 = xp.reshape(weight, (geom.out_channels, -1))
    return kernels_for(xp).conv_matmul(xp, x, w2, bias, geom, keep_cols, tanh)


def conv2d_linear_matrix(
    xp: Any,
    x: Array,
    weight: Array,
    bias: Array | None,
    geom: ConvGeometry,
    head: Array,
    *,
    keep_cols: bool = True,
    tanh: bool = False,
) -> tuple[Array, Array | None, Array]:
    """A convolution for a checked ``geom`` and the dense layer that reads its flattened
    output: :func:`conv2d_matrix`'s output matrix and columns, and
    ``flatten(output) @ head.T`` (N, U) for a dense weight ``head`` (U, O * OH * OW),
    without the dense layer's bias."""
    w2 = xp.reshape(weight, (geom.out_channels, -1))
    out, cols, product = kernels_for(xp).conv_linear(xp, x, w2, bias, geom, head, keep_cols, tanh)
    return out, cols, product.T


def matrix_to_output(xp: Any, out: Array, geom: ConvGeometry) -> Array:
    """The (O, OH * OW * N) output matrix as the (N, O, OH, OW) output it stores (a
    permuted view where the library has views; its memory keeps the batch innermost)."""
    o, (oh, ow) = geom.out_channels, geom.out
    return xp.permute_dims(xp.reshape(out, (o, oh, ow, geom.batch)), (3, 0, 1, 2))


def output_to_matrix(xp: Any, grad_out: Array, geom: ConvGeometry) -> Array:
    """The inverse of :func:`matrix_to_output`: (N, O, OH, OW) -> (O, OH * OW * N)."""
    return xp.reshape(xp.permute_dims(grad_out, (1, 2, 3, 0)), (geom.out_channels, -1))


def conv2d_matrix_backward(
    xp: Any,
    g2: Array,
    cols: Array | None,
    weight: Array,
    geom: ConvGeometry,
    *,
    need_input_grad: bool = True,
    x: Array | None = None,
) -> tuple[Array | None, Array, Array]:
    """Vector-Jacobian product of :func:`conv2d_matrix` from the output gradient as a
    (O, columns) matrix ``g2``: ``(grad_x, grad_weight, grad_bias)``. ``cols`` may be
    None after a forward that kept none (``keep_cols=False``); they are then built again
    from that forward's input ``x``. With ``need_input_grad=False`` (a network's first
    layer) grad_x is ``None`` and its matmul and col2im are skipped."""
    o, groups = geom.out_channels, geom.groups
    w2 = xp.reshape(weight, (o, -1))  # (O, Cg*KH*KW)
    kernels = kernels_for(xp)
    if cols is None:
        if x is None:
            raise ValueError("x: the forward's input is needed when cols is None, got None")
        cols = kernels.im2col(xp, x, geom)
    grad_bias = kernels.row_sums(xp, g2)
    if groups == 1:  # the backend's own weight-gradient kernel
        grad_w = kernels.weight_grad(xp, g2, cols)
    else:
        grad_w = grouped_matmul(xp, g2, cols, groups, transpose_b=True)
    if not need_input_grad:
        return None, xp.reshape(grad_w, weight.shape), grad_bias
    grad_cols = grouped_matmul(xp, w2, g2, groups, transpose_a=True)
    grad_x = kernels.col2im(xp, grad_cols, geom)
    return grad_x, xp.reshape(grad_w, weight.shape), grad_bias


def _prepare(
    xp: Any, x: Array, weight: Array, bias: Array | None, conv: Any, algorithm: str, tile: int
) -> ConvGeometry:
    geom = prepare_conv2d(xp, x, weight, bias, **conv)
    if algorithm not in ("im2col", "winograd"):
        raise ValueError(f"algorithm: expected 'im2col' or 'winograd', got {algorithm!r}")
    if algorithm == "winograd" and (reason := winograd_supported(geom)) is not None:
        raise ValueError(f"algorithm='winograd': {reason}")
    if tile not in TILES or isinstance(tile, bool):
        raise ValueError(f"tile: expected one of {sorted(TILES)}, got {tile!r}")
    return geom


def _forward2d(
    xp: Any, x: Array, weight: Array, bias: Array | None, conv: Any, algorithm: str, tile: int
) -> Array:
    geom = _prepare(xp, x, weight, bias, conv, algorithm, tile)
    if algorithm == "winograd":
        return winograd_conv2d(xp, x, weight, bias, geom, tile=tile, keep=False)[0]
    return matrix_to_output(xp, conv2d_matrix(xp, x, weight, bias, geom, keep_cols=False)[0], geom)


def _backward2d(
    xp: Any, grad_out: Array, x: Array, weight: Array, conv: Any, algorithm: str, tile: int
) -> tuple[Array, Array, Array]:
    geom = _prepare(xp, x, weight, None, conv, algorithm, tile)
    check_float(xp, x=x, grad_out=grad_out)
    expected = (geom.batch, geom.out_channels, *geom.out)
    if tuple(grad_out.shape) != expected:
        raise ValueError(f"grad_out: expected shape {expected}, got {tuple(grad_out.shape)}")
    if algorithm == "winograd":
        saved = winograd_saved(xp, x, weight, geom, tile)
        return winograd_conv2d_backward(xp, grad_out, saved)  # type: ignore[return-value]
    g2 = output_to_matrix(xp, grad_out, geom)
    return conv2d_matrix_backward(xp, g2, None, weight, geom, x=x)  # type: ignore[return-value]


def conv2d(
    x: Array,
    weight: Array,
    bias: Array | None = None,
    *,
    stride: IntOrPair = 1,
    padding: Padding = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
    algorithm: str = "im2col",
    tile: int = 2,
) -> Array:
    """2-D cross-correlation, as ``torch.nn.functional.conv2d``.

    Args:
        x: input (N, C, H, W), float32 or float64.
        weight: kernels (O, C // groups, KH, KW), same dtype and backend as ``x``.
        bias: optional (O,).
        stride, dilation: an int or a pair (height, width), positive.
        padding: an int or a pair (zeros on both sides), or ``"valid"`` (none),
            ``"same"`` (output size = input size; stride 1; an even kernel gets the
            extra row/column at the bottom/right, like PyTorch) or ``"full"``
            (``dilation * (K - 1)`` on both sides).
        groups: split channels into this many independent convolutions.
        algorithm: how the product is formed, the same values up to rounding:
            ``"im2col"`` (columns and one matmul; every convolution) or ``"winograd"``
            (Winograd minimal filtering; a 3x3 kernel with stride 1, dilation 1 and one
            group, else ValueError).
        tile: Winograd's output tile, 2 (F(2x2, 3x3)) or 4 (F(4x4, 3x3): fewer
            multiplies, a larger float32 rounding error); read with ``"winograd"``.

    Returns:
        (N, O, OH, OW) with ``OH = floor((H + 2P - D(KH - 1) - 1) / S) + 1``.
    """
    xp = namespace(x=x, weight=weight, bias=bias)  # once per call
    conv = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return _forward2d(xp, x, weight, bias, conv, algorithm, tile)


def conv2d_backward(
    grad_out: Array,
    x: Array,
    weight: Array,
    *,
    stride: IntOrPair = 1,
    padding: Padding = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
    algorithm: str = "im2col",
    tile: int = 2,
) -> tuple[Array, Array, Array]:
    """Vector-Jacobian product of :func:`conv2d`.

    Args:
        grad_out: gradient of the loss with respect to the output, (N, O, OH, OW).
        x, weight and the keyword arguments: as given to :func:`conv2d`.

    Returns:
        ``(grad_x, grad_weight, grad_bias)`` of shapes (N, C, H, W),
        (O, C // groups, KH, KW) and (O,).
    """
    xp = namespace(x=x, weight=weight, grad_out=grad_out)  # once per call
    conv = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return _backward2d(xp, grad_out, x, weight, conv, algorithm, tile)


# ------------------------------------------------------------------------------ 1-D


def lift_1d_arg(value: Any, name: str, fill: int) -> Any:
    """Lift a 1-D argument to the 2-D one of a height-1 convolution."""
    if isinstance(value, str):
        return value
    if isinstance(value, (tuple, list)):
        if len(value) != 1:
            raise TypeError(f"{name}: expected an int (or a 1-tuple) for conv1d, got {value!r}")
        (value,) = value
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {value!r}")
    return (fill, value)


def check_conv1d(
    x_shape: tuple[int, ...],
    weight_shape: tuple[int, ...],
    *,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
) -> None:
    """The checks of a 1-D convolution x (N, C, L), weight (O, C // groups, K) whose
    errors :func:`conv_geometry` would state in the shapes of the height-1 2-D
    convolution it runs as: these state them in the 1-D shapes."""
    n, c, length = x_shape
    o, cg, k = weight_shape
    for name, value in (("stride", stride), ("dilation", dilation)):
        if isinstance(value, str):
            raise TypeError(f"{name}: expected an int, got {value!r}")
    s = lift_1d_arg(stride, "stride", 1)[1]
    d = lift_1d_arg(dilation, "dilation", 1)[1]
    p = lift_1d_arg(padding, "padding", 0)
    groups = positive_int(groups, "groups")
    for name, value in (("stride", s), ("dilation", d)):
        if value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value}")
    if isinstance(p, str):
        if p.lower() == "same" and s != 1:
            raise ValueError(f"padding: 'same' needs stride 1, got stride {s}")
        return
    if p[1] < 0:
        raise ValueError(f"padding: expected a non-negative int, 'same' or 'valid', got {p[1]}")
    if c % groups == 0 and cg != c // groups:
        raise ValueError(
            f"weight: expected {c // groups} input channels per group (x has {c} channels, "
            f"groups={groups}), got weight of shape {tuple(weight_shape)}"
        )
    if min(k, length) >= 1:  # an empty kernel or input: conv_geometry names it
        out = conv_output_size(length, k, s, 2 * p[1], d)
        if out < 1:
            raise ValueError(
                f"x: input of length {length} with padding {p[1]} is too short for kernel "
                f"size {k} with dilation {d} and stride {s}: output length would be {out}, "
                "expected at least 1"
            )


def _lift1d(
    x: Array, weight: Array, stride: Any, padding: Any, dilation: Any, groups: int, **arrays: Any
) -> Any:
    """Namespace (once, over x, weight and ``arrays``), checks, and the height-1 2-D
    problem: (xp, x (N, C, 1, L), weight (O, C // groups, 1, K), 2-D arguments)."""
    xp = namespace(x=x, weight=weight, **arrays)
    check_rank(x, "x", 3, "(N, C, L)")
    check_rank(weight, "weight", 3, "(O, C // groups, K)")
    conv = dict(
        stride=lift_1d_arg(stride, "stride", 1),
        padding=lift_1d_arg(padding, "padding", 0),
        dilation=lift_1d_arg(dilation, "dilation", 1),
        groups=groups,
    )
    check_conv1d(
        tuple(x.shape),
        tuple(weight.shape),
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
    )
    return xp, xp.expand_dims(x, axis=2), xp.expand_dims(weight, axis=2), conv


def conv1d(
    x: Array,
    weight: Array,
    bias: Array | None = None,
    *,
    stride: int = 1,
    padding: int | str = 0,
    dilation: int = 1,
    groups: int = 1,
) -> Array:
    """1-D cross-correlation, as ``torch.nn.functional.conv1d``.

    x (N, C, L), weight (O, C // groups, K), bias (O,) -> (N, O, OL) with
    ``OL = floor((L + 2P - D(K - 1) - 1) / S) + 1``. Arguments as :func:`conv2d`.
    """
    xp, x4, w4, conv = _lift1d(x, weight, stride, padding, dilation, groups, bias=bias)
    return _forward2d(xp, x4, w4, bias, conv, "im2col", 2)[:, :, 0, :]


def conv1d_backward(
    grad_out: Array,
    x: Array,
    weight: Array,
    *,
    stride: int = 1,
    padding: int | str = 0,
    dilation: int = 1,
    groups: int = 1,
) -> tuple[Array, Array, Array]:
    """Vector-Jacobian product of :func:`conv1d`: (grad_x, grad_weight, grad_bias)."""
    xp, x4, w4, conv = _lift1d(x, weight, stride, padding, dilation, groups, grad_out=grad_out)
    check_rank(grad_out, "grad_out", 3, "(N, O, OL)")
    g4 = xp.expand_dims(grad_out, axis=2)
    gx, gw, gb = _backward2d(xp, g4, x4, w4, conv, "im2col", 2)
    return gx[:, :, 0, :], gw[:, :, 0, :], gb
