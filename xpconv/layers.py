"""Layers: own their parameters, call the functional ops, remember what backward needs.

A layer is built once its input shape is known (per example, without the batch axis:
``(C, H, W)`` for images, ``(features,)`` for vectors). Sizes the user leaves out, such
as a dense layer's input width, are inferred then, as in the lecture's
``Dense(neurons=10)``; sizes given explicitly are checked against the input.

``forward(x, training)`` maps (N, *input_shape) to (N, *output_shape) and keeps what
``backward(grad)`` needs; ``backward`` returns the gradient with respect to the input
and stores parameter gradients in ``Parameter.grad``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from array_api_compat import array_namespace

from . import functional as F
from .backend import Backend
from .functional import (
    ConvGeometry,
    check_conv1d,
    conv_geometry,
    conv_max_pool2d_backward_saved,
    conv_max_pool2d_forward_unchecked,
    conv_pool_geometry,
    lift_1d_arg,
)
from .functional.checks import check_number, int_pair, positive_int
from .initializers import get_initializer, initializer_config

Array = Any
Shape = tuple[int, ...]

__all__ = [
    "LAYERS",
    "Activation",
    "AvgPool2D",
    "BatchNorm1D",
    "BatchNorm2D",
    "BuildContext",
    "Conv1D",
    "Conv2D",
    "ConvDense",
    "ConvMaxPool",
    "Dense",
    "Dropout",
    "Flatten",
    "GlobalAvgPool2D",
    "Identity",
    "Layer",
    "LeakyReLU",
    "LogSoftmax",
    "MaxPool2D",
    "Parameter",
    "ReLU",
    "Residual",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "backward_step",
    "layer_from_config",
]


class Parameter:
    """A trainable array and its gradient; optimizers replace ``value``, never mutate it."""

    __slots__ = ("grad", "name", "value")

    def __init__(self, value: Array, name: str) -> None:
        self.value = value
        self.grad: Array | None = None
        self.name = name

    @property
    def shape(self) -> Shape:
        return tuple(self.value.shape)

    def __repr__(self) -> str:
        return f"Parameter({self.name}, shape={self.shape})"


@dataclass
class BuildContext:
    """What a layer needs to create parameters: where, in which dtype, from which seed."""

    backend: Backend
    dtype: Any
    init_rng: np.random.Generator
    dropout_rng: np.random.Generator


class Layer:
    """Base class. Subclasses set ``output_shape`` in ``_build`` and implement the passes.

    A layer whose backward pass can skip the gradient of its input (a convolution as a
    network's first layer) sets ``skips_input_grad = True`` and takes
    ``backward(grad, *, input_grad=None)``: ``None`` follows ``needs_input_grad``.
    """

    skips_input_grad = False

    def __init__(self) -> None:
        self.params: dict[str, Parameter] = {}
        # Non-trainable state (running statistics), saved in checkpoints. Updated by
        # reassigning entries (``self.buffers[k] = new``), never by writing into arrays.
        self.buffers: dict[str, Array] = {}
        self.input_shape: Shape | None = None
        self.output_shape: Shape | None = None
        self.name = type(self).__name__
        # False for a network's first layer: nobody needs the gradient of its input.
        self.needs_input_grad = True

    # -- building ------------------------------------------------------------------
    def build(self, input_shape: Shape, ctx: BuildContext) -> Shape:
        """Create parameters for inputs of ``input_shape``; returns the output shape."""
        self.input_shape = tuple(int(s) for s in input_shape)
        self.output_shape = tuple(self._build(self.input_shape, ctx))
        return self.output_shape

    def _build(self, input_shape: Shape, ctx: BuildContext) -> Shape:
        return input_shape

    def _param(self, ctx: BuildContext, name: str, host: np.ndarray) -> None:
        value = ctx.backend.asarray(host, dtype=ctx.dtype)
        self.params[name] = Parameter(value, f"{self.name}.{name}")

    def _buffer(self, ctx: BuildContext, name: str, host: np.ndarray) -> None:
        self.buffers[name] = ctx.backend.asarray(host, dtype=ctx.dtype)

    @property
    def built(self) -> bool:
        return self.output_shape is not None

    # -- passes --------------------------------------------------------------------
    def forward(self, x: Array, training: bool) -> Array:
        raise NotImplementedError

    def backward(self, grad: Array) -> Array:
        raise NotImplementedError

    def _wants_input_grad(self, input_grad: bool | None) -> bool:
        return self.needs_input_grad if input_grad is None else bool(input_grad)

    # -- description ---------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """Constructor arguments, JSON-serialisable, for checkpoints."""
        return {}

    def describe(self) -> str:
        """One line for ``summary()``."""
        return type(self).__name__

    def num_parameters(self) -> int:
        return sum(math.prod(p.shape) for p in self.params.values())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class _ActivationMixin:
    """A fused activation after the layer's own op (``activation="tanh"``)."""

    def _set_activation(self, activation: str | None) -> None:
        name = activation or "identity"
        if name not in F.ACTIVATIONS:
            raise ValueError(
                f"{type(self).__name__}: activation expected one of {sorted(F.ACTIVATIONS)}, "
                f"got {activation!r}"
            )
        self.activation = activation
        self._act_forward, self._act_backward = F.ACTIVATIONS[name]
        self._fused = name != "identity"

    def _activate(self, z: Array, *, applied: bool = False) -> Array:
        """The activation of ``z``, remembered for the backward pass. ``applied``: the
        layer's op already took it (a convolution takes tanh in its blocks, in cache),
        and ``z`` is the output; only for activations whose backward reads the output
        alone (tanh)."""
        if not self._fused:
            return z
        out = z if applied else self._act_forward(z)
        self._act_saved = (z, out)
        return out

    def _deactivate(self, grad: Array) -> Array:
        if not self._fused:
            return grad
        z, out = self._act_saved
        return self._act_backward(grad, z, out=out)


class Conv2D(_ActivationMixin, Layer):
    """2-D convolution: (N, C, H, W) -> (N, filters, OH, OW); weight (filters, C // groups, KH, KW).

    Args:
        filters: output channels.
        kernel_size: an int or a pair (KH, KW).
        stride, padding, dilation, groups: as :func:`xpconv.functional.conv2d`.
        activation: optional fused activation (``"relu"``, ``"tanh"``, ...).
        use_bias: add a bias per output channel (initialised to zero).
        init: weight initialiser name (see :mod:`xpconv.initializers`) or callable.
        in_channels: checked against the input when given, inferred otherwise.
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
    ) -> None:
        super().__init__()
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

    def _build(self, input_shape: Shape, ctx: BuildContext) -> Shape:
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
            self._geom = conv_geometry((1, *input_shape), wshape, **self._conv_args())
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"{self.name}: {exc}") from exc
        kh, kw = self.kernel_size
        fan_in = (channels // self.groups) * kh * kw
        fan_out = (self.filters // self.groups) * kh * kw
        self._param(
            ctx, "weight", get_initializer(self.init)(ctx.init_rng, wshape, fan_in, fan_out)
        )
        if self.use_bias:
            self._param(ctx, "bias", np.zeros(self.filters))
        return (self.filters, *self._geom.out)

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
        # (O, OH*OW*N); an inference pass stores no columns; tanh taken block by block
        tanh = self.activation == "tanh"
        product = None
        if head is None:
            out, cols = F.conv2d_forward_matrix(
                xp, x, weight, bias, geom, keep_cols=training, tanh=tanh
            )
        else:
            out, cols, product = F.conv2d_linear_forward_matrix(
                xp, x, weight, bias, geom, head, keep_cols=training, tanh=tanh
            )
        self._saved = (xp, cols, geom, x if cols is None else None)
        if self.activation not in F.ALONG_AN_AXIS:  # elementwise: on the matrix
            return F.matrix_to_output(xp, self._activate(out, applied=tanh), geom), product
        return self._activate(F.matrix_to_output(xp, out, geom)), product

    def backward(self, grad: Array, *, input_grad: bool | None = None) -> Array | None:
        xp, cols, geom, x = self._saved  # x only after an inference pass (no columns)
        if self.activation not in F.ALONG_AN_AXIS:
            g2 = self._deactivate(F.output_to_matrix(xp, grad, geom))
        else:
            g2 = F.output_to_matrix(xp, self._deactivate(grad), geom)
        gx, gw, gb = F.conv2d_backward_matrix(
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
        )

    def describe(self) -> str:
        kh, kw = self.kernel_size
        act = f", {self.activation}" if self.activation else ""
        return f"Conv2D({self.filters}, {kh}x{kw}, padding={self.padding!r}{act})"


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
        )
        self._config1d = dict(
            kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation
        )

    def _build(self, input_shape: Shape, ctx: BuildContext) -> Shape:
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
        out = super()._build((channels, 1, length), ctx)
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


class _Pool2D(Layer):
    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        self.kernel_size = int_pair(kernel_size, f"{self.name}: kernel_size", minimum=1)
        self.stride = (
            self.kernel_size
            if stride is None
            else int_pair(stride, f"{self.name}: stride", minimum=1)
        )
        self.padding = int_pair(padding, f"{self.name}: padding", minimum=0)

    def _build(self, input_shape: Shape, ctx: BuildContext) -> Shape:
        if len(input_shape) != 3:
            raise ValueError(f"{self.name}: expected input (C, H, W), got {input_shape}")
        try:  # the geometry the forward pass uses, so what builds also runs
            geom = F.pool_geometry((1, *input_shape), **self._args())
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"{self.name}: {exc}") from exc
        return (input_shape[0], *geom.out)

    def _args(self) -> dict[str, Any]:
        return dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding)

    def get_config(self) -> dict[str, Any]:
        return {k: list(v) for k, v in self._args().items()}

    def describe(self) -> str:
        return f"{type(self).__name__}({self.kernel_size[0]}x{self.kernel_size[1]})"


class MaxPool2D(_Pool2D):
    """Max pooling: (N, C, H, W) -> (N, C, OH, OW); stride defaults to the kernel size."""

    def forward(self, x: Array, training: bool) -> Array:
        out, self._saved = F.max_pool2d_forward(x, **self._args())
        return out

    def backward(self, grad: Array) -> Array:
        gx = F.max_pool2d_backward_saved(grad, self._saved)
        self._saved = None
        return gx


class AvgPool2D(_Pool2D):
    """Average pooling (padded zeros count): (N, C, H, W) -> (N, C, OH, OW)."""

    def forward(self, x: Array, training: bool) -> Array:
        self._x = x
        return F.avg_pool2d(x, **self._args())

    def backward(self, grad: Array) -> Array:
        gx = F.avg_pool2d_backward(grad, self._x, **self._args())
        self._x = None
        return gx


class Flatten(Layer):
    """(N, d1, d2, ...) -> (N, d1 * d2 * ...)."""

    def _build(self, input_shape: Shape, ctx: BuildContext) -> Shape:
        return (math.prod(input_shape),)

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

    def _build(self, input_shape: Shape, ctx: BuildContext) -> Shape:
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
        shape = (self.units, fan_in)
        self._param(
            ctx, "weight", get_initializer(self.init)(ctx.init_rng, shape, fan_in, self.units)
        )
        if self.use_bias:
            self._param(ctx, "bias", np.zeros(self.units))
        return (self.units,)

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


class Dropout(Layer):
    """Inverted dropout with probability ``p``; identity at inference.

    Masks come from the model's seeded generator, so they are the same on every backend.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p < 1.0:
            raise ValueError(f"{self.name}: p expected a float in [0, 1), got {p!r}")
        self.p = float(p)

    def draw_mask(self, batch: int, backend: Backend, dtype: Any) -> Array | None:
        """The scaled mask (batch, *input_shape) the next training forward would draw,
        drawn now from the model's generator (``None`` when ``p == 0``).

        A compiled training step draws the masks on the host before it runs and hands
        each in through :attr:`given_mask`, in the order the eager pass draws them.
        """
        if self.p == 0.0:
            return None
        shape = (int(batch), *self.input_shape)
        u = backend.uniform(self._rng, shape, dtype=dtype)
        return backend.xp.astype(u >= self.p, dtype) * (1.0 / (1.0 - self.p))

    def _build(self, input_shape: Shape, ctx: BuildContext) -> Shape:
        self._rng = ctx.dropout_rng
        self.given_mask: Array | None = None
        return input_shape

    def forward(self, x: Array, training: bool) -> Array:
        mask, self.given_mask = self.given_mask, None
        if not training:
            mask = None
        out, self._mask = F.dropout(x, self.p, rng=self._rng, training=training, mask=mask)
        return out

    def backward(self, grad: Array) -> Array:
        return F.dropout_backward(grad, self._mask)

    def get_config(self) -> dict[str, Any]:
        return {"p": self.p}

    def describe(self) -> str:
        return f"Dropout({self.p})"


class Activation(_ActivationMixin, Layer):
    """An activation as a layer of its own: ``Activation("relu")``."""

    def __init__(self, activation: str, **kwargs: Any) -> None:
        super().__init__()
        self._set_activation(activation)
        self._kwargs = kwargs
        if kwargs:
            forward, backward = self._act_forward, self._act_backward
            self._act_forward = lambda z: forward(z, **kwargs)
            self._act_backward = lambda g, z, out=None: backward(g, z, out=out, **kwargs)

    def forward(self, x: Array, training: bool) -> Array:
        return self._activate(x)

    def backward(self, grad: Array) -> Array:
        return self._deactivate(grad)

    def get_config(self) -> dict[str, Any]:
        return {"activation": self.activation, **self._kwargs}

    def describe(self) -> str:
        return f"Activation({self.activation})"


def _named_activation(act: str, doc: str) -> type[Activation]:
    def __init__(self, **kwargs: Any) -> None:
        Activation.__init__(self, act, **kwargs)
        self.name = type(self).__name__

    def get_config(self) -> dict[str, Any]:
        return dict(self._kwargs)

    name = {"identity": "Identity", "relu": "ReLU", "leaky_relu": "LeakyReLU"}.get(act)
    name = name or {"log_softmax": "LogSoftmax"}.get(act) or act.capitalize()
    return type(
        name, (Activation,), {"__init__": __init__, "get_config": get_config, "__doc__": doc}
    )


Identity = _named_activation("identity", "f(x) = x.")
ReLU = _named_activation("relu", "f(x) = max(x, 0).")
LeakyReLU = _named_activation("leaky_relu", "f(x) = x if x > 0 else negative_slope * x.")
Sigmoid = _named_activation("sigmoid", "f(x) = 1 / (1 + exp(-x)).")
Tanh = _named_activation("tanh", "f(x) = tanh(x).")
Softmax = _named_activation("softmax", "Softmax over the last axis.")
LogSoftmax = _named_activation("log_softmax", "Log-softmax over the last axis.")


class ConvMaxPool(Layer):
    """A Conv2D and the tiled MaxPool2D after it as one layer (and one step of a model):
    (N, C, H, W) -> (N, filters, OH // KP, OW // KQ).

    Same results as the two layers in turn, less memory traffic: runs
    :func:`xpconv.functional.conv_max_pool2d_forward` and its backward (pool-ordered
    columns, bias and ReLU on the pooled output, no rows the pool drops). The
    convolution must have a ReLU or no activation and the pool a stride equal to its
    window and no padding (:meth:`fits`).

    A :class:`~xpconv.model.Sequential` with ``fuse=True`` runs each such pair of its
    layers as a ``ConvMaxPool`` step; both layers keep their own names and
    parameters. Used as a layer of its own, its parameters are ``conv.weight`` and
    ``conv.bias``.
    """

    skips_input_grad = True

    def __init__(self, conv: Conv2D, pool: MaxPool2D) -> None:
        super().__init__()
        if not self.fits(conv, pool):
            raise ValueError(
                f"{self.name}: expected a Conv2D with a ReLU or no activation and a "
                f"MaxPool2D with stride == kernel_size and no padding, got {conv!r} and "
                f"{pool!r}"
            )
        self.conv, self.pool = conv, pool
        if conv.built and pool.built:  # a model's step over two built layers
            self.name = f"{conv.name} + {pool.name}"
            self.needs_input_grad = conv.needs_input_grad
            self._adopt()

    def _adopt(self) -> None:
        conv, pool = self.conv, self.pool
        if conv.output_shape != pool.input_shape:
            raise ValueError(
                f"{self.name}: the pool's input shape {pool.input_shape} is not the "
                f"convolution's output shape {conv.output_shape}"
            )
        self._geom = conv_pool_geometry(conv.geometry, pool.kernel_size)
        self.input_shape, self.output_shape = conv.input_shape, pool.output_shape
        self.params = {f"conv.{key}": p for key, p in conv.params.items()}

    def _build(self, input_shape: Shape, ctx: BuildContext) -> Shape:
        self.conv.name, self.pool.name = "conv", "pool"
        self.pool.build(self.conv.build(input_shape, ctx), ctx)
        self._adopt()
        return self.output_shape  # type: ignore[return-value]

    def children(self) -> list[tuple[str, Layer]]:
        """The convolution and the pool with their names inside the layer."""
        return [("conv", self.conv), ("pool", self.pool)]

    @staticmethod
    def fits(conv: Layer, pool: Layer) -> bool:
        """Whether ``conv`` then ``pool`` can run fused."""
        return (
            type(conv) is Conv2D
            and type(pool) is MaxPool2D
            and conv.activation in (None, "identity", "relu")
            and pool.stride == pool.kernel_size
            and pool.padding == (0, 0)
        )

    def forward(self, x: Array, training: bool) -> Array:
        conv = self.conv
        weight = conv.params["weight"].value
        bias = conv.params["bias"].value if conv.use_bias else None
        geom = replace(self._geom, batch=int(x.shape[0]))
        out, self._saved = conv_max_pool2d_forward_unchecked(
            array_namespace(weight), x, weight, bias, geom, relu=conv.activation == "relu"
        )
        return out

    def backward(self, grad: Array, *, input_grad: bool | None = None) -> Array | None:
        saved, self._saved = self._saved, None
        gx, gw, gb = conv_max_pool2d_backward_saved(
            grad, saved, need_input_grad=self._wants_input_grad(input_grad)
        )
        # max pooling sends each pooled gradient to one position: the bias sums agree
        self.conv.set_gradients(saved.xp, gw, gb)
        return gx

    def get_config(self) -> dict[str, Any]:
        return {
            "conv": {"type": "Conv2D", "config": self.conv.get_config()},
            "pool": {"type": "MaxPool2D", "config": self.pool.get_config()},
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ConvMaxPool:
        """A layer from :meth:`get_config` output (unbuilt)."""
        parts = [config[key] for key in ("conv", "pool")]
        return cls(*(layer_from_config(part["type"], part["config"]) for part in parts))

    def describe(self) -> str:
        return f"{self.conv.describe()} + {self.pool.describe()}"


class ConvDense(Layer):
    """A Conv2D, the Flatten after it and a Dense as one step of a model:
    (N, C, H, W) -> (N, units).

    The lecture network's shape: the dense layer reads the convolution's whole output.
    The step runs :func:`xpconv.functional.conv2d_linear_forward_matrix`, whose fast
    path may multiply each part of the output by the dense weight while the part is in
    cache, and leaves each of the three layers the state its own backward pass reads;
    the backward pass is theirs, in turn. Same results as the three layers one after
    another, up to the rounding of the dense product's sums.

    A :class:`~xpconv.model.Sequential` with ``fuse=True`` runs each such run of its
    built layers as a ``ConvDense`` step (:meth:`fits`); the layers keep their names,
    parameters and configs, and a checkpoint holds the three layers.
    """

    skips_input_grad = True

    def __init__(self, conv: Conv2D, flatten: Flatten, dense: Dense) -> None:
        super().__init__()
        if not self.fits(conv, flatten, dense):
            raise ValueError(
                f"{self.name}: expected a built Conv2D with a tanh or no activation, a "
                f"Flatten and a Dense, each reading the one before, got {conv!r}, "
                f"{flatten!r} and {dense!r}"
            )
        self.conv, self.flatten, self.dense = conv, flatten, dense
        self.name = f"{conv.name} + {flatten.name} + {dense.name}"
        self.needs_input_grad = conv.needs_input_grad
        self.input_shape, self.output_shape = conv.input_shape, dense.output_shape
        self.params = {
            f"{key}.{name}": p
            for key, layer in (("conv", conv), ("dense", dense))
            for name, p in layer.params.items()
        }

    def children(self) -> list[tuple[str, Layer]]:
        """The three layers with their names inside the step."""
        return [("conv", self.conv), ("flatten", self.flatten), ("dense", self.dense)]

    @staticmethod
    def fits(conv: Layer, flatten: Layer, dense: Layer) -> bool:
        """Whether ``conv``, ``flatten`` and ``dense`` (built) can run as one step."""
        return (
            type(conv) is Conv2D
            and type(flatten) is Flatten
            and type(dense) is Dense
            and conv.activation in (None, "identity", "tanh")
            and conv.built
            and flatten.built
            and dense.built
            and conv.output_shape == flatten.input_shape
            and flatten.output_shape == dense.input_shape
        )

    def forward(self, x: Array, training: bool) -> Array:
        # each layer keeps what its own backward pass reads
        features, product = self.conv._forward(x, training, self.dense.params["weight"].value)
        return self.dense._output(self.flatten.forward(features, training), product)

    def backward(self, grad: Array, *, input_grad: bool | None = None) -> Array | None:
        grad = self.flatten.backward(self.dense.backward(grad))
        return self.conv.backward(grad, input_grad=self._wants_input_grad(input_grad))

    def describe(self) -> str:
        return " + ".join(layer.describe() for _, layer in self.children())


def backward_step(step: Layer, grad: Array, *, input_grad: bool) -> Array | None:
    """``step.backward(grad)`` for the first step of a chain, where the caller says
    whether the gradient of the input is wanted: a layer that can skip it
    (``skips_input_grad``) is told; otherwise it is computed and dropped."""
    if step.skips_input_grad:
        return step.backward(grad, input_grad=input_grad)
    gx = step.backward(grad)
    return gx if input_grad else None


class _BatchNorm(Layer):
    """Batch normalization over every axis but the channels (see ``functional.batch_norm``).

    Parameters ``weight`` (ones) and ``bias`` (zeros), buffers ``running_mean`` (zeros)
    and ``running_var`` (ones), all (C,). Training mode normalizes with the batch
    statistics and updates the running ones; inference mode uses the running ones.
    """

    _ranks: tuple[int, ...] = ()
    _layout = ""

    def __init__(self, momentum: float = 0.1, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.momentum = check_number(momentum, f"{self.name}: momentum", low=0.0, high=1.0)
        self.eps = check_number(eps, f"{self.name}: eps", low=0.0, low_open=True)
        self.affine = bool(affine)

    def _build(self, input_shape: Shape, ctx: BuildContext) -> Shape:
        if len(input_shape) not in self._ranks:
            raise ValueError(f"{self.name}: expected input {self._layout}, got {input_shape}")
        channels = input_shape[0]
        if self.affine:
            self._param(ctx, "weight", np.ones(channels))
            self._param(ctx, "bias", np.zeros(channels))
        self._buffer(ctx, "running_mean", np.zeros(channels))
        self._buffer(ctx, "running_var", np.ones(channels))
        return input_shape

    def forward(self, x: Array, training: bool) -> Array:
        weight = self.params["weight"].value if self.affine else None
        bias = self.params["bias"].value if self.affine else None
        y, mean, var, self._saved = F.batch_norm_forward(
            x,
            weight,
            bias,
            self.buffers["running_mean"],
            self.buffers["running_var"],
            training=training,
            momentum=self.momentum,
            eps=self.eps,
        )
        if training:
            self.buffers["running_mean"], self.buffers["running_var"] = mean, var
        return y

    def backward(self, grad: Array) -> Array:
        gx, gw, gb = F.batch_norm_backward_saved(grad, self._saved)
        if self.affine:
            self.params["weight"].grad, self.params["bias"].grad = gw, gb
        self._saved = None
        return gx

    def get_config(self) -> dict[str, Any]:
        return {"momentum": self.momentum, "eps": self.eps, "affine": self.affine}

    def describe(self) -> str:
        return f"{type(self).__name__}()"


class BatchNorm2D(_BatchNorm):
    """Batch normalization of images: (N, C, H, W) -> (N, C, H, W), statistics per channel
    over N, H and W (``torch.nn.BatchNorm2d``)."""

    _ranks = (3,)
    _layout = "(C, H, W)"


class BatchNorm1D(_BatchNorm):
    """Batch normalization of features (N, C) or sequences (N, C, L), statistics per
    channel over N (and L) (``torch.nn.BatchNorm1d``)."""

    _ranks = (1, 2)
    _layout = "(C,) or (C, L)"


class GlobalAvgPool2D(Layer):
    """Mean over the spatial axes: (N, C, H, W) -> (N, C) (``AdaptiveAvgPool2d(1)``, flat)."""

    def _build(self, input_shape: Shape, ctx: BuildContext) -> Shape:
        if len(input_shape) != 3:
            raise ValueError(f"{self.name}: expected input (C, H, W), got {input_shape}")
        return (input_shape[0],)

    def forward(self, x: Array, training: bool) -> Array:
        self._shape = tuple(x.shape)
        return F.global_avg_pool2d(x)

    def backward(self, grad: Array) -> Array:
        return F.global_avg_pool2d_backward(grad, self._shape)


class _NestedBuffers(MutableMapping):
    """A live view of the buffers of a block's inner layers as ``"inner.key"`` entries;
    setting an entry reassigns it in the inner layer."""

    def __init__(self, owner: Residual) -> None:
        self._owner = owner

    def _split(self, key: str) -> tuple[Layer, str]:
        for prefix, layer in self._owner._named_children():
            if key.startswith(prefix + "."):
                rest = key[len(prefix) + 1 :]
                if rest in layer.buffers:
                    return layer, rest
        raise KeyError(key)

    def __getitem__(self, key: str) -> Array:
        layer, rest = self._split(key)
        return layer.buffers[rest]

    def __setitem__(self, key: str, value: Array) -> None:
        layer, rest = self._split(key)
        layer.buffers[rest] = value

    def __delitem__(self, key: str) -> None:
        raise TypeError(f"{self._owner.name}: buffers cannot be removed, got {key!r}")

    def __iter__(self) -> Iterator[str]:
        for prefix, layer in self._owner._named_children():
            for key in layer.buffers:
                yield f"{prefix}.{key}"

    def __len__(self) -> int:
        return sum(1 for _ in self)


class Residual(Layer):
    """A residual block: ``layers(x) + shortcut(x)``, both chains of layers.

    Args:
        layers: the main branch, applied in order.
        shortcut: ``None`` for the identity, or layers (e.g. a 1x1 strided ``Conv2D`` and
            a ``BatchNorm2D``) mapping x to the branch's output shape.

    Inner layers are named by kind within the block (``conv2d_0``, ``batchnorm2d_0``,
    ``shortcut.conv2d_0``), so the model names their parameters and buffers
    ``residual_0.conv2d_0.weight`` and so on. A ReLU after the sum is a separate layer.
    """

    skips_input_grad = True

    def __init__(self, layers: Sequence[Layer], shortcut: Sequence[Layer] | None = None) -> None:
        super().__init__()
        if isinstance(layers, Layer):
            layers = [layers]
        if isinstance(shortcut, Layer):
            shortcut = [shortcut]
        if not layers or not all(isinstance(layer, Layer) for layer in layers):
            raise TypeError(
                f"{self.name}: layers expected a non-empty list of Layer, got {layers!r}"
            )
        if shortcut is not None and not all(isinstance(layer, Layer) for layer in shortcut):
            raise TypeError(
                f"{self.name}: shortcut expected a list of Layer or None, got {shortcut!r}"
            )
        self.layers: list[Layer] = list(layers)
        self.shortcut: list[Layer] = list(shortcut or [])

    @property
    def buffers(self) -> MutableMapping[str, Array]:  # type: ignore[override]
        return _NestedBuffers(self)

    @buffers.setter
    def buffers(self, values: Mapping[str, Array]) -> None:
        view = _NestedBuffers(self)
        for key, value in values.items():
            view[key] = value

    def _named_children(self) -> list[tuple[str, Layer]]:
        return [(layer.name, layer) for layer in self.layers] + [
            (f"shortcut.{layer.name}", layer) for layer in self.shortcut
        ]

    def children(self) -> list[tuple[str, Layer]]:
        """The inner layers with their names inside the block (branch, then shortcut)."""
        return self._named_children()

    def _build(self, input_shape: Shape, ctx: BuildContext) -> Shape:
        shapes = []
        for chain in (self.layers, self.shortcut):
            names: dict[str, int] = {}
            shape = input_shape
            for layer in chain:
                kind = type(layer).__name__
                index = names.get(kind, 0)
                names[kind] = index + 1
                layer.name = f"{kind.lower()}_{index}"
                shape = layer.build(shape, ctx)
            shapes.append(shape)
        if shapes[0] != shapes[1]:
            where = "the shortcut" if self.shortcut else "the identity shortcut (the input)"
            raise ValueError(
                f"{self.name}: the branch gives output shape {shapes[0]} but {where} gives "
                f"{shapes[1]}; add a shortcut such as Conv2D(..., kernel_size=1, stride=...)"
            )
        self.params = {
            f"{prefix}.{key}": p
            for prefix, layer in self._named_children()
            for key, p in layer.params.items()
        }
        return shapes[0]

    def forward(self, x: Array, training: bool) -> Array:
        h = x
        for layer in self.layers:
            h = layer.forward(h, training)
        s = x
        for layer in self.shortcut:
            s = layer.forward(s, training)
        return F.add(h, s)

    def backward(self, grad: Array, *, input_grad: bool | None = None) -> Array | None:
        need = self._wants_input_grad(input_grad)
        grad_branch, grad_short = F.add_backward(grad)
        for layer in reversed(self.layers[1:]):
            grad_branch = layer.backward(grad_branch)
        grad_branch = backward_step(self.layers[0], grad_branch, input_grad=need)
        if self.shortcut:
            for layer in reversed(self.shortcut[1:]):
                grad_short = layer.backward(grad_short)
            grad_short = backward_step(self.shortcut[0], grad_short, input_grad=need)
        if not need:
            return None
        return grad_branch + grad_short

    def get_config(self) -> dict[str, Any]:
        def configs(chain: list[Layer]) -> list[dict[str, Any]]:
            return [{"type": type(layer).__name__, "config": layer.get_config()} for layer in chain]

        return {"layers": configs(self.layers), "shortcut": configs(self.shortcut) or None}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Residual:
        """A block from :meth:`get_config` output (unbuilt)."""
        shortcut = config.get("shortcut")
        return cls(
            [layer_from_config(item["type"], item["config"]) for item in config["layers"]],
            None
            if not shortcut
            else [layer_from_config(item["type"], item["config"]) for item in shortcut],
        )

    def describe(self) -> str:
        short = "identity" if not self.shortcut else f"{len(self.shortcut)} layer(s)"
        return f"Residual({len(self.layers)} layers, shortcut {short})"


LAYERS: dict[str, type[Layer]] = {
    cls.__name__: cls
    for cls in (
        Conv2D,
        Conv1D,
        MaxPool2D,
        AvgPool2D,
        Flatten,
        Dense,
        Dropout,
        Activation,
        Identity,
        ReLU,
        LeakyReLU,
        Sigmoid,
        Tanh,
        Softmax,
        LogSoftmax,
        BatchNorm2D,
        BatchNorm1D,
        GlobalAvgPool2D,
        Residual,
        ConvMaxPool,
    )
}


def layer_from_config(kind: str, config: dict[str, Any]) -> Layer:
    """Rebuild a layer from ``type(layer).__name__`` and ``layer.get_config()``."""
    if kind not in LAYERS:
        raise ValueError(f"layer: expected one of {sorted(LAYERS)}, got {kind!r}")
    cls = LAYERS[kind]
    if hasattr(cls, "from_config"):
        return cls.from_config(config)
    config = dict(config)
    for key in ("kernel_size", "stride", "padding", "dilation"):
        if isinstance(config.get(key), list):
            config[key] = tuple(config[key])
    return LAYERS[kind](**config)
