"""Export a built :class:`~xpconv.Sequential` to an ONNX graph of ONNX's own operators.

The graph has one input, :data:`INPUT_NAME` (``"input"``), of shape
``("N", *model.input_shape)``, and one output, :data:`OUTPUT_NAME` (``"output"``), of
shape ``("N", *model.output_shape)``: the model's outputs in inference mode (the
logits for the zoo models; the loss is not part of the graph). ``N`` is a dynamic
batch dimension. The element type is the model's dtype (float32 or float64), and the
weights are stored in the graph as initializers.

Each layer type is exported by one function of :data:`ONNX_EXPORTERS` (layer class ->
function), so a new layer is one added entry: ``fn(layer, graph, x) -> y`` adds the
layer's nodes to the :class:`OnnxGraph` ``graph`` and returns the name of its output.
The exporter works from ``model.layers``, never from the fused steps a pass runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from xpconv.io.checkpoint import atomic_write
from xpconv.nn.layers import (
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
)
from xpconv.nn.sequential import Sequential
from xpconv.ops import ACTIVATIONS, conv_geometry

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "MIN_OPSET",
    "ONNX_ACTIVATIONS",
    "ONNX_EXPORTERS",
    "OUTPUT_NAME",
    "OnnxGraph",
    "compare_with_onnxruntime",
    "to_onnx",
]

#: Name of the graph's input, shape ("N", *model.input_shape).
INPUT_NAME = "input"
#: Name of the graph's output, shape ("N", *model.output_shape).
OUTPUT_NAME = "output"
#: Opset written by default, and the oldest accepted (Softmax over one axis needs 13).
DEFAULT_OPSET = 17
MIN_OPSET = 13


class OnnxGraph:
    """The nodes and weights of a graph under construction, with fresh names."""

    def __init__(self, dtype: np.dtype, opset: int, to_numpy: Callable[[Any], np.ndarray]) -> None:
        self.dtype = np.dtype(dtype)
        self.opset = opset
        self.to_numpy = to_numpy
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        #: Prepended to every name (``"residual_0."`` while a block's layers are added).
        self.prefix = ""
        self._count = 0

    def name(self, stem: str) -> str:
        self._count += 1
        return f"{self.prefix}{stem}_{self._count}"

    def weight(self, stem: str, value: Any) -> str:
        """Add ``value`` (an array of the model's backend, or a host array) in the graph's
        dtype as an initializer; returns its name."""
        from onnx import numpy_helper

        name = self.name(stem)
        host = value if isinstance(value, np.ndarray) else self.to_numpy(value)
        array = np.ascontiguousarray(np.asarray(host, dtype=self.dtype))
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], stem: str, **attributes: Any) -> str:
        """Add one ``op`` node; returns the name of its (single) output."""
        from onnx import helper

        out = self.name(stem)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attributes))
        return out


# ------------------------------------------------------------------ activations


def _onnx_activation(name: str) -> Callable[..., str]:
    """The exporter of activation ``name``, written from its row of ``ops.ACTIVATIONS``:
    its ONNX operator, its arguments under their ONNX names (an axis as an int, other
    arguments as floats)."""
    spec = ACTIVATIONS[name]

    def export(graph: OnnxGraph, x: str, stem: str, **kwargs: Any) -> str:
        unknown = sorted(set(kwargs) - set(spec.arguments))
        if unknown:
            raise ValueError(
                f"to_onnx: activation {name!r}: unexpected arguments {unknown}; expected "
                f"some of {sorted(spec.arguments)}"
            )
        attributes = {
            spec.arguments[key][0]: int(value) if key == "axis" else float(value)
            for key, value in kwargs.items()
        }
        if spec.along_axis:
            attributes.setdefault("axis", -1)
        return graph.node(spec.onnx, [x], stem, **attributes)

    return export


#: Activation name (as in ``xpconv.ops.ACTIVATIONS``) -> ``fn(graph, x, stem, **kw)``.
ONNX_ACTIVATIONS: dict[str, Callable[..., str]] = {
    name: _onnx_activation(name) for name in ACTIVATIONS
}


def _activate(layer: Layer, graph: OnnxGraph, x: str, kwargs: dict[str, Any] | None = None) -> str:
    name = getattr(layer, "activation", None) or "identity"
    if name not in ONNX_ACTIVATIONS:
        raise ValueError(
            f"to_onnx: layer {layer.name}: activation {name!r} has no ONNX export; expected one "
            f"of {sorted(ONNX_ACTIVATIONS)}"
        )
    if name == "identity" and kwargs is None:
        return x  # no fused activation: nothing to add
    return ONNX_ACTIVATIONS[name](graph, x, f"{layer.name}_{name}", **(kwargs or {}))


# ------------------------------------------------------------------ layers


def _conv_pads(layer: Conv2D, weight_shape: tuple[int, ...]) -> Any:
    """The layer's geometry (padding resolved: 'same' with even kernels, 'full')."""
    assert layer.input_shape is not None
    return conv_geometry(
        (1, *layer.input_shape),
        weight_shape,
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        groups=layer.groups,
    )


def _conv(layer: Conv2D, graph: OnnxGraph, x: str, weight: np.ndarray, geom: Any, axes: int) -> str:
    """An ONNX Conv over the last ``axes`` (2 for Conv2D, 1 for Conv1D) spatial axes."""
    (pt, pb), (pl, pr) = geom.pad
    inputs = [x, graph.weight(f"{layer.name}_weight", weight)]
    if layer.use_bias:
        inputs.append(graph.weight(f"{layer.name}_bias", layer.params["bias"].value))
    if axes == 2:
        attrs = dict(
            kernel_shape=list(geom.kernel),
            strides=list(geom.stride),
            dilations=list(geom.dilation),
            pads=[pt, pl, pb, pr],
        )
    else:
        attrs = dict(
            kernel_shape=[geom.kernel[1]],
            strides=[geom.stride[1]],
            dilations=[geom.dilation[1]],
            pads=[pl, pr],
        )
    y = graph.node("Conv", inputs, layer.name, group=layer.groups, **attrs)
    return _activate(layer, graph, y)


def _export_conv2d(layer: Conv2D, graph: OnnxGraph, x: str) -> str:
    weight = graph.to_numpy(layer.params["weight"].value)  # (O, C // groups, KH, KW)
    return _conv(layer, graph, x, weight, _conv_pads(layer, weight.shape), 2)


def _export_conv1d(layer: Conv1D, graph: OnnxGraph, x: str) -> str:
    weight = graph.to_numpy(layer.params["weight"].value)  # (O, C // groups, K)
    assert layer.input_shape is not None
    channels, length = layer.input_shape
    geom = conv_geometry(
        (1, channels, 1, length),
        (weight.shape[0], weight.shape[1], 1, weight.shape[2]),
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        groups=layer.groups,
    )
    return _conv(layer, graph, x, weight, geom, 1)


def _pool_attrs(layer: MaxPool2D | AvgPool2D) -> dict[str, Any]:
    ph, pw = layer.padding
    return dict(
        kernel_shape=list(layer.kernel_size), strides=list(layer.stride), pads=[ph, pw, ph, pw]
    )


def _export_max_pool(layer: MaxPool2D, graph: OnnxGraph, x: str) -> str:
    return graph.node("MaxPool", [x], layer.name, **_pool_attrs(layer))


def _export_avg_pool(layer: AvgPool2D, graph: OnnxGraph, x: str) -> str:
    # xpconv divides every window by KH * KW, the padded zeros included.
    return graph.node("AveragePool", [x], layer.name, count_include_pad=1, **_pool_attrs(layer))


def _export_flatten(layer: Flatten, graph: OnnxGraph, x: str) -> str:
    return graph.node("Flatten", [x], layer.name, axis=1)


def _export_dense(layer: Dense, graph: OnnxGraph, x: str) -> str:
    inputs = [x, graph.weight(f"{layer.name}_weight", layer.params["weight"].value)]
    if layer.use_bias:
        inputs.append(graph.weight(f"{layer.name}_bias", layer.params["bias"].value))
    y = graph.node("Gemm", inputs, layer.name, transB=1)  # x @ W.T + b, W (units, in)
    return _activate(layer, graph, y)


def _export_dropout(layer: Dropout, graph: OnnxGraph, x: str) -> str:
    return graph.node("Identity", [x], layer.name)  # the identity at inference


def _export_activation(layer: Activation, graph: OnnxGraph, x: str) -> str:
    kwargs = {k: v for k, v in layer.get_config().items() if k != "activation"}
    return _activate(layer, graph, x, kwargs)


def _export_batch_norm(layer: BatchNorm2D | BatchNorm1D, graph: OnnxGraph, x: str) -> str:
    # inference mode: normalized with the running statistics (no training outputs)
    channels = layer.input_shape[0] if layer.input_shape else 0
    if layer.affine:
        scale, shift = layer.params["weight"].value, layer.params["bias"].value
    else:
        scale, shift = np.ones(channels), np.zeros(channels)
    inputs = [
        x,
        graph.weight(f"{layer.name}_scale", scale),
        graph.weight(f"{layer.name}_bias", shift),
        graph.weight(f"{layer.name}_running_mean", layer.buffers["running_mean"]),
        graph.weight(f"{layer.name}_running_var", layer.buffers["running_var"]),
    ]
    return graph.node("BatchNormalization", inputs, layer.name, epsilon=layer.eps)


def _export_global_avg_pool(layer: GlobalAvgPool2D, graph: OnnxGraph, x: str) -> str:
    y = graph.node("GlobalAveragePool", [x], layer.name)  # (N, C, 1, 1)
    return graph.node("Flatten", [y], f"{layer.name}_flatten", axis=1)


def _export_residual(layer: Residual, graph: OnnxGraph, x: str) -> str:
    outer = graph.prefix
    graph.prefix = f"{outer}{layer.name}."
    try:
        branch = x
        for inner in layer.layers:
            branch = ONNX_EXPORTERS[type(inner)](inner, graph, branch)
        short = x
        for inner in layer.shortcut:
            short = ONNX_EXPORTERS[type(inner)](inner, graph, short)
    finally:
        graph.prefix = outer
    return graph.node("Add", [branch, short], layer.name)


def _export_standardize(layer: Standardize, graph: OnnxGraph, x: str) -> str:
    mean, scale = layer.host_constants()  # the same float arithmetic: (x - mean) * scale
    centred = graph.node("Sub", [x, graph.weight(f"{layer.name}_mean", mean)], layer.name)
    return graph.node("Mul", [centred, graph.weight(f"{layer.name}_scale", scale)], layer.name)


#: Layer class -> ``fn(layer, graph, x) -> y`` adding the layer's nodes to ``graph``.
ONNX_EXPORTERS: dict[type, Callable[[Any, OnnxGraph, str], str]] = {
    Conv2D: _export_conv2d,
    Conv1D: _export_conv1d,
    MaxPool2D: _export_max_pool,
    AvgPool2D: _export_avg_pool,
    Flatten: _export_flatten,
    Dense: _export_dense,
    Dropout: _export_dropout,
    BatchNorm2D: _export_batch_norm,
    BatchNorm1D: _export_batch_norm,
    GlobalAvgPool2D: _export_global_avg_pool,
    Residual: _export_residual,
    Standardize: _export_standardize,
    **{
        cls: _export_activation
        for cls in (Activation, Identity, ReLU, LeakyReLU, Sigmoid, Tanh, Softmax, LogSoftmax)
    },
}


def unsupported_layers(layers: list[Layer], table: dict[type, Any]) -> list[str]:
    """``"name (Type)"`` of every layer whose exact type has no entry in ``table``; the
    inner layers of a block (a layer with ``children()``) are checked too, named
    ``"block.inner (Type)"``."""
    return _unsupported([(layer.name, layer) for layer in layers], table)


def _unsupported(named: list[tuple[str, Layer]], table: dict[type, Any]) -> list[str]:
    out = []
    for name, layer in named:
        if type(layer) not in table:
            out.append(f"{name} ({type(layer).__name__})")
        elif hasattr(layer, "children"):
            out += _unsupported([(f"{name}.{n}", inner) for n, inner in layer.children()], table)
    return out


def to_onnx(
    model: Sequential,
    path: str | os.PathLike[str] | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    dtype: str | None = None,
    check: bool = True,
) -> Any:
    """The model as an ``onnx.ModelProto``; written to ``path`` (atomically) when given.

    Args:
        model: a built model (its ``input_shape`` known).
        path: where to write the ``.onnx`` file, or None.
        opset: ONNX operator set version, from :data:`MIN_OPSET` to the newest the
            installed ``onnx`` knows.
        dtype: ``"float32"`` or ``"float64"`` for the graph's tensors (default: the
            model's dtype). onnxruntime's CPU provider runs Conv in float32 only.
        check: run ``onnx.checker.check_model`` (full check, with shape inference).

    Returns:
        The graph: input :data:`INPUT_NAME` ("N", *input_shape), output
        :data:`OUTPUT_NAME` ("N", *output_shape).

    Raises:
        ValueError: the model is not built, ``opset`` is out of range, or a layer has
            no exporter (the message names every such layer).
        ImportError: the ``onnx`` package is not installed.
    """
    try:
        import onnx
        from onnx import helper
    except ImportError as exc:
        raise ImportError("to_onnx needs the onnx package: pip install 'xpconv[interop]'") from exc
    if not isinstance(model, Sequential) or not model.built:
        raise ValueError(f"model: expected a built Sequential (give input_shape), got {model!r}")
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset: expected an int from {MIN_OPSET} to {newest}, got {opset!r}")
    missing = unsupported_layers(model.layers, ONNX_EXPORTERS)
    if missing:
        raise ValueError(
            f"to_onnx: no ONNX export for layer(s) {', '.join(missing)}; supported: "
            f"{sorted(cls.__name__ for cls in ONNX_EXPORTERS)}"
        )
    if dtype not in (None, "float32", "float64"):
        raise ValueError(f"dtype: expected None, 'float32' or 'float64', got {dtype!r}")
    np_dtype = np.dtype(dtype or model.dtype_name)
    elem = helper.np_dtype_to_tensor_dtype(np_dtype)
    graph = OnnxGraph(np_dtype, opset, model.backend.to_numpy)
    x = INPUT_NAME
    for layer in model.layers:
        x = ONNX_EXPORTERS[type(layer)](layer, graph, x)
    if x == INPUT_NAME or not graph.nodes or graph.nodes[-1].output[0] != x:
        x = graph.node("Identity", [x], "output")
    graph.nodes[-1].output[0] = OUTPUT_NAME
    proto = helper.make_model(
        helper.make_graph(
            graph.nodes,
            "xpconv",
            [helper.make_tensor_value_info(INPUT_NAME, elem, ["N", *model.input_shape])],
            [helper.make_tensor_value_info(OUTPUT_NAME, elem, ["N", *model.output_shape])],
            initializer=graph.initializers,
        ),
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="xpconv",
        doc_string=" -> ".join(layer.describe() for layer in model.layers),
    )
    proto.ir_version = helper.find_min_ir_version_for(list(proto.opset_import))
    if check:
        onnx.checker.check_model(proto, full_check=True)
    if path is not None:
        with atomic_write(Path(os.fspath(path))) as fh:
            fh.write(proto.SerializeToString())
    return proto


def compare_with_onnxruntime(
    model: Sequential, path: str | os.PathLike[str], x: Any = None, *, seed: int = 0
) -> dict[str, Any]:
    """Run the ONNX file at ``path`` in onnxruntime (CPU) and ``model`` on the same input.

    Args:
        model: the model the file was exported from.
        path: the ``.onnx`` file.
        x: host input (N, *input_shape); default: 8 uniform [0, 1) examples from ``seed``.

    Returns:
        ``{"examples": N, "max_abs": max |ort - xpconv|, "max_rel": max_abs / max |xpconv|,
        "onnxruntime": outputs, "xpconv": outputs}`` (outputs as host arrays).

    Raises:
        ImportError: onnxruntime is not installed.
        RuntimeError: onnxruntime cannot load or run the file (for example float64
            convolutions, which its CPU provider lacks).
    """
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(
            "checking an export needs onnxruntime: pip install 'xpconv[interop]'"
        ) from exc
    if x is None:
        x = np.random.default_rng(seed).random((8, *model.input_shape))
    try:  # onnxruntime's errors derive from Exception only
        runtime = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
        elem = runtime.get_inputs()[0].type  # "tensor(float)" or "tensor(double)"
        host = np.asarray(x, dtype=np.float64 if "double" in elem else np.float32)
        got = runtime.run([OUTPUT_NAME], {INPUT_NAME: host})[0]
    except Exception as exc:
        raise RuntimeError(f"onnxruntime could not run {os.fspath(path)!r}: {exc}") from exc
    want = model.backend.to_numpy(model.predict(np.asarray(x, dtype=model.dtype_name)))
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    scale = float(np.max(np.abs(want))) or 1.0
    return {
        "examples": int(host.shape[0]),
        "max_abs": float(diff.max()),
        "max_rel": float(diff.max()) / scale,
        "onnxruntime": got,
        "xpconv": want,
    }
