"""The Trainer's documented defaults, when it evaluates, what it records, and the
errors naming its arguments (kills mutants the numerical tests cannot see)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import xpconv as xc
from xpconv.nn import layers as L
from xpconv.optim.optimizers import SGD


def _data(n: int = 40):
    rng = np.random.default_rng(3)
    return rng.normal(size=(n, 1, 4, 4)).astype(np.float32), rng.integers(0, 3, size=n)


def _model() -> xc.Sequential:
    return xc.Sequential([L.Flatten(), L.Dense(3)], input_shape=(1, 4, 4), seed=0)


def test_defaults() -> None:
    trainer = xc.Trainer(_model(), SGD(0.1))
    assert (trainer.seed, trainer.progress, trainer.log_every) == (0, True, 50)
    assert trainer.rng.integers(1 << 30) == np.random.default_rng([0, 2]).integers(1 << 30)
    x, y = _data(65)
    trainer.progress = False
    hist = trainer.fit(x, y)  # one epoch of batches of 32: 3 steps (33 would give 2)
    assert hist.epoch == [1] and [len(s) for s in hist.step_losses] == [3]


def test_evaluation_every_third_epoch_and_at_the_end() -> None:
    x, y = _data()
    hist = xc.Trainer(_model(), SGD(0.1), progress=False).fit(
        x, y, epochs=4, batch_size=10, validation_data=(x, y), eval_every=3
    )
    assert [v is not None for v in hist.val_loss] == [False, False, True, True]
    assert [v is not None for v in hist.val_accuracy] == [False, False, True, True]


def test_history_records_time_and_throughput() -> None:
    x, y = _data()
    hist = xc.Trainer(_model(), SGD(0.1), progress=False).fit(x, y, epochs=2, batch_size=10)
    for seconds, rate in zip(hist.seconds, hist.images_per_second):
        assert isinstance(seconds, float) and 0 < seconds < 60
        assert math.isfinite(rate) and rate == pytest.approx(40 / seconds)
    assert [len(s) for s in hist.step_losses] == [4, 4]


def test_early_stopping_without_validation_watches_the_training_loss() -> None:
    """No validation data: the training loss is monitored, and with ``restore_best=False``
    the last weights stay."""
    x, y = _data()
    snapshots = []
    trainer = xc.Trainer(_model(), SGD(2.0, momentum=0.9), progress=False)
    hist = trainer.fit(
        x,
        y,
        epochs=40,
        batch_size=10,
        early_stopping=1,
        restore_best=False,
        on_epoch_end=lambda t: snapshots.append(t.model.state_dict()),
    )
    assert len(hist.epoch) < 40 and hist.loss[-1] >= min(hist.loss[:-1])
    for name, value in trainer.model.state_dict().items():
        np.testing.assert_array_equal(value, snapshots[-1][name])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(epochs=0), r"epochs: expected a positive int, got 0"),
        (dict(batch_size=0), r"batch_size: expected a positive int, got 0"),
        (dict(eval_every=0), r"eval_every: expected a positive int, got 0"),
        (dict(early_stopping=0), r"early_stopping: expected a positive int, got 0"),
        (
            dict(validation_data=(1, 2, 3)),
            r"^validation_data: expected a pair \(x_val, y_val\), got tuple$",
        ),
    ],
)
def test_fit_argument_errors(kwargs: dict, message: str) -> None:
    x, y = _data()
    with pytest.raises(ValueError, match=message):
        xc.Trainer(_model(), SGD(0.1), progress=False).fit(x, y, **kwargs)


def test_constructor_and_data_errors() -> None:
    with pytest.raises(TypeError, match=r"^model: expected a Sequential, got list$"):
        xc.Trainer([], SGD(0.1))
    with pytest.raises(TypeError, match=r"^optimizer: expected an Optimizer, got str$"):
        xc.Trainer(_model(), "sgd")
    with pytest.raises(ValueError, match=r"^log_every: expected a positive int, got 0$"):
        xc.Trainer(_model(), SGD(0.1), log_every=0)
    x, y = _data()
    trainer = xc.Trainer(_model(), SGD(0.1), progress=False)
    with pytest.raises(ValueError, match=r"^x: expected a non-empty dataset, got 0 examples$"):
        trainer.fit(x[:0], y[:0])
    with pytest.raises(ValueError, match=r"x_val: expected a non-empty dataset, got 0"):
        trainer.fit(x, y, validation_data=(x[:0], y[:0]))
    with pytest.raises(ValueError, match=r"^y_val"):
        trainer.fit(x, y, validation_data=(x, y[:5]))
    hist = trainer.fit(x[:1], y[:1], epochs=1, batch_size=4)  # one example is a dataset
    assert hist.epoch == [1]
    hist = trainer.fit(list(x[:3]), list(y[:3]), epochs=2, batch_size=4)  # sequences too
    assert hist.epoch == [1, 2]


@pytest.mark.parametrize("batch_size", [7, 40])
def test_epoch_metrics_cover_every_example_once(batch_size: int) -> None:
    """With a negligible rate the weights stay put, so the epoch's training loss and
    accuracy must equal an evaluation of the same data: every example counted once."""
    x, y = _data()
    model = _model()
    expected = model.evaluate(x, y)
    hist = xc.Trainer(model, SGD(1e-12), progress=False).fit(x, y, batch_size=batch_size)
    assert 0.0 < expected["accuracy"] < 1.0
    assert hist.accuracy[0] == pytest.approx(expected["accuracy"], abs=1e-12)
    assert hist.loss[0] == pytest.approx(expected["loss"], rel=1e-5)
    assert sum(len(s) for s in hist.step_losses) == math.ceil(40 / batch_size)
