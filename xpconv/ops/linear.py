"""Dense (fully connected) layer and flatten, with their backward passes.

Shapes use the PyTorch layout: ``linear``: x (N, IN), weight (OUT, IN), bias (OUT,)
-> (N, OUT); ``flatten``: (N, D1, D2, ...) -> (N, D1 * D2 * ...).
"""

from __future__ import annotations

import math
from typing import Any

from xpconv.backends.kernels import kernels_for
from xpconv.ops.checks import check_float, check_rank, namespace

Array = Any

__all__ = ["flatten", "flatten_backward", "linear", "linear_backward"]


def _check_linear(
    x: Array, weight: Array, bias: Array | None, grad_out: Array | None = None
) -> Any:
    xp = namespace(x=x, weight=weight, bias=bias, grad_out=grad_out)  # once per call
    check_rank(x, "x", 2, "(N, IN)")
    check_rank(weight, "weight", 2, "(OUT, IN)")
    check_float(xp, x=x, weight=weight, bias=bias)
    if weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"weight: expected {x.shape[1]} input features (x has shape {tuple(x.shape)}), "
            f"got weight of shape {tuple(weight.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias: expected shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    return xp


def linear(x: Array, weight: Array, bias: Array | None = None) -> Array:
    """Affine map ``x @ weight.T + bias``, as ``torch.nn.functional.linear``.

    Args:
        x: input (N, IN), float32 or float64.
        weight: (OUT, IN), same dtype and backend as ``x``.
        bias: optional (OUT,).

    Returns:
        (N, OUT).
    """
    xp = _check_linear(x, weight, bias)
    # x stored batch-innermost (a flattened convolution output): the products are faster
    # with its contiguous transpose as the operand.
    kernels = kernels_for(xp)
    if kernels.batch_innermost(xp, x):
        out = kernels.matmul(xp, weight, x.T).T
    else:
        out = kernels.matmul(xp, x, weight.T)
    if bias is not None:
        out = out + bias
    return out


def linear_backward(grad_out: Array, x: Array, weight: Array) -> tuple[Array, Array, Array]:
    """Vector-Jacobian product of :func:`linear`.

    Args:
        grad_out: gradient with respect to the output, (N, OUT).
        x, weight: as given to :func:`linear`.

    Returns:
        ``(grad_x, grad_weight, grad_bias)`` of shapes (N, IN), (OUT, IN) and (OUT,).
        grad_x is stored in the memory order of ``x`` where the backend can tell
        (a flattened convolution output keeps its batch innermost).
    """
    xp = _check_linear(x, weight, None, grad_out)
    check_float(xp, x=x, grad_out=grad_out)
    expected = (x.shape[0], weight.shape[0])
    if tuple(grad_out.shape) != expected:
        raise ValueError(f"grad_out: expected shape {expected}, got {tuple(grad_out.shape)}")
    kernels = kernels_for(xp)
    matmul = kernels.matmul
    if kernels.batch_innermost(xp, x):
        grad_x = matmul(xp, weight.T, grad_out.T).T  # (IN, N) contiguous: x's own layout
        grad_w = matmul(xp, x.T, grad_out).T
    else:
        grad_x, grad_w = matmul(xp, grad_out, weight), matmul(xp, grad_out.T, x)
    return grad_x, grad_w, xp.sum(grad_out, axis=0)


def flatten(x: Array) -> Array:
    """Keep the batch axis and flatten the others: (N, D1, D2, ...) -> (N, D1 * D2 * ...)."""
    xp = namespace(x=x)
    if x.ndim < 2:
        raise ValueError(
            f"x: expected an array of at least 2 dimensions (N, ...), got {x.ndim}-D "
            f"of shape {tuple(x.shape)}"
        )
    n, features = x.shape[0], math.prod(x.shape[1:])
    if kernels_for(xp).batch_innermost(xp, x):
        # Stored as (D1, D2, ..., N): flatten that arrangement and hand back its transpose
        # (a view where the library has views; no transpose to undo for a compiler).
        return xp.reshape(xp.permute_dims(x, (*range(1, x.ndim), 0)), (features, n)).T
    return xp.reshape(x, (n, features))


def flatten_backward(grad_out: Array, x_shape: tuple[int, ...]) -> Array:
    """Vector-Jacobian product of :func:`flatten`: (N, prod(rest)) -> ``x_shape``."""
    xp = namespace(grad_out=grad_out)
    x_shape = tuple(int(v) for v in x_shape)
    if len(x_shape) < 2:
        raise ValueError(f"x_shape: expected the shape of an array (N, ...), got {x_shape}")
    expected = (x_shape[0], math.prod(x_shape[1:]))
    if tuple(grad_out.shape) != expected:
        raise ValueError(
            f"grad_out: expected shape {expected} (x_shape {x_shape} flattened), "
            f"got {tuple(grad_out.shape)}"
        )
    if kernels_for(xp).batch_innermost(xp, grad_out):  # the arrangement flatten used
        grad = xp.reshape(grad_out.T, (*x_shape[1:], x_shape[0]))
        return xp.permute_dims(grad, (grad.ndim - 1, *range(grad.ndim - 1)))
    return xp.reshape(grad_out, x_shape)
