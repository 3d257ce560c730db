"""Activation functions and their backward passes (vector-Jacobian products).

Every activation ``f`` keeps the shape of its input and comes with
``f_backward(grad_out, x, out=None)``: ``grad_out`` and ``x`` have the shape of ``x``;
``out`` is the forward result, optional, used (when given) by the activations whose
derivative is cheapest from it (sigmoid, tanh, softmax, log_softmax).
:data:`ACTIVATIONS` maps each name to its :class:`ActivationSpec`: the functions and
the names of its layer, ONNX operator and PyTorch module.

Derivatives at the kinks follow PyTorch: ``relu'(0) = 0``, ``leaky_relu'(0) = slope``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import array_api_compat

from xpconv.backends.kernels import kernels_for
from xpconv.ops.checks import check_float, namespace

Array = Any

__all__ = [
    "ACTIVATIONS",
    "ALONG_AN_AXIS",
    "ActivationSpec",
    "identity",
    "identity_backward",
    "leaky_relu",
    "leaky_relu_backward",
    "log_softmax",
    "log_softmax_backward",
    "relu",
    "relu_backward",
    "sigmoid",
    "sigmoid_backward",
    "softmax",
    "softmax_backward",
    "tanh",
    "tanh_backward",
]


def _forward_ns(x: Array) -> Any:
    xp = namespace(x=x)
    check_float(xp, x=x)
    return xp


def _backward_ns(grad_out: Array, x: Array, out: Array | None) -> Any:
    xp = namespace(x=x, grad_out=grad_out, out=out)
    check_float(xp, x=x, grad_out=grad_out, out=out)
    for name, a in (("grad_out", grad_out), ("out", out)):
        if a is not None and tuple(a.shape) != tuple(x.shape):
            raise ValueError(
                f"{name}: expected the shape of x {tuple(x.shape)}, got {tuple(a.shape)}"
            )
    return xp


def _check_slope(negative_slope: Any) -> float:
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)):
        raise TypeError(f"negative_slope: expected a real number, got {negative_slope!r}")
    return float(negative_slope)


def _check_axis(x: Array, axis: Any) -> int:
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"axis: expected an int, got {axis!r}")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(
            f"axis: expected an axis of the {x.ndim}-D input x (from {-x.ndim} to "
            f"{x.ndim - 1}), got {axis}"
        )
    return axis


# ----------------------------------------------------------------- elementwise


def identity(x: Array) -> Array:
    """``x`` itself (shape unchanged)."""
    _forward_ns(x)
    return x


def identity_backward(grad_out: Array, x: Array, out: Array | None = None) -> Array:
    """``grad_out`` itself."""
    _backward_ns(grad_out, x, out)
    return grad_out


def relu(x: Array) -> Array:
    """``max(x, 0)`` elementwise (``relu(-inf) = 0``, NaN stays NaN)."""
    xp = _forward_ns(x)
    return xp.maximum(x, xp.zeros((), dtype=x.dtype, device=array_api_compat.device(x)))


def relu_backward(grad_out: Array, x: Array, out: Array | None = None) -> Array:
    """``grad_out * (x > 0)``."""
    xp = _backward_ns(grad_out, x, out)
    return grad_out * xp.astype(x > 0, grad_out.dtype)


def leaky_relu(x: Array, negative_slope: float = 0.01) -> Array:
    """``x`` where ``x > 0``, else ``negative_slope * x`` (elementwise)."""
    xp = _forward_ns(x)
    slope = _check_slope(negative_slope)
    positive = xp.astype(x > 0, x.dtype)
    return x * (positive + slope * (1.0 - positive))


def leaky_relu_backward(
    grad_out: Array, x: Array, out: Array | None = None, *, negative_slope: float = 0.01
) -> Array:
    """``grad_out`` where ``x > 0``, else ``negative_slope * grad_out``."""
    xp = _backward_ns(grad_out, x, out)
    slope = _check_slope(negative_slope)
    positive = xp.astype(x > 0, grad_out.dtype)
    return grad_out * (positive + slope * (1.0 - positive))


def sigmoid(x: Array) -> Array:
    """``1 / (1 + exp(-x))``, computed without overflow for any ``x``.

    With ``e = exp(-|x|)`` (at most 1): ``1 / (1 + e)`` for ``x >= 0`` and
    ``e / (1 + e)`` for ``x < 0``.
    """
    xp = _forward_ns(x)
    return _sigmoid(xp, x)


def _sigmoid(xp: Any, x: Array) -> Array:
    e = xp.exp(-xp.abs(x))
    nonneg = xp.astype(x >= 0, x.dtype)
    return (nonneg + (1.0 - nonneg) * e) / (1.0 + e)


def sigmoid_backward(grad_out: Array, x: Array, out: Array | None = None) -> Array:
    """``grad_out * s * (1 - s)`` with ``s = sigmoid(x)`` (``out`` when given)."""
    xp = _backward_ns(grad_out, x, out)
    s = _sigmoid(xp, x) if out is None else out
    return grad_out * (s * (1.0 - s))


def tanh(x: Array) -> Array:
    """Hyperbolic tangent, elementwise."""
    xp = _forward_ns(x)
    return kernels_for(xp).tanh(xp, x)


def tanh_backward(grad_out: Array, x: Array, out: Array | None = None) -> Array:
    """``grad_out * (1 - t**2)`` with ``t = tanh(x)`` (``out`` when given)."""
    xp = _backward_ns(grad_out, x, out)
    kernels = kernels_for(xp)
    return kernels.tanh_backward(xp, grad_out, kernels.tanh(xp, x) if out is None else out)


# ------------------------------------------------------------------ along an axis


def softmax(x: Array, axis: int = -1) -> Array:
    """``exp(x) / sum(exp(x))`` along ``axis``, stable (the maximum is subtracted first)."""
    xp = _forward_ns(x)
    return _softmax(xp, x, _check_axis(x, axis))


def _softmax(xp: Any, x: Array, axis: int) -> Array:
    e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)


def softmax_backward(grad_out: Array, x: Array, out: Array | None = None, axis: int = -1) -> Array:
    """``s * (g - sum(g * s, axis))`` with ``s = softmax(x, axis)`` (``out`` when given)."""
    xp = _backward_ns(grad_out, x, out)
    axis = _check_axis(x, axis)
    s = _softmax(xp, x, axis) if out is None else out
    return s * (grad_out - xp.sum(grad_out * s, axis=axis, keepdims=True))


def log_softmax(x: Array, axis: int = -1) -> Array:
    """``x - log(sum(exp(x)))`` along ``axis``, stable (the maximum is subtracted first)."""
    xp = _forward_ns(x)
    return _log_softmax(xp, x, _check_axis(x, axis))


def _log_softmax(xp: Any, x: Array, axis: int) -> Array:
    shifted = x - xp.max(x, axis=axis, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))


def log_softmax_backward(
    grad_out: Array, x: Array, out: Array | None = None, axis: int = -1
) -> Array:
    """``g - exp(out) * sum(g, axis)`` with ``out = log_softmax(x, axis)``."""
    xp = _backward_ns(grad_out, x, out)
    axis = _check_axis(x, axis)
    s = _softmax(xp, x, axis) if out is None else xp.exp(out)
    return grad_out - s * xp.sum(grad_out, axis=axis, keepdims=True)


class ActivationSpec(NamedTuple):
    """One activation, as every part of xpconv names it.

    ``forward``/``backward`` are the functions; ``layer`` is the name of its layer class
    (``xpconv.Softmax``); ``onnx`` the ONNX operator; ``torch`` the ``torch.nn`` module;
    ``arguments`` the keyword arguments the layer takes, with their names in ONNX and
    PyTorch (``{"axis": ("axis", "dim")}``); ``along_axis`` whether it works along an
    axis (the others are elementwise). ``forward, backward = spec[:2]``.
    """

    forward: Callable[..., Array]
    backward: Callable[..., Array]
    layer: str
    onnx: str
    torch: str
    arguments: Mapping[str, tuple[str, str]] = MappingProxyType({})
    along_axis: bool = False


_AXIS = MappingProxyType({"axis": ("axis", "dim")})

#: Each activation's name -> its :class:`ActivationSpec`: the one table that the layers,
#: the checkpoint schema, the ONNX export and the PyTorch exchange read.
ACTIVATIONS: dict[str, ActivationSpec] = {
    "identity": ActivationSpec(identity, identity_backward, "Identity", "Identity", "Identity"),
    "relu": ActivationSpec(relu, relu_backward, "ReLU", "Relu", "ReLU"),
    "leaky_relu": ActivationSpec(
        leaky_relu,
        leaky_relu_backward,
        "LeakyReLU",
        "LeakyRelu",
        "LeakyReLU",
        MappingProxyType({"negative_slope": ("alpha", "negative_slope")}),
    ),
    "sigmoid": ActivationSpec(sigmoid, sigmoid_backward, "Sigmoid", "Sigmoid", "Sigmoid"),
    "tanh": ActivationSpec(tanh, tanh_backward, "Tanh", "Tanh", "Tanh"),
    "softmax": ActivationSpec(
        softmax, softmax_backward, "Softmax", "Softmax", "Softmax", _AXIS, along_axis=True
    ),
    "log_softmax": ActivationSpec(
        log_softmax,
        log_softmax_backward,
        "LogSoftmax",
        "LogSoftmax",
        "LogSoftmax",
        _AXIS,
        along_axis=True,
    ),
}

#: The activations that work along an axis (the others are elementwise, so they give
#: the same values on any arrangement of the same elements).
ALONG_AN_AXIS = frozenset(name for name, spec in ACTIVATIONS.items() if spec.along_axis)
