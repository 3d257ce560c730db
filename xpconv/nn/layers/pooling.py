"""Pooling layers: MaxPool2D, AvgPool2D, GlobalAvgPool2D."""

from __future__ import annotations

from typing import Any

from xpconv import ops as F
from xpconv.nn.layers.base import BuildContext, Layer, LayerShapes
from xpconv.ops.checks import int_pair

Array = Any
Shape = tuple[int, ...]


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

    def shapes_for(self, input_shape: Shape) -> LayerShapes:
        if len(input_shape) != 3:
            raise ValueError(f"{self.name}: expected input (C, H, W), got {input_shape}")
        try:  # the geometry the forward pass uses, so what builds also runs
            geom = F.pool_geometry((1, *input_shape), **self._args())
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"{self.name}: {exc}") from exc
        return LayerShapes((input_shape[0], *geom.out), {}, {})

    def _build(self, input_shape: Shape, ctx: BuildContext) -> Shape:
        return self.shapes_for(input_shape).output

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
        gx = F.max_pool2d_backward(grad, self._saved)
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


class GlobalAvgPool2D(Layer):
    """Mean over the spatial axes: (N, C, H, W) -> (N, C) (``AdaptiveAvgPool2d(1)``, flat)."""

    def shapes_for(self, input_shape: Shape) -> LayerShapes:
        if len(input_shape) != 3:
            raise ValueError(f"{self.name}: expected input (C, H, W), got {input_shape}")
        return LayerShapes((input_shape[0],), {}, {})

    def _build(self, input_shape: Shape, ctx: BuildContext) -> Shape:
        return self.shapes_for(input_shape).output

    def forward(self, x: Array, training: bool) -> Array:
        self._shape = tuple(x.shape)
        return F.global_avg_pool2d(x)

    def backward(self, grad: Array) -> Array:
        return F.global_avg_pool2d_backward(grad, self._shape)
