"""Validate a checkpoint's JSON before anything is built from it.

A checkpoint comes from outside: its architecture and trainer metadata are checked
here field by field (types, ranges, size limits) and against the arrays the file
holds (every parameter's name and shape, so the total parameter count too) before a
single layer allocates a parameter. Everything refused raises
:class:`~xpconv.checkpoint.CheckpointError` naming the field. Every file format goes
through :func:`validate_architecture` (called by ``saving._build``); training
checkpoints go through :func:`validate_training` as well.

Shapes are propagated through the layers with the geometry functions the layers and
functional ops use themselves (:func:`~xpconv.functional.conv_geometry`,
:func:`~xpconv.functional.pool_geometry`), on plain ints: no array is made.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import numpy as np

from . import functional as F
from .backend import get_backend
from .checkpoint import CheckpointError
from .layers import (
    LAYERS,
    BuildContext,
    Conv1D,
    Conv2D,
    ConvMaxPool,
    Dense,
    Layer,
    Residual,
    layer_from_config,
)
from .losses import LOSSES

__all__ = [
    "ARCHITECTURE_KEYS",
    "LIMITS",
    "TRAINER_KEYS",
    "array_shapes",
    "validate_architecture",
    "validate_training",
]

#: Size limits of an architecture read from a file.
LIMITS: dict[str, int] = {
    "layers": 1024,  # layers in a model
    "input_rank": 8,  # axes of input_shape
    "size": 2**31 - 1,  # any one size or integer argument
    "activation_elements": 2**27,  # elements of one example's input or any layer output
    "parameters": 2**31,  # parameters in a model
    "epochs": 10**7,  # epochs_done of a training checkpoint
    "block_depth": 8,  # blocks (Residual) nested in blocks
}

#: Top-level architecture keys: required, then optional ones with their check.
ARCHITECTURE_KEYS: dict[str, bool] = {
    "layers": True,
    "loss": True,
    "dtype": True,
    "seed": True,
    "input_shape": True,
    "fuse": False,
}

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
}

Shape = tuple[int, ...]


def _fail(field: str, message: str) -> CheckpointError:
    return CheckpointError(f"{field}: {message}")


def _int(value: Any, field: str, *, low: int = 0, high: int | None = None) -> int:
    high = LIMITS["size"] if high is None else high
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(field, f"expected an integer, got {value!r}")
    if not low <= value <= high:
        raise _fail(field, f"expected an integer in [{low}, {high}], got {value}")
    return value


def _mapping(value: Any, field: str, keys: Mapping[str, bool]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(field, f"expected an object, got {type(value).__name__}")
    unknown = sorted(set(value) - set(keys))
    if unknown:
        raise _fail(field, f"unexpected keys {unknown}; expected {sorted(keys)}")
    missing = sorted(k for k, required in keys.items() if required and k not in value)
    if missing:
        raise _fail(field, f"missing keys {missing}")
    return value


def _plain(value: Any, field: str, depth: int = 0) -> None:
    """Layer arguments are numbers, strings, None or short lists of those."""
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        _int(value, field, low=-LIMITS["size"])
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _fail(field, f"expected a finite number, got {value}")
        return
    if isinstance(value, list) and depth == 0 and len(value) <= LIMITS["input_rank"]:
        for i, item in enumerate(value):
            _plain(item, f"{field}[{i}]", depth + 1)
        return
    raise _fail(field, f"expected a number, string, null or a short list, got {value!r:.80}")


def _plain_or_schedule(value: Any, field: str, depth: int = 0) -> None:
    """An optimizer argument: plain (see :func:`_plain`), or a schedule's config (an
    object of such arguments, schedules nested at most a few deep)."""
    if not isinstance(value, Mapping):
        _plain(value, field)
        return
    if depth >= 4 or len(value) > 16:
        raise _fail(field, "expected a schedule config of a few keys, nested at most 4 deep")
    for key, item in value.items():
        if not isinstance(key, str):
            raise _fail(field, f"expected string keys, got {key!r:.40}")
        _plain_or_schedule(item, f"{field}.{key}", depth + 1)


# ----------------------------------------------------------------------- architecture


def validate_architecture(config: Any, array_shapes: Mapping[str, Shape]) -> None:
    """Check a model architecture (``Sequential.get_config()`` output) read from a file.

    Args:
        config: the architecture as read (JSON data).
        array_shapes: the stored parameter arrays, ``"layer.param"`` -> shape.

    Raises:
        CheckpointError: naming the first field that is wrong, too large or does not
            match the stored arrays. Nothing is allocated before this passes.
    """
    config = _mapping(config, "architecture", ARCHITECTURE_KEYS)
    if not isinstance(config["loss"], str) or config["loss"] not in LOSSES:
        raise _fail(
            "architecture.loss", f"expected one of {sorted(LOSSES)}, got {config['loss']!r}"
        )
    if config["dtype"] not in ("float32", "float64"):
        raise _fail(
            "architecture.dtype", f"expected 'float32' or 'float64', got {config['dtype']!r}"
        )
    _int(config["seed"], "architecture.seed", high=2**63 - 1)
    if "fuse" in config and not isinstance(config["fuse"], bool):
        raise _fail("architecture.fuse", f"expected true or false, got {config['fuse']!r}")
    shape = _input_shape(config["input_shape"])
    items = config["layers"]
    if not isinstance(items, list) or not 1 <= len(items) <= LIMITS["layers"]:
        raise _fail(
            "architecture.layers",
            f"expected a list of 1 to {LIMITS['layers']} layers, got {items!r:.80}",
        )
    expected: dict[str, Shape] = {}
    counts: dict[str, int] = {}
    for i, item in enumerate(items):
        field = f"architecture.layers[{i}]"
        layer = _layer(item, field)
        index = counts.get(type(layer).__name__, 0)
        counts[type(layer).__name__] = index + 1
        try:
            shape, params = _shapes(layer, shape)
        except (ValueError, TypeError) as exc:
            raise _fail(field, f"{item['type']} does not fit its input: {exc}") from None
        if math.prod(shape) > LIMITS["activation_elements"]:
            raise _fail(
                field,
                f"output shape {shape} has more than {LIMITS['activation_elements']} elements "
                "per example",
            )
        name = f"{type(layer).__name__.lower()}_{index}"
        expected.update({f"{name}.{key}": s for key, s in params.items()})
    total = sum(math.prod(s) for s in expected.values())
    if total > LIMITS["parameters"]:
        raise _fail(
            "architecture", f"declares {total} parameters, more than {LIMITS['parameters']}"
        )
    stored = {k: tuple(int(d) for d in s) for k, s in array_shapes.items()}
    missing = sorted(set(expected) - set(stored))
    extra = sorted(set(stored) - set(expected))
    if missing or extra:
        raise _fail(
            "architecture",
            f"declares parameters the file does not hold {missing[:5]} or the file holds "
            f"parameters it does not declare {extra[:5]}",
        )
    for key, want in expected.items():
        if stored[key] != want:
            raise _fail(
                f"param/{key}",
                f"expected shape {want} (from the architecture), the file holds {stored[key]}",
            )


def _input_shape(value: Any) -> Shape:
    field = "architecture.input_shape"
    if not isinstance(value, list) or not 1 <= len(value) <= LIMITS["input_rank"]:
        raise _fail(
            field,
            f"expected a list of 1 to {LIMITS['input_rank']} positive sizes, got {value!r:.80}",
        )
    shape = tuple(_int(v, f"{field}[{i}]", low=1) for i, v in enumerate(value))
    if math.prod(shape) > LIMITS["activation_elements"]:
        raise _fail(
            field, f"{shape} has more than {LIMITS['activation_elements']} elements per example"
        )
    return shape


def _layer(item: Any, field: str, depth: int = 0) -> Layer:
    item = _mapping(item, field, {"type": True, "config": True})
    kind, config = item["type"], item["config"]
    if not isinstance(kind, str) or kind not in LAYERS:
        raise _fail(f"{field}.type", f"expected one of {sorted(LAYERS)}, got {kind!r:.80}")
    if not isinstance(config, Mapping):
        raise _fail(f"{field}.config", f"expected an object, got {type(config).__name__}")
    allowed = _arguments(LAYERS[kind], config)
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise _fail(f"{field}.config", f"unexpected arguments {unknown} for {kind}")
    for key, value in config.items():
        if _is_block(value):  # inner layers of a block (Residual's layers, shortcut)
            if depth >= LIMITS["block_depth"] or len(value) > LIMITS["layers"]:
                raise _fail(
                    f"{field}.config.{key}",
                    f"expected at most {LIMITS['layers']} inner layers nested at most "
                    f"{LIMITS['block_depth']} deep",
                )
            for j, inner in enumerate(value):
                _layer(inner, f"{field}.config.{key}[{j}]", depth + 1)
        elif isinstance(value, Mapping) and set(value) == {"type", "config"}:
            if depth >= LIMITS["block_depth"]:  # one inner layer (ConvMaxPool's conv)
                raise _fail(
                    f"{field}.config.{key}",
                    f"expected inner layers nested at most {LIMITS['block_depth']} deep",
                )
            _layer(value, f"{field}.config.{key}", depth + 1)
        else:
            _plain(value, f"{field}.config.{key}")
    try:
        return layer_from_config(kind, dict(config))
    except (ValueError, TypeError) as exc:
        raise _fail(f"{field}.config", f"{kind} refuses its arguments: {exc}") from None


def _is_block(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _arguments(cls: type, config: Mapping[str, Any]) -> set[str]:
    """Keyword arguments ``cls`` takes; for ``**kwargs`` activations, those of the
    activation function itself."""
    params = inspect.signature(cls.__init__).parameters
    names = {n for n, p in params.items() if n != "self" and p.kind is not p.VAR_KEYWORD}
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        act = config.get("activation") if "activation" in names else _ACT_OF.get(cls.__name__)
        forward = F.ACTIVATIONS.get(act, (None,))[0] if isinstance(act, str) else None
        if forward is not None:
            fparams = list(inspect.signature(forward).parameters.values())[1:]
            names |= {
                p.name for p in fparams if p.kind is p.KEYWORD_ONLY or p.default is not p.empty
            }
    return names


_ACT_OF = {
    "Identity": "identity",
    "ReLU": "relu",
    "LeakyReLU": "leaky_relu",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "Softmax": "softmax",
    "LogSoftmax": "log_softmax",
}


def _shapes(layer: Layer, shape: Shape) -> tuple[Shape, dict[str, Shape]]:
    """Output shape and parameter shapes of ``layer`` on inputs of ``shape``, from ints."""
    if isinstance(layer, Conv2D):
        one_d = isinstance(layer, Conv1D)
        if len(shape) != (2 if one_d else 3):
            raise ValueError(f"expected input {'(C, L)' if one_d else '(C, H, W)'}, got {shape}")
        lifted = (shape[0], 1, shape[1]) if one_d else shape
        channels = lifted[0]
        if layer.in_channels is not None and layer.in_channels != channels:
            raise ValueError(f"in_channels {layer.in_channels}, input has {channels}")
        weight = (layer.filters, channels // layer.groups, *layer.kernel_size)
        geom = F.conv_geometry(
            (1, *lifted),
            weight,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
        )
        params = {"weight": (weight[0], weight[1], weight[3]) if one_d else weight}
        if layer.use_bias:
            params["bias"] = (layer.filters,)
        out = (layer.filters, geom.out[1]) if one_d else (layer.filters, *geom.out)
        return out, params
    if isinstance(layer, Dense):
        if len(shape) != 1:
            raise ValueError(f"expected flat input (features,), got {shape}")
        if layer.in_features is not None and layer.in_features != shape[0]:
            raise ValueError(f"in_features {layer.in_features}, input has {shape[0]}")
        params = {"weight": (layer.units, shape[0])}
        if layer.use_bias:
            params["bias"] = (layer.units,)
        return (layer.units,), params
    kind = type(layer).__name__
    if kind in ("MaxPool2D", "AvgPool2D"):
        if len(shape) != 3:
            raise ValueError(f"expected input (C, H, W), got {shape}")
        geom = F.pool_geometry((1, *shape), layer.kernel_size, layer.stride, layer.padding)
        return (shape[0], *geom.out), {}
    if kind == "Flatten":
        return (math.prod(shape),), {}
    if kind == "Dropout" or kind in _ACT_OF or kind == "Activation":
        return shape, {}  # they keep the shape and have no parameters
    if kind in ("BatchNorm2D", "BatchNorm1D"):
        ranks = (3,) if kind == "BatchNorm2D" else (1, 2)
        if len(shape) not in ranks:
            raise ValueError(f"expected input of {' or '.join(map(str, ranks))} axes, got {shape}")
        channel = (shape[0],)
        params = {"running_mean": channel, "running_var": channel}
        if layer.affine:
            params.update(weight=channel, bias=channel)
        return shape, params
    if kind == "GlobalAvgPool2D":
        if len(shape) != 3:
            raise ValueError(f"expected input (C, H, W), got {shape}")
        return (shape[0],), {}
    if isinstance(layer, ConvMaxPool):
        inner, conv_params = _shapes(layer.conv, shape)
        out, _ = _shapes(layer.pool, inner)
        return out, {f"conv.{k}": v for k, v in conv_params.items()}
    if isinstance(layer, Residual):
        outs, params = [], {}
        for prefix, chain in (("", layer.layers), ("shortcut.", layer.shortcut)):
            counts: dict[str, int] = {}
            inner = shape
            for sub in chain:
                index = counts.get(type(sub).__name__, 0)
                counts[type(sub).__name__] = index + 1
                inner, sub_params = _shapes(sub, inner)
                name = f"{prefix}{type(sub).__name__.lower()}_{index}"
                params.update({f"{name}.{k}": s for k, s in sub_params.items()})
            outs.append(inner)
        if outs[0] != outs[1]:
            raise ValueError(f"the branch gives {outs[0]} but the shortcut gives {outs[1]}")
        return outs[0], params
    rule = getattr(layer, "param_shapes", None)
    if callable(rule):  # a layer type may state its shapes: (output, {name: shape})
        out, params = rule(shape)
        return tuple(out), {k: tuple(v) for k, v in params.items()}
    # A layer type without a rule here: learn its shapes by building this throwaway
    # instance on the host (its input is bounded by the activation limit).
    ctx = BuildContext(
        get_backend("numpy"), np.float32, np.random.default_rng(0), np.random.default_rng(0)
    )
    out = layer.build(shape, ctx)
    shapes = {k: p.shape for k, p in layer.params.items()}
    shapes.update({k: tuple(v.shape) for k, v in layer.buffers.items()})
    return tuple(out), shapes


# ----------------------------------------------------------------------- trainer


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
    from .augment import augment_from_config
    from .optimizers import optimizer_from_config
    from .trainer import History

    state = _mapping(state, "trainer", TRAINER_KEYS)
    epochs = _int(state["epochs_done"], "trainer.epochs_done", high=LIMITS["epochs"])
    _int(state["optimizer_step"], "trainer.optimizer_step", high=2**62)
    _int(state["seed"], "trainer.seed", high=2**63 - 1)
    config = state["optimizer"]
    if not isinstance(config, Mapping):
        raise _fail("trainer.optimizer", f"expected an object, got {type(config).__name__}")
    for key, value in config.items():
        _plain_or_schedule(value, f"trainer.optimizer.{key}")
    try:
        optimizer = optimizer_from_config(dict(config))
    except (ValueError, TypeError) as exc:
        raise _fail("trainer.optimizer", str(exc)) from None
    augment = state.get("augment")
    if augment is not None:
        if not isinstance(augment, Mapping):
            raise _fail("trainer.augment", f"expected an object, got {type(augment).__name__}")
        try:
            augment_from_config(dict(augment))
        except (ValueError, TypeError) as exc:
            raise _fail("trainer.augment", str(exc)) from None
    for key in ("shuffle_rng", "dropout_rng"):
        _rng_state(state[key], f"trainer.{key}")
    names = {f.name for f in fields(History)}
    history = _mapping(state["history"], "trainer.history", dict.fromkeys(names, True))
    lengths = {len(v) for v in history.values() if isinstance(v, list)}
    length = max(lengths, default=0)
    for key, values in history.items():
        field = f"trainer.history.{key}"
        if not isinstance(values, list) or len(values) != length or length > epochs:
            raise _fail(
                field,
                f"expected a list with one entry per recorded epoch, as long as the other "
                f"history lists ({length}) and at most epochs_done ({epochs})",
            )
        for i, value in enumerate(values):
            items = value if key == "step_losses" and isinstance(value, list) else [value]
            if key == "step_losses" and not isinstance(value, list):
                raise _fail(f"{field}[{i}]", f"expected a list of numbers, got {value!r:.40}")
            for item in items:
                nullable = key.startswith("val_") and item is None
                if not nullable and (isinstance(item, bool) or not isinstance(item, (int, float))):
                    raise _fail(f"{field}[{i}]", f"expected a number, got {item!r:.40}")
    callbacks = state.get("callbacks", {})
    if not isinstance(callbacks, Mapping):
        raise _fail("trainer.callbacks", f"expected an object, got {type(callbacks).__name__}")
    for name, entry in callbacks.items():
        if not isinstance(entry, Mapping):
            raise _fail(f"trainer.callbacks.{name}", f"expected an object, got {entry!r:.40}")
        for key, value in entry.items():
            if value is not None and not isinstance(value, (bool, int, float, str)):
                raise _fail(
                    f"trainer.callbacks.{name}.{key}",
                    f"expected a number, a string or null, got {value!r:.40}",
                )
    slots = getattr(optimizer, "state_slots", None)
    for key, array in arrays.items():
        field = f"trainer/{key}"
        shape = tuple(int(d) for d in array.shape)
        if key.startswith("callback/"):
            owner, _, rest = key[len("callback/") :].partition("/")
            if owner not in callbacks or not rest:
                raise _fail(
                    field, "expected callback/<key>/<name> of a callback in trainer.callbacks"
                )
            if np.dtype(array.dtype).kind not in "biuf":
                raise _fail(field, f"expected a numeric array, got dtype {array.dtype}")
            continue
        if np.dtype(array.dtype).kind != "f":
            raise _fail(field, f"expected a floating array, got dtype {array.dtype}")
        prefix, _, rest = key.partition("/")
        name, _, slot = rest.rpartition("/")
        if prefix != "optimizer" or not name:
            raise _fail(
                field,
                "unexpected array; expected optimizer/<parameter>/<slot> or callback/<key>/<name>",
            )
        if name not in param_shapes:
            raise _fail(
                field,
                f"names no parameter of the model; expected one of {sorted(param_shapes)[:6]}",
            )
        if slots is not None and slot not in slots:
            raise _fail(
                field,
                f"unexpected state {slot!r} for {type(optimizer).__name__} "
                f"with {dict(config)}; expected {sorted(slots)}",
            )
        if tuple(shape) != tuple(param_shapes[name]):
            raise _fail(
                field,
                f"expected the shape of parameter {name} "
                f"{tuple(param_shapes[name])}, got {tuple(shape)}",
            )


def _rng_state(value: Any, field: str) -> None:
    value = _mapping(value, field, _RNG_KEYS)
    if value["bit_generator"] != "PCG64":
        raise _fail(
            f"{field}.bit_generator", f"expected 'PCG64', got {value['bit_generator']!r:.40}"
        )
    inner = _mapping(value["state"], f"{field}.state", {"state": True, "inc": True})
    for key in ("state", "inc"):
        _int(inner[key], f"{field}.state.{key}", high=2**128 - 1)
    _int(value["has_uint32"], f"{field}.has_uint32", high=1)
    _int(value["uinteger"], f"{field}.uinteger", high=2**32 - 1)
    try:
        np.random.default_rng(0).bit_generator.state = dict(value)
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise _fail(field, f"not a valid PCG64 state: {exc}") from None


def array_shapes(arrays: Mapping[str, Any], prefix: str) -> dict[str, Shape]:
    """Shapes of the arrays whose key starts with ``prefix``, the prefix removed."""
    return {k[len(prefix) :]: tuple(v.shape) for k, v in arrays.items() if k.startswith(prefix)}
