"""Regularization layers: Dropout."""

from __future__ import annotations

import numbers
from typing import Any

from xpconv import ops as F
from xpconv.backends.registry import Backend
from xpconv.nn.layers.base import BuildContext, Layer, LayerShapes

Array = Any
Shape = tuple[int, ...]


class Dropout(Layer):
    """Inverted dropout with probability ``p``; identity at inference.

    Masks come from the model's seeded generator, so they are the same on every backend.
    """

    p: float

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

    def shapes_for(self, input_shape: Shape) -> LayerShapes:
        return LayerShapes(tuple(input_shape), {}, {})

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
