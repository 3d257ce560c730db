"""xpconv: convolutional neural networks written once against the Python Array API.

The public names live here (``xc.Conv2D``, ``xc.Trainer``, ``xc.save_model``, ...).
Each subpackage is also an attribute, imported on first use::

    backends  Backend and the registry; one folder per array library (kernel tables)
    ops       pure functional ops: forward and explicit backward
    nn        layers by category, Sequential, losses, initializers, metrics
    optim     optimizers and learning-rate schedules
    io        checkpoint format, save/load, safetensors, ONNX, PyTorch exchange
    data      datasets and augmentation
    models    the model zoo and its recipes
    tools     gradient checks and pictures
    parallel  data-parallel training (MPI, NCCL)
    train     TrainStep, the Trainer loop, callbacks, resuming
    cli       the ``xpconv`` command
"""

from __future__ import annotations

import importlib
from typing import Any

from xpconv._version import __version__
from xpconv.backends.numpy.host import tune_host
from xpconv.backends.registry import Backend, BackendError, get_backend, set_default_backend
from xpconv.data.augment import Augment
from xpconv.io.onnx import to_onnx
from xpconv.io.saving import load_model, save_model
from xpconv.io.torch import from_torch, to_torch
from xpconv.nn.layers import (
    Activation,
    AvgPool2D,
    BatchNorm1D,
    BatchNorm2D,
    Conv1D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    Identity,
    LeakyReLU,
    LogSoftmax,
    MaxPool2D,
    ReLU,
    Residual,
    Sigmoid,
    Softmax,
    Standardize,
    Tanh,
)
from xpconv.nn.sequential import Sequential
from xpconv.optim.optimizers import (
    SGD,
    Adam,
    AdamW,
    CosineDecay,
    ExponentialDecay,
    LinearDecay,
    StepDecay,
    Warmup,
)
from xpconv.tools.gradcheck import GradcheckError, gradcheck
from xpconv.train.checkpoints import save_training
from xpconv.train.history import History
from xpconv.train.resume import load_training
from xpconv.train.step import TrainState, TrainStep
from xpconv.train.trainer import Trainer, TrainingError

#: Subpackages reachable as attributes after ``import xpconv`` (PEP 562).
SUBPACKAGES = (
    "backends",
    "cli",
    "data",
    "io",
    "models",
    "nn",
    "ops",
    "optim",
    "parallel",
    "tools",
    "train",
)


def __getattr__(name: str) -> Any:
    if name in SUBPACKAGES:
        return importlib.import_module(f"xpconv.{name}")
    raise AttributeError(f"module 'xpconv' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *SUBPACKAGES})


__all__ = [
    "__version__",
    "SGD",
    "Activation",
    "Adam",
    "AdamW",
    "Augment",
    "AvgPool2D",
    "Backend",
    "BackendError",
    "BatchNorm1D",
    "BatchNorm2D",
    "Conv1D",
    "Conv2D",
    "CosineDecay",
    "Dense",
    "Dropout",
    "ExponentialDecay",
    "Flatten",
    "GlobalAvgPool2D",
    "GradcheckError",
    "History",
    "Identity",
    "LeakyReLU",
    "LinearDecay",
    "LogSoftmax",
    "MaxPool2D",
    "ReLU",
    "Residual",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "Standardize",
    "StepDecay",
    "Tanh",
    "TrainState",
    "TrainStep",
    "Trainer",
    "TrainingError",
    "Warmup",
    "from_torch",
    "get_backend",
    "gradcheck",
    "load_model",
    "load_training",
    "save_model",
    "save_training",
    "set_default_backend",
    "to_onnx",
    "to_torch",
    "tune_host",
    *SUBPACKAGES,
]
