"""The geometry of a 2-D convolution: padding modes, output sizes and the checks.

:func:`conv_geometry` validates a convolution once and returns a
:class:`~xpconv.backends.portable.ConvGeometry` with every size; the functions that take a
geometry (the layers' entry points in :mod:`xpconv.ops.conv`, :mod:`xpconv.ops.conv_pool`
and :mod:`xpconv.ops.winograd`) trust it and check nothing per call.
"""

from __future__ import annotations

from typing import Any

from xpconv.backends.portable import ConvGeometry
from xpconv.ops.checks import check_float, check_rank, int_pair, positive_int

Array = Any
IntOrPair = int | tuple[int, int]
Padding = int | tuple[int, int] | str

__all__ = ["IntOrPair", "Padding", "conv_geometry", "conv_output_size", "prepare_conv2d"]

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
