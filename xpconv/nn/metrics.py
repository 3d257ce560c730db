"""Metrics over batches: the mean loss and the accuracy, summed on the device and read
back once.

Accuracy is counted by :func:`xpconv.ops.targets.count_correct`, the one
definition for integer labels and for one-hot or probability rows; it is NaN where the
outputs are not (N, K) class scores.
"""

from __future__ import annotations

from typing import Any

from xpconv.ops.targets import count_correct

Array = Any

__all__ = ["MetricTotals", "accuracy"]


def accuracy(xp: Any, outputs: Array, targets: Array) -> float:
    """Fraction of rows of ``outputs`` (N, K) whose largest score is the target class
    (reads one number back); NaN where the outputs are not (N, K)."""
    hits = count_correct(xp, outputs, targets)
    return float("nan") if hits is None else int(hits) / int(outputs.shape[0])


class MetricTotals:
    """Running sums of the loss and of the correct predictions over batches.

    ``add`` keeps everything on the device (no sync); ``result`` reads the sums once.
    """

    def __init__(self, xp: Any) -> None:
        self.xp = xp
        self.count = 0
        self.loss_sum: Any = 0.0
        self.correct: Any = 0

    def add(self, loss: Array, outputs: Array, targets: Array) -> None:
        """One batch: its mean ``loss`` (0-d), ``outputs`` (n, ...) and ``targets``."""
        n = int(outputs.shape[0])
        self.loss_sum = self.loss_sum + loss * n
        hits = count_correct(self.xp, outputs, targets)
        self.correct = None if hits is None or self.correct is None else self.correct + hits
        self.count += n

    def result(self) -> dict[str, float]:
        """``{"loss": mean loss, "accuracy": fraction correct (NaN without classes)}``."""
        if self.count == 0:
            raise ValueError("metrics: expected at least one batch, got none")
        accuracy = float("nan") if self.correct is None else int(self.correct) / self.count
        return {"loss": float(self.loss_sum) / self.count, "accuracy": accuracy}
