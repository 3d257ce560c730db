"""Accuracy and the running metric sums (``xpconv.nn.metrics``), on every backend."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from xpconv.nn.metrics import MetricTotals, accuracy

SCORES = np.array([[0.1, 0.9, 0.0], [2.0, 1.0, 0.5], [0.2, 0.3, 0.4], [5.0, 0.0, 1.0]])


def test_accuracy_of_labels_and_of_one_hot_rows(case: Any) -> None:
    outputs = case.asarray(SCORES)
    labels = case.asarray(np.array([1, 0, 0, 2]))  # two of four correct
    assert accuracy(case.xp, outputs, labels) == 0.5
    one_hot = case.asarray(np.eye(3)[[1, 0, 2, 0]])  # all correct
    assert accuracy(case.xp, outputs, one_hot) == 1.0


def test_accuracy_of_outputs_that_are_not_class_scores_is_nan(case: Any) -> None:
    outputs = case.asarray(np.zeros((4, 3, 2)))
    assert math.isnan(accuracy(case.xp, outputs, case.asarray(np.zeros((4, 3, 2)))))


def test_totals_weigh_each_batch_by_its_examples(case: Any) -> None:
    totals = MetricTotals(case.xp)
    labels = np.array([1, 0, 0, 2])
    totals.add(case.asarray(np.asarray(2.0)), case.asarray(SCORES[:3]), case.asarray(labels[:3]))
    totals.add(case.asarray(np.asarray(6.0)), case.asarray(SCORES[3:]), case.asarray(labels[3:]))
    result = totals.result()
    assert result["loss"] == pytest.approx((2.0 * 3 + 6.0 * 1) / 4)
    assert result["accuracy"] == 0.5
    assert totals.count == 4


def test_totals_without_class_scores_give_a_nan_accuracy_and_keep_the_loss(case: Any) -> None:
    totals = MetricTotals(case.xp)
    totals.add(case.asarray(np.asarray(1.5)), case.asarray(SCORES), case.asarray(SCORES))
    totals.add(
        case.asarray(np.asarray(0.5)),
        case.asarray(np.zeros((2, 3, 1))),
        case.asarray(np.zeros((2, 3, 1))),
    )
    totals.add(case.asarray(np.asarray(1.0)), case.asarray(SCORES), case.asarray(SCORES))
    result = totals.result()
    assert math.isnan(result["accuracy"])  # one batch without classes: no accuracy at all
    assert result["loss"] == pytest.approx((1.5 * 4 + 0.5 * 2 + 1.0 * 4) / 10)


def test_totals_of_no_batch_are_refused() -> None:
    with pytest.raises(ValueError, match="^metrics: expected at least one batch, got none$"):
        MetricTotals(np).result()
