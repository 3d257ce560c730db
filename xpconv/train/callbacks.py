"""Callbacks: what the :class:`~xpconv.train.trainer.Trainer` does around its loop, as objects.

    trainer = Trainer(model, optimizer, callbacks=[Checkpoint("run/training.npz"), EpochLogger()])
    trainer.fit(x, y, epochs=5, validation_data=(x_val, y_val), early_stopping=2)

A callback subclasses :class:`Callback` and overrides the hooks it needs; each receives
the trainer, whose ``history``, ``epochs_done``, ``model``, ``optimizer`` and ``run`` (a
:class:`RunInfo`) it may read. The trainer calls, in this order:

* ``on_fit_start(trainer)`` once, when ``fit`` has checked its data;
* ``on_epoch_start(trainer, epoch)`` before each epoch (``epoch`` counts from 1);
* ``on_batch_end(trainer, logs)`` after every step, with a :class:`BatchLogs`; the losses
  are read from the device only every ``log_every`` steps (``logs.logged``), so a
  callback never forces a device synchronisation of its own;
* ``on_epoch_end(trainer)`` once the epoch's history entry (and validation) is recorded;
  setting ``trainer.stop_training = True`` ends the run after this epoch;
* ``on_fit_end(trainer)`` when the run ends normally, or ``on_fit_abort(trainer, error)``
  when an exception (a :class:`TrainingError`, an interrupt) ends it.

A callback with a ``state_key`` has its :meth:`Callback.state` saved in ``training.npz``
by :func:`~xpconv.train.checkpoints.save_training` (NumPy arrays as arrays, the rest as JSON) and
given back to :meth:`Callback.load_state` when a resumed trainer starts ``fit``, so a
resumed run continues exactly where the saved one stopped.

Built-ins: :class:`NaNGuard` (always on), :class:`ProgressBar` (``progress=True``),
:class:`EarlyStopping` (``fit(early_stopping=N)``), :class:`LambdaCallback`
(``fit(on_epoch_end=f)``), :class:`Checkpoint` and :class:`EpochLogger` (what the command
line adds).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from xpconv.io.files import progress_bar
from xpconv.ops.checks import positive_int

if TYPE_CHECKING:  # pragma: no cover
    from xpconv.train.trainer import Trainer

__all__ = [
    "BatchLogs",
    "Callback",
    "Checkpoint",
    "EarlyStopping",
    "EpochLogger",
    "LambdaCallback",
    "NaNGuard",
    "ProgressBar",
    "RunInfo",
    "TrainingError",
]


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss); the message names epoch and step."""


@dataclass(frozen=True)
class RunInfo:
    """What ``fit`` was asked to do (``trainer.run`` while it runs).

    Attributes:
        epochs: the total number of epochs of the run (resumed runs included).
        batch_size: examples per step (the global batch when distributed).
        steps: steps per epoch.
        examples: training examples per epoch.
        validation: whether validation data was given.
    """

    epochs: int
    batch_size: int
    steps: int
    examples: int
    validation: bool


@dataclass
class BatchLogs:
    """What ``on_batch_end`` is told about the step just done.

    Attributes:
        epoch: the epoch, counting from 1.
        step: the step within the epoch, counting from 1.
        examples: examples in this step (the global batch when distributed).
        seen: examples done so far in this epoch.
        seconds: seconds since the epoch started.
        logged: whether the losses were read from the device at this step (every
            ``log_every`` steps and at the last step of an epoch).
        step_losses: with ``logged``, the loss of each step since the previous read,
            oldest first (host floats); otherwise empty.
        loss: with ``logged``, the mean loss of the epoch so far; otherwise ``None``.
    """

    epoch: int
    step: int
    examples: int
    seen: int
    seconds: float
    logged: bool = False
    step_losses: list[float] = field(default_factory=list)
    loss: float | None = None


class Callback:
    """Base of every callback: each hook does nothing until overridden.

    Attributes:
        state_key: the name under which :meth:`state` is saved in a training checkpoint;
            ``None`` (the default) for a callback without state. Two callbacks of one
            trainer cannot share a key.
    """

    state_key: str | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        """``fit`` has checked its data and is about to run the first epoch."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Epoch ``epoch`` (counting from 1) is about to start."""

    def on_batch_end(self, trainer: Trainer, logs: BatchLogs) -> None:
        """A step is done; see :class:`BatchLogs`."""

    def on_epoch_end(self, trainer: Trainer) -> None:
        """The epoch's entry of ``trainer.history`` is recorded."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """The run ended normally (all epochs done, or stopped by a callback)."""

    def on_fit_abort(self, trainer: Trainer, error: BaseException) -> None:
        """The run is ending with ``error``, which is raised again after this hook."""

    def state(self) -> dict[str, Any]:
        """What a resumed run needs: a flat dict of JSON values (numbers, strings,
        None, lists) and host NumPy arrays."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned."""


def _is_root(trainer: Trainer) -> bool:
    comm = trainer.communicator
    return comm is None or comm.is_root


class NaNGuard(Callback):
    """Stops training with a :class:`TrainingError` naming the epoch and step as soon as
    a loss read from the device is NaN or infinite (read every ``log_every`` steps)."""

    def on_batch_end(self, trainer: Trainer, logs: BatchLogs) -> None:
        values = logs.step_losses
        if all(math.isfinite(v) for v in values):
            return
        bad = next(i for i, v in enumerate(values) if not math.isfinite(v))
        step = logs.step - len(values) + bad + 1
        raise TrainingError(
            f"loss became {values[bad]} at epoch {logs.epoch}, step {step}; "
            "training stopped (lower the learning rate or check the data for NaN/inf); "
            "checkpoints written before this point are kept"
        )


class ProgressBar(Callback):
    """A tqdm bar per epoch (images done, running loss and images per second), on the
    root rank only; nothing when tqdm is not installed."""

    def __init__(self) -> None:
        self._bar: Any = None

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self._close()
        run = trainer.run
        self._bar = progress_bar(_is_root(trainer), run.examples, f"epoch {epoch}/{run.epochs}")

    def on_batch_end(self, trainer: Trainer, logs: BatchLogs) -> None:
        bar = self._bar
        if bar is None:
            return
        if logs.logged:
            bar.set_postfix(
                loss=f"{logs.loss:.4f}",
                img_s=f"{logs.seen / logs.seconds if logs.seconds > 0 else 0:.0f}",
            )
        bar.update(logs.examples)
        if logs.seen >= trainer.run.examples:
            self._close()

    def on_fit_end(self, trainer: Trainer) -> None:
        self._close()

    def on_fit_abort(self, trainer: Trainer, error: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class EarlyStopping(Callback):
    """Stops the run after ``patience`` evaluations without a lower validation loss
    (the training loss when ``fit`` has no validation data), and with ``restore_best``
    puts back the weights of the best epoch when the run ends.

    Its state (the best loss, the count of evaluations since, and the best weights) is
    saved in training checkpoints, so a resumed run stops where an uninterrupted one
    would; a run that had stopped, resumed (or fitted again), trains no more epochs.

    Args:
        patience: evaluations without improvement before stopping (positive).
        restore_best: load the best epoch's weights at the end of the run.
    """

    state_key = "early_stopping"

    def __init__(self, patience: int, *, restore_best: bool = True) -> None:
        self.patience = positive_int(patience, "patience")
        self.restore_best = bool(restore_best)
        self.best: float | None = None
        self.waited = 0
        self.best_weights: dict[str, np.ndarray] | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.waited >= self.patience:  # the run had stopped (a checkpoint of its end)
            trainer.stop_training = True

    def on_epoch_end(self, trainer: Trainer) -> None:
        h = trainer.history
        if trainer.run.validation:
            if h.val_loss[-1] is None:  # not an evaluation epoch
                return
            monitored = h.val_loss[-1]
        else:
            monitored = h.loss[-1]
        if self.best is None or monitored < self.best:
            self.best, self.waited = float(monitored), 0
            self.best_weights = trainer.model.state_dict()
            return
        self.waited += 1
        if self.waited >= self.patience:
            trainer.stop_training = True

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.restore_best and self.best_weights is not None:
            trainer.model.load_state_dict(self.best_weights)

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"best": self.best, "waited": self.waited}
        for name, value in (self.best_weights or {}).items():
            state[f"weights/{name}"] = value
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        best, waited = state.get("best"), state.get("waited", 0)
        if best is not None and (isinstance(best, bool) or not isinstance(best, (int, float))):
            raise ValueError(f"early_stopping.best: expected a number or None, got {best!r}")
        if isinstance(waited, bool) or not isinstance(waited, int) or waited < 0:
            raise ValueError(f"early_stopping.waited: expected an int >= 0, got {waited!r}")
        prefix = "weights/"
        weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        self.best = None if best is None else float(best)
        self.waited = waited
        self.best_weights = weights or None


class LambdaCallback(Callback):
    """A callback made of plain functions, e.g. ``LambdaCallback(on_epoch_end=f)``: each
    given function is called with the hook's arguments (the trainer first)."""

    def __init__(
        self,
        *,
        on_fit_start: Callable[..., None] | None = None,
        on_epoch_start: Callable[..., None] | None = None,
        on_batch_end: Callable[..., None] | None = None,
        on_epoch_end: Callable[..., None] | None = None,
        on_fit_end: Callable[..., None] | None = None,
    ) -> None:
        functions = {
            "on_fit_start": on_fit_start,
            "on_epoch_start": on_epoch_start,
            "on_batch_end": on_batch_end,
            "on_epoch_end": on_epoch_end,
            "on_fit_end": on_fit_end,
        }
        for name, function in functions.items():
            if function is not None and not callable(function):
                raise TypeError(f"{name}: expected a callable, got {type(function).__name__}")
            if function is not None:
                setattr(self, name, function)


class Checkpoint(Callback):
    """Writes a training checkpoint (:func:`~xpconv.train.checkpoints.save_training`, atomic) to
    ``path`` after every ``every`` epochs and after the last one, on the root rank.

    Args:
        path: the file to write (its directory must exist), e.g. ``run/training.npz``.
        extra: more JSON metadata stored with it (e.g. the settings of the run).
        every: epochs between checkpoints (positive).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, extra: dict[str, Any] | None = None, every: int = 1
    ) -> None:
        self.path = path
        self.extra = extra
        self.every = positive_int(every, "every")

    def on_epoch_end(self, trainer: Trainer) -> None:
        from xpconv.train.checkpoints import save_training

        done = trainer.epochs_done
        last = done >= trainer.run.epochs or trainer.stop_training
        if _is_root(trainer) and (done % self.every == 0 or last):
            save_training(trainer, self.path, extra=self.extra)


class EpochLogger(Callback):
    """Prints one line per epoch on the root rank, e.g.
    ``epoch 2/5: loss 0.1234 acc 96.10%, test loss 0.0987 acc 96.80% (3.2 s, 18750 img/s)``.

    After the first line of a run, a second line says what the figures are (with
    ``legend=True``, the default): the training loss and accuracy are means over the
    epoch's batches, taken while the weights changed, so early batches weigh in; the
    validation ones are the weights at the epoch's end.

    Args:
        validation_name: what the validation set is called in the line.
        file: where to print (default: standard output at the time of printing).
        legend: print that explanation once per run.
    """

    def __init__(
        self, *, validation_name: str = "test", file: Any = None, legend: bool = True
    ) -> None:
        self.validation_name = validation_name
        self.file = file
        self.legend = legend
        self._explained = False

    def on_fit_start(self, trainer: Trainer) -> None:
        self._explained = not self.legend

    def _explain(self, validated: bool) -> str:
        text = (
            "  (loss, acc: means over this epoch's training batches, taken while the "
            "weights changed"
        )
        if validated:
            text += f"; {self.validation_name} loss, acc: the weights at the epoch's end"
        return text + ")"

    def on_epoch_end(self, trainer: Trainer) -> None:
        if not _is_root(trainer):
            return
        h = trainer.history
        val = ""
        if h.val_loss[-1] is not None:
            val = f", {self.validation_name} loss {h.val_loss[-1]:.4f} acc {h.val_accuracy[-1]:.2%}"
        print(
            f"epoch {h.epoch[-1]}/{trainer.run.epochs}: loss {h.loss[-1]:.4f} acc "
            f"{h.accuracy[-1]:.2%}{val} ({h.seconds[-1]:.1f} s, "
            f"{h.images_per_second[-1]:.0f} img/s)",
            file=self.file if self.file is not None else sys.stdout,
            flush=True,
        )
        if not self._explained:
            self._explained = True
            print(
                self._explain(h.val_loss[-1] is not None),
                file=self.file if self.file is not None else sys.stdout,
                flush=True,
            )
