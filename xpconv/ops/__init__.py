"""Pure functional ops: forward functions and their explicit backward (VJP) functions.

No state, no globals, no in-place writes into arrays a caller can see. Each op finds
its namespace from its arguments with ``array_api_compat`` (once per call) and works
on any backend.

Checked ops (``conv2d``, ``max_pool2d_forward``, ...) validate every argument. Layers
validate once when they are built and then call the unchecked entry points
(``conv2d_forward``, ``conv2d_backward_cols``, ``conv_max_pool2d_forward_unchecked``)
with a geometry from ``conv_geometry``: no checks per call. The argument checks
themselves live in :mod:`xpconv.ops.checks`.
"""

from xpconv.backends.kernels import Kernels, grouped_matmul, kernels_for, use_portable
from xpconv.backends.portable import ConvGeometry
from xpconv.ops import checks
from xpconv.ops.activation import (
    ACTIVATIONS,
    ALONG_AN_AXIS,
    ActivationSpec,
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
from xpconv.ops.conv import (
    check_conv1d,
    conv1d,
    conv1d_backward,
    conv2d,
    conv2d_backward,
    conv2d_backward_cols,
    conv2d_backward_matrix,
    conv2d_forward,
    conv2d_forward_matrix,
    conv2d_linear_forward_matrix,
    conv_geometry,
    conv_output_size,
    lift_1d_arg,
    matrix_to_output,
    output_to_matrix,
)
from xpconv.ops.conv_pool import (
    ConvPoolSaved,
    conv_max_pool2d,
    conv_max_pool2d_backward_saved,
    conv_max_pool2d_forward,
    conv_max_pool2d_forward_unchecked,
    conv_pool_geometry,
)
from xpconv.ops.dropout import dropout, dropout_backward
from xpconv.ops.linear import flatten, flatten_backward, linear, linear_backward
from xpconv.ops.loss import (
    CrossEntropySaved,
    mse,
    mse_backward,
    softmax_cross_entropy,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_backward_saved,
    softmax_cross_entropy_forward,
)
from xpconv.ops.norm import (
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
from xpconv.ops.pool import (
    MaxPoolSaved,
    PoolGeometry,
    avg_pool2d,
    avg_pool2d_backward,
    max_pool2d,
    max_pool2d_backward,
    max_pool2d_backward_saved,
    max_pool2d_forward,
    pool_geometry,
)
from xpconv.ops.winograd import (
    conv2d_winograd,
    conv2d_winograd_backward,
    winograd_supported,
)

__all__ = [
    "ACTIVATIONS",
    "ALONG_AN_AXIS",
    "ActivationSpec",
    "BatchNormSaved",
    "ConvGeometry",
    "ConvPoolSaved",
    "CrossEntropySaved",
    "Kernels",
    "MaxPoolSaved",
    "PoolGeometry",
    "add",
    "add_backward",
    "avg_pool2d",
    "avg_pool2d_backward",
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_backward_saved",
    "batch_norm_forward",
    "check_conv1d",
    "checks",
    "conv1d",
    "conv1d_backward",
    "conv2d",
    "conv2d_backward",
    "conv2d_backward_cols",
    "conv2d_backward_matrix",
    "conv2d_forward",
    "conv2d_forward_matrix",
    "conv2d_linear_forward_matrix",
    "conv2d_winograd",
    "conv2d_winograd_backward",
    "conv_geometry",
    "conv_max_pool2d",
    "conv_max_pool2d_backward_saved",
    "conv_max_pool2d_forward",
    "conv_max_pool2d_forward_unchecked",
    "conv_output_size",
    "conv_pool_geometry",
    "dropout",
    "dropout_backward",
    "flatten",
    "flatten_backward",
    "global_avg_pool2d",
    "global_avg_pool2d_backward",
    "grouped_matmul",
    "identity",
    "identity_backward",
    "kernels_for",
    "leaky_relu",
    "leaky_relu_backward",
    "lift_1d_arg",
    "linear",
    "linear_backward",
    "log_softmax",
    "log_softmax_backward",
    "matrix_to_output",
    "max_pool2d",
    "max_pool2d_backward",
    "max_pool2d_backward_saved",
    "max_pool2d_forward",
    "mse",
    "mse_backward",
    "output_to_matrix",
    "pool_geometry",
    "relu",
    "relu_backward",
    "sigmoid",
    "sigmoid_backward",
    "softmax",
    "softmax_backward",
    "softmax_cross_entropy",
    "softmax_cross_entropy_backward",
    "softmax_cross_entropy_backward_saved",
    "softmax_cross_entropy_forward",
    "tanh",
    "tanh_backward",
    "use_portable",
    "winograd_supported",
]
