"""How a training loop is distributed: the :class:`Strategy` protocol and the one-process
default, :class:`SingleProcess`.

The trainer has one epoch loop. It walks the global batches (the same ones for any
number of processes) and asks its strategy:

- :meth:`~Strategy.start`: before the first step, make every process hold the same
  model and optimizer state (and check they run the same thing);
- :meth:`~Strategy.rows`: which rows ``[lo, hi)`` of a global batch of ``count``
  examples this process trains on (an empty share is trained as a stand-in row of
  weight 0, so every process runs the same collectives);
- :meth:`~Strategy.begin_step` / :meth:`~Strategy.end_step`: around each step
  (weights of this process's share for the gradient hook and the statistics reducer);
- :attr:`~Strategy.gradient_hook`: applied between backward and the optimizer update
  (``None``: none);
- :meth:`~Strategy.sum`: the element-wise sum over processes of a 1-D array (metrics);
- :meth:`~Strategy.end_epoch`: combine the buffers (running statistics) before the
  model is validated or saved;
- :meth:`~Strategy.finish`: undo what :meth:`~Strategy.start` set on the model.

Batch-norm layers never import this code: a strategy that synchronises their
statistics sets each layer's ``stats_reducer`` in :meth:`~Strategy.start` and clears it
in :meth:`~Strategy.finish`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

Array = Any

__all__ = ["SingleProcess", "Strategy", "batch_norm_layers", "check_batch_statistics"]


def batch_norm_layers(model: Any) -> list[Any]:
    """The model's layers that take batch statistics (``stats_reducer`` attribute),
    nested ones (residual blocks) included, in forward order."""

    def walk(layers: list[Any]) -> Iterator[Any]:
        for layer in layers:
            if hasattr(layer, "children"):
                yield from walk([child for _, child in layer.children()])
            elif hasattr(type(layer), "stats_reducer"):
                yield layer

    return list(walk(list(model.layers)))


def check_batch_statistics(model: Any, sizes: Mapping[int, str], hint: str) -> None:
    """Raise ``ValueError`` before training when a batch-norm layer of ``model`` (built)
    would see one value per channel in a batch of one of ``sizes`` (examples -> what
    that batch is, for the message); ``hint`` ends the message (what to change)."""
    for layer in batch_norm_layers(model):
        per_example = 1
        for d in layer.input_shape[1:]:
            per_example *= int(d)
        for size, what in sorted(sizes.items()):
            if 0 < size * per_example < 2:
                raise ValueError(
                    f"batch_size: {what} has {size} example(s), and {layer.name} (input "
                    f"{tuple(layer.input_shape)}) needs more than one value per channel "
                    f"for its batch statistics; {hint}"
                )


class Strategy:
    """The protocol, with the behaviour of one process (every method is a no-op or the
    identity). Subclasses override what distribution changes."""

    #: this process's index and the number of processes
    rank = 0
    size = 1
    #: ``hook(grads) -> grads`` between backward and the update, or ``None``
    gradient_hook: Callable[[dict[str, Array]], dict[str, Array]] | None = None

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def start(self, model: Any, optimizer: Any, items: Mapping[str, Any]) -> None:
        """Before the first step of a fit: ``items`` (descriptions -> host values) must
        agree across processes; the model's parameters and the optimizer's state are
        made equal to the root's."""

    def rows(self, count: int) -> tuple[int, int]:
        """This process's rows ``[lo, hi)`` of a global batch of ``count`` examples."""
        return 0, count

    def begin_step(self, model: Any, examples: int, count: int) -> None:
        """Before a step on ``examples`` rows (0: a stand-in row) of a global batch of
        ``count``."""

    def end_step(self, model: Any) -> None:
        """After the step begun by :meth:`begin_step`."""

    def sum(self, values: Array) -> Array:
        """The element-wise sum over processes of ``values`` (k,)."""
        return values

    def end_epoch(self, model: Any) -> None:
        """Combine the model's buffers across processes (before validation and saving)."""

    def finish(self, model: Any) -> None:
        """Undo what :meth:`start` set on the model (after a fit, even a failed one)."""

    def check_batches(self, model: Any, batch_size: int, last: int) -> None:
        """Raise ``ValueError`` before training when a batch would be too small for a
        batch-norm layer (``last``: the size of the last global batch)."""
        check_batch_statistics(
            model,
            {batch_size: "a batch", last: "the last batch"},
            "pass drop_last=True (--drop-last) to skip the last partial batch, or pick a "
            "batch size that leaves at least 2 examples in it",
        )

    def record(self) -> dict[str, Any]:
        """The settings of this strategy that a resumed run must keep."""
        return {}


class SingleProcess(Strategy):
    """One process: every row of every batch, no hook, nothing to combine."""

    def __repr__(self) -> str:
        return "SingleProcess()"
