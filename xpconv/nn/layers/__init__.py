"""Layers by category. Each holds its parameters, calls the public ops and states its
shapes; :data:`LAYERS` names every public layer class for checkpoints."""

from __future__ import annotations

from xpconv.nn.layers._fused import ConvDense, ConvMaxPool
from xpconv.nn.layers.activation import (
    Activation,
    Identity,
    LeakyReLU,
    LogSoftmax,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from xpconv.nn.layers.base import (
    LAYERS,
    BuildContext,
    Layer,
    LayerShapes,
    Parameter,
    backward_step,
    layer_from_config,
)
from xpconv.nn.layers.convolution import Conv1D, Conv2D
from xpconv.nn.layers.core import Dense, Flatten
from xpconv.nn.layers.normalization import BatchNorm1D, BatchNorm2D
from xpconv.nn.layers.pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from xpconv.nn.layers.preprocessing import Standardize
from xpconv.nn.layers.regularization import Dropout
from xpconv.nn.layers.residual import Residual

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
    "LayerShapes",
    "LeakyReLU",
    "LogSoftmax",
    "MaxPool2D",
    "Parameter",
    "ReLU",
    "Residual",
    "Sigmoid",
    "Softmax",
    "Standardize",
    "Tanh",
    "backward_step",
    "layer_from_config",
]
