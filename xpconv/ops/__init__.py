"""Pure functional ops: forward functions and their explicit backward (VJP) functions.

No state, no globals, no in-place writes into arrays a caller can see. Each op finds
its namespace from its arguments with ``array_api_compat`` (once per call) and works
on any backend. Every op validates its arguments (the checks live in
:mod:`xpconv.ops.checks`) and raises naming the argument, the expected and the actual
value.

Names say what an op computes; how it runs is an argument:

- ``op(x, ...)``: the forward value (``conv2d``, ``max_pool2d``, ``batch_norm``, ...);
  ``conv2d(..., algorithm="im2col" | "winograd")`` picks how the product is formed.
- ``op_forward(x, ...) -> (out, saved)``: the same value and what the backward reads.
- ``op_backward(grad_out, x, ...)``: the gradient, recomputing the forward pass; or
  ``op_backward(grad_out, saved)`` from what ``op_forward`` kept.

The layers call the same ops with a geometry checked once when they are built
(``conv_max_pool2d_forward(..., geometry=...)``), and the layout-level functions of
:mod:`xpconv.ops.conv` (``conv2d_matrix``: the output as a (O, columns) matrix) and
:mod:`xpconv.ops.winograd`; those take the namespace and a geometry and check nothing.
"""

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
    conv1d,
    conv1d_backward,
    conv2d,
    conv2d_backward,
)
from xpconv.ops.conv_pool import (
    ConvPoolSaved,
    conv_max_pool2d,
    conv_max_pool2d_backward,
    conv_max_pool2d_forward,
    conv_pool_geometry,
)
from xpconv.ops.dropout import dropout, dropout_backward
from xpconv.ops.geometry import conv_geometry, conv_output_size
from xpconv.ops.linear import flatten, flatten_backward, linear, linear_backward
from xpconv.ops.loss import (
    CrossEntropySaved,
    mse,
    mse_backward,
    softmax_cross_entropy,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from xpconv.ops.norm import (
    BatchNormSaved,
    add,
    add_backward,
    batch_norm,
    batch_norm_backward,
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
    max_pool2d_forward,
    pool_geometry,
)
from xpconv.ops.winograd import (
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
    "MaxPoolSaved",
    "PoolGeometry",
    "add",
    "add_backward",
    "avg_pool2d",
    "avg_pool2d_backward",
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_forward",
    "checks",
    "conv1d",
    "conv1d_backward",
    "conv2d",
    "conv2d_backward",
    "conv_geometry",
    "conv_max_pool2d",
    "conv_max_pool2d_backward",
    "conv_max_pool2d_forward",
    "conv_output_size",
    "conv_pool_geometry",
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
    "softmax_cross_entropy_forward",
    "tanh",
    "tanh_backward",
    "winograd_supported",
]
