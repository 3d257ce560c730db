"""Data-parallel training: communicators (MPI, NCCL), sharding, gradient averaging."""

from __future__ import annotations

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

__all__ = [
    "Communicator",
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
