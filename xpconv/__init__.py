"""xpconv: convolutional neural networks written once against the Python Array API."""

from . import distributed, functional, host, zoo
from .augment import Augment
from .backend import Backend, BackendError, get_backend, set_default_backend
from .gradcheck import GradcheckError, gradcheck
from .host import tune_host
from .layers import (
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
    Tanh,
)
from .model import Sequential
from .optimizers import (
    SGD,
    Adam,
    AdamW,
    CosineDecay,
    ExponentialDecay,
    LinearDecay,
    StepDecay,
    Warmup,
)
from .saving import load_model, load_training, save_model, save_training
from .step import TrainState, TrainStep
from .trainer import History, Trainer, TrainingError

__version__ = "0.1.0"

__all__ = [
    "SGD",
    "Activation",
    "Adam",
    "AdamW",
    "Augment",
    "AvgPool2D",
    "Backend",
    "BatchNorm1D",
    "BatchNorm2D",
    "BackendError",
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
    "StepDecay",
    "Tanh",
    "TrainState",
    "TrainStep",
    "Trainer",
    "TrainingError",
    "distributed",
    "Warmup",
    "functional",
    "zoo",
    "get_backend",
    "gradcheck",
    "load_model",
    "load_training",
    "save_model",
    "save_training",
    "set_default_backend",
    "host",
    "tune_host",
]
