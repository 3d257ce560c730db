"""Core layers: Flatten and Dense."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from xpconv import ops as F
from xpconv.nn.initializers import get_initializer, initializer_config
from xpconv.nn.layers.base import BuildContext, Layer, LayerShapes, _ActivationMixin
from xpconv.ops.checks import positive_int

Array = Any
Shape = tuple[int, ...]


class Flatten(Layer):
    """(N, d1, d2, ...) -> (N, d1 * d2 * ...)."""

    def shapes_for(self, input_shape: Shape) -> LayerShapes:
        return LayerShapes((math.prod(input_shape),), {}, {})

    def _build(self, input_shape: Shape, ctx: BuildContext) -> Shape:
        return self.shapes_for(input_shape).output

    def forward(self, x: Array, training: bool) -> Array:
        self._shape = tuple(x.shape)
        return F.flatten(x)

    def backward(self, grad: Array) -> Array:
        return F.flatten_backward(grad, self._shape)


class Dense(_ActivationMixin, Layer):
    """Fully connected: (N, IN) -> (N, units); weight (units, IN), the PyTorch layout.

    ``in_features`` is inferred from the input when left out (the lecture's
    ``Dense(neurons=10)``); ``neurons`` is accepted as another name for ``units``.
    """

    def __init__(
        self,
        units: int | None = None,
        *,
        activation: str | None = None,
        use_bias: bool = True,
        init: str = "glorot_normal",
        in_features: int | None = None,
        neurons: int | None = None,
    ) -> None:
        super().__init__()
        if (units is None) == (neurons is None):
            raise TypeError(f"{self.name}: give exactly one of units or neurons")
        self.units = positive_int(units if units is not None else neurons, f"{self.name}: units")
        self.use_bias, self.init, self.in_features = use_bias, init, in_features
        get_initializer(init)
        self._set_activation(activation)

    def shapes_for(self, input_shape: Shape) -> LayerShapes:
        if len(input_shape) != 1:
            raise ValueError(
                f"{self.name}: expected flat input (features,), got {input_shape}; "
                "put a Flatten() layer before it"
            )
        (fan_in,) = input_shape
        if self.in_features is not None and self.in_features != fan_in:
            raise ValueError(
                f"{self.name}: in_features expected {self.in_features}, got input with "
                f"{fan_in} features"
            )
        params: dict[str, Shape] = {"weight": (self.units, fan_in)}
        if self.use_bias:
            params["bias"] = (self.units,)
        return LayerShapes((self.units,), params, {})

    def _build(self, input_shape: Shape, ctx: BuildContext) -> Shape:
        shapes = self.shapes_for(input_shape)
        shape = shapes.params["weight"]
        self._param(
            ctx, "weight", get_initializer(self.init)(ctx.init_rng, shape, shape[1], self.units)
        )
        if self.use_bias:
            self._param(ctx, "bias", np.zeros(self.units))
        return shapes.output

    def forward(self, x: Array, training: bool) -> Array:
        return self._output(x, F.linear(x, self.params["weight"].value))

    def _output(self, x: Array, product: Array) -> Array:
        """The output (N, units) for inputs ``x`` (N, IN) from ``product``, their
        ``x @ weight.T`` (made here or by :class:`ConvDense`): bias and activation,
        with ``x`` kept for the backward pass."""
        self._x = x
        if self.use_bias:
            product = product + self.params["bias"].value
        return self._activate(product)

    def backward(self, grad: Array) -> Array:
        grad = self._deactivate(grad)
        gx, gw, gb = F.linear_backward(grad, self._x, self.params["weight"].value)
        self.params["weight"].grad = gw
        if self.use_bias:
            self.params["bias"].grad = gb
        self._x = None
        return gx

    def get_config(self) -> dict[str, Any]:
        return dict(
            units=self.units,
            activation=self.activation,
            use_bias=self.use_bias,
            init=initializer_config(self.init),
            in_features=self.in_features,
        )

    def describe(self) -> str:
        act = f", {self.activation}" if self.activation else ""
        return f"Dense({self.units}{act})"
