"""Losses with mean reduction, returned as 0-d arrays, and their gradients.

- ``softmax_cross_entropy``: logits (N, K) and labels, either integer class indices
  (N,) or floating rows (N, K) (one-hot or probabilities), as
  ``torch.nn.functional.cross_entropy``. Computed through a stable log-softmax, so
  logits of any finite magnitude give a finite loss and gradient.
- ``mse``: mean of the squared differences over all elements, as
  ``torch.nn.functional.mse_loss``.

Each backward takes ``grad``, the gradient of the final objective with respect to the
loss (1.0 when the loss is the objective): a Python number or a 0-d floating array.
The loss does not keep the device in sync; reading it with ``float(loss)`` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import array_api_compat
import array_api_extra as xpx

from xpconv.ops.activation import _log_softmax, _softmax
from xpconv.ops.checks import check_float, check_rank, namespace
from xpconv.ops.targets import check_targets

Array = Any

__all__ = [
    "CrossEntropySaved",
    "mse",
    "mse_backward",
    "softmax_cross_entropy",
    "softmax_cross_entropy_backward",
    "softmax_cross_entropy_forward",
]


def _targets(
    logits: Array, labels: Array, *, check_range: bool = True, grad: Any = None
) -> tuple[Any, Array, bool]:
    """Validate; returns (xp, targets (N, K) of the logits' dtype, labels were indices).

    ``check_range=False`` skips the class-range check of integer labels, which reads
    the labels back from the device: for callers that validated them once already.
    ``grad``, when an array, joins the one namespace lookup.
    """
    xp = namespace(logits=logits, labels=labels, grad=_array_or_none(grad))
    check_rank(logits, "logits", 2, "(N, K)")
    check_float(xp, logits=logits)
    n, k = (int(v) for v in logits.shape)
    if n < 1 or k < 1:
        raise ValueError(f"logits: expected a non-empty (N, K) array, got shape {(n, k)}")
    indices = check_targets(xp, labels, n, (k,), name="labels", check_range=check_range)
    if indices:
        return xp, xpx.one_hot(labels, k, dtype=logits.dtype, xp=xp), True
    check_float(xp, logits=logits, labels=labels)
    return xp, labels, False


def _array_or_none(grad: Any) -> Any:
    """``grad`` when it is an array (to check its backend with the others), else None."""
    return grad if array_api_compat.is_array_api_obj(grad) else None


def _zero_d(xp: Any, value: Any, like: Array) -> Array:
    """A 0-d array (NumPy reductions return scalars) on ``like``'s device."""
    return xp.asarray(value, device=array_api_compat.device(like))


def _grad_scale(xp: Any, grad: Any, like: Array) -> Any:
    """``grad`` as a Python float or a 0-d array of ``like``'s dtype; an array ``grad``
    was checked against ``like``'s backend by the caller's namespace lookup."""
    if isinstance(grad, bool):
        raise TypeError(f"grad: expected a number or a 0-d floating array, got {grad!r}")
    if isinstance(grad, (int, float)):
        return float(grad)
    if not array_api_compat.is_array_api_obj(grad):
        namespace(grad=grad)  # raises: not an array
    if grad.ndim != 0:
        raise ValueError(f"grad: expected a number or a 0-d array, got shape {tuple(grad.shape)}")
    if not xp.isdtype(grad.dtype, "real floating"):
        raise TypeError(f"grad: expected a floating dtype, got {grad.dtype}")
    return grad if grad.dtype == like.dtype else xp.astype(grad, like.dtype)


def softmax_cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean cross-entropy of ``softmax(logits)`` against ``labels``.

    Args:
        logits: unnormalised scores (N, K), float32 or float64.
        labels: integer class indices (N,) in [0, K), or floating (N, K) rows of the
            logits' dtype (one-hot or class probabilities).

    Returns:
        0-d array ``-sum(labels_onehot * log_softmax(logits)) / N``.
    """
    xp, targets, _ = _targets(logits, labels)
    return cross_entropy_from_log_softmax(xp, _log_softmax(xp, logits, 1), targets)


def cross_entropy_from_log_softmax(xp: Any, log_probs: Array, targets: Array) -> Array:
    """Unchecked: mean of ``-sum(targets * log_probs)`` over the N rows, a 0-d array."""
    n = log_probs.shape[0]
    return _zero_d(xp, -xp.sum(targets * log_probs) / n, log_probs)


def cross_entropy_gradient(
    xp: Any, probs: Array, targets: Array, indices: bool, scale: Any
) -> Array:
    """Unchecked: the logits' gradient from ``probs = softmax(logits)`` (N, K)."""
    if not indices:  # rows that do not sum to one (soft labels) weight the softmax
        probs = probs * xp.sum(targets, axis=1, keepdims=True)
    return (probs - targets) / probs.shape[0] * scale


def softmax_cross_entropy_backward(
    logits: Array | CrossEntropySaved, labels: Array | None = None, grad: Any = 1.0
) -> Array:
    """Gradient of :func:`softmax_cross_entropy` with respect to the logits.

    Args:
        logits, labels: as given to :func:`softmax_cross_entropy`; or ``logits`` the
            :class:`CrossEntropySaved` that :func:`softmax_cross_entropy_forward`
            returned, without ``labels`` (the softmax is then ``exp(log_probs)``).
        grad: gradient with respect to the loss, a number or a 0-d array (default 1).

    Returns:
        (N, K): ``(softmax(logits) * sum(t, axis=1) - t) / N * grad`` with ``t`` the
        one-hot or floating labels; ``(softmax(logits) - t) / N * grad`` when each row
        of ``t`` sums to one.
    """
    if isinstance(logits, CrossEntropySaved):
        if labels is not None:
            raise TypeError(
                "labels: not read with the CrossEntropySaved of softmax_cross_entropy_forward, "
                f"got {type(labels).__name__}"
            )
        return _backward_from_saved(logits, grad)
    if labels is None:
        raise TypeError(
            "labels: expected class indices or float targets with logits (or logits the "
            "saved state that softmax_cross_entropy_forward returned), got None"
        )
    xp, targets, indices = _targets(logits, labels, grad=grad)
    scale = _grad_scale(xp, grad, logits)
    return cross_entropy_gradient(xp, _softmax(xp, logits, 1), targets, indices, scale)


@dataclass(frozen=True)
class CrossEntropySaved:
    """What :func:`softmax_cross_entropy_forward` keeps for the backward pass; opaque.

    ``log_probs`` (N, K) is the log-softmax of the logits, ``targets`` (N, K) the
    one-hot or floating labels, ``indices`` whether the labels were class indices.
    """

    xp: Any
    log_probs: Array
    targets: Array
    indices: bool


def softmax_cross_entropy_forward(
    logits: Array, labels: Array, *, check_range: bool = True
) -> tuple[Array, CrossEntropySaved]:
    """:func:`softmax_cross_entropy` that also returns what the backward pass needs.

    Args:
        logits, labels: as :func:`softmax_cross_entropy`.
        check_range: check integer labels against [0, K), which reads two numbers
            back from the device; ``False`` for labels checked before (a training
            step, whose labels the model checked where they came in).

    Returns:
        ``(loss, saved)``: the 0-d loss and the opaque :class:`CrossEntropySaved` for
        :func:`softmax_cross_entropy_backward`.
    """
    xp, targets, indices = _targets(logits, labels, check_range=check_range)
    log_probs = _log_softmax(xp, logits, 1)
    loss = cross_entropy_from_log_softmax(xp, log_probs, targets)
    return loss, CrossEntropySaved(xp, log_probs, targets, indices)


def _backward_from_saved(saved: CrossEntropySaved, grad: Any) -> Array:
    xp, log_probs = saved.xp, saved.log_probs
    if array_api_compat.is_array_api_obj(grad):
        namespace(logits=log_probs, grad=grad)  # the only lookup: the forward found xp
    scale = _grad_scale(xp, grad, log_probs)
    return cross_entropy_gradient(xp, xp.exp(log_probs), saved.targets, saved.indices, scale)


def _check_mse(pred: Array, target: Array, grad: Any = None) -> Any:
    xp = namespace(pred=pred, target=target, grad=_array_or_none(grad))  # once per call
    check_float(xp, pred=pred, target=target)
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(
            f"target: expected the shape of pred {tuple(pred.shape)}, got {tuple(target.shape)}"
        )
    if math.prod(pred.shape) == 0:
        raise ValueError(f"pred: expected a non-empty array, got shape {tuple(pred.shape)}")
    return xp


def mse(pred: Array, target: Array) -> Array:
    """Mean squared error over all elements: 0-d ``mean((pred - target) ** 2)``.

    ``pred`` and ``target`` have one shape and one floating dtype.
    """
    xp = _check_mse(pred, target)
    diff = pred - target
    return _zero_d(xp, xp.sum(diff * diff) / math.prod(pred.shape), pred)


def mse_backward(pred: Array, target: Array, grad: Any = 1.0) -> Array:
    """Gradient of :func:`mse` with respect to ``pred``: ``2 (pred - target) / size * grad``."""
    xp = _check_mse(pred, target, grad)
    scale = _grad_scale(xp, grad, pred)
    return (pred - target) * (2.0 / math.prod(pred.shape)) * scale
