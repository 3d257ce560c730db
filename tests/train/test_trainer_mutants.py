"""What the Trainer shows and keeps, checked to the letter: the history table, the
progress bar, the non-finite-loss message, float targets, the names in data errors,
early stopping with validation, optimizer state across backends and dtypes.

Each test pins a behaviour that a small change of the trainer's code would alter
without any numerical test noticing (see tests/mutation_survivors.md).
"""

from __future__ import annotations

import math
import os
import re
import sys
import threading
import time
import warnings

import numpy as np
import pytest

import xpconv as xc
from xpconv.nn import layers as L
from xpconv.optim.optimizers import SGD, Adam
from xpconv.train.step import TrainStep
from xpconv.train.trainer import History


def _data(n: int = 40, seed: int = 3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 1, 4, 4)).astype(np.float32), rng.integers(0, 3, size=n)


def _model(**kwargs) -> xc.Sequential:
    kwargs.setdefault("seed", 0)
    return xc.Sequential([L.Flatten(), L.Dense(3)], input_shape=(1, 4, 4), **kwargs)


# ------------------------------------------------------------------ the history table


def test_history_table_is_the_documented_text() -> None:
    hist = History(
        epoch=[1, 2],
        loss=[0.5, 0.25],
        accuracy=[0.5, 0.875],
        val_loss=[None, 0.3],
        val_accuracy=[None, 0.8],
        lr=[0.1, 0.05],
        seconds=[1.0, 2.0],
        images_per_second=[1234.4, 2000.6],
        step_losses=[[0.5], [0.25]],
    )
    assert hist.table() == (
        "epoch     loss     acc  val_loss  val_acc    img/s\n"
        "    1   0.5000  50.00%                        1234\n"
        "    2   0.2500  87.50%    0.3000   80.00%     2001"
    )
    assert History().table() == "epoch     loss     acc  val_loss  val_acc    img/s"


def test_history_table_of_a_run_has_one_row_per_epoch() -> None:
    x, y = _data()
    hist = xc.Trainer(_model(), SGD(0.1), progress=False).fit(
        x, y, epochs=3, batch_size=10, validation_data=(x, y), eval_every=2
    )
    rows = hist.table().split("\n")
    assert len(rows) == 4
    for row, epoch, loss, val in zip(rows[1:], hist.epoch, hist.loss, hist.val_loss):
        assert row.startswith(f"{epoch:>5} {loss:>8.4f} ")
        assert len(row.split()) == (4 if val is None else 6)


# ------------------------------------------------------------------ the progress bar


class _Bar:
    """Records what the trainer asks of a tqdm bar."""

    made: list[_Bar] = []

    def __init__(self, **kwargs) -> None:
        self.kwargs, self.updates, self.postfixes, self.closed = kwargs, [], [], False
        _Bar.made.append(self)

    def update(self, count: int) -> None:
        self.updates.append(count)

    def set_postfix(self, **values: str) -> None:
        self.postfixes.append(values)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def bars(monkeypatch):
    tqdm_auto = pytest.importorskip("tqdm.auto")
    _Bar.made = []
    monkeypatch.setattr(tqdm_auto, "tqdm", _Bar)
    return _Bar.made


@pytest.mark.parametrize("log_every", [1, 3])
def test_progress_bar_counts_images_and_shows_the_running_loss(bars, log_every: int) -> None:
    x, y = _data(37)
    trainer = xc.Trainer(_model(), SGD(0.1), log_every=log_every)
    hist = trainer.fit(x, y, epochs=2, batch_size=10)
    assert len(bars) == 2
    for epoch, bar in enumerate(bars):
        assert bar.kwargs == dict(
            total=37, desc=f"epoch {epoch + 1}/2", unit="img", leave=True, dynamic_ncols=True
        )
        assert bar.updates == [10, 10, 10, 7] and bar.closed
        counts = np.array([10, 10, 10, 7])
        losses = np.array(hist.step_losses[epoch])
        running = np.cumsum(losses * counts) / np.cumsum(counts)
        shown = [0, 1, 2, 3] if log_every == 1 else [2, 3]
        assert [p["loss"] for p in bar.postfixes] == [f"{running[i]:.4f}" for i in shown]
        for p in bar.postfixes:
            assert re.fullmatch(r"[0-9]+", p["img_s"]), p
        assert float(bar.postfixes[-1]["loss"]) == pytest.approx(hist.loss[epoch], abs=1e-4)


def test_no_bar_without_progress_and_training_without_tqdm(bars, monkeypatch) -> None:
    x, y = _data()
    xc.Trainer(_model(), SGD(0.1), progress=False).fit(x, y, batch_size=10)
    assert bars == []
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import fails: no bar, same run
    hist = xc.Trainer(_model(), SGD(0.1), progress=True).fit(x, y, batch_size=10)
    assert bars == [] and len(hist.step_losses[0]) == 4
    again = xc.Trainer(_model(), SGD(0.1), progress=False).fit(x, y, batch_size=10)
    assert hist.step_losses == again.step_losses


# ------------------------------------------------------------------ non-finite loss


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("log_every", [1, 2, 4, 10])
@pytest.mark.parametrize("row, step", [(40, 3), (56, 4)])
def test_non_finite_loss_message_names_epoch_and_step(log_every: int, row: int, step: int) -> None:
    x, y = _data(96)
    x[row] = 3e38  # finite in float32; its logits overflow
    trainer = xc.Trainer(_model(), SGD(0.01), progress=False, log_every=log_every)
    trainer.fit(x[:16], y[:16], epochs=1, batch_size=16)  # a good first epoch
    message = (
        rf"^loss became (nan|inf|-inf) at epoch 2, step {step}; training stopped \(lower the "
        r"learning rate or check the data for NaN/inf\); checkpoints written before this "
        r"point are kept$"
    )
    with pytest.raises(xc.TrainingError, match=message):
        trainer.fit(x, y, epochs=2, batch_size=16, shuffle=False)


# ------------------------------------------------------------------ float targets


@pytest.mark.parametrize("batch_size", [7, 40])
def test_float_targets_are_batched_by_rows(batch_size: int) -> None:
    """Float targets (N, k) are taken by rows like the inputs: with a negligible rate
    the epoch's loss and accuracy equal an evaluation of the same data."""
    x, _ = _data()
    y = np.random.default_rng(5).normal(size=(40, 3)).astype(np.float32)
    model = _model(loss="mse")
    expected = model.evaluate(x, y)
    hist = xc.Trainer(model, SGD(1e-12), progress=False).fit(x, y, batch_size=batch_size)
    assert 0.0 < expected["accuracy"] < 1.0
    assert hist.loss[0] == pytest.approx(expected["loss"], rel=1e-5)
    assert hist.accuracy[0] == pytest.approx(expected["accuracy"], abs=1e-12)


# ------------------------------------------------------------------ names in errors


def test_shape_errors_name_the_argument() -> None:
    x, y = _data()
    trainer = xc.Trainer(_model(), SGD(0.1), progress=False)
    with pytest.raises(ValueError, match=r"^x: expected examples of shape \(1, 4, 4\)"):
        trainer.fit(x[:, :, :3], y)
    with pytest.raises(ValueError, match=r"^x_val: expected examples of shape \(1, 4, 4\)"):
        trainer.fit(x, y, validation_data=(x[:, :, :3], y))
    with pytest.raises(ValueError, match=r"^x_val: expected a dataset \(N, \*input_shape\)"):
        trainer.fit(x, y, validation_data=(x[0, 0, 0], y))
    with pytest.raises(TypeError, match=r"^y_val: expected an array, got None$"):
        trainer.fit(x, y, validation_data=(x, None))
    with pytest.raises(TypeError, match=r"^x: expected an array, got None$"):
        trainer.fit(None, y)
    with pytest.raises(ValueError, match=r"^validation_data: expected a pair .*, got dict$"):
        trainer.fit(x, y, validation_data={"x": x})
    assert trainer.epochs_done == 0 and trainer.history.epoch == []


# ------------------------------------------------------------------ early stopping


def test_early_stopping_on_validation_restores_the_best_epoch() -> None:
    """Patience 1, evaluation every second epoch: the run stops at the first evaluation
    that does not improve, epochs without evaluation neither count nor reset, and the
    weights of the best evaluated epoch are put back."""
    x, y = _data()
    xv, yv = _data(30, seed=4)
    snapshots = {}
    trainer = xc.Trainer(_model(), SGD(2.0, momentum=0.9), progress=False)
    hist = trainer.fit(
        x,
        y,
        epochs=60,
        batch_size=10,
        validation_data=(xv, yv),
        eval_every=2,
        early_stopping=1,
        on_epoch_end=lambda t: snapshots.update({t.epochs_done: t.model.state_dict()}),
    )
    evaluated = [(e, v) for e, v in zip(hist.epoch, hist.val_loss) if v is not None]
    assert [e for e, _ in evaluated] == list(range(2, hist.epoch[-1] + 1, 2))
    assert hist.epoch[-1] < 60 and len(evaluated) >= 2
    values = [v for _, v in evaluated]
    assert all(b < a for a, b in zip(values[:-2], values[1:-1]))  # improving until ...
    assert values[-1] >= values[-2]  # ... the first evaluation that does not
    best_epoch = evaluated[-2][0]
    for name, value in trainer.model.state_dict().items():
        np.testing.assert_array_equal(value, snapshots[best_epoch][name], err_msg=name)
    assert trainer.model.evaluate(xv, yv)["loss"] == pytest.approx(values[-2], rel=1e-6)
    assert trainer.model.training is False


def test_patience_counts_evaluations_without_improvement() -> None:
    x, y = _data()
    xv, yv = _data(30, seed=4)
    hist = xc.Trainer(_model(), SGD(2.0, momentum=0.9), progress=False).fit(
        x, y, epochs=80, batch_size=10, validation_data=(xv, yv), early_stopping=3
    )
    best, waited = float("inf"), 0
    for i, v in enumerate(hist.val_loss):
        waited = 0 if v < best else waited + 1
        best = min(best, v)
        assert (waited >= 3) == (i == len(hist.val_loss) - 1), (i, hist.val_loss)


# ------------------------------------------------------------------ optimizer state


@pytest.mark.parametrize("saved, loaded", [("float64", "float32"), ("float32", "float64")])
def test_optimizer_state_takes_the_dtype_of_the_loading_model(saved: str, loaded: str) -> None:
    """State saved from a model of one precision and loaded into a trainer of the other
    is cast to the loading model's dtype."""
    x, y = _data()
    source = xc.Trainer(_model(dtype=saved), SGD(0.1, momentum=0.9), progress=False)
    source.fit(x.astype(saved), y, epochs=1, batch_size=10)
    arrays, meta = source.state()
    assert arrays and all(a.dtype == np.dtype(saved) for a in arrays.values())
    target = xc.Trainer(_model(dtype=loaded), SGD(0.1, momentum=0.9), progress=False)
    target.load_state(arrays, meta)
    state = target.optimizer.state_arrays()
    assert sorted(state) == sorted(k[len("optimizer/") :] for k in arrays)
    for name, value in state.items():
        assert value.dtype == np.dtype(loaded), name
        np.testing.assert_allclose(value, arrays[f"optimizer/{name}"], rtol=1e-6)
    assert target.epochs_done == 1 and target.optimizer.step_count == 4
    assert target.history.loss == source.history.loss


def test_state_moved_with_the_model_is_announced_once_with_its_count() -> None:
    pytest.importorskip("array_api_strict")
    x, y = _data()
    trainer = xc.Trainer(_model(), SGD(0.1, momentum=0.9), progress=False)
    trainer.fit(x, y, epochs=1, batch_size=10)
    count = len(trainer.optimizer.state_arrays())
    assert count == 2  # the velocities of the dense weight and bias
    trainer.model.to("array_api_strict")
    message = (
        rf"^optimizer: moved {count} state array\(s\) to the model's backend "
        r"\"array_api_strict:.*\" \(the model was moved with Sequential.to\)$"
    )
    with pytest.warns(UserWarning, match=message) as record:
        trainer.fit(x, y, epochs=2, batch_size=10)
    moved = [w for w in record if "optimizer: moved" in str(w.message)]
    assert len(moved) == 1  # and it points at the caller, not inside the trainer:
    assert not moved[0].filename.endswith(os.path.join("xpconv", "trainer.py"))
    assert len(trainer.history.epoch) == 2
    with warnings.catch_warnings():  # moved once: the next fit has nothing to move
        warnings.filterwarnings("error", message="optimizer: moved")
        trainer.fit(x, y, epochs=1, batch_size=10)


# ------------------------------------------------------------------ data parallel


class _ThreadGroup:
    """``size`` ranks as threads of this process, exchanging host copies of buffers."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.slots: list[np.ndarray | None] = [None] * size
        self.barrier = threading.Barrier(size, timeout=900)
        self.wait = self.barrier.wait


class _ThreadRank(xc.parallel.Communicator):
    engine = "test"

    def __init__(self, group: _ThreadGroup, rank: int) -> None:
        super().__init__(rank, group.size)
        self.group = group

    def _exchange(self, buffer) -> list[np.ndarray]:
        from xpconv.backends.registry import backend_of

        self.group.slots[self.rank] = np.array(backend_of(buffer).to_numpy(buffer))
        self.group.wait()
        values = [np.array(v) for v in self.group.slots]
        self.group.wait()
        return values

    def _allreduce(self, buffer):
        from xpconv.backends.registry import backend_of

        values = self._exchange(buffer)
        total = values[0]
        for value in values[1:]:  # in rank order on every rank: identical sums
            total = total + value
        return backend_of(buffer).asarray(total, dtype=buffer.dtype)

    def _broadcast(self, buffer, root):
        from xpconv.backends.registry import backend_of

        return backend_of(buffer).asarray(self._exchange(buffer)[root], dtype=buffer.dtype)

    def barrier(self) -> None:
        self.group.wait()


def _ranks(size: int, lr: float = 0.2, seed: int = 0, dtype: str = "float64") -> list[xc.Trainer]:
    """One trainer per rank on one model and optimizer; ranks above 0 start from other
    weights (rank 0's are broadcast at the start)."""
    group = _ThreadGroup(size)
    trainers = []
    for rank in range(size):
        model = _model(dtype=dtype)
        if rank:
            model.load_state_dict({k: v + rank for k, v in model.state_dict().items()})
        communicator = _ThreadRank(group, rank) if size > 1 else None
        opt = SGD(lr, momentum=0.9, final_lr=0.05)
        trainer = xc.Trainer(
            model, opt, seed=seed, progress=False, log_every=2, communicator=communicator
        )
        trainer.group = group
        trainers.append(trainer)
    return trainers


def _fit_threads(trainers: list[xc.Trainer], kwargs: list[dict]) -> list[xc.Trainer]:
    """``trainer.fit(**kwargs)`` of every rank, each in its own thread."""
    errors: list[BaseException] = []

    def run(trainer: xc.Trainer, fit_kwargs: dict) -> None:
        try:
            trainer.fit(**fit_kwargs)
        except BaseException as exc:  # reported below, from the test's thread
            errors.append(exc)
            trainer.group.barrier.abort()  # the other ranks stop waiting

    threads = [threading.Thread(target=run, args=a) for a in zip(trainers, kwargs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(1800)
    if errors:  # the error itself rather than a rank's broken barrier
        raise next(
            (e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0]
        )
    return trainers


def _fit_ranks(size: int, x, y, **kwargs) -> list[xc.Trainer]:
    return _fit_threads(_ranks(size), [dict(x=x, y=y, **kwargs)] * size)


@pytest.mark.parametrize("n", [40, 41])  # 41: the last global batch is one example
def test_two_ranks_train_the_one_process_model(n: int) -> None:
    """Two ranks (threads) on shares of every global batch give the run of one process
    on the whole batch: the same weights, history, step losses and validation metrics."""
    x, y = _data(n)
    x = x.astype(np.float64)
    xv, yv = _data(15, seed=4)
    kwargs = dict(epochs=3, batch_size=10, validation_data=(xv.astype(np.float64), yv))
    (single,) = _fit_ranks(1, x, y, **kwargs)
    ranks = _fit_ranks(2, x, y, **kwargs)
    for trainer in ranks:
        for name, value in single.model.state_dict().items():
            np.testing.assert_allclose(
                trainer.model.state_dict()[name], value, rtol=1e-10, atol=1e-12, err_msg=name
            )
        got, want = trainer.history, single.history
        assert got.epoch == want.epoch == [1, 2, 3]
        np.testing.assert_allclose(got.loss, want.loss, rtol=1e-10)
        assert got.accuracy == want.accuracy
        assert [len(s) for s in got.step_losses] == [len(s) for s in want.step_losses]
        np.testing.assert_allclose(sum(got.step_losses, []), sum(want.step_losses, []), rtol=1e-10)
        np.testing.assert_allclose(got.val_loss, want.val_loss, rtol=1e-10)
        assert got.val_accuracy == want.val_accuracy
        assert got.lr == want.lr
        assert (
            trainer.optimizer.step_count
            == single.optimizer.step_count
            == 3 * (n // 10 + (n % 10 > 0))
        )


@pytest.mark.parametrize(
    "what",
    [
        "the model",
        "the optimizer",
        "the run",
        "the training images",
        "the training labels",
        "the validation images",
        "the validation labels",
    ],
)
def test_ranks_that_disagree_are_told_what_differs(what: str) -> None:
    """Every rank refuses to start when one rank differs, naming that item only."""
    x, y = _data()
    xv, yv = _data(15, seed=4)
    x, xv = x.astype(np.float64), xv.astype(np.float64)
    base = dict(x=x, y=y, epochs=1, batch_size=10, validation_data=(xv, yv))
    other = dict(base)
    trainers = _ranks(2)
    if what == "the model":
        trainers[1].model.get_config = lambda: {"other": True}
    elif what == "the optimizer":
        trainers[1].optimizer.get_config = lambda: {"other": True}
    elif what == "the run":
        other["batch_size"] = 5
    elif what == "the training images":
        other["x"] = x + 1
    elif what == "the training labels":
        other["y"] = (y + 1) % 3
    elif what == "the validation images":
        other["validation_data"] = (xv + 1, yv)
    else:
        other["validation_data"] = (xv, (yv + 1) % 3)
    message = rf"^ranks disagree on {what}( \(|\b).*\(1 rank\(s\) differ from rank 0\); every"
    with pytest.raises(xc.parallel.DistributedError, match=message) as info:
        _fit_threads(trainers, [base, other])
    assert str(info.value).count("rank(s) differ") == 1, str(info.value)  # that one only


def test_two_ranks_keep_a_float32_model_in_float32() -> None:
    """With 41 examples one rank has no work in the last global batch: its zero
    gradients and loss keep the model's dtype, and the run stays the one-process run."""
    x, y = _data(41)
    kwargs = dict(x=x, y=y, epochs=2, batch_size=10)
    (single,) = _fit_threads(_ranks(1, dtype="float32"), [kwargs])
    ranks = _fit_threads(_ranks(2, dtype="float32"), [kwargs, kwargs])
    for trainer in ranks:
        for name, value in trainer.model.state_dict().items():
            assert value.dtype == np.float32, name
            np.testing.assert_allclose(value, single.model.state_dict()[name], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(trainer.history.loss, single.history.loss, rtol=1e-5)
        assert trainer.history.accuracy == single.history.accuracy


def test_two_ranks_without_shuffling_show_one_bar(bars) -> None:
    """In order (``shuffle=False``) the ranks still give the one-process run, and only
    rank 0 shows a progress bar, counting the global batches."""
    x, y = _data(30)
    x = x.astype(np.float64)
    kwargs = dict(x=x, y=y, epochs=2, batch_size=10, shuffle=False)
    (single,) = _fit_threads(_ranks(1), [kwargs])
    assert len(bars) == 0  # progress=False there
    ranks = _ranks(2)
    for trainer in ranks:
        trainer.progress = True
    started = time.perf_counter()
    _fit_threads(ranks, [kwargs, kwargs])
    elapsed = time.perf_counter() - started
    assert [b.kwargs["desc"] for b in bars] == ["epoch 1/2", "epoch 2/2"]
    assert all(b.kwargs["total"] == 30 and b.updates == [10, 10, 10] for b in bars)
    for epoch, bar in enumerate(bars):  # log_every=2: the running loss after steps 2 and 3
        running = np.cumsum(single.history.step_losses[epoch]) / np.arange(1, 4)
        assert [p["loss"] for p in bar.postfixes] == [f"{running[i]:.4f}" for i in (1, 2)]
        assert all(int(p["img_s"]) > 0 for p in bar.postfixes) and bar.closed
    for trainer in ranks:  # each epoch's time is its own wall-clock time
        assert all(0 < seconds < elapsed for seconds in trainer.history.seconds)
    for name, value in single.model.state_dict().items():
        np.testing.assert_allclose(ranks[0].model.state_dict()[name], value, rtol=1e-10)


# ------------------------------------------------------------ smaller contracts


def test_a_replaced_model_keeps_the_gradient_hook() -> None:
    """A step built with a hook keeps it when the trainer's model is replaced."""
    trainer = xc.Trainer(_model(), SGD(0.5), progress=False)
    trainer.train_step = TrainStep(
        trainer.model, trainer.optimizer, gradient_hook=lambda g: {k: v * 0 for k, v in g.items()}
    )
    trainer.model = _model(seed=5)
    before = trainer.model.state_dict()
    trainer.fit(*_data(20), batch_size=10)
    assert trainer.train_step.model is trainer.model
    for name, value in trainer.model.state_dict().items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_batch_logs_count_seconds_since_the_epoch_started() -> None:
    seconds: list[float] = []
    hook = xc.train.callbacks.LambdaCallback(
        on_batch_end=lambda _, logs: seconds.append(logs.seconds)
    )
    trainer = xc.Trainer(_model(), SGD(0.1), progress=False, callbacks=[hook])
    started = time.perf_counter()
    trainer.fit(*_data(40), batch_size=10)
    elapsed = time.perf_counter() - started
    assert len(seconds) == 4 and seconds == sorted(seconds)
    assert 0 < seconds[0] and seconds[-1] < elapsed


def test_arrays_of_another_backend_are_refused_by_name() -> None:
    torch = pytest.importorskip("torch")
    x, y = _data(20)
    with pytest.raises(xc.backends.registry.BackendError) as info:
        xc.Trainer(_model(), SGD(0.1), progress=False).fit(torch.tensor(x), y, batch_size=10)
    assert str(info.value) == (
        "x: expected an array of backend 'numpy', got an array of backend 'torch' on device "
        "cpu; move it with Backend.asarray"
    )


def test_outputs_that_are_not_class_scores_have_no_accuracy() -> None:
    x, _ = _data(20)
    model = xc.Sequential([L.Conv2D(2, 3)], input_shape=(1, 4, 4), seed=0, loss="mse")
    targets = np.random.default_rng(0).normal(size=(20, 2, 2, 2)).astype(np.float32)
    hist = xc.Trainer(model, SGD(0.1), progress=False).fit(x, targets, batch_size=10)
    assert len(hist.accuracy) == 1 and math.isnan(hist.accuracy[0])
    assert math.isfinite(hist.loss[0])


@pytest.mark.parametrize("optimizer", [Adam(0.01), SGD(0.1, momentum=0.9)], ids=["Adam", "SGD"])
def test_a_training_file_with_another_optimizer_state_is_refused(tmp_path, optimizer) -> None:
    """Each optimizer names its state slots; a file holding another slot (the state of
    another optimizer) is refused by name, before anything is loaded."""
    from xpconv.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    trainer = xc.Trainer(_model(), optimizer, progress=False)
    trainer.fit(*_data(20), batch_size=10)
    path = tmp_path / "training.npz"
    xc.save_training(trainer, path)
    arrays, metadata = load_checkpoint(path)
    key = next(k for k in arrays if k.startswith("trainer/optimizer/dense_0.bias/"))
    arrays["trainer/optimizer/dense_0.bias/other"] = arrays.pop(key)
    save_checkpoint(path, arrays, metadata)
    kind, slots = type(optimizer).__name__, re.escape(str(sorted(optimizer.state_slots)))
    with pytest.raises(CheckpointError, match=rf"unexpected state 'other' for {kind} .*{slots}"):
        xc.load_training(path, progress=False)


def test_a_training_file_missing_a_history_list_is_refused(tmp_path) -> None:
    """A file whose history lacks a list (a damaged or hand-edited file) is refused by
    name when it is loaded, not resumed with a History that cannot record an epoch."""
    from xpconv.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    trainer = xc.Trainer(_model(), SGD(0.1), progress=False)
    trainer.fit(*_data(20), batch_size=10)
    path = tmp_path / "training.npz"
    xc.save_training(trainer, path)
    arrays, metadata = load_checkpoint(path)
    del metadata["trainer"]["history"]["val_loss"]
    save_checkpoint(path, arrays, metadata)
    with pytest.raises(CheckpointError, match=r"trainer.history: missing keys \['val_loss'\]"):
        xc.load_training(path, progress=False)


def test_feature_rows_train_a_dense_model() -> None:
    x, y = _data(20)
    model = xc.Sequential([L.Dense(3)], input_shape=(16,), seed=0)
    hist = xc.Trainer(model, SGD(0.1), progress=False).fit(x.reshape(20, 16), y, batch_size=10)
    assert len(hist.loss) == 1 and math.isfinite(hist.loss[0])


def test_two_ranks_show_the_running_loss_every_log_interval(bars) -> None:
    """Rank 0's bar shows the running loss after every ``log_every``-th step and the
    last: steps 3 and 4 of 4 at ``log_every=3``."""
    x, y = _data(40)
    x = x.astype(np.float64)
    kwargs = dict(x=x, y=y, epochs=1, batch_size=10, shuffle=False)
    (single,) = _fit_threads(_ranks(1), [kwargs])
    ranks = _ranks(2)
    for trainer in ranks:
        trainer.progress, trainer.log_every = True, 3
    _fit_threads(ranks, [kwargs, kwargs])
    (bar,) = bars
    running = np.cumsum(single.history.step_losses[0]) / np.arange(1, 5)
    assert [p["loss"] for p in bar.postfixes] == [f"{running[i]:.4f}" for i in (2, 3)]


def test_a_rank_without_validation_rows_adds_nothing() -> None:
    """One validation example for two ranks: rank 1 has none and still takes part."""
    x, y = _data(20)
    x = x.astype(np.float64)
    xv, yv = _data(1, seed=4)
    kwargs = dict(x=x, y=y, epochs=1, batch_size=10, validation_data=(xv.astype(np.float64), yv))
    (single,) = _fit_threads(_ranks(1), [kwargs])
    for trainer in _fit_threads(_ranks(2), [kwargs, kwargs]):
        np.testing.assert_allclose(trainer.history.val_loss, single.history.val_loss, rtol=1e-10)
        assert trainer.history.val_accuracy == single.history.val_accuracy
