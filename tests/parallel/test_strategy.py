"""The Trainer's one epoch loop and its distribution strategies, in one process: the
hooks a strategy offers, synchronised batch norm over a communicator of one rank,
and the check of the batches against batch norm before training (``drop_last``)."""

from __future__ import annotations

import numpy as np
import pytest

import xpconv as xc
from xpconv.parallel import Communicator, SingleProcessCommunicator
from xpconv.parallel.data_parallel import DataParallel, SyncStats
from xpconv.parallel.strategy import SingleProcess, Strategy, batch_norm_layers
from xpconv.train.checkpoints import validate_training


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(n, 1, 28, 28)), rng.integers(0, 10, size=n)


def _lenet(seed: int = 3) -> xc.Sequential:
    return xc.models.zoo.lenet(dtype="float64", seed=seed)


class Recording(Strategy):
    """One process, recording every hook the loop calls."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def rows(self, count):
        self.calls.append(("rows", count))
        return 0, count

    def begin_step(self, model, examples, count):
        self.calls.append(("begin_step", examples, count))

    def end_step(self, model):
        self.calls.append(("end_step",))

    def sum(self, values):
        self.calls.append(("sum", int(values.shape[0])))
        return values

    def end_epoch(self, model):
        self.calls.append(("end_epoch",))

    def finish(self, model):
        self.calls.append(("finish",))


def test_the_loop_calls_the_strategy_hooks_in_order() -> None:
    x, y = _data(10)
    strategy = Recording()
    trainer = xc.Trainer(_lenet(), xc.SGD(0.1), progress=False, strategy=strategy, log_every=2)
    trainer.fit(x, y, batch_size=4)  # batches of 4, 4 and 2
    step = lambda count: [("rows", count), ("begin_step", count, count), ("end_step",)]  # noqa: E731
    expected = [*step(4), *step(4), ("sum", 3), *step(2), ("sum", 2), ("end_epoch",), ("finish",)]
    assert strategy.calls == expected  # the sums: two losses + hits, one loss + hits


def test_single_process_hooks_are_the_identity() -> None:
    s = SingleProcess()
    assert not s.distributed and s.gradient_hook is None and s.rows(7) == (0, 7)
    values = np.arange(3.0)
    assert s.sum(values) is values and s.record() == {}


def test_data_parallel_sets_and_clears_the_reducer_of_every_batch_norm() -> None:
    model = xc.models.zoo.resnet(blocks=1, widths=(4, 8, 8), dtype="float64", seed=1)
    layers = batch_norm_layers(model)
    assert len(layers) == 9  # stem, 2 per block (3 blocks), and the two strided shortcuts
    strategy = DataParallel(SingleProcessCommunicator())
    strategy.start(model, xc.SGD(0.1), {})
    assert all(layer.stats_reducer is strategy.reducer for layer in layers)
    strategy.finish(model)
    assert all(layer.stats_reducer is None for layer in layers)
    off = DataParallel(SingleProcessCommunicator(), sync_batch_norm=False)
    off.start(model, xc.SGD(0.1), {})
    assert all(layer.stats_reducer is None for layer in layers)
    assert off.record() == {"sync_batch_norm": False}


def test_data_parallel_step_weights() -> None:
    strategy = DataParallel(SingleProcessCommunicator())
    assert strategy.rows(5) == (0, 5) and strategy.gradient_hook is strategy.averager
    strategy.begin_step(None, 3, 12)
    assert strategy.averager.examples == 3
    assert strategy.reducer.fill == 1.0 and strategy.reducer.share == 0.25
    strategy.begin_step(_built_lenet(), 0, 12)  # a stand-in row counts for nothing
    assert strategy.reducer.fill == 0.0 and strategy.reducer.share == 0.0


def _built_lenet() -> xc.Sequential:
    model = _lenet()
    return model


def test_sync_stats_of_one_rank_inside_a_compiled_jax_step() -> None:
    """On JAX the reducer's all-reduce is a host callback, so it runs inside jax.jit."""
    jax = pytest.importorskip("jax")
    reducer = SyncStats(SingleProcessCommunicator())
    stats = jax.numpy.arange(5.0)
    gathered = jax.jit(reducer.gather)(stats)
    assert gathered.shape == (1, 5)
    np.testing.assert_array_equal(np.asarray(gathered), np.arange(5.0)[None, :])
    reducer.share = 0.5
    np.testing.assert_allclose(np.asarray(jax.jit(reducer.backward)(stats)), np.arange(5.0))
    assert reducer.calls == 2


def test_sync_stats_of_one_rank() -> None:
    reducer = SyncStats(SingleProcessCommunicator())
    stats = np.arange(5.0)
    np.testing.assert_array_equal(reducer.gather(stats), stats[None, :])
    reducer.share = 0.5
    np.testing.assert_allclose(reducer.backward(stats), stats)
    reducer.share, reducer.fill = 0.0, 0.0
    np.testing.assert_array_equal(reducer.backward(stats), np.zeros(5))
    np.testing.assert_array_equal(reducer.gather(stats), np.zeros((1, 5)))
    assert reducer.calls == 4


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_synchronised_batch_norm_of_one_rank_trains_the_one_process_model(backend: str) -> None:
    """The synchronised path (statistics combined from the gathered parts, backward
    sums through the reducer) on one rank equals the ordinary batch norm."""
    pytest.importorskip(backend)
    x, y = _data(23)
    models = []
    for strategy in (None, DataParallel(SingleProcessCommunicator())):
        model = xc.models.zoo.lenet(dtype="float64", seed=3, backend=backend)
        xc.Trainer(model, xc.SGD(0.1, momentum=0.9), progress=False, strategy=strategy).fit(
            x, y, batch_size=5, epochs=2
        )
        models.append(model.state_dict())
    for name, value in models[0].items():
        scale = max(float(np.max(np.abs(value))), 1e-300)
        assert np.max(np.abs(models[1][name] - value)) <= 1e-12 * scale, name


class _RankZeroOfTwo(Communicator):
    """Rank 0 of a simulated pair: an all-reduce adds the peer's ``theirs`` (host)."""

    def __init__(self, theirs: np.ndarray) -> None:
        super().__init__(0, 2)
        self.theirs = theirs

    def _allreduce(self, buffer):
        return buffer + self.theirs

    def _broadcast(self, buffer, root):
        return buffer


def test_per_rank_running_statistics_become_their_mean_over_the_ranks() -> None:
    """With per-rank statistics each rank's running statistics drift apart; the end of
    an epoch replaces them by their mean (one all-reduce), so every rank holds, and
    saves, the same model. Synchronised ones are equal already: nothing is sent."""
    model = _built_lenet()
    mine = {k: np.array(v) for k, v in model.buffers().items()}
    rng = np.random.default_rng(5)
    theirs = {k: rng.uniform(0.5, 2.0, size=v.shape) for k, v in mine.items()}
    comm = _RankZeroOfTwo(np.concatenate([v.ravel() for v in theirs.values()]))
    DataParallel(comm, sync_batch_norm=False).end_epoch(model)
    assert comm.allreduce_calls == 1
    after = model.buffers()
    assert list(after) == list(mine)
    for k in mine:
        assert after[k].shape == mine[k].shape
        np.testing.assert_allclose(after[k], (mine[k] + theirs[k]) / 2, rtol=1e-15, err_msg=k)
    DataParallel(comm, sync_batch_norm=True).end_epoch(model)
    plain = xc.Sequential([xc.Flatten(), xc.Dense(3)], input_shape=(1, 4, 4), dtype="float64")
    DataParallel(comm, sync_batch_norm=False).end_epoch(plain)  # no batch norm: no buffers
    assert comm.allreduce_calls == 1


def test_a_stand_in_row_leaves_the_per_rank_running_statistics() -> None:
    """A rank with no rows of a global batch trains a stand-in row with weight 0 (so
    that every rank runs the same collectives); with per-rank statistics that row must
    not enter the running statistics. A rank with rows keeps what its rows gave."""
    model = xc.Sequential(
        [xc.Conv2D(3, 3), xc.BatchNorm2D(), xc.Flatten(), xc.Dense(2)],
        input_shape=(1, 6, 6),
        dtype="float64",
        seed=2,
    )
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(1, 1, 6, 6)) + 3.0, np.array([1])
    strategy = DataParallel(SingleProcessCommunicator(), sync_batch_norm=False)
    step = xc.TrainStep(model, xc.SGD(0.1))
    before = {k: np.array(v) for k, v in model.buffers().items()}
    strategy.begin_step(model, 0, 1)
    step(x, y)
    moved = model.buffers()["batchnorm2d_0.running_mean"]
    assert not np.allclose(moved, before["batchnorm2d_0.running_mean"])  # the row's
    strategy.end_step(model)
    for k, v in model.buffers().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    strategy.begin_step(model, 1, 1)
    step(x, y)
    strategy.end_step(model)
    kept = model.buffers()["batchnorm2d_0.running_mean"]
    assert not np.allclose(kept, before["batchnorm2d_0.running_mean"])


def test_a_last_batch_of_one_example_is_refused_before_training() -> None:
    """Nine examples, batch 4: the last batch has one example, and BatchNorm1D cannot
    take statistics of it; the error comes before the first step, not after two."""
    x, y = _data(9)
    trainer = xc.Trainer(_lenet(), xc.SGD(0.1), progress=False)
    with pytest.raises(ValueError, match=r"the last batch has 1 example.*drop_last=True"):
        trainer.fit(x, y, batch_size=4)
    assert trainer.optimizer.step_count == 0 and trainer.epochs_done == 0
    history = trainer.fit(x, y, batch_size=4, drop_last=True)
    assert trainer.optimizer.step_count == 2 and len(history.step_losses[0]) == 2
    assert trainer.run.examples == 8


def test_drop_last_needs_one_full_batch() -> None:
    x, y = _data(3)
    with pytest.raises(ValueError, match="drop_last: with 3 examples and batch_size 4"):
        xc.Trainer(_lenet(), xc.SGD(0.1), progress=False).fit(x, y, batch_size=4, drop_last=True)


def test_per_rank_statistics_check_every_share() -> None:
    """Per-rank statistics judge each rank's share: a batch of 3 on 2 ranks leaves
    rank 1 one example (synchronised statistics judge the global batch)."""

    class TwoRanks(DataParallel):
        def __init__(self, sync: bool) -> None:
            super().__init__(SingleProcessCommunicator(), sync_batch_norm=sync)
            self.size = 2

    model = _built_lenet()
    TwoRanks(True).check_batches(model, 3, 3)
    with pytest.raises(ValueError, match=r"rank 1's share of a batch .*per-rank statistics"):
        TwoRanks(False).check_batches(model, 3, 3)


def test_the_statistics_setting_is_saved_and_checked(tmp_path) -> None:
    x, y = _data(8)
    trainer = xc.Trainer(_lenet(), xc.SGD(0.1), progress=False, sync_batch_norm=False)
    trainer.fit(x, y, batch_size=4)
    xc.save_training(trainer, tmp_path / "t.npz")
    assert xc.load_training(tmp_path / "t.npz", progress=False).sync_batch_norm is False
    _, meta = trainer.state()
    with pytest.raises(Exception, match="sync_batch_norm"):
        validate_training({**meta, "sync_batch_norm": "yes"}, {}, {})
    with pytest.raises(TypeError, match="sync_batch_norm: expected a bool, got 1"):
        xc.Trainer(_lenet(), xc.SGD(0.1), sync_batch_norm=1)


def test_a_non_classifier_reports_nan_accuracy() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(9, 1, 6, 6)), rng.normal(size=(9, 2, 6, 6))
    model = xc.Sequential(
        [xc.Conv2D(2, 3, padding="same")], input_shape=(1, 6, 6), loss="mse", dtype="float64"
    )
    history = xc.Trainer(model, xc.SGD(0.01), progress=False).fit(
        x, y, batch_size=4, validation_data=(x, y)
    )
    assert np.isnan(history.accuracy[0]) and np.isnan(history.val_accuracy[0])
    assert np.isfinite(history.loss[0]) and np.isfinite(history.val_loss[0])


def test_train_step_rows_take_the_global_batch_masks() -> None:
    """``rows=(lo, hi, count)``: the dropout masks of rows [lo, hi) of the global batch
    of ``count``, drawn from the same stream as one process drawing for all of it."""

    def model() -> xc.Sequential:
        layers = [xc.Flatten(), xc.Dropout(0.5), xc.Dense(3)]
        return xc.Sequential(layers, input_shape=(1, 2, 2), dtype="float64", seed=4)

    whole, part = model(), model()
    masks_whole = xc.TrainStep(whole, xc.SGD(0.1))._masks(6, None)
    masks_part = xc.TrainStep(part, xc.SGD(0.1))._masks(2, (3, 5, 6))
    for name, mask in masks_whole.items():
        np.testing.assert_array_equal(masks_part[name], mask[3:5])
    step = xc.TrainStep(model(), xc.SGD(0.1))
    x, y = np.zeros((2, 1, 2, 2)), np.zeros(2, dtype=np.int64)
    with pytest.raises(ValueError, match=r"rows: expected \(lo, hi, count\).*got \(0, 3, 6\)"):
        step(x, y, rows=(0, 3, 6))
