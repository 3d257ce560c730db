"""Saving and loading models and training runs as xpconv checkpoints.

A model can also be saved as safetensors (chosen by the ``.safetensors`` suffix):
the weights under their parameter names, the architecture in the header's metadata,
with the same atomic write and the same refusal of untrusted input
(:mod:`xpconv.interop.safetensors_io`).

A checkpoint is a NumPy ``.npz`` of host arrays with the architecture (and, for a
training run, the optimizer, schedule position, RNG states and history) as JSON inside
it; see :mod:`xpconv.checkpoint` for the file format and its guarantees. A checkpoint
saved on one backend loads on any other.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .augment import augment_from_config
from .backend import Backend
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .model import Sequential
from .optimizers import optimizer_from_config
from .schema import array_shapes, validate_architecture, validate_training
from .trainer import Trainer

__all__ = ["load_model", "load_training", "save_model", "save_training"]

PathLike = str | os.PathLike

_PARAM = "param/"
SAFETENSORS_SUFFIX = ".safetensors"


def _is_safetensors(path: PathLike) -> bool:
    return os.fspath(path).lower().endswith(SAFETENSORS_SUFFIX)


def save_model(model: Sequential, path: PathLike, *, extra: dict[str, Any] | None = None) -> None:
    """Write the model's architecture and weights to ``path`` atomically.

    A path ending in ``.safetensors`` writes a safetensors file (weights under their
    :meth:`~xpconv.Sequential.parameters` names, the architecture in its metadata);
    any other name an ``.npz`` checkpoint.
    """
    meta = {"kind": "model", "architecture": model.get_config(), **(extra or {})}
    if _is_safetensors(path):
        from .interop.safetensors_io import save_safetensors

        save_safetensors(path, model.state_dict(), meta)
        return
    arrays = {_PARAM + k: v for k, v in model.state_dict().items()}
    save_checkpoint(path, arrays, meta)


def _build(path: PathLike, arrays: dict, meta: dict, backend: Any, device: Any) -> Sequential:
    """The one way from a file's architecture and arrays to a model: validated first
    (:func:`~xpconv.schema.validate_architecture`), then built."""
    if "architecture" not in meta:
        raise CheckpointError(f"{path}: expected an xpconv model checkpoint, found no architecture")
    for key, value in arrays.items():
        if key.startswith(_PARAM) and np.dtype(value.dtype).kind != "f":
            raise CheckpointError(f"{path}: {key}: expected a floating array, got {value.dtype}")
    try:
        validate_architecture(meta["architecture"], array_shapes(arrays, _PARAM))
    except CheckpointError as exc:
        raise CheckpointError(
            f"{path}: the checkpoint does not fit its architecture: {exc}"
        ) from None
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
    """Rebuild a model saved by :func:`save_model` (or :func:`save_training`) on ``backend``.

    ``.safetensors`` files are read by :func:`~xpconv.interop.safetensors_io.load_safetensors`
    (header validated before any data is read) and their tensors must have the dtype
    the architecture names; every other name is read as an ``.npz`` checkpoint.
    """
    if _is_safetensors(path):
        from .interop.safetensors_io import load_safetensors

        tensors, meta = load_safetensors(path)
        _check_dtypes(path, tensors, meta)
        arrays = {_PARAM + k: v for k, v in tensors.items()}
    else:
        arrays, meta = load_checkpoint(path)
    return _build(path, arrays, meta, backend, device)


def _check_dtypes(path: PathLike, tensors: dict[str, Any], meta: dict[str, Any]) -> None:
    """Every tensor must have the architecture's dtype (float32 or float64)."""
    architecture = meta.get("architecture")
    dtype = architecture.get("dtype") if isinstance(architecture, dict) else None
    if dtype not in ("float32", "float64"):
        raise CheckpointError(
            f"{path}: expected an architecture with dtype 'float32' or 'float64', got {dtype!r}"
        )
    for name, value in tensors.items():
        if value.dtype.name != dtype:
            raise CheckpointError(
                f"{path}: tensor {name!r} has dtype {value.dtype.name}, expected {dtype} "
                "(the architecture's dtype)"
            )


def save_training(trainer: Trainer, path: PathLike, *, extra: dict[str, Any] | None = None) -> None:
    """Write everything needed to resume ``trainer`` exactly: weights, optimizer state,
    schedule position, RNG states, epoch and history (atomically). ``extra``: more JSON
    metadata (e.g. the settings of the run), read back with ``load_checkpoint``."""
    state_arrays, state_meta = trainer.state()
    arrays = {_PARAM + k: v for k, v in trainer.model.state_dict().items()}
    arrays.update({"trainer/" + k: v for k, v in state_arrays.items()})
    meta = {
        **(extra or {}),
        "kind": "training",
        "architecture": trainer.model.get_config(),
        "trainer": state_meta,
    }
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
    trainer_arrays = {
        k[len("trainer/") :]: v for k, v in arrays.items() if k.startswith("trainer/")
    }
    try:
        validate_training(state, trainer_arrays, array_shapes(arrays, _PARAM))
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
