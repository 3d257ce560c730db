"""Preprocessing layers: fixed transforms of a model's input that are part of the model,
so that training, ``evaluate``, ``predict``, checkpoints and every export apply them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import array_api_compat
import numpy as np

from xpconv.backends.registry import is_traced
from xpconv.nn.layers.base import BuildContext, Layer, LayerShapes
from xpconv.ops.checks import namespace

Array = Any
Shape = tuple[int, ...]


def _values(value: float | Sequence[float], argument: str, *, positive: bool) -> list[float]:
    """``value`` as a list of finite floats (one, or one per channel), checked."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ValueError(f"Standardize: {argument} expected a number or a list, got {value!r}")
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, float, np.floating, np.integer)):
            raise TypeError(f"Standardize: {argument} expected numbers, got {value!r}")
        number = float(item)
        if not math.isfinite(number) or (positive and number <= 0):
            kind = "positive finite" if positive else "finite"
            raise ValueError(f"Standardize: {argument} expected {kind} numbers, got {value!r}")
        out.append(number)
    return out


class Standardize(Layer):
    """``(x - mean) / std`` with fixed ``mean`` and ``std``: the pixel statistics of the
    training set, stored with the model (in its architecture, not as parameters).

    ``mean`` and ``std`` are numbers, or one number per channel (axis 1 of the input
    ``(N, C, ...)``; at most 8 channels, the length a checkpoint's layer argument may
    have). Shape-preserving, no trainable parameters. As a network's first layer it
    passes no gradient to its input unless asked (``Sequential.backward(input_grad=True)``),
    so the layer after it skips that gradient as it would as the first layer.

    Raises:
        TypeError: ``mean`` or ``std`` not numbers.
        ValueError: a non-finite value, a ``std`` not positive, lists of different
            lengths, or (when built) a per-channel list whose length is not ``C``.
    """

    #: A fixed transform of the input: the layers after it train as if it were not there.
    preprocessing = True

    def __init__(self, mean: float | Sequence[float], std: float | Sequence[float]) -> None:
        super().__init__()
        self.mean = _values(mean, "mean", positive=False)
        self.std = _values(std, "std", positive=True)
        if len(self.mean) != len(self.std) and 1 not in (len(self.mean), len(self.std)):
            raise ValueError(
                f"Standardize: mean and std expected one value or the same number of values, "
                f"got {len(self.mean)} and {len(self.std)}"
            )

    def shapes_for(self, input_shape: Shape) -> LayerShapes:
        """The input's shape, no parameters, no buffers (mean and std are architecture)."""
        channels = max(len(self.mean), len(self.std))
        if channels > 1 and (len(input_shape) < 1 or input_shape[0] != channels):
            raise ValueError(
                f"{self.name}: {channels} per-channel values, expected an input (C, ...) "
                f"with C = {channels}, got {input_shape}"
            )
        return LayerShapes(tuple(int(s) for s in input_shape), {}, {})

    def _build(self, input_shape: Shape, ctx: BuildContext) -> Shape:
        shape = self.shapes_for(input_shape).output
        lead = (-1,) + (1,) * (len(input_shape) - 1)
        mean = np.asarray(self.mean, dtype=np.float64)
        scale = 1.0 / np.asarray(self.std, dtype=np.float64)
        self._host = (
            mean.reshape(lead) if mean.size > 1 else mean.reshape(()),
            scale.reshape(lead) if scale.size > 1 else scale.reshape(()),
        )
        self._cache: tuple[Any, Array, Array] | None = None
        return shape

    def host_constants(self) -> tuple[np.ndarray, np.ndarray]:
        """``mean`` and ``1 / std`` as float64 NumPy arrays that broadcast against a batch
        ``(N, *input_shape)``: shape ``()`` or ``(C, 1, ...)`` (for exporters)."""
        if not self.built:
            raise RuntimeError(f"{self.name}: not built yet; build the model first")
        return self._host

    def _constants(self, x: Array) -> tuple[Array, Array]:
        """``mean`` and ``1 / std`` as arrays of ``x``'s backend, device and dtype (made
        once per backend, device and dtype, so a model moved by ``to`` follows)."""
        key = (type(x), str(array_api_compat.device(x)), str(x.dtype))
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1], self._cache[2]
        xp, device = namespace(x=x), array_api_compat.device(x)
        mean, scale = (xp.asarray(h, dtype=x.dtype, device=device) for h in self._host)
        if not is_traced(x):  # constants made inside a compiled function die with it
            self._cache = (key, mean, scale)
        return mean, scale

    def forward(self, x: Array, training: bool) -> Array:
        mean, scale = self._constants(x)
        return (x - mean) * scale

    def backward(self, grad: Array) -> Array:
        return grad * self._constants(grad)[1]

    def get_config(self) -> dict[str, Any]:
        one = len(self.mean) == 1 and len(self.std) == 1
        return dict(
            mean=self.mean[0] if one else list(self.mean),
            std=self.std[0] if one else list(self.std),
        )

    def describe(self) -> str:
        return f"Standardize(mean {_text(self.mean)}, std {_text(self.std)})"


def _text(values: list[float]) -> str:
    """``0.1307``, or ``[0.1, 0.2]`` for per-channel values."""
    numbers = [f"{v:.4g}" for v in values]
    return numbers[0] if len(numbers) == 1 else f"[{', '.join(numbers)}]"
