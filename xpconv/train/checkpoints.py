"""Training checkpoints: what :func:`save_training` writes and how a file's trainer
metadata is checked before anything is built from it.

A training checkpoint is a model checkpoint (:mod:`xpconv.io.saving`) plus a
``"trainer"`` entry (epoch, optimizer, schedule position, RNG states, history,
callback states) and the optimizer's arrays under ``"trainer/"``. Building a
:class:`~xpconv.train.trainer.Trainer` from one is :func:`xpconv.train.resume.load_training`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, Any

import numpy as np

from xpconv.data.augment import augment_from_config
from xpconv.io.checkpoint import save_checkpoint
from xpconv.io.schema import (
    LIMITS,
    expect_int,
    expect_mapping,
    expect_plain_or_schedule,
    field_error,
)
from xpconv.optim.optimizers import optimizer_from_config
from xpconv.train.history import History

if TYPE_CHECKING:
    from xpconv.train.trainer import Trainer

__all__ = ["TRAINER_KEYS", "save_training", "validate_training"]

PathLike = str | os.PathLike
Shape = tuple[int, ...]
PARAM_PREFIX = "param/"
TRAINER_PREFIX = "trainer/"

#: Keys of a training checkpoint's "trainer" entry (True: required).
TRAINER_KEYS: dict[str, bool] = {
    "epochs_done": True,
    "optimizer": True,
    "optimizer_step": True,
    "shuffle_rng": True,
    "dropout_rng": True,
    "history": True,
    "seed": True,
    "augment": False,
    "callbacks": False,
    "sync_batch_norm": False,
}


def save_training(trainer: Trainer, path: PathLike, *, extra: dict[str, Any] | None = None) -> None:
    """Write everything needed to resume ``trainer`` exactly: weights, optimizer state,
    schedule position, RNG states, epoch and history (atomically). ``extra``: more JSON
    metadata (e.g. the settings of the run), read back with ``load_checkpoint``."""
    state_arrays, state_meta = trainer.state()
    arrays = {PARAM_PREFIX + k: v for k, v in trainer.model.state_dict().items()}
    arrays.update({TRAINER_PREFIX + k: v for k, v in state_arrays.items()})
    meta = {
        **(extra or {}),
        "kind": "training",
        "architecture": trainer.model.get_config(),
        "trainer": state_meta,
    }
    save_checkpoint(path, arrays, meta)


_RNG_KEYS = {"bit_generator": True, "state": True, "has_uint32": True, "uinteger": True}


def validate_training(
    state: Any, arrays: Mapping[str, Any], param_shapes: Mapping[str, Shape]
) -> None:
    """Check a training checkpoint's ``"trainer"`` entry and its optimizer arrays.

    Args:
        state: the trainer metadata as read (JSON data).
        arrays: the stored trainer arrays (anything with ``shape`` and ``dtype``), key
            without the ``"trainer/"`` prefix.
        param_shapes: the model's parameters, ``"layer.param"`` -> shape.

    Raises:
        CheckpointError: naming the first field that is missing, of the wrong type,
            out of range, or an optimizer array that does not fit its parameter.
    """
    state = expect_mapping(state, "trainer", TRAINER_KEYS)
    epochs = expect_int(state["epochs_done"], "trainer.epochs_done", high=LIMITS["epochs"])
    expect_int(state["optimizer_step"], "trainer.optimizer_step", high=2**62)
    expect_int(state["seed"], "trainer.seed", high=2**63 - 1)
    optimizer = _optimizer_of(state["optimizer"])
    sync = state.get("sync_batch_norm", True)
    if not isinstance(sync, bool):
        raise field_error("trainer.sync_batch_norm", f"expected true or false, got {sync!r}")
    _check_augment(state.get("augment"))
    for key in ("shuffle_rng", "dropout_rng"):
        expect_rng_state(state[key], f"trainer.{key}")
    _check_history(state["history"], epochs)
    callbacks = _check_callbacks(state.get("callbacks", {}))
    for key, array in arrays.items():
        _check_trainer_array(key, array, optimizer, state["optimizer"], callbacks, param_shapes)


def _optimizer_of(config: Any) -> Any:
    """The optimizer ``trainer.optimizer`` describes (refused: not an object, values
    other than plain data or schedules, arguments the optimizer refuses)."""
    if not isinstance(config, Mapping):
        raise field_error("trainer.optimizer", f"expected an object, got {type(config).__name__}")
    for key, value in config.items():
        expect_plain_or_schedule(value, f"trainer.optimizer.{key}")
    try:
        return optimizer_from_config(dict(config))
    except (ValueError, TypeError) as exc:
        raise field_error("trainer.optimizer", str(exc)) from None


def _check_augment(augment: Any) -> None:
    """``trainer.augment``: absent, or an augmentation's config."""
    if augment is None:
        return
    if not isinstance(augment, Mapping):
        raise field_error("trainer.augment", f"expected an object, got {type(augment).__name__}")
    try:
        augment_from_config(dict(augment))
    except (ValueError, TypeError) as exc:
        raise field_error("trainer.augment", str(exc)) from None


def _check_history(value: Any, epochs: int) -> None:
    """``trainer.history``: one list per History field, all as long, at most one entry
    per epoch done, of numbers (``step_losses``: lists of numbers; ``val_*``: or null)."""
    names = {f.name for f in fields(History)}
    history = expect_mapping(value, "trainer.history", dict.fromkeys(names, True))
    lengths = {len(v) for v in history.values() if isinstance(v, list)}
    length = max(lengths, default=0)
    for key, values in history.items():
        field = f"trainer.history.{key}"
        if not isinstance(values, list) or len(values) != length or length > epochs:
            raise field_error(
                field,
                f"expected a list with one entry per recorded epoch, as long as the other "
                f"history lists ({length}) and at most epochs_done ({epochs})",
            )
        for i, value in enumerate(values):
            items = value if key == "step_losses" and isinstance(value, list) else [value]
            if key == "step_losses" and not isinstance(value, list):
                raise field_error(f"{field}[{i}]", f"expected a list of numbers, got {value!r:.40}")
            for item in items:
                nullable = key.startswith("val_") and item is None
                if not nullable and (isinstance(item, bool) or not isinstance(item, (int, float))):
                    raise field_error(f"{field}[{i}]", f"expected a number, got {item!r:.40}")


def _check_callbacks(callbacks: Any) -> Mapping[str, Any]:
    """``trainer.callbacks``: an object of objects of numbers, strings or nulls."""
    if not isinstance(callbacks, Mapping):
        raise field_error(
            "trainer.callbacks", f"expected an object, got {type(callbacks).__name__}"
        )
    for name, entry in callbacks.items():
        if not isinstance(entry, Mapping):
            raise field_error(f"trainer.callbacks.{name}", f"expected an object, got {entry!r:.40}")
        for key, value in entry.items():
            if value is not None and not isinstance(value, (bool, int, float, str)):
                raise field_error(
                    f"trainer.callbacks.{name}.{key}",
                    f"expected a number, a string or null, got {value!r:.40}",
                )
    return callbacks


def _check_trainer_array(
    key: str,
    array: Any,
    optimizer: Any,
    config: Mapping[str, Any],
    callbacks: Mapping[str, Any],
    param_shapes: Mapping[str, Shape],
) -> None:
    """One ``trainer/`` array: a callback's numeric array, or an optimizer slot of a
    parameter of the model (``config``: the optimizer's, for the message), floating
    and of the parameter's shape."""
    field = f"trainer/{key}"
    shape = tuple(int(d) for d in array.shape)
    if key.startswith("callback/"):
        owner, _, rest = key[len("callback/") :].partition("/")
        if owner not in callbacks or not rest:
            raise field_error(
                field, "expected callback/<key>/<name> of a callback in trainer.callbacks"
            )
        if np.dtype(array.dtype).kind not in "biuf":
            raise field_error(field, f"expected a numeric array, got dtype {array.dtype}")
        return
    if np.dtype(array.dtype).kind != "f":
        raise field_error(field, f"expected a floating array, got dtype {array.dtype}")
    prefix, _, rest = key.partition("/")
    name, _, slot = rest.rpartition("/")
    if prefix != "optimizer" or not name:
        raise field_error(
            field,
            "unexpected array; expected optimizer/<parameter>/<slot> or callback/<key>/<name>",
        )
    if name not in param_shapes:
        raise field_error(
            field,
            f"names no parameter of the model; expected one of {sorted(param_shapes)[:6]}",
        )
    slots = getattr(optimizer, "state_slots", None)
    if slots is not None and slot not in slots:
        raise field_error(
            field,
            f"unexpected state {slot!r} for {type(optimizer).__name__} "
            f"with {dict(config)}; expected {sorted(slots)}",
        )
    if tuple(shape) != tuple(param_shapes[name]):
        raise field_error(
            field,
            f"expected the shape of parameter {name} "
            f"{tuple(param_shapes[name])}, got {tuple(shape)}",
        )


def expect_rng_state(value: Any, field: str) -> None:
    value = expect_mapping(value, field, _RNG_KEYS)
    if value["bit_generator"] != "PCG64":
        raise field_error(
            f"{field}.bit_generator", f"expected 'PCG64', got {value['bit_generator']!r:.40}"
        )
    inner = expect_mapping(value["state"], f"{field}.state", {"state": True, "inc": True})
    for key in ("state", "inc"):
        expect_int(inner[key], f"{field}.state.{key}", high=2**128 - 1)
    expect_int(value["has_uint32"], f"{field}.has_uint32", high=1)
    expect_int(value["uinteger"], f"{field}.uinteger", high=2**32 - 1)
    try:
        np.random.default_rng(0).bit_generator.state = dict(value)
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise field_error(field, f"not a valid PCG64 state: {exc}") from None
