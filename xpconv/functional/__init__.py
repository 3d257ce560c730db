"""Pure functional ops: forward functions and their explicit backward (VJP) functions.

No state, no globals, no in-place writes into arrays a caller can see. Each op finds
its namespace from its arguments with ``array_api_compat`` and works on any backend.
"""

from . import (
    _cupy_kernels,  # noqa: F401  (registers the CuPy fast path; imports CuPy lazily)
    _numpy_kernels,  # noqa: F401  (registers the NumPy fast path)
    _torch_kernels,  # noqa: F401  (registers the PyTorch fast path; imports no torch)
)
from ._activation import (
    ACTIVATIONS,
    identity,
    identity_backward,
    leaky_relu,
    leaky_relu_backward,
    log_softmax,
    log_softmax_backward,
    relu,
    relu_backward,
    sigmoid,
    sigmoid_backward,
    softmax,
    softmax_backward,
    tanh,
    tanh_backward,
)
from ._conv import (
    conv1d,
    conv1d_backward,
    conv2d,
    conv2d_backward,
    conv_geometry,
    conv_output_size,
)
from ._dropout import dropout, dropout_backward
from ._linear import flatten, flatten_backward, linear, linear_backward
from ._loss import mse, mse_backward, softmax_cross_entropy, softmax_cross_entropy_backward
from ._norm import (
    BatchNormSaved,
    add,
    add_backward,
    batch_norm,
    batch_norm_backward,
    batch_norm_backward_saved,
    batch_norm_forward,
    global_avg_pool2d,
    global_avg_pool2d_backward,
)
from ._pool import (
    MaxPoolSaved,
    avg_pool2d,
    avg_pool2d_backward,
    max_pool2d,
    max_pool2d_backward,
    max_pool2d_backward_saved,
    max_pool2d_forward,
    pool_geometry,
)

__all__ = [
    "ACTIVATIONS",
    "BatchNormSaved",
    "MaxPoolSaved",
    "add",
    "add_backward",
    "avg_pool2d",
    "avg_pool2d_backward",
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_backward_saved",
    "batch_norm_forward",
    "conv1d",
    "conv1d_backward",
    "conv2d",
    "conv2d_backward",
    "conv_geometry",
    "conv_output_size",
    "dropout",
    "dropout_backward",
    "flatten",
    "flatten_backward",
    "global_avg_pool2d",
    "global_avg_pool2d_backward",
    "identity",
    "identity_backward",
    "leaky_relu",
    "leaky_relu_backward",
    "linear",
    "linear_backward",
    "log_softmax",
    "log_softmax_backward",
    "max_pool2d",
    "max_pool2d_backward",
    "max_pool2d_backward_saved",
    "max_pool2d_forward",
    "mse",
    "mse_backward",
    "pool_geometry",
    "relu",
    "relu_backward",
    "sigmoid",
    "sigmoid_backward",
    "softmax",
    "softmax_backward",
    "softmax_cross_entropy",
    "softmax_cross_entropy_backward",
    "tanh",
    "tanh_backward",
]
