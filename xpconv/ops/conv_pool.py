"""A 2-D convolution and the tiled max pool after it, as one op with its backward.

Same values as ``max_pool2d(relu(conv2d(x, weight, bias)), pool_size)`` (ReLU
optional), less memory traffic: the convolution's columns are pool-ordered (see
``_im2col``), so its output is one contiguous block per pooling tap and the pool is a
maximum over whole blocks; bias and ReLU commute with the max and run on the
``KP * KQ`` times smaller pooled output; the ReLU's backward is folded into the
recorded argmax; output rows and columns the pool drops are never computed.

- :func:`conv_max_pool2d_forward`: x (N, C, H, W), weight (O, C // groups, KH, KW),
  bias (O,) -> (N, O, OH // KP, OW // KQ) and the state the backward needs; checked,
  or, given a ``geometry`` built once by :func:`conv_pool_geometry` (a layer's path),
  with no checks per call.
- :func:`conv_max_pool2d_backward`: (grad_x, grad_weight, grad_bias) from that state.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from xpconv.backends.kernels import kernels_for
from xpconv.backends.portable import ConvGeometry
from xpconv.ops.checks import int_pair, namespace
from xpconv.ops.conv import conv2d_matrix, conv2d_matrix_backward
from xpconv.ops.geometry import IntOrPair, Padding, prepare_conv2d

Array = Any

__all__ = [
    "ConvPoolSaved",
    "conv_max_pool2d",
    "conv_max_pool2d_backward",
    "conv_max_pool2d_forward",
    "conv_pool_geometry",
]


@dataclass(frozen=True)
class ConvPoolSaved:
    """What :func:`conv_max_pool2d_forward` keeps for the backward pass; opaque.

    ``cols`` are the pool-ordered columns, ``argmax`` the int8 tap of each window's
    first maximum (-1 where the ReLU is off), ``xp`` the namespace found by the forward.
    """

    xp: Any
    geometry: ConvGeometry
    cols: Array
    weight: Array
    argmax: Array


def conv_pool_geometry(geom: ConvGeometry, pool_size: IntOrPair) -> ConvGeometry:
    """``geom`` with pool-ordered columns for a tiled ``pool_size`` max pool.

    Raises ValueError naming ``pool_size`` when the convolution's output is smaller
    than one pooling window.
    """
    pool = int_pair(pool_size, "pool_size", minimum=1)
    if geom.out[0] < pool[0] or geom.out[1] < pool[1]:
        raise ValueError(
            f"pool_size: expected at most the convolution's output size {geom.out}, got {pool}"
        )
    return replace(geom, pool=pool)


def _forward(
    xp: Any, x: Array, weight: Array, bias: Array | None, geom: ConvGeometry, relu: bool
) -> tuple[Array, ConvPoolSaved]:
    z, cols = conv2d_matrix(xp, x, weight, None, geom)  # (O, KP*KQ*PH*PW*N)
    (kp, kq), (ph, pw) = geom.pool, geom.pooled
    out, argmax = kernels_for(xp).max_pool_blocks(  # (O, PH, PW, N)
        xp, xp.reshape(z, (geom.out_channels, kp * kq, ph, pw, geom.batch)), bias, relu=relu
    )
    return xp.permute_dims(out, (3, 0, 1, 2)), ConvPoolSaved(xp, geom, cols, weight, argmax)


def conv_max_pool2d_forward(
    x: Array,
    weight: Array,
    bias: Array | None = None,
    *,
    pool_size: IntOrPair = 2,
    relu: bool = False,
    stride: IntOrPair = 1,
    padding: Padding = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
    geometry: ConvGeometry | None = None,
) -> tuple[Array, ConvPoolSaved]:
    """``max_pool2d(relu(conv2d(x, weight, bias, ...)), pool_size)`` in one op.

    Args:
        x, weight, bias, stride, padding, dilation, groups: as
            :func:`~xpconv.ops.conv2d`.
        pool_size: the max pool's window (KP, KQ), an int or a pair; its stride is
            the window and it has no padding (rows and columns past ``KP * PH`` are
            dropped, as ``max_pool2d`` drops them).
        relu: apply a ReLU after the bias (before the pool: they commute).
        geometry: the convolution and pool, checked once by :func:`conv_pool_geometry`
            for ``x``'s batch size; when given, nothing is checked per call and
            ``pool_size``, ``stride``, ``padding``, ``dilation`` and ``groups`` are not
            read (a layer's path).

    Returns:
        ``(out, saved)``: out (N, O, OH // KP, OW // KQ), and the opaque
        :class:`ConvPoolSaved` for :func:`conv_max_pool2d_backward`.
    """
    xp = namespace(x=x, weight=weight, bias=bias)  # once per call
    if geometry is None:
        conv = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        geometry = conv_pool_geometry(prepare_conv2d(xp, x, weight, bias, **conv), pool_size)
    return _forward(xp, x, weight, bias, geometry, bool(relu))


def conv_max_pool2d(
    x: Array,
    weight: Array,
    bias: Array | None = None,
    *,
    pool_size: IntOrPair = 2,
    relu: bool = False,
    stride: IntOrPair = 1,
    padding: Padding = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
) -> Array:
    """The output of :func:`conv_max_pool2d_forward` alone: (N, O, OH // KP, OW // KQ)."""
    conv: dict[str, Any] = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return conv_max_pool2d_forward(x, weight, bias, pool_size=pool_size, relu=relu, **conv)[0]


def conv_max_pool2d_backward(
    grad_out: Array, saved: ConvPoolSaved, *, need_input_grad: bool = True
) -> tuple[Array | None, Array, Array]:
    """Vector-Jacobian product of :func:`conv_max_pool2d_forward` from its state.

    Args:
        grad_out: gradient with respect to the output, (N, O, PH, PW).
        saved: the second value the forward returned.
        need_input_grad: ``False`` skips grad_x (a network's first layer): ``None``.

    Returns:
        ``(grad_x, grad_weight, grad_bias)`` of shapes (N, C, H, W),
        (O, C // groups, KH, KW) and (O,). Each pooled gradient goes to the first
        maximum of its window, and nowhere where the ReLU was off; the bias gradient
        is the sum of the pooled gradients that pass.
    """
    if not isinstance(saved, ConvPoolSaved):
        raise TypeError(
            "saved: expected the ConvPoolSaved returned by conv_max_pool2d_forward, "
            f"got {type(saved).__qualname__}"
        )
    xp, geom = saved.xp, saved.geometry
    expected = (geom.batch, geom.out_channels, *geom.pooled)
    if tuple(grad_out.shape) != expected:
        raise ValueError(f"grad_out: expected shape {expected}, got {tuple(grad_out.shape)}")
    (kp, kq) = geom.pool
    grad = xp.permute_dims(grad_out, (1, 2, 3, 0))  # (O, PH, PW, N); the ReLU is in argmax
    blocks = kernels_for(xp).max_pool_blocks_backward(xp, grad, saved.argmax, kp * kq)
    return conv2d_matrix_backward(
        xp,
        xp.reshape(blocks, (geom.out_channels, -1)),
        saved.cols,
        saved.weight,
        geom,
        need_input_grad=need_input_grad,
    )
