"""Trainer: mini-batch training with shuffling, validation, early stopping and resume.

    trainer = Trainer(model, SGD(0.1, momentum=0.9, final_lr=0.05), seed=0)
    history = trainer.fit(x_train, y_train, epochs=1, batch_size=60,
                          validation_data=(x_test, y_test))

Metrics stay on the device during an epoch and are read once per logging interval
(``log_every`` steps), so a GPU is not synchronised on every step. A loss that becomes
NaN or infinite stops training with :class:`TrainingError` naming the epoch and step.

There is one epoch loop, for one process and for N ranks: distribution is a
:class:`~xpconv.parallel.strategy.Strategy` the trainer is handed (which rows of each
global batch this process trains, a gradient hook, the sums of the metrics, how the
buffers are combined; see :mod:`xpconv.parallel.strategy`).

What happens around the loop (progress bar, NaN guard, early stopping, checkpoints,
printing) is done by callbacks (:mod:`xpconv.train.callbacks`), whose state is part of
:meth:`Trainer.state` and so of every training checkpoint.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from array_api_compat import is_array_api_obj

from xpconv.backends.registry import backend_of
from xpconv.data.augment import Augment
from xpconv.nn.sequential import Sequential
from xpconv.ops.checks import positive_int
from xpconv.ops.targets import count_correct
from xpconv.optim.optimizers import Optimizer
from xpconv.parallel import Communicator, shard_range
from xpconv.parallel.data_parallel import DataParallel
from xpconv.parallel.strategy import SingleProcess, Strategy
from xpconv.train.callbacks import (
    BatchLogs,
    Callback,
    EarlyStopping,
    LambdaCallback,
    NaNGuard,
    ProgressBar,
    RunInfo,
    TrainingError,
)
from xpconv.train.history import History
from xpconv.train.step import TrainStep

Array = Any

__all__ = ["Trainer", "TrainingError"]

#: Prefix of the callbacks' arrays in :meth:`Trainer.state`: ``callback/<state_key>/<name>``.
CALLBACK_PREFIX = "callback/"


class Trainer:
    """Runs the training loop of a :class:`~xpconv.nn.sequential.Sequential` with an optimizer.

    Args:
        model: the model (built or not).
        optimizer: an :class:`~xpconv.optim.optimizers.Optimizer`.
        seed: seeds the shuffling generator (host NumPy).
        progress: show a progress bar per epoch (needs tqdm).
        log_every: steps between reads of the running loss from the device.
        communicator: a :class:`~xpconv.parallel.Communicator` for data-parallel
            training: the strategy becomes a
            :class:`~xpconv.parallel.data_parallel.DataParallel` over it (every rank takes
            its share of each global batch, ``batch_size``; gradients are averaged in one
            all-reduce per step; batch-norm statistics are those of the global batch;
            validation is sharded; the reported metrics are those of the global batches).
            ``None``: one process.
        sync_batch_norm: with a communicator, batch-norm layers take the statistics of the
            global batch (default); ``False``: each rank's own share's (not equal to one
            process). Part of the run record: a resumed run keeps it.
        strategy: a :class:`~xpconv.parallel.strategy.Strategy` instead of the one the
            communicator implies (default :class:`~xpconv.parallel.strategy.SingleProcess`).
        augment: an :class:`~xpconv.data.augment.Augment` applied to every training batch on
            the host, drawing from the shuffling generator (so resume stays exact).
        callbacks: :class:`~xpconv.train.callbacks.Callback` objects called around every
            ``fit`` (after the built-in :class:`~xpconv.train.callbacks.NaNGuard`, early
            stopping and :class:`~xpconv.train.callbacks.ProgressBar`, before ``fit``'s
            ``on_epoch_end``); their state is saved with the trainer's.
        tune_host: apply the backend's process-wide host tuning when ``fit`` starts
            (:func:`xpconv.tune_host`: on NumPy, glibc's malloc thresholds and OpenBLAS
            on one thread, xpconv splitting products itself). ``False`` (the default):
            ``fit`` changes nothing outside xpconv.

    Attributes:
        strategy: the :class:`~xpconv.parallel.strategy.Strategy` the loop asks (set by
            ``communicator`` and ``sync_batch_norm`` unless given).
        run: a :class:`~xpconv.train.callbacks.RunInfo` describing the current ``fit`` (its
            last one once it returned; ``None`` before).
        stop_training: set to ``True`` by a callback to end the run after this epoch.
    """

    def __init__(
        self,
        model: Sequential,
        optimizer: Optimizer,
        *,
        seed: int = 0,
        progress: bool = True,
        log_every: int = 50,
        communicator: Communicator | None = None,
        augment: Augment | None = None,
        callbacks: list[Callback] | tuple[Callback, ...] | None = None,
        sync_batch_norm: bool = True,
        strategy: Strategy | None = None,
        tune_host: bool = False,
    ) -> None:
        if not isinstance(model, Sequential):
            raise TypeError(f"model: expected a Sequential, got {type(model).__name__}")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer: expected an Optimizer, got {type(optimizer).__name__}")
        self.model, self.optimizer = model, optimizer
        # the whole step (compiled where the backend compiles); replace it for a hook or compile
        self.train_step = TrainStep(model, optimizer)
        self.seed = seed
        if not isinstance(tune_host, bool):
            raise TypeError(f"tune_host: expected True or False, got {tune_host!r}")
        self.tune_host = tune_host
        self.rng = np.random.default_rng([seed, 2])
        self.progress = progress
        self.log_every = positive_int(log_every, "log_every")
        if augment is not None and not isinstance(augment, Augment):
            raise TypeError(f"augment: expected an Augment or None, got {type(augment).__name__}")
        self.augment = augment if augment is not None and augment.active else None
        self.epochs_done = 0
        self.history = History()
        if not isinstance(sync_batch_norm, bool):
            raise TypeError(f"sync_batch_norm: expected a bool, got {sync_batch_norm!r}")
        self._sync_batch_norm = sync_batch_norm
        self.communicator = communicator
        if strategy is not None:
            if not isinstance(strategy, Strategy):
                raise TypeError(
                    f"strategy: expected a Strategy or None, got {type(strategy).__name__}"
                )
            self.strategy = strategy
        if callbacks is None:
            callbacks = []
        if not isinstance(callbacks, (list, tuple)):
            raise TypeError(
                f"callbacks: expected a list of Callback, got {type(callbacks).__name__}"
            )
        for i, callback in enumerate(callbacks):
            if not isinstance(callback, Callback):
                raise TypeError(
                    f"callbacks[{i}]: expected a Callback, got {type(callback).__name__}"
                )
        self.callbacks: list[Callback] = list(callbacks)
        self.run: RunInfo | None = None
        self.stop_training = False
        self._active: list[Callback] = []  # the callbacks of the fit that is running
        self._callback_state: dict[str, dict[str, Any]] = {}  # saved, or to restore

    # ------------------------------------------------------------------ data
    def _prepare(self, x: Any, y: Any, argument: str, label: str) -> tuple[Array, Array]:
        for name, value in ((argument, x), (label, y)):
            if value is None:
                raise TypeError(f"{name}: expected an array, got None")
        if not (isinstance(x, np.ndarray) or is_array_api_obj(x)):
            try:
                x = np.asarray(x)
            except (TypeError, ValueError) as exc:
                raise TypeError(
                    f"{argument}: expected an array (N, *input_shape), got {type(x).__name__}"
                ) from exc
        if x.ndim < 2:
            raise ValueError(
                f"{argument}: expected a dataset (N, *input_shape) of at least 2 dimensions, "
                f"got shape {tuple(x.shape)}"
            )
        n = int(x.shape[0])
        if n < 1:
            raise ValueError(f"{argument}: expected a non-empty dataset, got {n} examples")
        x_dev = self.model.as_input(x, argument)  # the one finiteness check of the run
        return x_dev, self.model.as_target(y, n, label)

    def _prepare_validation(self, data: Any) -> tuple[Array, Array] | None:
        if data is None:
            return None
        if not isinstance(data, (tuple, list)) or len(data) != 2:
            raise ValueError(
                f"validation_data: expected a pair (x_val, y_val), got {type(data).__name__}"
            )
        x_val, y_val = data
        return self._prepare(x_val, y_val, "x_val", "y_val")

    def _bind_optimizer(self) -> None:
        """Put the optimizer's state where the model's parameters are (after
        ``model.to(...)``), saying so once."""
        be, dtype = self.model.backend, self.model.dtype
        moved = 0
        for slots in self.optimizer.state.values():
            for key, value in slots.items():
                if not be.owns(value) or value.dtype != dtype:
                    slots[key] = be.asarray(backend_of(value).to_numpy(value), dtype=dtype)
                    moved += 1
        if moved:
            warnings.warn(
                f"optimizer: moved {moved} state array(s) to the model's backend "
                f"{be.label!r} (the model was moved with Sequential.to)",
                UserWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------------ strategy
    @property
    def communicator(self) -> Communicator | None:
        """The communicator of a data-parallel run (``None``: one process); setting it
        sets :attr:`strategy` (a :class:`~xpconv.parallel.data_parallel.DataParallel`
        over it, or :class:`~xpconv.parallel.strategy.SingleProcess` for size 1)."""
        return self._communicator

    @communicator.setter
    def communicator(self, communicator: Communicator | None) -> None:
        if communicator is not None and not isinstance(communicator, Communicator):
            raise TypeError(
                f"communicator: expected a Communicator or None, got {type(communicator).__name__}"
            )
        self._communicator = communicator
        if communicator is None or communicator.size == 1:
            self.strategy = SingleProcess()
        else:
            self.strategy = DataParallel(communicator, sync_batch_norm=self._sync_batch_norm)

    @property
    def sync_batch_norm(self) -> bool:
        """Whether batch-norm layers take the global batch's statistics when distributed."""
        return self._sync_batch_norm

    @sync_batch_norm.setter
    def sync_batch_norm(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"sync_batch_norm: expected a bool, got {value!r}")
        self._sync_batch_norm = value
        self.communicator = self._communicator

    @property
    def _distributed(self) -> bool:
        return self.strategy.distributed

    # ------------------------------------------------------------------ loop
    def fit(
        self,
        x: Any,
        y: Any,
        *,
        epochs: int = 1,
        batch_size: int = 32,
        validation_data: tuple[Any, Any] | None = None,
        eval_every: int = 1,
        early_stopping: int | None = None,
        restore_best: bool = True,
        shuffle: bool = True,
        on_epoch_end: Callable[[Trainer], None] | None = None,
        drop_last: bool = False,
    ) -> History:
        """Train until ``epochs`` epochs are done in total (resumed runs continue).

        Args:
            x: training inputs (N, *input_shape), host NumPy or arrays of the model's backend.
            y: integer labels (N,) in [0, classes) or float targets (N, *output_shape).
            epochs: total number of epochs of the run.
            batch_size: examples per step, the global batch when distributed (the last
                batch may be smaller).
            validation_data: optional (x_val, y_val), evaluated every ``eval_every`` epochs.
            early_stopping: stop after this many evaluations without improvement of the
                validation loss (training loss without validation data).
            restore_best: with early stopping, put back the weights of the best epoch.
            shuffle: reshuffle the examples every epoch (from the trainer's seed); a
                bool (anything else, such as ``"no"``, is a TypeError).
            on_epoch_end: called with the trainer after every epoch (checkpoints).
            drop_last: skip the last batch of each epoch when it is smaller than
                ``batch_size`` (as ``torch.utils.data.DataLoader``'s ``drop_last``).

        Returns:
            The :class:`History` of the whole run.

        Raises:
            ValueError: before any step, when a batch (the last one, say) would give a
                batch-norm layer one value per channel, or ``drop_last`` leaves no batch.
        """
        epochs, batch_size, eval_every = _check_fit_options(
            epochs, batch_size, eval_every, early_stopping, shuffle, drop_last
        )
        x_dev, y_dev = self._prepare(x, y, "x", "y")
        val = self._prepare_validation(validation_data)
        self._bind_optimizer()
        n = int(x_dev.shape[0])
        steps = self._count_steps(n, batch_size, drop_last)
        if self.tune_host:  # process-wide, asked for; XPCONV_HOST_TUNING=0 turns it off
            self.model.backend.tune_host()
        self.optimizer.setup(epochs * steps)
        strategy = self.strategy
        if strategy.distributed:
            items = self._run_items(x_dev, y_dev, val, (epochs, batch_size, shuffle, drop_last))
            strategy.start(self.model, self.optimizer, items)
        self.run = RunInfo(epochs, batch_size, steps, min(n, steps * batch_size), val is not None)
        self.stop_training = False
        self._start_callbacks(early_stopping, restore_best, on_epoch_end)
        try:
            self._each_callback("on_fit_start")
            for epoch in range(self.epochs_done, epochs):
                if self.stop_training:  # set by on_fit_start: a stopped run, resumed
                    break
                self._each_callback("on_epoch_start", epoch + 1)
                loss, acc, seconds = self._run_epoch(x_dev, y_dev, epoch, batch_size, shuffle)
                evaluate = val is not None and (
                    (epoch + 1) % eval_every == 0 or epoch + 1 == epochs
                )
                self._record_epoch(
                    epoch, loss, acc, seconds, self._evaluate(*val) if evaluate else None
                )
                self._each_callback("on_epoch_end")
                if self.stop_training:
                    break
            self._each_callback("on_fit_end")
        except BaseException as error:
            for callback in self._active:
                callback.on_fit_abort(self, error)
            raise
        finally:
            self._stop_callbacks()
            strategy.finish(self.model)
        self.model.eval()
        return self.history

    def _count_steps(self, n: int, batch_size: int, drop_last: bool) -> int:
        """Steps per epoch; checks every batch against the batch-norm layers first."""
        steps = n // batch_size if drop_last else -(-n // batch_size)
        if steps == 0:
            raise ValueError(
                f"drop_last: with {n} examples and batch_size {batch_size} no full batch "
                "is left; lower batch_size or pass drop_last=False"
            )
        last = n - (steps - 1) * batch_size if not drop_last else batch_size
        self.strategy.check_batches(self.model, min(batch_size, n), last)
        return steps

    def _record_epoch(
        self, epoch: int, loss: float, acc: float, seconds: float, val: dict[str, float] | None
    ) -> None:
        """Append the epoch's entry to the history (validation ``None`` when not evaluated)."""
        h, n = self.history, self.run.examples
        h.epoch.append(epoch + 1)
        h.loss.append(loss)
        h.accuracy.append(acc)
        h.lr.append(self.optimizer.lr)
        h.seconds.append(seconds)
        h.images_per_second.append(n / seconds if seconds > 0 else float("inf"))
        h.val_loss.append(None if val is None else val["loss"])
        h.val_accuracy.append(None if val is None else val["accuracy"])
        self.epochs_done = epoch + 1

    # ------------------------------------------------------------------ callbacks
    def _start_callbacks(
        self,
        early_stopping: int | None,
        restore_best: bool,
        on_epoch_end: Callable[[Trainer], None] | None,
    ) -> None:
        """The callbacks of this fit, in calling order, each given its saved state."""
        active: list[Callback] = []
        if not any(isinstance(c, NaNGuard) for c in self.callbacks):
            active.append(NaNGuard())
        if early_stopping is not None:
            active.append(EarlyStopping(early_stopping, restore_best=restore_best))
        if self.progress and not any(isinstance(c, ProgressBar) for c in self.callbacks):
            active.append(ProgressBar())
        active += self.callbacks
        if on_epoch_end is not None:
            active.append(LambdaCallback(on_epoch_end=on_epoch_end))
        keys = [c.state_key for c in active if c.state_key is not None]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ValueError(
                f"callbacks: expected one callback per state key, got several for {twice} "
                "(early_stopping= adds an EarlyStopping)"
            )
        for callback in active:
            if callback.state_key in self._callback_state:
                callback.load_state(dict(self._callback_state[callback.state_key]))
        self._active = active

    def _stop_callbacks(self) -> None:
        """Keep the state of this fit's callbacks (for the next fit and for checkpoints)."""
        self._callback_state.update(self._callback_states())
        self._active = []

    def _callback_states(self) -> dict[str, dict[str, Any]]:
        return {c.state_key: c.state() for c in self._active if c.state_key is not None}

    def _each_callback(self, hook: str, *args: Any) -> None:
        for callback in self._active:
            getattr(callback, hook)(self, *args)

    def _end_batch(
        self,
        step_losses: list[float],
        epoch: int,
        step: int,
        count: int,
        seen: int,
        start: float,
        losses: list[float] | None = None,
        loss_sum: float = 0.0,
    ) -> None:
        """The tail of every step, local or distributed: tell the callbacks, and keep the
        interval's losses (``losses``: read at this step) in the history."""
        logs = BatchLogs(epoch + 1, step + 1, count, seen, time.perf_counter() - start)
        if losses is not None:
            logs.logged, logs.step_losses, logs.loss = True, losses, loss_sum / seen
        for callback in self._active:
            callback.on_batch_end(self, logs)
        if losses is not None:
            step_losses += losses

    def _run_epoch(
        self, x: Array, y: Array, epoch: int, batch_size: int, shuffle: bool
    ) -> tuple[float, float, float]:
        """One epoch over the global batches; this process trains the rows its strategy
        gives it. The returned loss and accuracy (and the step losses) are those of
        the global batches, whatever the number of processes."""
        model, be = self.model, self.model.backend
        n = int(x.shape[0])
        order_host = self.rng.permutation(n) if shuffle else np.arange(n)
        order = be.asarray(order_host)  # one transfer
        data = (x, y, order, order_host, None if self.augment is None else be.to_numpy(x))
        model.train()
        step_fn = self._step_function()
        start = time.perf_counter()
        tally = _Tally()
        for step in range(self.run.steps):
            first = step * batch_size
            count = min(batch_size, n - first)
            loss, hits = self._train_rows(step_fn, data, first, count)
            tally.add(loss, hits, count)
            if (step + 1) % self.log_every == 0 or step + 1 == self.run.steps:
                losses = tally.read(self.strategy, model)
                self._end_batch(
                    tally.step_losses, epoch, step, count, tally.seen, start, losses, tally.loss_sum
                )
            else:
                self._end_batch(tally.step_losses, epoch, step, count, tally.seen, start)
        seconds = time.perf_counter() - start
        self.history.step_losses.append(tally.step_losses)
        self.strategy.end_epoch(model)
        accuracy = float("nan") if tally.correct is None else tally.correct / tally.seen
        return tally.loss_sum / tally.seen, accuracy, seconds

    def _step_function(self) -> TrainStep:
        """The trainer's :class:`TrainStep`, made anew for a replaced model or optimizer,
        or for the strategy's gradient hook."""
        model, step_fn, hook = self.model, self.train_step, self.strategy.gradient_hook
        if (
            step_fn.model is not model
            or step_fn.optimizer is not self.optimizer
            or (hook is not None and step_fn.gradient_hook is not hook)
        ):  # keep a hook the user gave when the strategy has none
            hook = step_fn.gradient_hook if hook is None else hook
            step_fn = TrainStep(model, self.optimizer, gradient_hook=hook, compile=step_fn.compile)
            self.train_step = step_fn
        return step_fn

    def _train_rows(
        self, step_fn: TrainStep, data: tuple[Any, ...], first: int, count: int
    ) -> tuple[Array, Array | None]:
        """One step on this process's rows of the global batch ``[first, first + count)``
        of the epoch's order: returns the loss weighted by this process's share of the
        batch and its correct count (0-d, on the device; ``None`` for a non-classifier).

        A process with no rows trains a stand-in row with weight 0, so that every
        process runs the same collectives. Augmentation and dropout masks are drawn for
        the whole global batch from the seeded generators and this process's rows
        taken, so they are those of one process."""
        x, y, order, order_host, x_host = data
        model, be, xp, strategy = self.model, self.model.backend, self.model.xp, self.strategy
        lo, hi = strategy.rows(count)
        examples = hi - lo
        if not examples:
            lo, hi = (lo - 1, lo) if lo == count else (lo, lo + 1)
        idx = order[first + lo : first + hi]
        self.model.backend.between_steps()  # NumPy, once tuned: one thread while busy
        if x_host is None:
            xb = xp.take(x, idx, axis=0)
        else:  # augmented on the host from the seeded generator, then moved
            batch = self.augment(x_host[order_host[first : first + count]], self.rng)
            xb = be.asarray(batch[lo:hi], dtype=model.dtype)
        yb = xp.take(y, idx, axis=0)
        rows = (lo, hi, count) if strategy.distributed else None
        strategy.begin_step(model, examples, count)
        try:
            loss = step_fn(xb, yb, validate=False, rows=rows)  # checked by _prepare
        finally:
            strategy.end_step(model)
        hits = count_correct(xp, model.last_output, yb)
        if not strategy.distributed:
            return loss, hits
        weight = examples / count
        return loss * weight, None if hits is None else hits * (1 if examples else 0)

    # ------------------------------------------------------------------ data parallel
    def _run_items(
        self,
        x: Array,
        y: Array,
        val: tuple[Array, Array] | None,
        settings: tuple[int, int, bool, bool],
    ) -> dict[str, Any]:
        """What every process of a distributed run must agree on (host values);
        ``settings``: fit's epochs, batch size, shuffle and drop_last."""
        model, opt, be = self.model, self.optimizer, self.model.backend
        items: dict[str, Any] = {
            "the model": (
                model.get_config(),
                model.dtype_name,
                [p.shape for p in model.parameters().values()],
            ),
            "the optimizer": (
                opt.get_config(),
                opt.step_count,
                sorted((k, tuple(v.shape)) for k, v in opt.state_arrays().items()),
            ),
            "the run (epochs done, epochs, batch size, shuffle, drop_last, seed, generator "
            "states, augmentation)": (
                self.epochs_done,
                settings,
                self.seed,
                self.rng.bit_generator.state,
                model.dropout_rng.bit_generator.state,
                None if self.augment is None else self.augment.get_config(),
            ),
            "the training images": be.to_numpy(x),
            "the training labels": be.to_numpy(y),
        }
        if val is not None:
            items["the validation images"] = be.to_numpy(val[0])
            items["the validation labels"] = be.to_numpy(val[1])
        return items

    def _evaluate(self, x: Array, y: Array) -> dict[str, float]:
        """Validation loss and accuracy of the model as it is (the one saved);
        distributed, each rank evaluates its share and the sums are combined. A
        non-classifier's accuracy is NaN, as in one process."""
        strategy = self.strategy
        if not strategy.distributed:
            return self.model.evaluate(x, y)
        n = int(x.shape[0])
        lo, hi = shard_range(n, strategy.rank, strategy.size)
        local = np.zeros(2)
        if hi > lo:
            m = self.model.evaluate(x[lo:hi, ...], y[lo:hi, ...])
            local = np.asarray([m["loss"] * (hi - lo), m["accuracy"] * (hi - lo)])
        total = np.asarray(strategy.sum(local), dtype=np.float64)
        accuracy = total[1] if math.isnan(total[1]) else round(total[1])
        return {"loss": float(total[0]) / n, "accuracy": float(accuracy) / n}

    # ------------------------------------------------------------------ state
    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Everything needed to resume exactly: host arrays and JSON metadata, the
        callbacks' states included (under ``"callbacks"`` and ``callback/<key>/...``)."""
        be = self.model.backend
        arrays = {
            f"optimizer/{k}": be.to_numpy(v) for k, v in self.optimizer.state_arrays().items()
        }
        meta = {
            "epochs_done": self.epochs_done,
            "optimizer": self.optimizer.get_config(),
            "optimizer_step": self.optimizer.step_count,
            "shuffle_rng": self.rng.bit_generator.state,
            "dropout_rng": self.model.dropout_rng.bit_generator.state,
            "history": self.history.as_dict(),
            "seed": self.seed,
            "augment": None if self.augment is None else self.augment.get_config(),
            "sync_batch_norm": self.sync_batch_norm,
        }
        callbacks: dict[str, dict[str, Any]] = {}
        for key, state in {**self._callback_state, **self._callback_states()}.items():
            callbacks[key] = {}
            for name, value in state.items():
                if isinstance(value, np.ndarray):
                    arrays[f"{CALLBACK_PREFIX}{key}/{name}"] = value
                else:
                    callbacks[key][name] = value
        if callbacks:  # absent without stateful callbacks, as in files of earlier versions
            meta["callbacks"] = callbacks
        return arrays, meta

    def load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned (the model's weights are loaded separately)."""
        be, dtype = self.model.backend, self.model.dtype
        prefix = "optimizer/"
        self.optimizer.load_state_arrays(
            {
                k[len(prefix) :]: be.asarray(v, dtype=dtype)
                for k, v in arrays.items()
                if k.startswith(prefix)
            }
        )
        self.optimizer.step_count = int(meta["optimizer_step"])
        self.rng.bit_generator.state = meta["shuffle_rng"]
        self.model.dropout_rng.bit_generator.state = meta["dropout_rng"]
        self.epochs_done = int(meta["epochs_done"])
        self.sync_batch_norm = bool(meta.get("sync_batch_norm", True))
        self.history = History(**meta["history"])
        # Callback states: given to the callbacks with these keys when fit starts.
        states = {key: dict(value) for key, value in meta.get("callbacks", {}).items()}
        for name, value in arrays.items():
            if name.startswith(CALLBACK_PREFIX):
                key, _, rest = name[len(CALLBACK_PREFIX) :].partition("/")
                states.setdefault(key, {})[rest] = value
        self._callback_state = states


class _Tally:
    """An epoch's running metrics: the losses and correct counts of the steps since the
    last read stay on the device, and are summed over the processes and read back in
    one transfer per logging interval."""

    def __init__(self) -> None:
        self.pending: list[Array] = []  # each step's (share of the) mean loss, 0-d
        self.counts: list[int] = []  # each step's global batch size
        self.hits: Array | None = None  # correct count since the last read
        self.classifier = True
        self.correct: int | None = 0
        self.loss_sum, self.seen = 0.0, 0
        self.step_losses: list[float] = []

    def add(self, loss: Array, hits: Array | None, count: int) -> None:
        self.pending.append(loss)
        self.counts.append(count)
        self.seen += count
        if hits is None:
            self.classifier = False
        elif self.classifier:
            self.hits = hits if self.hits is None else self.hits + hits

    def read(self, strategy: Strategy, model: Sequential) -> list[float]:
        """The interval's global step losses, read at once; updates the totals."""
        xp = model.xp
        values = list(self.pending)
        if self.classifier:
            values.append(xp.astype(self.hits, model.dtype))
        summed = np.asarray(model.backend.to_numpy(strategy.sum(xp.stack(values))), np.float64)
        losses = [float(v) for v in summed[: len(self.pending)]]
        self.loss_sum += sum(v * c for v, c in zip(losses, self.counts))
        if self.classifier:
            self.correct = None if self.correct is None else self.correct + int(round(summed[-1]))
        else:
            self.correct = None
        self.pending, self.counts, self.hits = [], [], None
        return losses


def _check_fit_options(
    epochs: Any,
    batch_size: Any,
    eval_every: Any,
    early_stopping: Any,
    shuffle: Any,
    drop_last: Any,
) -> tuple[int, int, int]:
    """``fit``'s counts as ints, its switches as bools, or a clear error naming each."""
    if not isinstance(drop_last, bool):
        raise TypeError(f"drop_last: expected a bool, got {drop_last!r}")
    if not isinstance(shuffle, bool):  # "no" would be true
        raise TypeError(f"shuffle: expected True or False, got {shuffle!r}")
    if early_stopping is not None:
        positive_int(early_stopping, "early_stopping")
    return (
        positive_int(epochs, "epochs"),
        positive_int(batch_size, "batch_size"),
        positive_int(eval_every, "eval_every"),
    )
