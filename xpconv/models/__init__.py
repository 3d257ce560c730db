"""The model zoo (lecture, lenet, resnet) and their training recipes."""

from __future__ import annotations

from xpconv.models.zoo import (
    MODELS,
    OPTIMIZERS,
    RECIPES,
    SCHEDULES,
    build_model,
    build_optimizer,
    lecture,
    lenet,
    resnet,
)

__all__ = [
    "MODELS",
    "OPTIMIZERS",
    "RECIPES",
    "SCHEDULES",
    "build_model",
    "build_optimizer",
    "lecture",
    "lenet",
    "resnet",
]
