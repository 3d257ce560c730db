"""Sharding: which examples of each global batch every rank takes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

Array = Any

# --------------------------------------------------------------------------- data


def shard_range(count: int, rank: int, size: int) -> tuple[int, int]:
    """The contiguous share ``[start, stop)`` of ``count`` items that ``rank`` of ``size``
    takes: the first ``count % size`` ranks take one more (a share may be empty)."""
    if not 0 <= rank < size:
        raise ValueError(f"rank: expected a value in [0, {size}), got {rank}")
    base, extra = divmod(int(count), int(size))
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class ShardedSampler:
    """Global batches in one seeded order, each split over the ranks.

    One process with the same seed and batch size sees exactly the same global
    batches; rank ``r`` takes the ``r``-th contiguous share of each (see
    :func:`shard_range`), the last partial batch included.

    Args:
        num_examples: N, the dataset size (the same on every rank).
        batch_size: examples per global batch.
        rank, size: this rank and the number of ranks.
        seed: the shuffle of epoch ``e`` is ``default_rng([seed, e]).permutation(N)``.
        shuffle: without it, the order is 0..N-1.
    """

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        rank: int = 0,
        size: int = 1,
        *,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if num_examples < 1:
            raise ValueError(f"num_examples: expected >= 1, got {num_examples}")
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        shard_range(0, rank, size)  # checks rank and size
        self.num_examples, self.batch_size = int(num_examples), int(batch_size)
        self.rank, self.size, self.seed, self.shuffle = int(rank), int(size), int(seed), shuffle

    def __len__(self) -> int:
        return -(-self.num_examples // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The global order (N,) of epoch ``epoch``."""
        if not self.shuffle:
            return np.arange(self.num_examples)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(self.num_examples)

    def ranges(self) -> Iterator[tuple[int, int, int]]:
        """Per step: this rank's positions ``[start, stop)`` in the order, and the size
        of the global batch."""
        n, b = self.num_examples, self.batch_size
        for first in range(0, n, b):
            count = min(b, n - first)
            lo, hi = shard_range(count, self.rank, self.size)
            yield first + lo, first + hi, count

    def batches(self, order: np.ndarray) -> Iterator[tuple[np.ndarray, int]]:
        """Per step: this rank's indices (k,) into the dataset and the global batch size."""
        order = np.asarray(order)
        if order.shape != (self.num_examples,):
            raise ValueError(f"order: expected shape ({self.num_examples},), got {order.shape}")
        for lo, hi, count in self.ranges():
            yield order[lo:hi], count

    def epoch(self, epoch: int) -> Iterator[tuple[np.ndarray, int]]:
        """This rank's indices of every step of epoch ``epoch`` (seeded order)."""
        return self.batches(self.order(epoch))
