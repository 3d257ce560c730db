"""Data-parallel training: communicators over MPI (mpi4py) and NCCL, one gradient bucket.

The parts live in modules of one job each: :mod:`~xpconv.parallel.communicators`,
:mod:`~xpconv.parallel.sharding`, :mod:`~xpconv.parallel.gradients`,
:mod:`~xpconv.parallel.agreement`, and the strategies the Trainer's one loop is handed,
:mod:`~xpconv.parallel.strategy` (one process) and :mod:`~xpconv.parallel.data_parallel`
(data parallel, with synchronised batch norm).

Every rank (process) holds the same model. Each takes its share of every global batch,
computes gradients, and :class:`GradientAverager` averages them over all ranks with one
all-reduce of one flat buffer per step, so every rank applies the same update.

    comm = MPICommunicator()                       # under: mpiexec -n 2 python train.py
    trainer = Trainer(model, optimizer, communicator=comm)
    trainer.fit(x, y, batch_size=128)              # 128 = the global batch

A communicator offers ``rank``, ``size``, :meth:`~Communicator.broadcast`,
:meth:`~Communicator.allreduce` (sum of one flat buffer) and
:meth:`~Communicator.barrier`; the engines are existing ones, never a protocol of ours:

- :class:`SingleProcessCommunicator`: size 1, the same code without MPI;
- :class:`MPICommunicator`: mpi4py (``pip install 'xpconv[mpi]'`` brings mpi4py and
  MPICH). Host arrays go through MPI directly; device arrays (CuPy, torch CUDA) go
  through ``__cuda_array_interface__`` after a stream sync when the MPI is CUDA-aware
  (``XPCONV_MPI_CUDA_AWARE=1``), otherwise through a host copy;
- :class:`NCCLCommunicator`: NCCL for GPU arrays, through ``cupy.cuda.nccl`` (backend
  cupy) or ``torch.distributed`` (backend torch), bootstrapped over MPI.

Faults: MPI collectives wait at most ``timeout`` seconds; a rank that raises inside
:meth:`Communicator.abort_on_error` (or waits too long) prints its error and calls
``MPI_Abort``, so the launcher ends every rank instead of leaving them blocked.
"""

from __future__ import annotations

from xpconv.parallel.agreement import broadcast_state, check_same
from xpconv.parallel.communicators import (
    Communicator,
    DistributedError,
    MPICommunicator,
    NCCLCommunicator,
    SingleProcessCommunicator,
    get_communicator,
    launched_by_mpi,
    share_cores,
)
from xpconv.parallel.data_parallel import DataParallel, SyncStats
from xpconv.parallel.gradients import GradientAverager
from xpconv.parallel.sharding import ShardedSampler, shard_range
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
