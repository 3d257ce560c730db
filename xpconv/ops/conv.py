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
from xpconv.ops.checks import check_float, check_rank, int_pair, namespace, positive_int

Array = Any
IntOrPair = int | tuple[int, int]
Padding = int | tuple[int, int] | str

__all__ = [
    "conv1d",
    "conv1d_backward",
    "conv2d",
    "conv2d_backward",
    "conv_geometry",
    "conv_output_size",
]

PADDING_MODES = ("valid", "same", "full")


def conv_output_size(size: int, kernel: int, stride: int, pad_total: int, dilation: int) -> int:
    """Output length ``floor((I + P_total - D * (K - 1) - 1) / S) + 1``."""
    return (size + pad_total - dilation * (kernel - 1) - 1) // stride + 1


def _resolve_padding(
    padding: Padding, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    if isinstance(padding, str):
        mode = padding.lower()
        if mode not in PADDING_MODES:
            raise ValueError(
                f"padding: expected an int, a pair of ints or one of {PADDING_MODES}, "
                f"got {padding!r}"
            )
        if mode == "valid":
            return (0, 0), (0, 0)
        totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
        if mode == "full":
            return (totals[0], totals[0]), (totals[1], totals[1])
        if stride != (1, 1):
            raise ValueError(f"padding: 'same' needs stride 1, got stride {stride}")
        # PyTorch puts the extra row/column of an even kernel at the bottom/right.
        return tuple((t // 2, t - t // 2) for t in totals)  # type: ignore[return-value]
    ph, pw = int_pair(padding, "padding", minimum=0)
    return (ph, ph), (pw, pw)


def conv_geometry(
    x_shape: tuple[int, ...],
    weight_shape: tuple[int, ...],
    *,
    stride: IntOrPair = 1,
    padding: Padding = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
) -> ConvGeometry:
    """Validate a 2-D convolution and compute all its sizes.

    Raises ValueError/TypeError naming the argument, the expected and the actual value.
    """
    n, c, h, w = x_shape
    o, cg, kh, kw = weight_shape
    stride = int_pair(stride, "stride", minimum=1)
    dilation = int_pair(dilation, "dilation", minimum=1)
    groups = positive_int(groups, "groups")
    if c % groups:
        raise ValueError(f"groups: input channels ({c}) must be divisible by groups, got {groups}")
    if o % groups:
        raise ValueError(f"groups: output channels ({o}) must be divisible by groups, got {groups}")
    if cg != c // groups:
        raise ValueError(
            f"weight: expected {c // groups} input channels per group (x has {c} channels, "
            f"groups={groups}), got weight of shape {tuple(weight_shape)}"
        )
    if min(kh, kw) < 1 or min(n, c, h, w) < 1:
        raise ValueError(
            f"x, weight: expected non-empty arrays, got x of shape {tuple(x_shape)} and "
            f"weight of shape {tuple(weight_shape)}"
        )
    pad = _resolve_padding(padding, (kh, kw), stride, dilation)
    oh, ow = (
        conv_output_size(size, k, s, sum(p), d)
        for size, k, s, p, d in zip((h, w), (kh, kw), stride, pad, dilation)
    )
    out = (oh, ow)
    if min(out) < 1:
        raise ValueError(
            f"x: input of spatial size {(h, w)} with padding {pad} is too small for kernel "
            f"{(kh, kw)} with dilation {dilation} and stride {stride}: output size would be "
            f"{out}, expected at least (1, 1)"
        )
    return ConvGeometry(n, c, (h, w), o, (kh, kw), stride, dilation, pad, groups, out)


def _check_bias(bias: Array | None, out_channels: int) -> None:
    if bias is not None and tuple(bias.shape) != (out_channels,):
        raise ValueError(f"bias: expected shape ({out_channels},), got {tuple(bias.shape)}")


def conv2d_forward_matrix(
    xp: Any,
    x: Array,
    weight: Array,
    bias: Array | None,
    geom: ConvGeometry,
    *,
    keep_cols: bool = True,
    tanh: bool = False,
) -> tuple[Array, Array | None]:
    """Unchecked forward: the output as a (O, columns) matrix in the column order of
    ``geom`` (see ``_im2col``), its tanh with ``tanh=True``, and the columns for
    backward (possibly ``None`` with ``keep_cols=False``, for a forward pass that no
    backward follows)."""
    w2 = xp.reshape(weight, (geom.out_channels, -1))
    return kernels_for(xp).conv_matmul(xp, x, w2, bias, geom, keep_cols, tanh)


def conv2d_linear_forward_matrix(
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
    """Unchecked forward of a convolution and the dense layer that reads its flattened
    output: :func:`conv2d_forward_matrix`'s output matrix and columns, and
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


def conv2d_forward(
    xp: Any, x: Array, weight: Array, bias: Array | None, geom: ConvGeometry
) -> tuple[Array, Array]:
    """Unchecked forward: returns the output (N, O, OH, OW) and the columns for backward."""
    out, cols = conv2d_forward_matrix(xp, x, weight, bias, geom)
    return matrix_to_output(xp, out, geom), cols


def conv2d_backward_cols(
    xp: Any,
    grad_out: Array,
    cols: Array,
    weight: Array,
    geom: ConvGeometry,
    *,
    need_input_grad: bool = True,
) -> tuple[Array | None, Array, Array]:
    """Unchecked backward from saved columns: (grad_x, grad_weight, grad_bias).

    With ``need_input_grad=False`` (a network's first layer) grad_x is ``None`` and its
    matmul and col2im are skipped.
    """
    g2 = output_to_matrix(xp, grad_out, geom)  # (O, OH*OW*N)
    return conv2d_backward_matrix(xp, g2, cols, weight, geom, need_input_grad=need_input_grad)


def conv2d_backward_matrix(
    xp: Any,
    g2: Array,
    cols: Array | None,
    weight: Array,
    geom: ConvGeometry,
    *,
    need_input_grad: bool = True,
    x: Array | None = None,
) -> tuple[Array | None, Array, Array]:
    """:func:`conv2d_backward_cols` from the output gradient as a (O, columns) matrix.
    ``cols`` may be None after a forward that kept none (``keep_cols=False``); they are
    then built again from that forward's input ``x``."""
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


def prepare_conv2d(
    xp: Any, x: Array, weight: Array, bias: Array | None, **conv: Any
) -> ConvGeometry:
    """The checks of a 2-D convolution whose namespace ``xp`` the caller found (once per
    call, over every array it was given); returns the validated geometry."""
    check_rank(x, "x", 4, "(N, C, H, W)")
    check_rank(weight, "weight", 4, "(O, C // groups, KH, KW)")
    check_float(xp, x=x, weight=weight, bias=bias)
    geom = conv_geometry(tuple(x.shape), tuple(weight.shape), **conv)
    _check_bias(bias, geom.out_channels)
    return geom


def _forward2d(xp: Any, x: Array, weight: Array, bias: Array | None, conv: Any) -> Array:
    geom = prepare_conv2d(xp, x, weight, bias, **conv)
    return conv2d_forward(xp, x, weight, bias, geom)[0]


def _backward2d(
    xp: Any, grad_out: Array, x: Array, weight: Array, conv: Any
) -> tuple[Array, Array, Array]:
    geom = prepare_conv2d(xp, x, weight, None, **conv)
    check_float(xp, x=x, grad_out=grad_out)
    expected = (geom.batch, geom.out_channels, *geom.out)
    if tuple(grad_out.shape) != expected:
        raise ValueError(f"grad_out: expected shape {expected}, got {tuple(grad_out.shape)}")
    cols = kernels_for(xp).im2col(xp, x, geom)
    return conv2d_backward_cols(xp, grad_out, cols, weight, geom)  # type: ignore[return-value]


def conv2d(
    x: Array,
    weight: Array,
    bias: Array | None = None,
    *,
    stride: IntOrPair = 1,
    padding: Padding = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
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

    Returns:
        (N, O, OH, OW) with ``OH = floor((H + 2P - D(KH - 1) - 1) / S) + 1``.
    """
    xp = namespace(x=x, weight=weight, bias=bias)  # once per call
    conv = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return _forward2d(xp, x, weight, bias, conv)


def conv2d_backward(
    grad_out: Array,
    x: Array,
    weight: Array,
    *,
    stride: IntOrPair = 1,
    padding: Padding = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
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
    return _backward2d(xp, grad_out, x, weight, conv)


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
    return _forward2d(xp, x4, w4, bias, conv)[:, :, 0, :]


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
    gx, gw, gb = _backward2d(xp, g4, x4, w4, conv)
    return gx[:, :, 0, :], gw[:, :, 0, :], gb
