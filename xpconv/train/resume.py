"""Resuming a training run: a :class:`Trainer` rebuilt from a training checkpoint."""

from __future__ import annotations

import os
from typing import Any

from xpconv.backends.registry import Backend
from xpconv.data.augment import augment_from_config
from xpconv.io.checkpoint import CheckpointError, load_checkpoint
from xpconv.io.saving import build_model
from xpconv.io.schema import array_shapes
from xpconv.optim.optimizers import optimizer_from_config
from xpconv.train.checkpoints import PARAM_PREFIX, validate_training
from xpconv.train.trainer import Trainer

__all__ = ["load_training"]

PathLike = str | os.PathLike


def load_training(
    path: PathLike,
    *,
    backend: str | Backend | None = None,
    device: Any = None,
    progress: bool = True,
) -> Trainer:
    """A :class:`Trainer` (with its model and optimizer) resumed from :func:`save_training`."""
    arrays, meta = load_checkpoint(path)
    if meta.get("kind") != "training" or "trainer" not in meta:
        raise CheckpointError(
            f"{path}: expected a training checkpoint (written by save_training), "
            f"found kind {meta.get('kind')!r}"
        )
    model = build_model(path, arrays, meta, backend, device)
    state = meta["trainer"]
    trainer_arrays = {
        k[len("trainer/") :]: v for k, v in arrays.items() if k.startswith("trainer/")
    }
    try:
        validate_training(state, trainer_arrays, array_shapes(arrays, PARAM_PREFIX))
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    trainer = Trainer(
        model,
        optimizer_from_config(state["optimizer"]),
        seed=state["seed"],
        progress=progress,
        augment=augment_from_config(state.get("augment")),
    )
    trainer.load_state(trainer_arrays, state)
    return trainer
