"""Validate a checkpoint's JSON before anything is built from it.

A checkpoint comes from outside: its architecture and trainer metadata are checked
here field by field (types, ranges, size limits) and against the arrays the file
holds (every parameter's name and shape, so the total parameter count too) before a
single layer allocates a parameter. Everything refused raises
:class:`~xpconv.io.checkpoint.CheckpointError` naming the field. Every file format goes
through :func:`validate_architecture` (called by ``saving.build_model``); training
checkpoints go through :func:`validate_training` as well.

Shapes are propagated through the layers with the geometry functions the layers and
functional ops use themselves (:func:`~xpconv.ops.conv_geometry`,
:func:`~xpconv.ops.pool_geometry`), on plain ints: no array is made.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from xpconv import ops as F
from xpconv.backends.registry import get_backend
from xpconv.io.checkpoint import CheckpointError
from xpconv.nn.layers import (
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
from xpconv.nn.losses import LOSSES
from xpconv.ops.winograd import winograd_supported

__all__ = [
    "ARCHITECTURE_KEYS",
    "LIMITS",
    "array_shapes",
    "validate_architecture",
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


Shape = tuple[int, ...]


def field_error(field: str, message: str) -> CheckpointError:
    return CheckpointError(f"{field}: {message}")


def expect_int(value: Any, field: str, *, low: int = 0, high: int | None = None) -> int:
    high = LIMITS["size"] if high is None else high
    if isinstance(value, bool) or not isinstance(value, int):
        raise field_error(field, f"expected an integer, got {value!r}")
    if not low <= value <= high:
        raise field_error(field, f"expected an integer in [{low}, {high}], got {value}")
    return value


def expect_mapping(value: Any, field: str, keys: Mapping[str, bool]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise field_error(field, f"expected an object, got {type(value).__name__}")
    unknown = sorted(set(value) - set(keys))
    if unknown:
        raise field_error(field, f"unexpected keys {unknown}; expected {sorted(keys)}")
    missing = sorted(k for k, required in keys.items() if required and k not in value)
    if missing:
        raise field_error(field, f"missing keys {missing}")
    return value


def expect_plain(value: Any, field: str, depth: int = 0) -> None:
    """Layer arguments are numbers, strings, None or short lists of those."""
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        expect_int(value, field, low=-LIMITS["size"])
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise field_error(field, f"expected a finite number, got {value}")
        return
    if isinstance(value, list) and depth == 0 and len(value) <= LIMITS["input_rank"]:
        for i, item in enumerate(value):
            expect_plain(item, f"{field}[{i}]", depth + 1)
        return
    raise field_error(field, f"expected a number, string, null or a short list, got {value!r:.80}")


def expect_plain_or_schedule(value: Any, field: str, depth: int = 0) -> None:
    """An optimizer argument: plain (see :func:`_plain`), or a schedule's config (an
    object of such arguments, schedules nested at most a few deep)."""
    if not isinstance(value, Mapping):
        expect_plain(value, field)
        return
    if depth >= 4 or len(value) > 16:
        raise field_error(field, "expected a schedule config of a few keys, nested at most 4 deep")
    for key, item in value.items():
        if not isinstance(key, str):
            raise field_error(field, f"expected string keys, got {key!r:.40}")
        expect_plain_or_schedule(item, f"{field}.{key}", depth + 1)


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
    config = expect_mapping(config, "architecture", ARCHITECTURE_KEYS)
    if not isinstance(config["loss"], str) or config["loss"] not in LOSSES:
        raise field_error(
            "architecture.loss", f"expected one of {sorted(LOSSES)}, got {config['loss']!r}"
        )
    if config["dtype"] not in ("float32", "float64"):
        raise field_error(
            "architecture.dtype", f"expected 'float32' or 'float64', got {config['dtype']!r}"
        )
    expect_int(config["seed"], "architecture.seed", high=2**63 - 1)
    if "fuse" in config and not isinstance(config["fuse"], bool):
        raise field_error("architecture.fuse", f"expected true or false, got {config['fuse']!r}")
    shape = _input_shape(config["input_shape"])
    items = config["layers"]
    if not isinstance(items, list) or not 1 <= len(items) <= LIMITS["layers"]:
        raise field_error(
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
            raise field_error(field, f"{item['type']} does not fit its input: {exc}") from None
        if math.prod(shape) > LIMITS["activation_elements"]:
            raise field_error(
                field,
                f"output shape {shape} has more than {LIMITS['activation_elements']} elements "
                "per example",
            )
        name = f"{type(layer).__name__.lower()}_{index}"
        expected.update({f"{name}.{key}": s for key, s in params.items()})
    total = sum(math.prod(s) for s in expected.values())
    if total > LIMITS["parameters"]:
        raise field_error(
            "architecture", f"declares {total} parameters, more than {LIMITS['parameters']}"
        )
    stored = {k: tuple(int(d) for d in s) for k, s in array_shapes.items()}
    missing = sorted(set(expected) - set(stored))
    extra = sorted(set(stored) - set(expected))
    if missing or extra:
        raise field_error(
            "architecture",
            f"declares parameters the file does not hold {missing[:5]} or the file holds "
            f"parameters it does not declare {extra[:5]}",
        )
    for key, want in expected.items():
        if stored[key] != want:
            raise field_error(
                f"param/{key}",
                f"expected shape {want} (from the architecture), the file holds {stored[key]}",
            )


def _input_shape(value: Any) -> Shape:
    field = "architecture.input_shape"
    if not isinstance(value, list) or not 1 <= len(value) <= LIMITS["input_rank"]:
        raise field_error(
            field,
            f"expected a list of 1 to {LIMITS['input_rank']} positive sizes, got {value!r:.80}",
        )
    shape = tuple(expect_int(v, f"{field}[{i}]", low=1) for i, v in enumerate(value))
    if math.prod(shape) > LIMITS["activation_elements"]:
        raise field_error(
            field, f"{shape} has more than {LIMITS['activation_elements']} elements per example"
        )
    return shape


def _layer(item: Any, field: str, depth: int = 0) -> Layer:
    item = expect_mapping(item, field, {"type": True, "config": True})
    kind, config = item["type"], item["config"]
    if not isinstance(kind, str) or kind not in LAYERS:
        raise field_error(f"{field}.type", f"expected one of {sorted(LAYERS)}, got {kind!r:.80}")
    if not isinstance(config, Mapping):
        raise field_error(f"{field}.config", f"expected an object, got {type(config).__name__}")
    allowed = _arguments(LAYERS[kind], config)
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise field_error(f"{field}.config", f"unexpected arguments {unknown} for {kind}")
    for key, value in config.items():
        if _is_block(value):  # inner layers of a block (Residual's layers, shortcut)
            if depth >= LIMITS["block_depth"] or len(value) > LIMITS["layers"]:
                raise field_error(
                    f"{field}.config.{key}",
                    f"expected at most {LIMITS['layers']} inner layers nested at most "
                    f"{LIMITS['block_depth']} deep",
                )
            for j, inner in enumerate(value):
                _layer(inner, f"{field}.config.{key}[{j}]", depth + 1)
        elif isinstance(value, Mapping) and set(value) == {"type", "config"}:
            if depth >= LIMITS["block_depth"]:  # one inner layer (ConvMaxPool's conv)
                raise field_error(
                    f"{field}.config.{key}",
                    f"expected inner layers nested at most {LIMITS['block_depth']} deep",
                )
            _layer(value, f"{field}.config.{key}", depth + 1)
        else:
            expect_plain(value, f"{field}.config.{key}")
    try:
        return layer_from_config(kind, dict(config))
    except (ValueError, TypeError) as exc:
        raise field_error(f"{field}.config", f"{kind} refuses its arguments: {exc}") from None


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
        reason = winograd_supported(geom) if layer.algorithm == "winograd" else None
        if reason is not None:
            raise ValueError(f"algorithm='winograd': {reason}")
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


def array_shapes(arrays: Mapping[str, Any], prefix: str) -> dict[str, Shape]:
    """Shapes of the arrays whose key starts with ``prefix``, the prefix removed."""
    return {k[len(prefix) :]: tuple(v.shape) for k, v in arrays.items() if k.startswith(prefix)}
