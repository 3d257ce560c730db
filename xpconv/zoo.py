"""Ready-made networks: the lecture's one-conv model and a small LeNet."""

from __future__ import annotations

from typing import Any

from .layers import Conv2D, Dense, Flatten, MaxPool2D
from .model import Sequential

__all__ = ["MODELS", "build_model", "lecture", "lenet"]


def lecture(**model_args: Any) -> Sequential:
    """The lecture's network: Conv2D(16, 5x5, same, tanh, Glorot) -> flatten -> Dense(10).

    Input (N, 1, 28, 28) -> logits (N, 10); softmax cross-entropy loss.
    """
    model_args.setdefault("input_shape", (1, 28, 28))
    layers = [
        Conv2D(16, 5, padding="same", activation="tanh", init="glorot_normal"),
        Flatten(),
        Dense(10, init="glorot_normal"),
    ]
    return Sequential(layers, **model_args)


def lenet(**model_args: Any) -> Sequential:
    """A small LeNet: two conv(3x3, same) + relu + maxpool(2) blocks, Dense(128) relu,
    Dense(10). Input (N, 1, 28, 28) -> logits (N, 10)."""
    model_args.setdefault("input_shape", (1, 28, 28))
    layers = [
        Conv2D(32, 3, padding="same", activation="relu", init="he_normal"),
        MaxPool2D(2),
        Conv2D(64, 3, padding="same", activation="relu", init="he_normal"),
        MaxPool2D(2),
        Flatten(),
        Dense(128, activation="relu", init="he_normal"),
        Dense(10),
    ]
    return Sequential(layers, **model_args)


MODELS = {"lecture": lecture, "lenet": lenet}


def build_model(name: str, **model_args: Any) -> Sequential:
    """A model from ``MODELS`` by name; ``model_args`` go to :class:`Sequential`."""
    if name not in MODELS:
        raise ValueError(f"model: expected one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name](**model_args)
