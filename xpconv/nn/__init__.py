"""Models and their parts: layers, Sequential, losses, initializers, metrics, summaries."""

from __future__ import annotations

from xpconv.nn import layers
from xpconv.nn.initializers import (
    INITIALIZERS,
    get_initializer,
    initializer_config,
)
from xpconv.nn.layers import *  # noqa: F403  (every layer class: xc.nn.Conv2D)
from xpconv.nn.layers import __all__ as _layer_names
from xpconv.nn.losses import (
    LOSSES,
    Loss,
    MeanSquaredError,
    SoftmaxCrossEntropy,
    get_loss,
)
from xpconv.nn.metrics import (
    MetricTotals,
    accuracy,
)
from xpconv.nn.sequential import (
    Sequential,
)

__all__ = [
    *_layer_names,
    "layers",
    "INITIALIZERS",
    "LOSSES",
    "Loss",
    "MeanSquaredError",
    "MetricTotals",
    "Sequential",
    "SoftmaxCrossEntropy",
    "accuracy",
    "get_initializer",
    "get_loss",
    "initializer_config",
]
