"""Normalization layers: BatchNorm2D and BatchNorm1D."""

from __future__ import annotations

from typing import Any

import numpy as np

from xpconv import ops as F
from xpconv.nn.layers.base import BuildContext, Layer, LayerShapes
from xpconv.ops.checks import check_number

Array = Any
Shape = tuple[int, ...]


class _BatchNorm(Layer):
    """Batch normalization over every axis but the channels (see ``functional.batch_norm``).

    Parameters ``weight`` (ones) and ``bias`` (zeros), buffers ``running_mean`` (zeros)
    and ``running_var`` (ones), all (C,). Training mode normalizes with the batch
    statistics and updates the running ones; inference mode uses the running ones.

    ``stats_reducer`` (``None``: this process's batch) is a
    :class:`~xpconv.ops.norm.StatsReducer` that a distribution strategy sets while it
    trains the model: training then takes the statistics of the global batch shared by
    every process (synchronised batch norm). It is never saved with the model.
    """

    stats_reducer: Any = None

    _ranks: tuple[int, ...] = ()
    _layout = ""

    def __init__(self, momentum: float = 0.1, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.momentum = check_number(momentum, f"{self.name}: momentum", low=0.0, high=1.0)
        self.eps = check_number(eps, f"{self.name}: eps", low=0.0, low_open=True)
        self.affine = bool(affine)

    def shapes_for(self, input_shape: Shape) -> LayerShapes:
        if len(input_shape) not in self._ranks:
            raise ValueError(f"{self.name}: expected input {self._layout}, got {input_shape}")
        channel: Shape = (input_shape[0],)
        params: dict[str, Shape] = {"weight": channel, "bias": channel} if self.affine else {}
        buffers: dict[str, Shape] = {"running_mean": channel, "running_var": channel}
        return LayerShapes(tuple(input_shape), params, buffers)

    def _build(self, input_shape: Shape, ctx: BuildContext) -> Shape:
        output = self.shapes_for(input_shape).output
        channels = input_shape[0]
        if self.affine:
            self._param(ctx, "weight", np.ones(channels))
            self._param(ctx, "bias", np.zeros(channels))
        self._buffer(ctx, "running_mean", np.zeros(channels))
        self._buffer(ctx, "running_var", np.ones(channels))
        return output

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
            reducer=self.stats_reducer if training else None,
        )
        if training:
            self.buffers["running_mean"], self.buffers["running_var"] = mean, var
        return y

    def backward(self, grad: Array) -> Array:
        gx, gw, gb = F.batch_norm_backward(grad, self._saved)
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
