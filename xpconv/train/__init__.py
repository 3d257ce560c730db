"""Training: the one step (TrainStep), the one Trainer loop, callbacks, history, resuming."""

from __future__ import annotations

from xpconv.train.callbacks import (
    BatchLogs,
    Callback,
    Checkpoint,
    EarlyStopping,
    EpochLogger,
    LambdaCallback,
    NaNGuard,
    ProgressBar,
    RunInfo,
    TrainingError,
)
from xpconv.train.checkpoints import (
    TRAINER_KEYS,
    save_training,
    validate_training,
)
from xpconv.train.history import History
from xpconv.train.resume import (
    load_training,
)
from xpconv.train.step import (
    GradientHook,
    TrainState,
    TrainStep,
    apply_gradients,
    loss_and_gradients,
)
from xpconv.train.trainer import Trainer

__all__ = [
    "BatchLogs",
    "Callback",
    "Checkpoint",
    "EarlyStopping",
    "EpochLogger",
    "GradientHook",
    "History",
    "LambdaCallback",
    "NaNGuard",
    "ProgressBar",
    "RunInfo",
    "TRAINER_KEYS",
    "TrainState",
    "TrainStep",
    "Trainer",
    "TrainingError",
    "apply_gradients",
    "load_training",
    "loss_and_gradients",
    "save_training",
    "validate_training",
]
