"""Fused steps a Sequential plans (private): ConvMaxPool and ConvDense."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from xpconv.nn.layers.base import BuildContext, Layer, LayerShapes, layer_from_config
from xpconv.nn.layers.convolution import Conv2D
from xpconv.nn.layers.core import Dense, Flatten
from xpconv.nn.layers.pooling import MaxPool2D
from xpconv.ops import conv_max_pool2d_backward, conv_max_pool2d_forward, conv_pool_geometry

Array = Any
Shape = tuple[int, ...]


class ConvMaxPool(Layer):
    """A Conv2D and the tiled MaxPool2D after it as one layer (and one step of a model):
    (N, C, H, W) -> (N, filters, OH // KP, OW // KQ).

    Same results as the two layers in turn, less memory traffic: runs
    :func:`xpconv.ops.conv_max_pool2d_forward` and its backward (pool-ordered
    columns, bias and ReLU on the pooled output, no rows the pool drops). The
    convolution must have a ReLU or no activation and the pool a stride equal to its
    window and no padding (:meth:`fits`).

    A :class:`~xpconv.nn.sequential.Sequential` with ``fuse=True`` runs each such pair of its
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

    def shapes_for(self, input_shape: Shape) -> LayerShapes:
        conv = self.conv.shapes_for(input_shape)
        output = self.pool.shapes_for(conv.output).output
        return LayerShapes(output, {f"conv.{k}": v for k, v in conv.params.items()}, {})

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
            and not conv.uses_winograd
            and conv.algorithm != "winograd"
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
        out, self._saved = conv_max_pool2d_forward(
            x, weight, bias, relu=conv.activation == "relu", geometry=geom
        )
        return out

    def backward(self, grad: Array, *, input_grad: bool | None = None) -> Array | None:
        saved, self._saved = self._saved, None
        gx, gw, gb = conv_max_pool2d_backward(
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
        return cls(*(layer_from_config(part["type"], part["config"]) for part in parts))  # type: ignore[arg-type]

    def describe(self) -> str:
        return f"{self.conv.describe()} + {self.pool.describe()}"


class ConvDense(Layer):
    """A Conv2D, the Flatten after it and a Dense as one step of a model:
    (N, C, H, W) -> (N, units).

    The lecture network's shape: the dense layer reads the convolution's whole output.
    The step runs :func:`xpconv.ops.conv.conv2d_linear_matrix`, whose fast
    path may multiply each part of the output by the dense weight while the part is in
    cache, and leaves each of the three layers the state its own backward pass reads;
    the backward pass is theirs, in turn. Same results as the three layers one after
    another, up to the rounding of the dense product's sums.

    A :class:`~xpconv.nn.sequential.Sequential` with ``fuse=True`` runs each such run of its
    built layers as a ``ConvDense`` step (:meth:`fits`); the layers keep their names,
    parameters and configs, and a checkpoint holds the three layers.
    """

    registered = False

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
            and not conv.uses_winograd
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
