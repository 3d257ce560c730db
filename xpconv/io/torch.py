"""Exchange models with PyTorch: ``to_torch(model)`` and ``from_torch(module, input_shape)``.

xpconv stores weights in PyTorch's layout (conv (O, C // groups, KH, KW), dense
(units, in)), so the exchange copies arrays without reshaping them. Both directions
are tables: :data:`TO_TORCH` maps an xpconv layer class to a function returning the
``torch.nn`` modules of that layer; :data:`FROM_TORCH` maps a ``torch.nn`` class name
to a function returning the xpconv layer and its weights. A new layer is one added
entry on each side. PyTorch is imported on first use only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from xpconv.io.files import atomic_write
from xpconv.nn.layers import (
    LAYERS,
    Activation,
    AvgPool2D,
    BatchNorm1D,
    BatchNorm2D,
    Conv1D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    Identity,
    Layer,
    LeakyReLU,
    LogSoftmax,
    MaxPool2D,
    ReLU,
    Residual,
    Sigmoid,
    Softmax,
    Standardize,
    Tanh,
    layer_from_config,
)
from xpconv.nn.sequential import Sequential
from xpconv.ops import ACTIVATIONS, conv_geometry

__all__ = [
    "FROM_TORCH",
    "TO_TORCH",
    "from_torch",
    "save_torch_state_dict",
    "to_torch",
    "torch_residual_class",
    "torch_standardize_class",
]


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ImportError("the PyTorch exchange needs torch: pip install 'xpconv[torch]'") from exc
    return torch


# ---------------------------------------------------------------- xpconv -> torch


def _activation_module(name: str | None, kwargs: dict[str, Any]) -> list[Any]:
    """The ``torch.nn`` module of activation ``name`` with ``kwargs`` (xpconv's
    argument names), written from its row of ``ops.ACTIVATIONS``."""
    name = name or "identity"
    if name not in ACTIVATIONS:
        raise ValueError(f"to_torch: activation {name!r} has no PyTorch module")
    spec = ACTIVATIONS[name]
    unknown = sorted(set(kwargs) - set(spec.arguments))
    if unknown:
        raise ValueError(
            f"to_torch: activation {name!r}: unexpected arguments {unknown}; expected some "
            f"of {sorted(spec.arguments)}"
        )
    arguments = {spec.arguments[key][1]: value for key, value in kwargs.items()}
    if spec.along_axis:
        arguments.setdefault("dim", -1)  # xpconv's default; torch's implicit dim differs
    return [getattr(_torch().nn, spec.torch)(**arguments)]


def _fused(layer: Layer) -> list[Any]:
    name = getattr(layer, "activation", None)
    return [] if name in (None, "identity") else _activation_module(name, {})


def _torch_padding(layer: Conv2D, weight_shape: tuple[int, ...], axes: int) -> Any:
    """'same' stays 'same' (PyTorch also pads an even kernel's extra row at the end);
    every other padding becomes explicit symmetric sizes."""
    if isinstance(layer.padding, str) and layer.padding.lower() == "same":
        return "same"
    assert layer.input_shape is not None
    shape = layer.input_shape if axes == 2 else (layer.input_shape[0], 1, layer.input_shape[1])
    geom = conv_geometry(
        (1, *shape),
        weight_shape,
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        groups=layer.groups,
    )
    (pt, _), (pl, _) = geom.pad
    return (pt, pl) if axes == 2 else pl


def _to_conv2d(layer: Conv2D, tensor: Callable[[Any], Any]) -> list[Any]:
    nn = _torch().nn
    weight = layer.params["weight"]
    o, cg, kh, kw = weight.shape
    conv = nn.Conv2d(
        cg * layer.groups,
        o,
        (kh, kw),
        stride=_pair(layer.stride),
        padding=_torch_padding(layer, weight.shape, 2),
        dilation=_pair(layer.dilation),
        groups=layer.groups,
        bias=layer.use_bias,
    )
    _copy_params(conv, layer, tensor)
    return [conv, *_fused(layer)]


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)  # type: ignore[return-value]


def _to_conv1d(layer: Conv1D, tensor: Callable[[Any], Any]) -> list[Any]:
    nn = _torch().nn
    weight = layer.params["weight"]
    o, cg, k = weight.shape
    conv = nn.Conv1d(
        cg * layer.groups,
        o,
        k,
        stride=_pair(layer.stride)[1],
        padding=_torch_padding(layer, (o, cg, 1, k), 1),
        dilation=_pair(layer.dilation)[1],
        groups=layer.groups,
        bias=layer.use_bias,
    )
    _copy_params(conv, layer, tensor)
    return [conv, *_fused(layer)]


def _to_dense(layer: Dense, tensor: Callable[[Any], Any]) -> list[Any]:
    units, fan_in = layer.params["weight"].shape
    linear = _torch().nn.Linear(fan_in, units, bias=layer.use_bias)
    _copy_params(linear, layer, tensor)
    return [linear, *_fused(layer)]


def _copy_params(module: Any, layer: Layer, tensor: Callable[[Any], Any]) -> None:
    torch = _torch()
    values = {key: tensor(param.value) for key, param in layer.params.items()}
    if values:
        module.to(next(iter(values.values())).dtype)  # copy without rounding to float32
    with torch.no_grad():
        for key, value in values.items():
            getattr(module, key).copy_(value)


def _to_max_pool(layer: MaxPool2D, tensor: Callable[[Any], Any]) -> list[Any]:
    return [_torch().nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding)]


def _to_avg_pool(layer: AvgPool2D, tensor: Callable[[Any], Any]) -> list[Any]:
    return [
        _torch().nn.AvgPool2d(
            layer.kernel_size, layer.stride, layer.padding, count_include_pad=True
        )
    ]


def _to_flatten(layer: Flatten, tensor: Callable[[Any], Any]) -> list[Any]:
    return [_torch().nn.Flatten()]


def _to_dropout(layer: Dropout, tensor: Callable[[Any], Any]) -> list[Any]:
    return [_torch().nn.Dropout(layer.p)]


def _to_activation(layer: Activation, tensor: Callable[[Any], Any]) -> list[Any]:
    kwargs = {k: v for k, v in layer.get_config().items() if k != "activation"}
    return _activation_module(layer.activation, kwargs)


def _to_batch_norm(layer: BatchNorm2D | BatchNorm1D, tensor: Callable[[Any], Any]) -> list[Any]:
    """Same eps and momentum (both use PyTorch's convention: biased batch variance to
    normalize, unbiased in the running one), running statistics copied."""
    torch = _torch()
    cls = torch.nn.BatchNorm2d if isinstance(layer, BatchNorm2D) else torch.nn.BatchNorm1d
    assert layer.input_shape is not None
    bn = cls(layer.input_shape[0], eps=layer.eps, momentum=layer.momentum, affine=layer.affine)
    _copy_params(bn, layer, tensor)
    mean, var = tensor(layer.buffers["running_mean"]), tensor(layer.buffers["running_var"])
    bn.to(mean.dtype)
    with torch.no_grad():
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
    return [bn]


def _to_global_avg_pool(layer: GlobalAvgPool2D, tensor: Callable[[Any], Any]) -> list[Any]:
    nn = _torch().nn
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten()]


_RESIDUAL_CLASS: list[type] = []


def torch_residual_class() -> type:
    """The ``torch.nn.Module`` class :func:`to_torch` makes of a :class:`Residual`:
    ``Residual(layers, shortcut)`` with two ``nn.Sequential`` attributes, computing
    ``layers(x) + shortcut(x)`` (an empty ``shortcut`` is the identity). Its state dict
    keys are ``layers.0.weight``, ``shortcut.0.weight`` and so on; :func:`from_torch`
    converts it back."""
    if not _RESIDUAL_CLASS:
        nn = _torch().nn

        class TorchResidual(nn.Module):  # type: ignore[name-defined]
            """``layers(x) + shortcut(x)``; an empty shortcut is the identity."""

            def __init__(self, layers: Any, shortcut: Any) -> None:
                super().__init__()
                self.layers, self.shortcut = layers, shortcut

            def forward(self, x: Any) -> Any:
                return self.layers(x) + self.shortcut(x)

        TorchResidual.__name__ = TorchResidual.__qualname__ = "Residual"
        _RESIDUAL_CLASS.append(TorchResidual)
    return _RESIDUAL_CLASS[0]


def _to_residual(layer: Residual, tensor: Callable[[Any], Any]) -> list[Any]:
    nn = _torch().nn

    def chain(layers: list[Layer]) -> Any:
        return nn.Sequential(*[m for inner in layers for m in TO_TORCH[type(inner)](inner, tensor)])

    return [torch_residual_class()(chain(layer.layers), chain(layer.shortcut))]


_STANDARDIZE_CLASS: list[type] = []


def torch_standardize_class() -> type:
    """The ``torch.nn.Module`` class :func:`to_torch` makes of a :class:`Standardize`:
    ``Standardize(mean, scale)`` computing ``(x - mean) * scale`` (``scale = 1 / std``),
    both saved as buffers in its state dict. :func:`from_torch` does not convert it."""
    if not _STANDARDIZE_CLASS:
        nn = _torch().nn

        class TorchStandardize(nn.Module):  # type: ignore[name-defined]
            """``(x - mean) * scale`` with fixed buffers."""

            def __init__(self, mean: Any, scale: Any) -> None:
                super().__init__()
                self.register_buffer("mean", mean)
                self.register_buffer("scale", scale)

            def forward(self, x: Any) -> Any:
                return (x - self.mean) * self.scale

        TorchStandardize.__name__ = TorchStandardize.__qualname__ = "Standardize"
        _STANDARDIZE_CLASS.append(TorchStandardize)
    return _STANDARDIZE_CLASS[0]


def _to_standardize(layer: Standardize, tensor: Callable[[Any], Any]) -> list[Any]:
    torch = _torch()
    mean, scale = (torch.from_numpy(np.array(h)) for h in layer.host_constants())
    return [torch_standardize_class()(mean, scale)]  # to_torch casts to the model's dtype


#: xpconv layer class -> ``fn(layer, tensor) -> [torch.nn.Module, ...]``; ``tensor``
#: turns one of the layer's arrays into a host torch tensor of the model's dtype.
TO_TORCH: dict[type, Callable[[Any, Callable[[Any], Any]], list[Any]]] = {
    Conv2D: _to_conv2d,
    Conv1D: _to_conv1d,
    MaxPool2D: _to_max_pool,
    AvgPool2D: _to_avg_pool,
    Flatten: _to_flatten,
    Dense: _to_dense,
    Dropout: _to_dropout,
    BatchNorm2D: _to_batch_norm,
    BatchNorm1D: _to_batch_norm,
    GlobalAvgPool2D: _to_global_avg_pool,
    Residual: _to_residual,
    Standardize: _to_standardize,
    **{
        cls: _to_activation
        for cls in (Activation, Identity, ReLU, LeakyReLU, Sigmoid, Tanh, Softmax, LogSoftmax)
    },
}


def to_torch(model: Sequential) -> Any:
    """A ``torch.nn.Sequential`` (CPU, the model's dtype) computing ``model``'s function.

    Fused activations become modules of their own (``Conv2D(..., activation="relu")``
    -> ``Conv2d, ReLU``), so module indices differ from layer indices; the module is in
    training mode, as PyTorch creates it (call ``.eval()`` for inference: dropout, and
    batch norm with the running statistics). A :class:`Residual` becomes one
    :func:`torch_residual_class` module holding its layers.

    Raises:
        ValueError: the model is not built, or some layers have no PyTorch counterpart
            (the message names them).
    """
    torch = _torch()
    if not isinstance(model, Sequential) or not model.built:
        raise ValueError(f"model: expected a built Sequential (give input_shape), got {model!r}")
    missing = _missing([(la.name, la) for la in model.layers])
    if missing:
        raise ValueError(
            f"to_torch: no PyTorch module for layer(s) {', '.join(missing)}; supported: "
            f"{sorted(cls.__name__ for cls in TO_TORCH)}"
        )
    dtype = getattr(torch, model.dtype_name)

    def tensor(value: Any) -> Any:
        return torch.from_numpy(np.array(model.backend.to_numpy(value), dtype=model.dtype_name))

    modules: list[Any] = []
    for layer in model.layers:
        modules += TO_TORCH[type(layer)](layer, tensor)
    return torch.nn.Sequential(*modules).to(dtype)


def save_torch_state_dict(model: Sequential, path: str | os.PathLike) -> None:
    """Write the ``state_dict`` of :func:`to_torch`'s module for ``model`` to ``path``
    atomically, with ``torch.save``: a file that ``torch.load(path, weights_only=True)``
    reads into ``to_torch(model).load_state_dict``. xpconv never loads such a file (it
    is a pickle)."""
    torch = _torch()
    state = to_torch(model).state_dict()
    with atomic_write(path) as fh:
        torch.save(state, fh)


def _missing(named: list[tuple[str, Layer]]) -> list[str]:
    """``"name (Type)"`` of the layers, inner ones of blocks included, not in TO_TORCH."""
    out = []
    for name, layer in named:
        if type(layer) not in TO_TORCH:
            out.append(f"{name} ({type(layer).__name__})")
        elif isinstance(layer, Residual):
            out += _missing([(f"{name}.{n}", inner) for n, inner in layer.children()])
    return out


# ---------------------------------------------------------------- torch -> xpconv

#: A converted module: the layer, its weights by parameter name, and (for Softmax and
#: LogSoftmax) the PyTorch ``dim`` to check against the input's rank once built.
Converted = tuple[Layer, dict[str, np.ndarray], int | str | None]


def _weights(module: Any, *names: str) -> dict[str, np.ndarray]:
    return {
        name: getattr(module, name).detach().cpu().numpy().copy()
        for name in names
        if getattr(module, name, None) is not None
    }


def _refuse(module: Any, why: str) -> None:
    raise _Unsupported(f"{type(module).__name__} ({why})")


class _Unsupported(Exception):
    pass


def _conv_common(m: Any, dims: int) -> dict[str, Any]:
    if m.padding_mode != "zeros":
        _refuse(m, f"padding_mode={m.padding_mode!r}, only 'zeros'")
    if isinstance(m.padding, str):
        padding: Any = m.padding
    else:
        padding = tuple(m.padding) if dims == 2 else m.padding[0]
    if dims == 2:
        args = dict(stride=tuple(m.stride), padding=padding, dilation=tuple(m.dilation))
    else:
        args = dict(stride=m.stride[0], padding=padding, dilation=m.dilation[0])
    return dict(**args, groups=m.groups, use_bias=m.bias is not None, in_channels=m.in_channels)


def _from_conv2d(m: Any) -> Converted:
    layer = Conv2D(m.out_channels, tuple(m.kernel_size), **_conv_common(m, 2))
    return layer, _weights(m, "weight", "bias"), None


def _from_conv1d(m: Any) -> Converted:
    layer = Conv1D(m.out_channels, m.kernel_size[0], **_conv_common(m, 1))
    return layer, _weights(m, "weight", "bias"), None


def _from_linear(m: Any) -> Converted:
    layer = Dense(m.out_features, use_bias=m.bias is not None, in_features=m.in_features)
    return layer, _weights(m, "weight", "bias"), None


def _pool_args(m: Any) -> dict[str, Any]:
    if m.ceil_mode:
        _refuse(m, "ceil_mode=True")
    return dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding)


def _from_max_pool(m: Any) -> Converted:
    if m.dilation not in (1, (1, 1)) or m.return_indices:
        _refuse(m, "dilation or return_indices")
    return MaxPool2D(**_pool_args(m)), {}, None


def _from_avg_pool(m: Any) -> Converted:
    if not m.count_include_pad or m.divisor_override is not None:
        _refuse(m, "count_include_pad=False or divisor_override")
    return AvgPool2D(**_pool_args(m)), {}, None


def _from_flatten(m: Any) -> Converted:
    if m.start_dim != 1 or m.end_dim != -1:
        _refuse(m, f"start_dim={m.start_dim}, end_dim={m.end_dim}; only 1 and -1")
    return Flatten(), {}, None


def _from_dropout(m: Any) -> Converted:
    return Dropout(m.p), {}, None


def _from_batch_norm(m: Any) -> Converted:
    if not m.track_running_stats or m.running_mean is None:
        _refuse(m, "track_running_stats=False; xpconv keeps running statistics")
    if m.momentum is None:
        _refuse(m, "momentum=None (cumulative average); only an exponential momentum")
    cls = BatchNorm2D if type(m).__name__ == "BatchNorm2d" else BatchNorm1D
    layer = cls(momentum=float(m.momentum), eps=float(m.eps), affine=m.affine)
    return layer, _weights(m, "weight", "bias", "running_mean", "running_var"), None


def _from_adaptive_avg_pool(m: Any) -> Converted:
    # the Flatten that must follow is checked (and taken) by _convert_chain
    if m.output_size not in (1, (1, 1), [1, 1]):
        _refuse(m, f"output_size={m.output_size!r}; only 1 (global pooling), then Flatten")
    return GlobalAvgPool2D(), {}, None


def _block_names(layers: list[Layer], prefix: str = "") -> list[str]:
    """The names :class:`Residual` gives its layers when built: kind, index by kind."""
    counts: dict[str, int] = {}
    names = []
    for layer in layers:
        kind = type(layer).__name__
        names.append(f"{prefix}{kind.lower()}_{counts.get(kind, 0)}")
        counts[kind] = counts.get(kind, 0) + 1
    return names


def _from_residual(m: Any) -> Converted:
    chains = []
    refused: list[str] = []
    for attr in ("layers", "shortcut"):
        converted, bad = _convert_chain(_leaves(getattr(m, attr), f"{attr}."))
        refused += bad
        for layer, _, dim in converted:
            if dim not in (None, -1):
                refused.append(f"{attr}: {type(layer).__name__}(dim={dim}), only dim=-1 in a block")
        chains.append(_fold(converted))
    if refused:
        _refuse(m, "; ".join(refused))
    if not chains[0]:
        _refuse(m, "empty layers")
    weights = {
        f"{name}.{key}": value
        for chain, prefix in zip(chains, ("", "shortcut."))
        for name, (_, inner, _) in zip(_block_names([c[0] for c in chain], prefix), chain)
        for key, value in inner.items()
    }
    block = Residual([c[0] for c in chains[0]], [c[0] for c in chains[1]] or None)
    return block, weights, None


def _from_activation(name: str) -> Callable[[Any], Converted]:
    """The converter of the ``torch.nn`` module of activation ``name`` (a row of
    ``ops.ACTIVATIONS``): its arguments read under their PyTorch names. An activation
    along an axis returns the module's ``dim`` (``None``: PyTorch's implicit one), to
    be resolved once the input's rank is known."""
    spec = ACTIVATIONS[name]
    cls = LAYERS[spec.layer]

    def convert(m: Any) -> Converted:
        if spec.along_axis:
            return cls(), {}, _IMPLICIT if m.dim is None else int(m.dim)
        kwargs = {key: float(getattr(m, names[1])) for key, names in spec.arguments.items()}
        return cls(**kwargs), {}, None

    return convert


#: The ``dim`` of a converted Softmax or LogSoftmax built without one.
_IMPLICIT = "implicit"


#: ``torch.nn`` class name (and ``"Residual"``, the module of :func:`torch_residual_class`)
#: -> ``fn(module) -> (xpconv layer, {parameter or buffer name: array}, dim)``.
FROM_TORCH: dict[str, Callable[[Any], Converted]] = {
    "Conv2d": _from_conv2d,
    "Conv1d": _from_conv1d,
    "Linear": _from_linear,
    "MaxPool2d": _from_max_pool,
    "AvgPool2d": _from_avg_pool,
    "Flatten": _from_flatten,
    "Dropout": _from_dropout,
    "BatchNorm2d": _from_batch_norm,
    "BatchNorm1d": _from_batch_norm,
    "AdaptiveAvgPool2d": _from_adaptive_avg_pool,
    "Residual": _from_residual,
    **{spec.torch: _from_activation(name) for name, spec in ACTIVATIONS.items()},
}


def _module_class(name: str) -> Any:
    """The class a FROM_TORCH key names: ``torch.nn``'s, or for ``"Residual"`` the
    block module of :func:`torch_residual_class`."""
    if name == "Residual":
        return torch_residual_class()
    return getattr(_torch().nn, name, None)


def _convert_chain(leaves: list[tuple[str, Any]]) -> tuple[list[Converted], list[str]]:
    """The converted modules of ``leaves`` (position, module) and the refused ones as
    ``"position: why"``. ``AdaptiveAvgPool2d(1)`` must be followed by ``Flatten()``: the
    pair is one GlobalAvgPool2D."""
    converted: list[Converted] = []
    refused: list[str] = []
    skip = False
    for i, (where, leaf) in enumerate(leaves):
        if skip:
            skip = False
            continue
        name = type(leaf).__name__
        convert = FROM_TORCH.get(name)
        if convert is None or type(leaf) is not _module_class(name):
            refused.append(f"{where}: {name}")
            continue
        try:
            item = convert(leaf)
        except _Unsupported as exc:
            refused.append(f"{where}: {exc}")
            continue
        if name == "AdaptiveAvgPool2d":
            after = leaves[i + 1][1] if i + 1 < len(leaves) else None
            if not (
                type(after) is _torch().nn.Flatten and (after.start_dim, after.end_dim) == (1, -1)
            ):
                refused.append(
                    f"{where}: AdaptiveAvgPool2d (output (N, C, 1, 1): expected Flatten() right "
                    "after it, the pair is xpconv's GlobalAvgPool2D)"
                )
                continue
            skip = True
        converted.append(item)
    return converted, refused


def _foldable(layer: Layer) -> str | None:
    """The fused-activation name of an activation layer that can join the layer before."""
    if type(layer) is LeakyReLU:  # a fused leaky_relu has the default slope
        return "leaky_relu" if layer.get_config().get("negative_slope", 0.01) == 0.01 else None
    return {ReLU: "relu", Tanh: "tanh", Sigmoid: "sigmoid"}.get(type(layer))


def _leaves(module: Any, prefix: str = "") -> list[tuple[str, Any]]:
    torch = _torch()
    if isinstance(module, torch.nn.Sequential):
        out: list[tuple[str, Any]] = []
        for name, child in module.named_children():
            out += _leaves(child, f"{prefix}{name}.")
        return out
    return [(prefix[:-1] or type(module).__name__, module)]


def _fold(converted: list[Converted]) -> list[Converted]:
    """Conv2d/Conv1d/Linear then a foldable activation -> one layer with that activation."""
    out: list[Converted] = []
    for layer, weights, dim in converted:
        act = _foldable(layer)
        if out and act is not None:
            prev, prev_weights, _ = out[-1]
            if type(prev) in (Conv2D, Conv1D, Dense) and prev.activation in (None, "identity"):  # type: ignore[attr-defined]
                config = {**prev.get_config(), "activation": act}
                out[-1] = (layer_from_config(type(prev).__name__, config), prev_weights, None)
                continue
        out.append((layer, weights, dim))
    return out


#: The hooks of a ``torch.nn.Module`` that take part in its forward or backward pass.
_HOOKS = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")


def _refuse_hooks(module: Any) -> None:
    """Hooks can change what a module computes and are not part of an xpconv model:
    a module (or any module inside it) with one, or a global module hook, is refused."""
    from torch.nn.modules import module as torch_module

    hooked = [
        f"{where or type(module).__name__}: {type(m).__name__} ({kind[1:-1].replace('_', ' ')})"
        for where, m in module.named_modules()
        for kind in _HOOKS
        if getattr(m, kind, None)
    ]
    hooked += [
        f"global module {kind[8:-1].replace('_', ' ')}"
        for kind in (
            "_global_forward_pre_hooks",
            "_global_forward_hooks",
            "_global_backward_pre_hooks",
            "_global_backward_hooks",
        )
        if getattr(torch_module, kind, None)
    ]
    if hooked:
        raise ValueError(
            f"from_torch: hooks cannot be converted (they may change the module's outputs): "
            f"{'; '.join(hooked)}; remove them (handle.remove()) before converting"
        )


def _with_axes(converted: list[Converted], ranks: list[int]) -> list[Converted]:
    """Softmax and LogSoftmax rebuilt with the axis their PyTorch ``dim`` names, on
    inputs of the rank the built model gives them (PyTorch's implicit dim: the
    channels of 2-D and 4-D input). A dim over the batch axis is refused."""
    out: list[Converted] = []
    for (layer, weights, dim), rank in zip(converted, ranks):
        if dim is None:
            out.append((layer, weights, None))
            continue
        ndim = rank + 1  # with the batch axis
        axis = (0 if ndim in (1, 3) else 1) if dim == _IMPLICIT else int(dim)
        if not -ndim <= axis < ndim or axis % ndim == 0:
            shown = "implicit" if dim == _IMPLICIT else dim
            raise ValueError(
                f"from_torch: {type(layer).__name__}(dim={shown}) at layers[{len(out)}]: expected "
                f"an axis of the {ndim}-D input other than the batch axis 0 (from 1 to "
                f"{ndim - 1}, or -1 to {1 - ndim}), got {axis}"
            )
        config = {} if axis % ndim == ndim - 1 else {"axis": axis % ndim}
        out.append((layer_from_config(type(layer).__name__, config), weights, None))
    return out


def from_torch(
    module: Any,
    input_shape: Sequence[int],
    *,
    backend: Any = None,
    device: Any = None,
    loss: str = "softmax_cross_entropy",
    seed: int = 0,
    dtype: str | None = None,
) -> Sequential:
    """The xpconv model of a PyTorch ``nn.Sequential`` (nested ones are flattened).

    Args:
        module: an ``nn.Sequential`` of the modules in :data:`FROM_TORCH` (or one such
            module), float32 or float64.
        input_shape: the per-example input shape, e.g. (1, 28, 28).
        backend, device, loss, seed: as for :class:`~xpconv.Sequential`.
        dtype: the model's dtype; default: the module's parameters' dtype (float32 for
            a module without parameters).

    A ReLU, Tanh, Sigmoid or LeakyReLU(0.01) right after a Conv2d, Conv1d or Linear
    becomes that layer's fused activation (so ``from_torch(to_torch(model))`` has
    ``model``'s layers). BatchNorm2d/1d bring their running statistics;
    ``AdaptiveAvgPool2d(1)`` followed by ``Flatten()`` becomes one GlobalAvgPool2D; the
    residual block module of :func:`torch_residual_class` becomes a :class:`Residual`
    (other residual forms, being custom modules, are refused).

    Raises:
        ValueError: some modules are not supported (the message names each one with
            its position and why), or the shapes do not fit ``input_shape``.
    """
    torch = _torch()
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
    dtypes = {p.dtype for p in module.parameters()}
    _refuse_hooks(module)
    converted, refused = _convert_chain(_leaves(module))
    if refused:
        raise ValueError(
            f"from_torch: unsupported module(s) {'; '.join(refused)}; supported: "
            f"{sorted(FROM_TORCH)}"
        )
    if not converted:
        raise ValueError("from_torch: module: expected at least one layer, got none")
    if len(dtypes) > 1 or (dtypes and not dtypes <= {torch.float32, torch.float64}):
        raise ValueError(
            f"from_torch: module: expected float32 or float64 parameters of one dtype, got "
            f"{sorted(str(d) for d in dtypes)}"
        )
    if dtype is None:
        dtype = "float64" if dtypes == {torch.float64} else "float32"
    converted = _fold(converted)
    build = dict(loss=loss, backend=backend, device=device, dtype=dtype, seed=seed)
    if any(dim is not None for _, _, dim in converted):  # Softmax / LogSoftmax: their axis
        copies = [layer_from_config(type(c[0]).__name__, c[0].get_config()) for c in converted]
        probe = Sequential(copies, input_shape=input_shape, **build)  # the input ranks
        converted = _with_axes(converted, [len(layer.input_shape or ()) for layer in probe.layers])
    model = Sequential([c[0] for c in converted], input_shape=input_shape, **build)
    model.load_state_dict(
        {
            f"{layer.name}.{key}": value
            for layer, weights, _ in converted
            for key, value in weights.items()
        }
    )
    return model
