"""Saving and loading models and training runs as xpconv checkpoints.

A checkpoint is a NumPy ``.npz`` of host arrays with the architecture (and, for a
training run, the optimizer, schedule position, RNG states and history) as JSON inside
it; see :mod:`xpconv.checkpoint` for the file format and its guarantees. A checkpoint
saved on one backend loads on any other.
"""

from __future__ import annotations

import os
from typing import Any

from .augment import augment_from_config
from .backend import Backend
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .model import Sequential
from .optimizers import optimizer_from_config
from .trainer import Trainer

__all__ = ["load_model", "load_training", "save_model", "save_training"]

PathLike = str | os.PathLike

_PARAM = "param/"


def save_model(model: Sequential, path: PathLike, *, extra: dict[str, Any] | None = None) -> None:
    """Write the model's architecture and weights to ``path`` atomically."""
    arrays = {_PARAM + k: v for k, v in model.state_dict().items()}
    save_checkpoint(
        path, arrays, {"kind": "model", "architecture": model.get_config(), **(extra or {})}
    )


def _build(path: PathLike, arrays: dict, meta: dict, backend: Any, device: Any) -> Sequential:
    if "architecture" not in meta:
        raise CheckpointError(f"{path}: expected an xpconv model checkpoint, found no architecture")
    try:
        model = Sequential.from_config(meta["architecture"], backend=backend, device=device)
        model.load_state_dict(
            {k[len(_PARAM) :]: v for k, v in arrays.items() if k.startswith(_PARAM)}
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: the checkpoint does not fit its architecture: {exc}"
        ) from exc
    return model


def load_model(
    path: PathLike, *, backend: str | Backend | None = None, device: Any = None
) -> Sequential:
    """Rebuild a model saved by :func:`save_model` (or :func:`save_training`) on ``backend``."""
    arrays, meta = load_checkpoint(path)
    return _build(path, arrays, meta, backend, device)


def save_training(trainer: Trainer, path: PathLike) -> None:
    """Write everything needed to resume ``trainer`` exactly: weights, optimizer state,
    schedule position, RNG states, epoch and history (atomically)."""
    state_arrays, state_meta = trainer.state()
    arrays = {_PARAM + k: v for k, v in trainer.model.state_dict().items()}
    arrays.update({"trainer/" + k: v for k, v in state_arrays.items()})
    meta = {"kind": "training", "architecture": trainer.model.get_config(), "trainer": state_meta}
    save_checkpoint(path, arrays, meta)


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
    model = _build(path, arrays, meta, backend, device)
    state = meta["trainer"]
    trainer = Trainer(
        model,
        optimizer_from_config(state["optimizer"]),
        seed=state["seed"],
        progress=progress,
        augment=augment_from_config(state.get("augment")),
    )
    trainer.load_state(
        {k[len("trainer/") :]: v for k, v in arrays.items() if k.startswith("trainer/")}, state
    )
    return trainer
