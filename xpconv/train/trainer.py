"""Trainer: mini-batch training with shuffling, validation, early stopping and resume.

    trainer = Trainer(model, SGD(0.1, momentum=0.9, final_lr=0.05), seed=0)
    history = trainer.fit(x_train, y_train, epochs=1, batch_size=60,
                          validation_data=(x_test, y_test))

Metrics stay on the device during an epoch and are read once per logging interval
(``log_every`` steps), so a GPU is not synchronised on every step. A loss that becomes
NaN or infinite stops training with :class:`TrainingError` naming the epoch and step.

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

from xpconv.backends.numpy import host
from xpconv.backends.registry import backend_of
from xpconv.data.augment import Augment
from xpconv.nn.sequential import Sequential
from xpconv.ops.checks import positive_int
from xpconv.ops.targets import count_correct
from xpconv.optim.optimizers import Optimizer
from xpconv.parallel.distributed import Communicator
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
        communicator: a :class:`~xpconv.parallel.distributed.Communicator` for data-parallel
            training: every rank takes its share of each global batch (``batch_size``),
            gradients are averaged in one all-reduce per step by a
            :class:`~xpconv.parallel.distributed.GradientAverager` (the gradient hook, run after
            backward and before the optimizer update), validation is sharded, and the
            reported metrics are those of the global batches. ``None``: one process.
        augment: an :class:`~xpconv.data.augment.Augment` applied to every training batch on
            the host, drawing from the shuffling generator (so resume stays exact).
        callbacks: :class:`~xpconv.train.callbacks.Callback` objects called around every
            ``fit`` (after the built-in :class:`~xpconv.train.callbacks.NaNGuard`, early
            stopping and :class:`~xpconv.train.callbacks.ProgressBar`, before ``fit``'s
            ``on_epoch_end``); their state is saved with the trainer's.

    Attributes:
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
    ) -> None:
        if not isinstance(model, Sequential):
            raise TypeError(f"model: expected a Sequential, got {type(model).__name__}")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer: expected an Optimizer, got {type(optimizer).__name__}")
        self.model, self.optimizer = model, optimizer
        # the whole step (compiled on JAX); replace it to add a gradient hook
        self.train_step = TrainStep(model, optimizer)
        self.seed = seed
        self.rng = np.random.default_rng([seed, 2])
        self.progress = progress
        self.log_every = positive_int(log_every, "log_every")
        if augment is not None and not isinstance(augment, Augment):
            raise TypeError(f"augment: expected an Augment or None, got {type(augment).__name__}")
        self.augment = augment if augment is not None and augment.active else None
        self.epochs_done = 0
        self.history = History()
        if communicator is not None and not isinstance(communicator, Communicator):
            raise TypeError(
                f"communicator: expected a Communicator or None, got {type(communicator).__name__}"
            )
        self.communicator = communicator
        self.gradient_hook: Callable[[dict[str, Array]], dict[str, Array]] | None = None
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
    ) -> History:
        """Train until ``epochs`` epochs are done in total (resumed runs continue).

        Args:
            x: training inputs (N, *input_shape), host NumPy or arrays of the model's backend.
            y: integer labels (N,) in [0, classes) or float targets (N, *output_shape).
            epochs: total number of epochs of the run.
            batch_size: examples per step (the last batch may be smaller).
            validation_data: optional (x_val, y_val), evaluated every ``eval_every`` epochs.
            early_stopping: stop after this many evaluations without improvement of the
                validation loss (training loss without validation data).
            restore_best: with early stopping, put back the weights of the best epoch.
            shuffle: reshuffle the examples every epoch (from the trainer's seed); a
                bool (anything else, such as ``"no"``, is a TypeError).
            on_epoch_end: called with the trainer after every epoch (checkpoints).

        Returns:
            The :class:`History` of the whole run.
        """
        epochs = positive_int(epochs, "epochs")
        batch_size = positive_int(batch_size, "batch_size")
        eval_every = positive_int(eval_every, "eval_every")
        if not isinstance(shuffle, bool):  # "no" would be true
            raise TypeError(f"shuffle: expected True or False, got {shuffle!r}")
        if early_stopping is not None:
            positive_int(early_stopping, "early_stopping")
        x_dev, y_dev = self._prepare(x, y, "x", "y")
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError(
                    f"validation_data: expected a pair (x_val, y_val), got "
                    f"{type(validation_data).__name__}"
                )
            val = self._prepare(*validation_data, "x_val", "y_val")
        self._bind_optimizer()
        n = int(x_dev.shape[0])
        steps = math.ceil(n / batch_size)
        host.tune_host()  # process-wide; XPCONV_HOST_TUNING=0 turns it off
        self.optimizer.setup(epochs * steps)
        run_epoch = self._run_epoch
        if self._distributed:
            self._start_distributed(x_dev, y_dev, val, epochs, batch_size, shuffle)
            run_epoch = self._run_epoch_distributed
        self.run = RunInfo(epochs, batch_size, steps, n, val is not None)
        self.stop_training = False
        self._start_callbacks(early_stopping, restore_best, on_epoch_end)
        try:
            self._each_callback("on_fit_start")
            for epoch in range(self.epochs_done, epochs):
                self._each_callback("on_epoch_start", epoch + 1)
                loss, acc, seconds = run_epoch(x_dev, y_dev, epoch, epochs, batch_size, shuffle)
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
        self.model.eval()
        return self.history

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
        self, x: Array, y: Array, epoch: int, epochs: int, batch_size: int, shuffle: bool
    ) -> tuple[float, float, float]:
        model, be, xp = self.model, self.model.backend, self.model.xp
        n = int(x.shape[0])
        order_host = self.rng.permutation(n) if shuffle else np.arange(n)
        order = be.asarray(order_host)  # one transfer
        x_host = None if self.augment is None else be.to_numpy(x)
        model.train()
        step_fn = self.train_step
        if step_fn.model is not model or step_fn.optimizer is not self.optimizer:
            # the model or optimizer was replaced: a step for the new pair, same hook
            step_fn = TrainStep(model, self.optimizer, gradient_hook=step_fn.gradient_hook)
            self.train_step = step_fn
        start = time.perf_counter()
        loss_sum, correct, pending = 0.0, 0, []
        seen, step_losses = 0, []
        for step, first in enumerate(range(0, n, batch_size)):
            idx = order[first : min(first + batch_size, n)]
            host.balance_threads()  # one thread while the machine is busy
            if x_host is None:
                xb = xp.take(x, idx, axis=0)
            else:  # augmented on the host from the seeded generator, then moved
                rows = order_host[first : min(first + batch_size, n)]
                xb = be.asarray(self.augment(x_host[rows], self.rng), dtype=model.dtype)
            yb = xp.take(y, idx, axis=0)
            loss = step_fn(xb, yb, validate=False)  # checked by _prepare
            count = int(idx.shape[0])
            pending.append(loss)
            loss_sum = loss_sum + loss * count
            hits = count_correct(xp, model.last_output, yb)
            correct = None if hits is None or correct is None else correct + hits
            seen += count
            if (step + 1) % self.log_every == 0 or first + batch_size >= n:
                losses, pending = self._read_losses(pending), []
                self._end_batch(
                    step_losses, epoch, step, count, seen, start, losses, float(loss_sum)
                )
            else:
                self._end_batch(step_losses, epoch, step, count, seen, start)
        seconds = time.perf_counter() - start
        self.history.step_losses.append(step_losses)
        accuracy = float("nan") if correct is None else int(correct) / n
        return float(loss_sum) / n, accuracy, seconds

    def _read_losses(self, losses: list[Array]) -> list[float]:
        """Move the interval's losses to the host in one transfer (the NaN guard, a
        callback, checks them)."""
        model = self.model
        return [float(v) for v in model.backend.to_numpy(model.xp.stack(losses))]

    # ------------------------------------------------------------------ data parallel
    @property
    def _distributed(self) -> bool:
        return self.communicator is not None and self.communicator.size > 1

    def _start_distributed(
        self,
        x: Array,
        y: Array,
        val: tuple[Array, Array] | None,
        epochs: int,
        batch_size: int,
        shuffle: bool,
    ) -> None:
        """Check that every rank runs the same model, optimizer and data, then start
        every rank from rank 0's parameters and optimizer state (one broadcast)."""
        from xpconv.parallel.distributed import GradientAverager, broadcast_state, check_same

        comm, model, opt = self.communicator, self.model, self.optimizer
        be = model.backend
        params = model.parameters()
        opt_state = opt.state_arrays()
        items: dict[str, Any] = {
            "the model": (model.get_config(), model.dtype_name, [p.shape for p in params.values()]),
            "the optimizer": (
                opt.get_config(),
                opt.step_count,
                sorted((k, tuple(v.shape)) for k, v in opt_state.items()),
            ),
            "the run (epochs done, epochs, batch size, shuffle, seed, shuffling state)": (
                self.epochs_done,
                epochs,
                batch_size,
                shuffle,
                self.seed,
                self.rng.bit_generator.state,
            ),
            "the training images": be.to_numpy(x),
            "the training labels": be.to_numpy(y),
        }
        if val is not None:
            items["the validation images"] = be.to_numpy(val[0])
            items["the validation labels"] = be.to_numpy(val[1])
        check_same(comm, items)
        state = {f"param/{k}": p.value for k, p in params.items()}
        state.update({f"optimizer/{k}": v for k, v in opt_state.items()})
        state = broadcast_state(comm, state)
        for k, p in params.items():
            p.value = state[f"param/{k}"]
        opt.load_state_arrays(
            {k[len("optimizer/") :]: v for k, v in state.items() if k.startswith("optimizer/")}
        )
        if comm.rank > 0:  # dropout masks: a stream of its own per rank, far from rank 0's
            bits = model.dropout_rng.bit_generator
            bits.state = bits.jumped(comm.rank).state
        self.gradient_hook = GradientAverager(comm)

    def _apply_gradient_hook(self, params: dict[str, Any], examples: int) -> None:
        """The gradient hook point: after backward, before the optimizer update, the
        gradients (averaged over ``examples`` on this rank) are replaced by the hook's."""
        self.gradient_hook.examples = examples
        grads = self.gradient_hook({name: p.grad for name, p in params.items()})
        for name, p in params.items():
            p.grad = grads[name]

    def _run_epoch_distributed(
        self, x: Array, y: Array, epoch: int, epochs: int, batch_size: int, shuffle: bool
    ) -> tuple[float, float, float]:
        """One epoch of this rank's shares of the global batches; the returned loss and
        accuracy (and the step losses) are those of the global batches."""
        from xpconv.parallel.distributed import ShardedSampler

        comm = self.communicator
        model, be, xp = self.model, self.model.backend, self.model.xp
        n = int(x.shape[0])
        order = be.asarray(self.rng.permutation(n) if shuffle else np.arange(n))  # one transfer
        sampler = ShardedSampler(n, batch_size, comm.rank, comm.size)
        model.train()
        params = model.parameters()
        start = time.perf_counter()
        loss_sum, correct, seen, step_losses = 0.0, 0, 0, []
        pending, counts, hits_sum = [], [], xp.zeros((), dtype=model.dtype, device=be.device)
        for step, (lo, hi, count) in enumerate(sampler.ranges()):
            local = hi - lo
            if local:
                idx = order[lo:hi]
                xb, yb = xp.take(x, idx, axis=0), xp.take(y, idx, axis=0)
                loss = model.train_batch(xb, yb, validate=False)  # checked by _prepare
                pending.append(loss * local)
                hits = count_correct(xp, model.last_output, yb)
                if hits is not None:
                    hits_sum = hits_sum + xp.astype(hits, model.dtype)
            else:  # a global batch smaller than the number of ranks
                for p in params.values():
                    p.grad = xp.zeros(p.shape, dtype=model.dtype, device=be.device)
                pending.append(xp.zeros((), dtype=model.dtype, device=be.device))
            self._apply_gradient_hook(params, local)
            self.optimizer.step(params)
            counts.append(count)
            seen += count
            if (step + 1) % self.log_every == 0 or step + 1 == len(sampler):
                # One all-reduce of the interval's weighted losses and hit count.
                summed = comm.allreduce(xp.stack([*pending, hits_sum]))
                totals = np.asarray(be.to_numpy(summed), dtype=np.float64)
                means = summed[:-1] / be.asarray(np.asarray(counts), dtype=model.dtype)
                losses = self._read_losses([means[i] for i in range(len(counts))])
                loss_sum += float(np.sum(totals[:-1]))
                correct += int(round(totals[-1]))
                pending, counts = [], []
                hits_sum = xp.zeros((), dtype=model.dtype, device=be.device)
                self._end_batch(step_losses, epoch, step, count, seen, start, losses, loss_sum)
            else:
                self._end_batch(step_losses, epoch, step, count, seen, start)
        seconds = time.perf_counter() - start
        self.history.step_losses.append(step_losses)
        return loss_sum / n, correct / n, seconds

    def _evaluate(self, x: Array, y: Array) -> dict[str, float]:
        """Validation loss and accuracy; distributed, each rank evaluates its share."""
        if not self._distributed:
            return self.model.evaluate(x, y)
        from xpconv.parallel.distributed import shard_range

        comm = self.communicator
        n = int(x.shape[0])
        lo, hi = shard_range(n, comm.rank, comm.size)
        local = np.zeros(2)
        if hi > lo:
            m = self.model.evaluate(x[lo:hi, ...], y[lo:hi, ...])
            local = np.asarray([m["loss"] * (hi - lo), round(m["accuracy"] * (hi - lo))])
        total = np.asarray(comm.allreduce(local), dtype=np.float64)
        return {"loss": float(total[0]) / n, "accuracy": int(round(total[1])) / n}

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
        self.history = History(**meta["history"])
        # Callback states: given to the callbacks with these keys when fit starts.
        states = {key: dict(value) for key, value in meta.get("callbacks", {}).items()}
        for name, value in arrays.items():
            if name.startswith(CALLBACK_PREFIX):
                key, _, rest = name[len(CALLBACK_PREFIX) :].partition("/")
                states.setdefault(key, {})[rest] = value
        self._callback_state = states
