"""Layer, Parameter and BuildContext: what every layer is built from."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from xpconv import ops as F
from xpconv.backends.registry import Backend, get_backend

Array = Any
Shape = tuple[int, ...]


#: Every public layer class by name, filled as the classes are defined; checkpoints name
#: layers by these keys.
LAYERS: dict[str, type[Layer]] = {}


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


class LayerShapes(NamedTuple):
    """What a layer makes of one example of a given shape, from plain ints: its output
    shape, and the shapes of the parameters and buffers it creates (by name inside the
    layer, as in ``params`` and ``buffers``)."""

    output: Shape
    params: dict[str, Shape]
    buffers: dict[str, Shape]


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
    #: False keeps a subclass out of :data:`LAYERS` (steps that are never saved).
    registered = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_") and cls.__dict__.get("registered", True):
            LAYERS[cls.__name__] = cls

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

    def shapes_for(self, input_shape: Shape) -> LayerShapes:
        """The output, parameter and buffer shapes of this layer on one example of
        ``input_shape`` (the batch axis left out), worked out from ints: nothing is
        allocated or built. Raises ``ValueError`` (or ``TypeError``) naming the layer
        when it does not fit the input, as :meth:`build` would.

        The one statement of the layer's shapes: :meth:`build` and the checkpoint
        schema both read it. Layers that create parameters or change the shape override
        it. The default keeps the shape and creates nothing; for a subclass that
        overrides ``_build`` only, it builds a throwaway copy on NumPy and reads it.
        """
        shape = tuple(int(s) for s in input_shape)
        if type(self)._build is Layer._build:
            return LayerShapes(shape, {}, {})
        return _built_shapes(self, shape)

    def output_shape_for(self, input_shape: Shape) -> Shape:
        """The output shape on one example of ``input_shape`` (see :meth:`shapes_for`)."""
        return self.shapes_for(input_shape).output

    def param_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        """The parameters' shapes by name (see :meth:`shapes_for`)."""
        return self.shapes_for(input_shape).params

    def buffer_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        """The buffers' shapes by name (see :meth:`shapes_for`)."""
        return self.shapes_for(input_shape).buffers

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


def _built_shapes(layer: Layer, shape: Shape) -> LayerShapes:
    """The shapes of a throwaway copy of ``layer`` built on host NumPy."""
    twin = copy.deepcopy(layer)
    rng = np.random.default_rng(0)
    out = twin.build(shape, BuildContext(get_backend("numpy"), np.float32, rng, rng))
    params = {k: tuple(p.shape) for k, p in twin.params.items()}
    return LayerShapes(tuple(out), params, {k: tuple(v.shape) for k, v in twin.buffers.items()})


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
        self._act_forward, self._act_backward = F.ACTIVATIONS[name][:2]
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


def backward_step(step: Layer, grad: Array, *, input_grad: bool) -> Array | None:
    """``step.backward(grad)`` for the first step of a chain, where the caller says
    whether the gradient of the input is wanted: a layer that can skip it
    (``skips_input_grad``) is told; otherwise it is computed and dropped."""
    if step.skips_input_grad:
        return step.backward(grad, input_grad=input_grad)  # type: ignore[call-arg]
    gx = step.backward(grad)
    return gx if input_grad else None


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
