"""Saving and loading models and training runs as xpconv checkpoints.

A model can also be saved as safetensors (chosen by the ``.safetensors`` suffix):
the weights under their parameter names, the architecture in the header's metadata,
with the same atomic write and the same refusal of untrusted input
(:mod:`xpconv.io.safetensors`).

A checkpoint is a NumPy ``.npz`` of host arrays with the architecture (and, for a
training run, the optimizer, schedule position, RNG states and history) as JSON inside
it; see :mod:`xpconv.io.checkpoint` for the file format and its guarantees. A checkpoint
saved on one backend loads on any other.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from xpconv.backends.registry import Backend
from xpconv.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from xpconv.io.formats import check_first_bytes, model_format
from xpconv.io.schema import array_shapes, validate_architecture
from xpconv.nn.sequential import Sequential

__all__ = ["build_model", "load_model", "save_model"]

PathLike = str | os.PathLike

PARAM_PREFIX = "param/"


def save_model(model: Sequential, path: PathLike, *, extra: dict[str, Any] | None = None) -> None:
    """Write the model's architecture and weights to ``path`` atomically.

    The format follows the suffix (any case): ``.npz`` writes an xpconv checkpoint,
    ``.safetensors`` a safetensors file (weights under their
    :meth:`~xpconv.Sequential.parameters` names, the architecture in its metadata).

    Raises:
        ValueError: another suffix, naming the supported ones (``.onnx`` and ``.pt`` are
            written by export: :func:`~xpconv.to_onnx`, :func:`~xpconv.to_torch`).
    """
    fmt = model_format(path)
    meta = {"kind": "model", "architecture": model.get_config(), **(extra or {})}
    if fmt == "safetensors":
        from xpconv.io.safetensors import save_safetensors

        save_safetensors(path, model.state_dict(), meta)
        return
    arrays = {PARAM_PREFIX + k: v for k, v in model.state_dict().items()}
    save_checkpoint(path, arrays, meta)


def build_model(path: PathLike, arrays: dict, meta: dict, backend: Any, device: Any) -> Sequential:
    """The one way from a file's architecture and arrays to a model: validated first
    (:func:`~xpconv.io.schema.validate_architecture`), then built."""
    if "architecture" not in meta:
        raise CheckpointError(f"{path}: expected an xpconv model checkpoint, found no architecture")
    for key, value in arrays.items():
        if key.startswith(PARAM_PREFIX) and np.dtype(value.dtype).kind != "f":
            raise CheckpointError(f"{path}: {key}: expected a floating array, got {value.dtype}")
    try:
        validate_architecture(meta["architecture"], array_shapes(arrays, PARAM_PREFIX))
    except CheckpointError as exc:
        raise CheckpointError(
            f"{path}: the checkpoint does not fit its architecture: {exc}"
        ) from None
    try:
        model = Sequential.from_config(meta["architecture"], backend=backend, device=device)
        model.load_state_dict(
            {k[len(PARAM_PREFIX) :]: v for k, v in arrays.items() if k.startswith(PARAM_PREFIX)}
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

    The format follows the suffix (any case), and the file's first bytes must agree
    with it: ``.npz`` is read as an xpconv checkpoint, ``.safetensors`` by
    :func:`~xpconv.io.safetensors.load_safetensors` (header validated before any data
    is read; tensors of the dtype the architecture names).

    Raises:
        CheckpointError: another suffix (``.onnx``: run it with onnxruntime; ``.pt``:
            xpconv never loads pickles), first bytes of another format, or a file that is
            not a valid model checkpoint.
    """
    fmt = model_format(path, loading=True)
    if os.path.isfile(path):
        check_first_bytes(path, fmt)
    if fmt == "safetensors":
        from xpconv.io.safetensors import load_safetensors

        tensors, meta = load_safetensors(path)
        _check_dtypes(path, tensors, meta)
        arrays = {PARAM_PREFIX + k: v for k, v in tensors.items()}
    else:
        arrays, meta = load_checkpoint(path)
    return build_model(path, arrays, meta, backend, device)


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
