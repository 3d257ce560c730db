"""Loss objects: a forward that returns a 0-d array and a backward that returns the
gradient with respect to the predictions, both from the functional ops."""

from __future__ import annotations

from typing import Any

from xpconv import ops as F

Array = Any

__all__ = ["LOSSES", "Loss", "MeanSquaredError", "SoftmaxCrossEntropy", "get_loss"]


class Loss:
    """``forward(pred, target)`` -> 0-d loss; ``backward()`` -> d loss / d pred."""

    name = "loss"
    _saved: Any = None

    def forward(self, pred: Array, target: Array) -> Array:
        self._saved = (pred, target)
        return self._forward(pred, target)

    def backward(self) -> Array:
        pred, target = self._saved
        self._saved = None
        return self._backward(pred, target)

    def _forward(self, pred: Array, target: Array) -> Array:
        raise NotImplementedError

    def _backward(self, pred: Array, target: Array) -> Array:
        raise NotImplementedError


class SoftmaxCrossEntropy(Loss):
    """Mean cross-entropy of softmax(logits (N, K)) against integer labels (N,) or
    one-hot/probability rows (N, K); gradient (softmax - onehot) / N.

    The labels' class range is checked where they enter the model
    (:meth:`~xpconv.nn.sequential.Sequential.as_target`), so a training step reads nothing
    back from the device; the one-hot targets and log-softmax of the forward pass are
    reused by the backward pass.
    """

    name = "softmax_cross_entropy"

    def forward(self, pred: Array, target: Array) -> Array:
        loss, self._saved = F.softmax_cross_entropy_forward(pred, target, check_range=False)
        return loss

    def backward(self) -> Array:
        saved, self._saved = self._saved, None
        return F.softmax_cross_entropy_backward(saved)


class MeanSquaredError(Loss):
    """Mean of (pred - target)^2 over all elements."""

    name = "mse"

    def _forward(self, pred: Array, target: Array) -> Array:
        return F.mse(pred, target)

    def _backward(self, pred: Array, target: Array) -> Array:
        return F.mse_backward(pred, target)


LOSSES: dict[str, type[Loss]] = {
    "softmax_cross_entropy": SoftmaxCrossEntropy,
    "cross_entropy": SoftmaxCrossEntropy,
    "mse": MeanSquaredError,
}


def get_loss(loss: str | Loss) -> Loss:
    """A loss by name (see ``LOSSES``) or a ``Loss`` passed through."""
    if isinstance(loss, Loss):
        return loss
    if loss not in LOSSES:
        raise ValueError(f"loss: expected one of {sorted(LOSSES)}, got {loss!r}")
    return LOSSES[loss]()
