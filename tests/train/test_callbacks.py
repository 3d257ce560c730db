"""Trainer callbacks: the order of the hooks, the built-ins, and their state saved in
training checkpoints so that a resumed run ends as an uninterrupted one."""

from __future__ import annotations

import numpy as np
import pytest

import xpconv as xc
from xpconv.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from xpconv.nn import layers as L
from xpconv.optim.optimizers import SGD
from xpconv.train import callbacks as cb


def _data(n: int = 40, seed: int = 3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 1, 4, 4)).astype(np.float32), rng.integers(0, 3, size=n)


def _model() -> xc.Sequential:
    return xc.Sequential([L.Flatten(), L.Dense(3)], input_shape=(1, 4, 4), seed=0)


class Recorder(cb.Callback):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_fit_start(self, trainer) -> None:
        self.events.append(("fit_start", trainer.run.epochs, trainer.run.steps))

    def on_epoch_start(self, trainer, epoch) -> None:
        self.events.append(("epoch_start", epoch))

    def on_batch_end(self, trainer, logs) -> None:
        self.events.append(("batch", logs.epoch, logs.step, logs.seen, logs.logged))
        self.losses = getattr(self, "losses", []) + logs.step_losses
        assert (logs.loss is None) == (not logs.logged)

    def on_epoch_end(self, trainer) -> None:
        self.events.append(("epoch_end", trainer.epochs_done, len(trainer.history.epoch)))

    def on_fit_end(self, trainer) -> None:
        self.events.append(("fit_end",))


def test_hooks_are_called_in_order_with_the_logs() -> None:
    x, y = _data(25)
    rec = Recorder()
    trainer = xc.Trainer(_model(), SGD(0.1), progress=False, log_every=2, callbacks=[rec])
    hist = trainer.fit(x, y, epochs=2, batch_size=10)
    epoch = [
        ("batch", 1, 1, 10, False),
        ("batch", 1, 2, 20, True),
        ("batch", 1, 3, 25, True),  # the last step of an epoch is always read
    ]
    second = [(e[0], 2, *e[2:]) for e in epoch]
    assert rec.events == [
        ("fit_start", 2, 3),
        ("epoch_start", 1),
        *epoch,
        ("epoch_end", 1, 1),
        ("epoch_start", 2),
        *second,
        ("epoch_end", 2, 2),
        ("fit_end",),
    ]
    assert rec.losses == hist.step_losses[0] + hist.step_losses[1]
    assert trainer.run == cb.RunInfo(2, 10, 3, 25, False)


def test_stop_training_ends_the_run_and_fit_on_epoch_end_still_works() -> None:
    x, y = _data()
    seen = []

    class StopAtTwo(cb.Callback):
        def on_epoch_end(self, trainer) -> None:
            trainer.stop_training = trainer.epochs_done == 2

    trainer = xc.Trainer(_model(), SGD(0.1), progress=False, callbacks=[StopAtTwo()])
    hist = trainer.fit(
        x, y, epochs=5, batch_size=10, on_epoch_end=lambda t: seen.append(t.epochs_done)
    )
    assert hist.epoch == [1, 2] and seen == [1, 2]  # on_epoch_end runs for the last epoch too
    # a later fit starts again (the flag is reset)
    assert trainer.fit(x, y, epochs=3, batch_size=10).epoch == [1, 2, 3]


def test_abort_hook_sees_the_error_and_the_fit_end_hook_does_not_run() -> None:
    x, y = _data()
    rec = Recorder()
    errors = []

    class Abort(cb.Callback):
        def on_batch_end(self, trainer, logs) -> None:
            if logs.epoch == 2 and logs.step == 2:
                raise KeyboardInterrupt

        def on_fit_abort(self, trainer, error) -> None:
            errors.append(type(error))

    trainer = xc.Trainer(_model(), SGD(0.1), progress=False, callbacks=[rec, Abort()])
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(x, y, epochs=3, batch_size=10)
    assert errors == [KeyboardInterrupt] and ("fit_end",) not in rec.events
    assert trainer.epochs_done == 1


def test_nan_guard_names_epoch_and_step() -> None:
    guard = cb.NaNGuard()
    logs = cb.BatchLogs(3, 7, 10, 70, 1.0, True, [0.5, float("nan"), 0.4], 0.5)
    with pytest.raises(cb.TrainingError, match=r"loss became nan at epoch 3, step 6;"):
        guard.on_batch_end(None, logs)
    guard.on_batch_end(None, cb.BatchLogs(1, 1, 1, 1, 1.0))  # nothing read: nothing to check
    assert xc.TrainingError is cb.TrainingError


def test_checkpoint_and_epoch_logger(tmp_path, capsys) -> None:
    x, y = _data()
    path = tmp_path / "training.npz"
    written = []

    class Watch(cb.Callback):
        def on_epoch_end(self, trainer) -> None:
            written.append(load_checkpoint(path)[1]["trainer"]["epochs_done"])

    trainer = xc.Trainer(
        _model(),
        SGD(0.1),
        progress=False,
        callbacks=[cb.Checkpoint(path, extra={"run": {"note": 1}}), cb.EpochLogger(), Watch()],
    )
    hist = trainer.fit(x, y, epochs=2, batch_size=10, validation_data=(x, y))
    assert written == [1, 2]
    assert load_checkpoint(path)[1]["run"] == {"note": 1}
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3  # the first epoch's line, what the figures mean, the second's
    assert "means over this epoch's training batches" in lines[1] and "test loss" in lines[1]
    assert lines[2] == (
        f"epoch 2/2: loss {hist.loss[1]:.4f} acc {hist.accuracy[1]:.2%}, test loss "
        f"{hist.val_loss[1]:.4f} acc {hist.val_accuracy[1]:.2%} ({hist.seconds[1]:.1f} s, "
        f"{hist.images_per_second[1]:.0f} img/s)"
    )
    every = cb.Checkpoint(tmp_path / "b.npz", every=2)
    xc.Trainer(_model(), SGD(0.1), progress=False, callbacks=[every]).fit(x, y, epochs=1)
    assert (tmp_path / "b.npz").exists()  # the last epoch is always saved


def test_bad_callbacks_are_refused() -> None:
    with pytest.raises(TypeError, match=r"callbacks\[1\]: expected a Callback, got function"):
        xc.Trainer(_model(), SGD(0.1), callbacks=[cb.NaNGuard(), lambda t: None])
    with pytest.raises(TypeError, match="callbacks: expected a list of Callback, got NaNGuard"):
        xc.Trainer(_model(), SGD(0.1), callbacks=cb.NaNGuard())
    with pytest.raises(ValueError, match="patience: expected a positive int, got 0"):
        cb.EarlyStopping(0)
    with pytest.raises(ValueError, match="every: expected a positive int, got 0"):
        cb.Checkpoint("x.npz", every=0)
    with pytest.raises(TypeError, match="on_epoch_end: expected a callable, got int"):
        cb.LambdaCallback(on_epoch_end=3)
    x, y = _data()
    trainer = xc.Trainer(_model(), SGD(0.1), progress=False, callbacks=[cb.EarlyStopping(2)])
    with pytest.raises(ValueError, match=r"one callback per state key.*'early_stopping'"):
        trainer.fit(x, y, early_stopping=3)


def _early_stopped_run(tmp_path, interrupt_when_waiting: bool):
    """A run with early stopping on noisy validation data; optionally interrupted (by
    Ctrl-C) after the first epoch whose checkpoint records a wait, then resumed."""
    x, y = _data(60, seed=5)
    xv, yv = _data(30, seed=6)
    tmp_path.mkdir()
    path = tmp_path / "training.npz"

    class Interrupt(cb.Callback):
        def on_epoch_end(self, trainer) -> None:
            state = load_checkpoint(path)[1]["trainer"]["callbacks"]["early_stopping"]
            if state["waited"] >= 1:
                raise KeyboardInterrupt

    callbacks = [cb.Checkpoint(path)] + ([Interrupt()] if interrupt_when_waiting else [])
    trainer = xc.Trainer(
        _model(), SGD(0.8, momentum=0.9), seed=1, progress=False, callbacks=callbacks
    )
    fit = dict(epochs=40, batch_size=15, validation_data=(xv, yv), early_stopping=3)
    if not interrupt_when_waiting:
        return trainer.fit(x, y, **fit), trainer.model.state_dict(), None
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(x, y, **fit)
    stopped_at = trainer.epochs_done
    resumed = xc.load_training(path, progress=False)
    return resumed.fit(x, y, **fit), resumed.model.state_dict(), stopped_at


def test_early_stopping_state_survives_a_resume(tmp_path) -> None:
    whole, whole_weights, _ = _early_stopped_run(tmp_path / "a", False)
    assert len(whole.epoch) < 40  # early stopping ended it
    resumed, resumed_weights, stopped_at = _early_stopped_run(tmp_path / "b", True)
    assert 1 < stopped_at < len(whole.epoch)  # interrupted while waiting
    assert resumed.epoch == whole.epoch and resumed.val_loss == whole.val_loss
    assert resumed.loss == whole.loss
    for name, value in whole_weights.items():  # the best epoch's weights, put back
        np.testing.assert_array_equal(resumed_weights[name], value)
    best = int(np.argmin(whole.val_loss))
    assert len(whole.epoch) - 1 - best == 3


def test_callback_state_in_the_checkpoint_is_validated(tmp_path) -> None:
    x, y = _data()
    path = tmp_path / "training.npz"
    trainer = xc.Trainer(_model(), SGD(0.1), progress=False)
    trainer.fit(x, y, epochs=2, batch_size=10, early_stopping=5)
    xc.save_training(trainer, path)
    arrays, meta = load_checkpoint(path)
    state = meta["trainer"]["callbacks"]["early_stopping"]
    assert state["waited"] in (0, 1) and isinstance(state["best"], float)
    assert "trainer/callback/early_stopping/weights/1.weight" in arrays or any(
        k.startswith("trainer/callback/early_stopping/weights/") for k in arrays
    )
    assert xc.load_training(path).fit(x, y, epochs=2).epoch == [1, 2]  # nothing to do
    bad = tmp_path / "bad.npz"
    meta["trainer"]["callbacks"]["early_stopping"]["waited"] = {"x": 1}
    save_checkpoint(bad, arrays, meta)
    with pytest.raises(CheckpointError, match=r"trainer\.callbacks\.early_stopping\.waited"):
        xc.load_training(bad)
    meta["trainer"]["callbacks"] = {}
    save_checkpoint(bad, arrays, meta)
    with pytest.raises(CheckpointError, match=r"trainer/callback/early_stopping/weights"):
        xc.load_training(bad)


def test_no_stateful_callback_leaves_the_checkpoint_as_before(tmp_path) -> None:
    x, y = _data()
    trainer = xc.Trainer(_model(), SGD(0.1), progress=False)
    trainer.fit(x, y, epochs=1, batch_size=10)
    arrays, meta = trainer.state()
    assert "callbacks" not in meta and not any(k.startswith("callback/") for k in arrays)


def test_progress_bar_closes_each_epoch(capsys) -> None:
    pytest.importorskip("tqdm")
    x, y = _data(30)
    bar = cb.ProgressBar()
    xc.Trainer(_model(), SGD(0.1), progress=False, callbacks=[bar]).fit(
        x, y, epochs=2, batch_size=10
    )
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err and "30/30" in err
    assert bar._bar is None
