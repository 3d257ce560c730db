"""Convolution layers: Conv2D and Conv1D."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from array_api_compat import array_namespace

from xpconv import ops as F
from xpconv.nn.initializers import get_initializer, initializer_config
from xpconv.nn.layers.base import BuildContext, Layer, LayerShapes, _ActivationMixin
from xpconv.ops import ConvGeometry, conv_geometry
from xpconv.ops.checks import int_pair, positive_int
from xpconv.ops.conv import (
    check_conv1d,
    conv2d_linear_matrix,
    conv2d_matrix,
    conv2d_matrix_backward,
    lift_1d_arg,
    matrix_to_output,
    output_to_matrix,
)
from xpconv.ops.winograd import (
    ALGORITHMS,
    WinogradSaved,
    choose_algorithm,
    winograd_conv2d,
    winograd_conv2d_backward,
    winograd_supported,
)

Array = Any
Shape = tuple[int, ...]


class Conv2D(_ActivationMixin, Layer):
    """2-D convolution: (N, C, H, W) -> (N, filters, OH, OW); weight (filters, C // groups, KH, KW).

    Args:
        filters: output channels.
        kernel_size: an int or a pair (KH, KW).
        stride, padding, dilation, groups: as :func:`xpconv.ops.conv2d`.
        activation: optional fused activation (``"relu"``, ``"tanh"``, ...).
        use_bias: add a bias per output channel (initialised to zero).
        init: weight initialiser name (see :mod:`xpconv.nn.initializers`) or callable.
        in_channels: checked against the input when given, inferred otherwise.
        algorithm: ``"im2col"`` (columns and one matmul), ``"winograd"`` (Winograd
            F(2x2, 3x3): a 3x3 kernel, stride 1, dilation 1 and one group only, else
            ValueError when built) or ``"auto"``: the fixed rule of
            :func:`xpconv.ops.winograd.choose_algorithm` by shape and backend, resolved
            when the layer is built. A Winograd convolution does not fuse with the
            pool or dense layer after it.
    """

    skips_input_grad = True

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        *,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        activation: str | None = None,
        use_bias: bool = True,
        init: str = "glorot_normal",
        in_channels: int | None = None,
        algorithm: str = "auto",
    ) -> None:
        super().__init__()
        if algorithm not in ALGORITHMS:
            raise ValueError(
                f"{self.name}: algorithm: expected one of {ALGORITHMS}, got {algorithm!r}"
            )
        self.algorithm, self._winograd = algorithm, False
        self.filters = positive_int(filters, f"{self.name}: filters")
        self.kernel_size = int_pair(kernel_size, f"{self.name}: kernel_size", minimum=1)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.groups = positive_int(groups, f"{self.name}: groups")
        self.use_bias, self.init, self.in_channels = use_bias, init, in_channels
        get_initializer(init)
        self._set_activation(activation)

    def _conv_args(self) -> dict[str, Any]:
        return dict(
            stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups
        )

    def _weight_shape(self, channels: int) -> Shape:
        return (self.filters, channels // self.groups, *self.kernel_size)

    def _geometry(self, input_shape: Shape) -> ConvGeometry:
        """The validated geometry for one example of ``input_shape`` (C, H, W)."""
        if len(input_shape) != 3:
            raise ValueError(f"{self.name}: expected input (C, H, W), got {input_shape}")
        channels = input_shape[0]
        if self.in_channels is not None and self.in_channels != channels:
            raise ValueError(
                f"{self.name}: in_channels expected {self.in_channels}, got input with "
                f"{channels} channels (input shape {input_shape})"
            )
        wshape = self._weight_shape(channels)
        try:
            return conv_geometry((1, *input_shape), wshape, **self._conv_args())
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"{self.name}: {exc}") from exc

    def shapes_for(self, input_shape: Shape) -> LayerShapes:
        geom = self._geometry(input_shape)
        if self.algorithm == "winograd" and (reason := winograd_supported(geom)) is not None:
            raise ValueError(f"{self.name}: algorithm='winograd': {reason}")
        params = {"weight": self._weight_shape(input_shape[0])}
        if self.use_bias:
            params["bias"] = (self.filters,)
        return LayerShapes((self.filters, *geom.out), params, {})

    def _build(self, input_shape: Shape, ctx: BuildContext) -> Shape:
        self._geom = self._geometry(input_shape)
        channels = input_shape[0]
        wshape = self._weight_shape(channels)
        self._winograd = self._resolve_algorithm(ctx.backend.name)
        kh, kw = self.kernel_size
        fan_in = (channels // self.groups) * kh * kw
        fan_out = (self.filters // self.groups) * kh * kw
        self._param(
            ctx, "weight", get_initializer(self.init)(ctx.init_rng, wshape, fan_in, fan_out)
        )
        if self.use_bias:
            self._param(ctx, "bias", np.zeros(self.filters))
        return (self.filters, *self._geom.out)

    def _resolve_algorithm(self, backend: str) -> bool:
        """Whether the built layer runs Winograd (``algorithm`` and ``auto``'s rule)."""
        if self.algorithm == "winograd":
            reason = winograd_supported(self._geom)
            if reason is not None:
                raise ValueError(f"{self.name}: algorithm='winograd': {reason}")
            return True
        return self.algorithm == "auto" and choose_algorithm(self._geom, backend) == "winograd"

    @property
    def uses_winograd(self) -> bool:
        """Whether the (built) layer runs Winograd F(2x2, 3x3) rather than im2col."""
        return self._winograd

    @property
    def geometry(self) -> ConvGeometry:
        """The validated geometry of the convolution for one example (batch 1)."""
        if not self.built:
            raise RuntimeError(f"{self.name}: not built yet; build it (or its model) first")
        return self._geom

    def _kernel(self) -> Array:
        """The weight as the 4-D (O, C // groups, KH, KW) array the convolution uses."""
        return self.params["weight"].value

    def forward(self, x: Array, training: bool) -> Array:
        return self._forward(x, training)[0]

    def _forward(
        self, x: Array, training: bool, head: Array | None = None
    ) -> tuple[Array, Array | None]:
        """The output (N, O, OH, OW), saving what the backward pass reads, and with a
        dense weight ``head`` (U, O * OH * OW) the product ``flatten(output) @ head.T``
        (N, U), for :class:`ConvDense` (a tanh or no activation only)."""
        weight = self._kernel()
        xp = array_namespace(weight)
        geom = replace(self._geom, batch=int(x.shape[0]))
        bias = self.params["bias"].value if self.use_bias else None
        if self._winograd and head is None:
            out, saved = winograd_conv2d(xp, x, weight, bias, geom, keep=training)
            self._saved = (xp, saved, geom, None)
            return self._activate(out), None
        # (O, OH*OW*N); an inference pass stores no columns; tanh taken block by block
        tanh = self.activation == "tanh"
        product = None
        if head is None:
            out, cols = conv2d_matrix(xp, x, weight, bias, geom, keep_cols=training, tanh=tanh)
        else:
            out, cols, product = conv2d_linear_matrix(
                xp, x, weight, bias, geom, head, keep_cols=training, tanh=tanh
            )
        self._saved = (xp, cols, geom, x if cols is None else None)
        if self.activation not in F.ALONG_AN_AXIS:  # elementwise: on the matrix
            return matrix_to_output(xp, self._activate(out, applied=tanh), geom), product
        return self._activate(matrix_to_output(xp, out, geom)), product

    def backward(self, grad: Array, *, input_grad: bool | None = None) -> Array | None:
        xp, cols, geom, x = self._saved  # x only after an inference pass (no columns)
        if isinstance(cols, WinogradSaved):
            return self._backward_winograd(xp, grad, cols, input_grad)
        if self.activation not in F.ALONG_AN_AXIS:
            g2 = self._deactivate(output_to_matrix(xp, grad, geom))
        else:
            g2 = output_to_matrix(xp, self._deactivate(grad), geom)
        gx, gw, gb = conv2d_matrix_backward(
            xp,
            g2,
            cols,
            self._kernel(),
            geom,
            need_input_grad=self._wants_input_grad(input_grad),
            x=x,
        )
        self.set_gradients(xp, gw, gb)
        self._saved = None
        return gx

    def _backward_winograd(
        self, xp: Any, grad: Array, saved: WinogradSaved, input_grad: bool | None
    ) -> Array | None:
        gx, gw, gb = winograd_conv2d_backward(
            xp, self._deactivate(grad), saved, need_input_grad=self._wants_input_grad(input_grad)
        )
        self.set_gradients(xp, gw, gb)
        self._saved = None
        return gx

    def set_gradients(self, xp: Any, grad_weight: Array, grad_bias: Array) -> None:
        """Store the gradients (O, C // groups, KH, KW) and (O,) of a backward pass in
        ``Parameter.grad`` (the weight's in the parameter's own shape)."""
        weight = self.params["weight"]
        weight.grad = xp.reshape(grad_weight, weight.shape)
        if self.use_bias:
            self.params["bias"].grad = grad_bias

    def get_config(self) -> dict[str, Any]:
        return dict(
            filters=self.filters,
            kernel_size=list(self.kernel_size),
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            activation=self.activation,
            use_bias=self.use_bias,
            init=initializer_config(self.init),
            in_channels=self.in_channels,
            algorithm=self.algorithm,
        )

    def describe(self) -> str:
        kh, kw = self.kernel_size
        act = f", {self.activation}" if self.activation else ""
        algo = ", winograd" if self._winograd else ""
        return f"Conv2D({self.filters}, {kh}x{kw}, padding={self.padding!r}{act}{algo})"


class Conv1D(Conv2D):
    """1-D convolution: (N, C, L) -> (N, filters, OL); weight (filters, C // groups, K)."""

    def __init__(
        self,
        filters: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int | str = 0,
        dilation: int = 1,
        groups: int = 1,
        activation: str | None = None,
        use_bias: bool = True,
        init: str = "glorot_normal",
        in_channels: int | None = None,
        algorithm: str = "auto",
    ) -> None:
        super().__init__(
            filters,
            (1, kernel_size),
            stride=lift_1d_arg(stride, "stride", 1),
            padding=lift_1d_arg(padding, "padding", 0),
            dilation=lift_1d_arg(dilation, "dilation", 1),
            groups=groups,
            activation=activation,
            use_bias=use_bias,
            init=init,
            in_channels=in_channels,
            algorithm=algorithm,
        )
        self._config1d = dict(
            kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation
        )

    def _lifted(self, input_shape: Shape) -> Shape:
        """The validated (C, L) input as the (C, 1, L) one the 2-D convolution takes."""
        if len(input_shape) != 2:
            raise ValueError(f"{self.name}: expected input (C, L), got {input_shape}")
        channels, length = input_shape
        try:
            check_conv1d(
                (1, channels, length),
                (self.filters, channels // self.groups, self.kernel_size[1]),
                **self._config1d_conv(),
            )
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"{self.name}: {exc}") from exc
        return (channels, 1, length)

    def shapes_for(self, input_shape: Shape) -> LayerShapes:
        out, params, _ = super().shapes_for(self._lifted(input_shape))
        o, c, _, k = params["weight"]
        return LayerShapes((out[0], out[2]), {**params, "weight": (o, c, k)}, {})

    def _build(self, input_shape: Shape, ctx: BuildContext) -> Shape:
        out = super()._build(self._lifted(input_shape), ctx)
        w = self.params["weight"]
        w.value = w.value[:, :, 0, :]  # stored as (O, C // groups, K), the PyTorch layout
        return (out[0], out[2])

    def _config1d_conv(self) -> dict[str, Any]:
        c = self._config1d
        return dict(
            stride=c["stride"], padding=c["padding"], dilation=c["dilation"], groups=self.groups
        )

    def _kernel(self) -> Array:
        weight = self.params["weight"].value  # (O, C // groups, K)
        return array_namespace(weight).expand_dims(weight, axis=2)

    def forward(self, x: Array, training: bool) -> Array:
        xp = array_namespace(x)
        return super().forward(xp.expand_dims(x, axis=2), training)[:, :, 0, :]

    def backward(self, grad: Array, *, input_grad: bool | None = None) -> Array | None:
        xp = array_namespace(grad)
        gx = super().backward(xp.expand_dims(grad, axis=2), input_grad=input_grad)
        return None if gx is None else gx[:, :, 0, :]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(self._config1d)
        return config
