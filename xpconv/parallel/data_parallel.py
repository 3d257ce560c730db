"""Data-parallel training as a :class:`~xpconv.parallel.strategy.Strategy` over a
:class:`~xpconv.parallel.Communicator`.

Every rank holds the same model. Each trains on its contiguous share of every global
batch (:func:`~xpconv.parallel.shard_range`); the gradients are averaged,
weighted by the shares, in one all-reduce per step
(:class:`~xpconv.parallel.GradientAverager`); and, by default, every
batch-norm layer takes the statistics of the global batch (:class:`SyncStats`: one
small all-reduce per layer in the forward pass and one in the backward pass), so N
ranks train the model one process trains on the global batch. With
``sync_batch_norm=False`` each rank normalises with its own share's statistics and the
running statistics are averaged over the ranks at the end of each epoch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from array_api_compat import array_namespace

from xpconv.backends.registry import backend_of
from xpconv.parallel.agreement import broadcast_state, check_same
from xpconv.parallel.communicators import Communicator
from xpconv.parallel.gradients import GradientAverager
from xpconv.parallel.sharding import shard_range
from xpconv.parallel.strategy import Strategy, batch_norm_layers, check_batch_statistics

Array = Any

__all__ = ["DataParallel", "SyncStats"]


def _set_buffers(model: Any, values: Mapping[str, Array]) -> None:
    """Put buffer ``values`` (by ``model.buffers()`` name) into the model's layers."""
    for layer in model.layers:
        mine = {key: values[f"{layer.name}.{key}"] for key in layer.buffers}
        if mine:
            layer.buffers = {**layer.buffers, **mine}


class SyncStats:
    """A :class:`~xpconv.ops.norm.StatsReducer` over a communicator.

    ``fill`` is 1 when this rank trains real rows and 0 when it trains a stand-in row
    (its statistics then count for nothing); ``share`` is this rank's examples over the
    global batch's. The all-reduce runs through :meth:`Backend.host_call
    <xpconv.backends.registry.Backend.host_call>`: inside a compiled step as a host
    callback of the compiled code (JAX, PyTorch), elsewhere directly. ``calls`` counts
    the all-reduces.
    """

    def __init__(self, communicator: Communicator) -> None:
        self.communicator = communicator
        self.fill, self.share = 1.0, 1.0
        self.calls = 0
        self.seconds = 0.0

    def _host_gather(self, stats: np.ndarray) -> np.ndarray:
        stats = np.asarray(stats)
        rows = np.zeros((self.communicator.size, stats.shape[0]), dtype=stats.dtype)
        rows[self.communicator.rank] = stats * self.fill
        return self._reduce(rows.reshape(-1)).reshape(rows.shape)

    def _host_backward(self, sums: np.ndarray) -> np.ndarray:
        if self.share == 0.0:
            self._reduce(np.zeros_like(np.asarray(sums)))
            return np.zeros_like(np.asarray(sums))
        return self._reduce(np.asarray(sums) * self.share) / self.share

    def _reduce(self, host: np.ndarray) -> np.ndarray:
        import time

        start = time.perf_counter()
        self.calls += 1
        out = np.asarray(self.communicator.allreduce(np.ascontiguousarray(host)))
        self.seconds += time.perf_counter() - start
        return out.astype(host.dtype, copy=False)

    def _call(self, fn: Any, values: Array, shape: tuple[int, ...]) -> Array:
        return backend_of(values).host_call(fn, values, shape)

    def gather(self, stats: Array) -> Array:
        """Every rank's ``stats`` (k,) as rows of (size, k) (one all-reduce)."""
        return self._call(self._host_gather, stats, (self.communicator.size, stats.shape[0]))

    def backward(self, sums: Array) -> Array:
        """The global batch's ``sums`` (k,) in this rank's scale (one all-reduce)."""
        return self._call(self._host_backward, sums, tuple(sums.shape))


class DataParallel(Strategy):
    """Data parallelism over ``communicator`` (see the module docstring).

    Args:
        communicator: the ranks (``size`` 1 runs the same code in one process).
        sync_batch_norm: batch-norm layers take the global batch's statistics (default);
            ``False``: each rank's own share's, running statistics averaged per epoch.
    """

    def __init__(self, communicator: Communicator, *, sync_batch_norm: bool = True) -> None:
        if not isinstance(communicator, Communicator):
            raise TypeError(
                f"communicator: expected a Communicator, got {type(communicator).__name__}"
            )
        if not isinstance(sync_batch_norm, bool):
            raise TypeError(f"sync_batch_norm: expected a bool, got {sync_batch_norm!r}")
        self.communicator = communicator
        self.rank, self.size = communicator.rank, communicator.size
        self.sync_batch_norm = sync_batch_norm
        self.averager = GradientAverager(communicator)
        self.gradient_hook = self.averager
        self.reducer = SyncStats(communicator)
        self._kept: dict[str, Array] | None = None

    def __repr__(self) -> str:
        return f"DataParallel({self.communicator!r}, sync_batch_norm={self.sync_batch_norm})"

    def start(self, model: Any, optimizer: Any, items: Mapping[str, Any]) -> None:
        comm = self.communicator
        check_same(comm, {**items, "synchronised batch norm": self.sync_batch_norm})
        params, opt_state = model.parameters(), optimizer.state_arrays()
        state = {f"param/{k}": p.value for k, p in params.items()}
        state.update({f"buffer/{k}": v for k, v in model.buffers().items()})
        state.update({f"optimizer/{k}": v for k, v in opt_state.items()})
        state = broadcast_state(comm, state)
        for k, p in params.items():
            p.value = state[f"param/{k}"]
        _set_buffers(
            model, {k[len("buffer/") :]: v for k, v in state.items() if k.startswith("buffer/")}
        )
        optimizer.load_state_arrays(
            {k[len("optimizer/") :]: v for k, v in state.items() if k.startswith("optimizer/")}
        )
        if self.sync_batch_norm:
            for layer in batch_norm_layers(model):
                layer.stats_reducer = self.reducer

    def finish(self, model: Any) -> None:
        for layer in batch_norm_layers(model):
            if layer.stats_reducer is self.reducer:
                layer.stats_reducer = None

    def rows(self, count: int) -> tuple[int, int]:
        return shard_range(count, self.rank, self.size)

    def begin_step(self, model: Any, examples: int, count: int) -> None:
        self.averager.examples = examples
        self.reducer.fill = 1.0 if examples else 0.0
        self.reducer.share = examples / count
        if not examples and not self.sync_batch_norm:  # a stand-in row's statistics
            self._kept = {k: v for k, v in model.buffers().items()}

    def end_step(self, model: Any) -> None:
        if self._kept is not None:
            _set_buffers(model, self._kept)
            self._kept = None

    def sum(self, values: Array) -> Array:
        return self.communicator.allreduce(values)

    def end_epoch(self, model: Any) -> None:
        """Per-rank statistics: the running statistics become their mean over the
        ranks (synchronised ones are equal already)."""
        buffers = model.buffers()
        if self.sync_batch_norm or not buffers:
            return
        xp = array_namespace(*buffers.values())
        flat = xp.concat([xp.reshape(v, (-1,)) for v in buffers.values()])
        mean = self.communicator.allreduce(flat) / self.size
        out, offset = {}, 0
        for name, v in buffers.items():
            size = int(np.prod(v.shape, dtype=np.int64))
            out[name] = xp.reshape(mean[offset : offset + size], tuple(v.shape))
            offset += size
        _set_buffers(model, out)

    def check_batches(self, model: Any, batch_size: int, last: int) -> None:
        if self.sync_batch_norm:
            super().check_batches(model, batch_size, last)
            return
        sizes: dict[int, str] = {}
        for count, what in ((batch_size, "a batch"), (last, "the last batch")):
            for r in range(self.size):
                lo, hi = shard_range(count, r, self.size)
                sizes.setdefault(hi - lo, f"rank {r}'s share of {what} (per-rank statistics)")
        check_batch_statistics(
            model,
            sizes,
            "synchronise the statistics (sync_batch_norm=True), pass drop_last=True, or "
            "pick a batch size that gives every rank at least 2 examples",
        )

    def record(self) -> dict[str, Any]:
        return {"sync_batch_norm": self.sync_batch_norm}
