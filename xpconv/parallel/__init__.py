"""Data-parallel training: communicators (MPI, NCCL), sharding, gradient averaging, and
the distribution strategies the Trainer's loop is handed (one process, data parallel)."""

from __future__ import annotations

from xpconv.parallel.data_parallel import DataParallel, SyncStats
from xpconv.parallel.distributed import (
    Communicator,
    DistributedError,
    GradientAverager,
    MPICommunicator,
    NCCLCommunicator,
    ShardedSampler,
    SingleProcessCommunicator,
    broadcast_state,
    check_same,
    get_communicator,
    launched_by_mpi,
    shard_range,
    share_cores,
)
from xpconv.parallel.strategy import SingleProcess, Strategy

__all__ = [
    "Communicator",
    "DataParallel",
    "SingleProcess",
    "Strategy",
    "SyncStats",
    "DistributedError",
    "GradientAverager",
    "MPICommunicator",
    "NCCLCommunicator",
    "ShardedSampler",
    "SingleProcessCommunicator",
    "broadcast_state",
    "check_same",
    "get_communicator",
    "launched_by_mpi",
    "shard_range",
    "share_cores",
]
