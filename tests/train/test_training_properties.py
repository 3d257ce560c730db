"""Property-based tests of training features combined: random mixes of optimizers,
schedules (warm-up included), augmentation, shuffling, callbacks, early stopping,
evaluation intervals and resume, on tiny models and tiny non-square data whose last
batch is short, in NumPy float64.

Each property compares :meth:`Trainer.fit` with a reference built from the same pieces
by hand (``model.train_batch``, ``optimizer.step``, ``model.evaluate`` and the rules the
callbacks document), or a resumed run with an uninterrupted one; weights must be equal
to the last bit. Only the public API is used: ``Trainer.fit``, callbacks, ``Augment``,
``save_training`` / ``load_training``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the property tests need hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import xpconv as xc  # noqa: E402
from xpconv.parallel import (  # noqa: E402
    Communicator,
    GradientAverager,
    ShardedSampler,
)
from xpconv.train.callbacks import Callback, Checkpoint, LambdaCallback  # noqa: E402

#: Examples per property (the file runs in seconds); raise it for a thorough search.
EXAMPLES = int(os.environ.get("XPCONV_PROPERTY_EXAMPLES", "25"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

CLASSES = 3


# ------------------------------------------------------------------------ the pieces


@dataclass(frozen=True)
class Recipe:
    """Everything a run is made of, drawn once and built as often as needed."""

    shape: tuple[int, int, int]  # (C, H, W), H != W
    n_train: int
    n_val: int  # 0: no validation data
    batch_size: int
    epochs: int
    arch: str  # "conv-dense" (the ConvDense step) or "conv-pool" (the ConvMaxPool step)
    optimizer: str
    schedule: tuple
    crop: int
    flip: bool
    shuffle: bool
    patience: int | None
    restore_best: bool
    eval_every: int
    seed: int

    def data(self) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        rng = np.random.default_rng(self.seed)
        n = self.n_train + self.n_val
        x = rng.normal(size=(n, *self.shape))
        y = rng.integers(0, CLASSES, size=n)
        x[np.arange(n), 0, 0, 0] += 3.0 * y  # learnable, so losses move and stopping varies
        val = (x[self.n_train :], y[self.n_train :]) if self.n_val else None
        return x[: self.n_train], y[: self.n_train], val

    def model(self) -> xc.Sequential:
        if self.arch == "conv-dense":
            layers = [xc.Conv2D(2, (2, 3), stride=(1, 2), activation="tanh")]
        else:
            layers = [xc.Conv2D(2, (3, 2), padding=(1, 0), activation="relu"), xc.MaxPool2D(2)]
        layers += [xc.Flatten(), xc.Dense(CLASSES)]
        return xc.Sequential(layers, input_shape=self.shape, dtype="float64", seed=self.seed)

    def optimizer_(self) -> Any:
        lr = _schedule(self.schedule)
        if self.optimizer == "sgd":
            return xc.SGD(lr, momentum=0.9, weight_decay=1e-3)
        if self.optimizer == "sgd-lecture":  # the lecture's decay form, no schedule object
            return xc.SGD(0.05, momentum=0.5, final_lr=0.01, decay="exponential")
        if self.optimizer == "adam":
            return xc.Adam(lr)
        return xc.AdamW(lr, weight_decay=0.05, exclude="bias_and_norm")

    def augment(self) -> xc.Augment | None:
        if not (self.crop or self.flip):
            return None
        return xc.Augment(crop_padding=self.crop, flip=self.flip)

    @property
    def steps(self) -> int:
        return math.ceil(self.n_train / self.batch_size)


def _schedule(spec: tuple) -> Any:
    kind, lr = spec[0], spec[1]
    if kind == "constant":
        return lr
    if kind == "step":
        return xc.StepDecay(lr, spec[2], gamma=0.5)
    if kind == "cosine":
        return xc.CosineDecay(lr, lr / 10)
    return xc.Warmup(_schedule(spec[2]), steps=spec[3], start_factor=spec[4])


base_schedules = st.one_of(
    st.tuples(st.just("constant"), st.sampled_from([0.01, 0.05])),
    st.tuples(st.just("step"), st.sampled_from([0.02, 0.1]), st.integers(1, 4)),
    st.tuples(st.just("cosine"), st.sampled_from([0.02, 0.1])),
)
schedules = st.one_of(
    base_schedules,
    st.tuples(
        st.just("warmup"),
        st.just(0.0),
        base_schedules,
        st.one_of(st.integers(0, 5), st.sampled_from([0.2, 0.5])),  # steps, or a fraction
        st.sampled_from([0.1, 1.0]),
    ),
)


@st.composite
def recipes(draw: st.DrawFn, *, epochs: tuple[int, int] = (1, 4)) -> Recipe:
    height = draw(st.integers(4, 6))
    width = draw(st.integers(4, 8).filter(lambda w: w != height))
    n_train = draw(st.integers(5, 17))
    batch = draw(st.integers(2, 6))
    return Recipe(
        shape=(draw(st.integers(1, 2)), height, width),
        n_train=n_train,
        n_val=draw(st.sampled_from([0, 4, 7])),
        batch_size=batch,
        epochs=draw(st.integers(*epochs)),
        arch=draw(st.sampled_from(["conv-dense", "conv-pool"])),
        optimizer=draw(st.sampled_from(["sgd", "sgd-lecture", "adam", "adamw"])),
        schedule=draw(schedules),
        crop=draw(st.integers(0, 2)),
        flip=draw(st.booleans()),
        shuffle=draw(st.booleans()),
        patience=draw(st.one_of(st.none(), st.integers(1, 2))),
        restore_best=draw(st.booleans()),
        eval_every=draw(st.integers(1, 2)),
        seed=draw(st.integers(0, 2**16)),
    )


class Recording(xc.Augment):
    """The recipe's augmentation (or none), recording every batch it is given and
    returns, so a reference can train on exactly those batches."""

    def __init__(self, inner: xc.Augment | None) -> None:
        super().__init__()
        self.inner = inner
        self.batches: list[tuple[np.ndarray, np.ndarray]] = []

    @property
    def active(self) -> bool:
        return True

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = self.inner(x, rng) if self.inner is not None else np.array(x, copy=True)
        self.batches.append((np.array(x, copy=True), np.array(out, copy=True)))
        return out


def _labels(batch: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The labels of the examples in ``batch`` (rows of ``x``, all distinct)."""
    flat = x.reshape(len(x), -1)
    rows = batch.reshape(len(batch), -1)
    return y[[int(np.flatnonzero((flat == row).all(axis=1))[0]) for row in rows]]


def _fit(trainer: xc.Trainer, recipe: Recipe, x: Any, y: Any, val: Any, epochs: int) -> Any:
    return trainer.fit(
        x,
        y,
        epochs=epochs,
        batch_size=recipe.batch_size,
        validation_data=val,
        eval_every=recipe.eval_every,
        early_stopping=recipe.patience,
        restore_best=recipe.restore_best,
        shuffle=recipe.shuffle,
    )


def _assert_same_weights(a: xc.Sequential, b: xc.Sequential) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)


# ------------------------------------------------------------------- the reference


def _reference(recipe: Recipe, batches: list[tuple[np.ndarray, np.ndarray]], x, y, val) -> dict:
    """The run by hand on the batches the trainer drew: one ``train_batch`` and one
    ``optimizer.step`` per batch, evaluation and early stopping as documented."""
    model, optimizer = recipe.model(), recipe.optimizer_()
    optimizer.setup(recipe.epochs * recipe.steps)
    losses, lrs, val_losses = [], [], []
    best, best_weights, waited, stopped_after = None, None, 0, recipe.epochs
    for epoch in range(recipe.epochs):
        total, seen = 0.0, 0
        for step in range(recipe.steps):
            before, after = batches[epoch * recipe.steps + step]
            labels = _labels(before, x, y)
            lrs.append(optimizer.lr)
            total += float(model.train_batch(after, labels)) * len(labels)
            seen += len(labels)
            optimizer.step(model.parameters())
        assert seen == recipe.n_train  # every example once per epoch, the last batch short
        losses.append(total / seen)
        evaluated = val is not None and (
            (epoch + 1) % recipe.eval_every == 0 or epoch + 1 == recipe.epochs
        )
        val_losses.append(model.evaluate(*val)["loss"] if evaluated else None)
        if recipe.patience is None or (val is not None and not evaluated):
            continue
        monitored = val_losses[-1] if val is not None else losses[-1]
        if best is None or monitored < best:
            best, best_weights, waited = monitored, model.state_dict(), 0
        else:
            waited += 1
            if waited >= recipe.patience:
                stopped_after = epoch + 1
                break
    if recipe.patience is not None and recipe.restore_best and best_weights is not None:
        model.load_state_dict(best_weights)
    return dict(model=model, losses=losses, lrs=lrs, val_losses=val_losses, epochs=stopped_after)


@SETTINGS
@given(recipe=recipes())
def test_fit_equals_the_run_built_by_hand(recipe: Recipe) -> None:
    """Any mix of optimizer, schedule, augmentation, shuffling, evaluation interval and
    early stopping trains exactly as the same pieces called by hand."""
    x, y, val = recipe.data()
    recorder = Recording(recipe.augment())
    seen_lrs: list[float] = []
    epochs_started: list[int] = []
    watch = LambdaCallback(on_epoch_start=lambda trainer, epoch: epochs_started.append(epoch))
    trainer = xc.Trainer(
        recipe.model(),
        recipe.optimizer_(),
        seed=recipe.seed,
        progress=False,
        augment=recorder,
        callbacks=[watch, _LrWatch(seen_lrs)],
    )
    history = _fit(trainer, recipe, x, y, val, recipe.epochs)
    ref = _reference(recipe, recorder.batches, x, y, val)
    assert trainer.epochs_done == ref["epochs"] == len(history.loss)
    assert len(recorder.batches) == ref["epochs"] * recipe.steps
    assert epochs_started == list(range(1, ref["epochs"] + 1))
    _assert_same_weights(trainer.model, ref["model"])
    np.testing.assert_allclose(history.loss, ref["losses"], rtol=1e-12)
    assert [v is None for v in history.val_loss] == [v is None for v in ref["val_losses"]]
    got = [v for v in history.val_loss if v is not None]
    np.testing.assert_allclose(got, [v for v in ref["val_losses"] if v is not None], rtol=1e-12)
    assert seen_lrs == ref["lrs"][: len(seen_lrs)] and len(seen_lrs) == len(ref["lrs"])
    if not recipe.shuffle:  # in order: the batches are the data's own slices
        for step, (before, _) in enumerate(recorder.batches[: recipe.steps]):
            start = step * recipe.batch_size
            np.testing.assert_array_equal(before, x[start : start + recipe.batch_size])


class _LrWatch(Callback):
    """Records the learning rate of every step, read before the step from the optimizer
    (``on_batch_end`` of the previous step, ``on_epoch_start`` for the first)."""

    def __init__(self, out: list[float]) -> None:
        self.out = out

    def on_epoch_start(self, trainer: xc.Trainer, epoch: int) -> None:
        self.out.append(trainer.optimizer.lr)

    def on_batch_end(self, trainer: xc.Trainer, logs: Any) -> None:
        if logs.step < trainer.run.steps:
            self.out.append(trainer.optimizer.lr)


# ---------------------------------------------------------------------- resume


class _Counter(Callback):
    """A callback with state: the steps it has seen, saved in training checkpoints."""

    state_key = "counter"

    def __init__(self) -> None:
        self.steps = 0

    def on_batch_end(self, trainer: xc.Trainer, logs: Any) -> None:
        self.steps += 1

    def state(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])


class _Crash(Exception):
    pass


class _CrashAfter(Callback):
    """Ends the run with an exception after epoch ``epoch``'s callbacks (a killed run)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, trainer: xc.Trainer) -> None:
        if trainer.epochs_done == self.epoch:
            raise _Crash


def _trainer(recipe: Recipe, *callbacks: Callback) -> xc.Trainer:
    return xc.Trainer(
        recipe.model(),
        recipe.optimizer_(),
        seed=recipe.seed,
        progress=False,
        augment=recipe.augment(),
        callbacks=[_Counter(), *callbacks],
    )


@SETTINGS
@given(recipe=recipes(epochs=(2, 4)), data=st.data())
def test_resume_at_any_epoch_equals_the_uninterrupted_run(recipe: Recipe, data, tmp_path) -> None:
    """A run killed after any epoch, its checkpoint loaded and the run continued to the
    same number of epochs, equals the run that was never killed: weights, history, the
    callbacks' state and where early stopping ends it, also when the kill came after
    the epoch at which early stopping had decided to stop."""
    x, y, val = recipe.data()
    whole = _trainer(recipe)
    _fit(whole, recipe, x, y, val, recipe.epochs)
    cut = data.draw(st.integers(1, recipe.epochs - 1), label="cut")
    path = tmp_path / f"resume-{data.draw(st.integers(0, 10**9), label='file')}.npz"
    killed = _trainer(recipe, Checkpoint(path), _CrashAfter(cut))
    try:
        _fit(killed, recipe, x, y, val, recipe.epochs)
    except _Crash:
        pass
    assert killed.epochs_done == min(cut, whole.epochs_done)
    # (when early stopping ended the run by the cut, the resumed run trains no more)
    resumed = xc.load_training(path, progress=False)
    counter = _Counter()
    resumed.callbacks.append(counter)
    _fit(resumed, recipe, x, y, val, recipe.epochs)
    assert resumed.epochs_done == whole.epochs_done
    np.testing.assert_array_equal(resumed.history.loss, whole.history.loss)
    assert resumed.history.val_loss == whole.history.val_loss
    assert resumed.history.lr == whole.history.lr
    assert counter.steps == whole.callbacks[0].steps
    _assert_same_weights(resumed.model, whole.model)


def test_a_run_killed_after_early_stopping_decided_stays_stopped(tmp_path) -> None:
    """The case the resume property found: the kill comes after the checkpoint of the
    epoch at which early stopping decided to stop; the resumed run trains no more."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 1, 4, 5)), rng.integers(0, CLASSES, 12)

    def trainer(*callbacks: Callback) -> xc.Trainer:
        model = xc.Sequential(
            [xc.Flatten(), xc.Dense(CLASSES)], input_shape=(1, 4, 5), dtype="float64", seed=0
        )
        return xc.Trainer(model, xc.SGD(3.0), progress=False, callbacks=list(callbacks))

    args = dict(epochs=8, batch_size=5, early_stopping=1, validation_data=(x[:4], y[:4]))
    whole = trainer()
    whole.fit(x, y, **args)
    assert whole.epochs_done == 3  # the validation loss rose at epoch 3 (lr 3 overshoots)
    path = tmp_path / "training.npz"
    killed = trainer(Checkpoint(path), _CrashAfter(whole.epochs_done))
    with pytest.raises(_Crash):
        killed.fit(x, y, **args)
    resumed = xc.load_training(path, progress=False)
    resumed.fit(x, y, **args)
    assert resumed.epochs_done == whole.epochs_done
    assert resumed.history.val_loss == whole.history.val_loss
    _assert_same_weights(resumed.model, whole.model)


# -------------------------------------------------------------- uneven shards


@SETTINGS
@given(recipe=recipes(epochs=(1, 2)), size=st.integers(1, 23))
def test_every_example_once_per_epoch_whatever_the_batch(recipe: Recipe, size: int) -> None:
    """With shuffling and augmentation, each epoch's batches hold every training example
    once (the last batch short when the size does not divide the data), and the
    epoch's loss is their size-weighted mean."""
    x, y, _ = recipe.data()
    recorder = Recording(recipe.augment())
    trainer = xc.Trainer(
        recipe.model(), xc.SGD(0.01), seed=recipe.seed, progress=False, augment=recorder
    )
    history = trainer.fit(x, y, epochs=recipe.epochs, batch_size=size, shuffle=True)
    steps = math.ceil(len(y) / size)
    assert len(recorder.batches) == recipe.epochs * steps
    for epoch in range(recipe.epochs):
        batches = [b for b, _ in recorder.batches[epoch * steps : (epoch + 1) * steps]]
        sizes = [len(b) for b in batches]
        assert sizes == [size] * (steps - 1) + [len(y) - size * (steps - 1)]
        got = np.sort(np.concatenate(batches).reshape(len(y), -1), axis=0)
        np.testing.assert_array_equal(got, np.sort(x.reshape(len(y), -1), axis=0))
        assert len(history.step_losses[epoch]) == steps
        weighted = np.dot(history.step_losses[epoch], sizes) / len(y)
        np.testing.assert_allclose(history.loss[epoch], weighted, rtol=1e-12)


# ---------------------------------------------------- uneven shards over ranks


class _Gather(Communicator):
    """One simulated rank of ``size``: the first pass records each rank's buffer, the
    second returns their sum (an all-reduce without processes)."""

    def __init__(self, rank: int, size: int, buffers: dict[int, np.ndarray]) -> None:
        super().__init__(rank, size)
        self.buffers = buffers

    def _allreduce(self, buffer: np.ndarray) -> np.ndarray:
        if len(self.buffers) < self.size:
            self.buffers[self.rank] = np.array(buffer, copy=True)
            return np.ones_like(buffer)  # (discarded)
        return np.sum([self.buffers[r] for r in range(self.size)], axis=0)


def _share_gradients(model: xc.Sequential, x: np.ndarray, y: np.ndarray) -> dict:
    if len(y) == 0:  # an empty share: zero gradients, weight 0
        return {k: np.zeros_like(p.value) for k, p in model.parameters().items()}
    model.train_batch(x, y)
    return {k: np.array(p.grad, copy=True) for k, p in model.parameters().items()}


@SETTINGS
@given(
    recipe=recipes(epochs=(1, 1)),
    size=st.integers(2, 5),
    batch=st.integers(1, 9),
    epoch=st.integers(0, 3),
)
def test_uneven_shards_average_to_the_global_batch_gradient(
    recipe: Recipe, size: int, batch: int, epoch: int
) -> None:
    """Each global batch split over ``size`` ranks (shares differing by one, some empty
    when the batch is smaller than the ranks): every example of the epoch is in exactly
    one share, and the weighted gradient average is the gradient of the global batch."""
    x, y, _ = recipe.data()
    samplers = [ShardedSampler(len(y), batch, rank, size, seed=recipe.seed) for rank in range(size)]
    steps = [list(s.epoch(epoch)) for s in samplers]
    order = samplers[0].order(epoch)
    assert sorted(order.tolist()) == list(range(len(y)))
    model = recipe.model()
    for step, global_batch in enumerate(ShardedSampler(len(y), batch).batches(order)):
        shares = [steps[rank][step] for rank in range(size)]
        assert all(count == len(global_batch[0]) for _, count in shares)
        lengths = [len(idx) for idx, _ in shares]
        assert max(lengths) - min(lengths) <= 1 and sum(lengths) == len(global_batch[0])
        np.testing.assert_array_equal(np.concatenate([i for i, _ in shares]), global_batch[0])
        grads = [_share_gradients(model, x[idx], y[idx]) for idx, _ in shares]
        buffers: dict[int, np.ndarray] = {}
        averagers = [GradientAverager(_Gather(r, size, buffers)) for r in range(size)]
        for averager, g, n in zip(averagers, grads, lengths):
            averager.examples = n
            averager(g)  # first pass: records the bucket
        averaged = [a(g) for a, g in zip(averagers, grads)]
        want = _share_gradients(model, x[global_batch[0]], y[global_batch[0]])
        for mean in averaged:
            for key, value in want.items():
                np.testing.assert_allclose(mean[key], value, rtol=1e-10, atol=1e-13)
