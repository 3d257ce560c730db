"""xpconv: convolutional neural networks written once against the Python Array API."""

from . import functional, zoo
from .backend import Backend, BackendError, get_backend, set_default_backend
from .layers import (
    Activation,
    AvgPool2D,
    Conv1D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Identity,
    LeakyReLU,
    LogSoftmax,
    MaxPool2D,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from .model import Sequential
from .optimizers import SGD, Adam, ExponentialDecay, LinearDecay
from .saving import load_model, load_training, save_model, save_training
from .step import TrainState, TrainStep
from .trainer import History, Trainer, TrainingError

__version__ = "0.1.0"

__all__ = [
    "SGD",
    "Activation",
    "Adam",
    "AvgPool2D",
    "Backend",
    "BackendError",
    "Conv1D",
    "Conv2D",
    "Dense",
    "Dropout",
    "ExponentialDecay",
    "Flatten",
    "History",
    "Identity",
    "LeakyReLU",
    "LinearDecay",
    "LogSoftmax",
    "MaxPool2D",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "TrainState",
    "TrainStep",
    "Trainer",
    "TrainingError",
    "functional",
    "zoo",
    "get_backend",
    "load_model",
    "load_training",
    "save_model",
    "save_training",
    "set_default_backend",
]
