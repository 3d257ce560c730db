"""Interoperability: ONNX export, exchange with PyTorch, safetensors files.

- :func:`to_onnx` writes a model as an ONNX graph of ONNX's own operators (input
  ``"input"`` of shape (N, *input_shape), output ``"output"`` of shape
  (N, *output_shape), dynamic batch N).
- :func:`to_torch` returns an ``nn.Sequential`` computing the same function;
  :func:`from_torch` builds the xpconv model of an ``nn.Sequential`` of supported
  modules.
- :func:`save_safetensors` / :func:`load_safetensors` are the file layer behind
  ``save_model(model, "m.safetensors")`` / ``load_model("m.safetensors")``.

Each converter is a table (layer or module class -> function): supporting a new layer
is one added entry in :data:`ONNX_EXPORTERS`, :data:`TO_TORCH` and :data:`FROM_TORCH`.
onnx, onnxruntime, torch and safetensors are optional and imported on first use
(``pip install 'xpconv[interop]'``).
"""

from .onnx_export import (
    DEFAULT_OPSET,
    INPUT_NAME,
    MIN_OPSET,
    ONNX_ACTIVATIONS,
    ONNX_EXPORTERS,
    OUTPUT_NAME,
    compare_with_onnxruntime,
    to_onnx,
)
from .safetensors_io import load_safetensors, save_safetensors
from .torch_exchange import FROM_TORCH, TO_TORCH, from_torch, to_torch, torch_residual_class

__all__ = [
    "DEFAULT_OPSET",
    "FROM_TORCH",
    "INPUT_NAME",
    "MIN_OPSET",
    "ONNX_ACTIVATIONS",
    "ONNX_EXPORTERS",
    "OUTPUT_NAME",
    "TO_TORCH",
    "compare_with_onnxruntime",
    "from_torch",
    "load_safetensors",
    "save_safetensors",
    "to_onnx",
    "to_torch",
    "torch_residual_class",
]
