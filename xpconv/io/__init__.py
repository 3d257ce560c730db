"""Files and exchange: the checkpoint format and its schema, save/load, safetensors, ONNX
export and exchange with PyTorch.

File formats read and write plain data (dicts of arrays and JSON) and build models;
building a Trainer from a training file is :mod:`xpconv.train`'s job.


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

from xpconv.io.checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    load_checkpoint,
    save_checkpoint,
)
from xpconv.io.onnx import (
    DEFAULT_OPSET,
    INPUT_NAME,
    MIN_OPSET,
    ONNX_ACTIVATIONS,
    ONNX_EXPORTERS,
    OUTPUT_NAME,
    compare_with_onnxruntime,
    to_onnx,
)
from xpconv.io.safetensors import load_safetensors, save_safetensors
from xpconv.io.saving import load_model, save_model
from xpconv.io.torch import (
    FROM_TORCH,
    TO_TORCH,
    from_torch,
    save_torch_state_dict,
    to_torch,
    torch_residual_class,
)

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
    "save_model",
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
    "save_torch_state_dict",
    "to_onnx",
    "to_torch",
    "torch_residual_class",
]
