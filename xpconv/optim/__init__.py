"""Optimizers (SGD, Adam, AdamW) and learning-rate schedules."""

from __future__ import annotations

from xpconv.optim.optimizers import (
    SGD,
    Adam,
    AdamW,
    Constant,
    CosineDecay,
    ExponentialDecay,
    LinearDecay,
    Optimizer,
    Schedule,
    StepDecay,
    Warmup,
    optimizer_from_config,
    schedule_from_config,
)

__all__ = [
    "Adam",
    "AdamW",
    "Constant",
    "CosineDecay",
    "ExponentialDecay",
    "LinearDecay",
    "Optimizer",
    "SGD",
    "Schedule",
    "StepDecay",
    "Warmup",
    "optimizer_from_config",
    "schedule_from_config",
]
