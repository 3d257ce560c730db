"""The communicators in one process: the MPI communicator over an in-memory stand-in
for mpi4py (ranks are threads; a collective completes once every rank has posted it),
its timeouts and aborts, and the errors of a missing or unsuitable engine.

Whole runs under ``mpiexec`` are in test_distributed.py.
"""

from __future__ import annotations

import sys
import threading
import time
import types

import numpy as np
import pytest

from xpconv.backends.registry import get_backend
from xpconv.parallel import (
    DistributedError,
    MPICommunicator,
    NCCLCommunicator,
    SingleProcessCommunicator,
    get_communicator,
)
from xpconv.parallel.communicators import Communicator

HANG = 10.0  # seconds a stand-in wait gives up after (a hang in the code under test)


class _Aborted(SystemExit):
    """MPI_Abort ends the process; in the stand-in it ends the waiting rank's thread."""


class _World:
    """``size`` ranks; collective k of every rank meets in ``rounds[k]``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.cond = threading.Condition()
        self.rounds: dict[int, dict[int, np.ndarray | None]] = {}
        self.aborted: int | None = None

    def comm(self, rank: int) -> _Comm:
        return _Comm(self, rank)


class _Request:
    def __init__(self, world: _World, k: int, finish) -> None:
        self.world, self.k, self.finish, self.done = world, k, finish, False

    def _complete(self) -> bool:
        posted = self.world.rounds[self.k]
        if not self.done and len(posted) == self.world.size:
            self.finish(posted)
            self.done = True
        return self.done

    def Test(self) -> bool:  # noqa: N802 (mpi4py's names)
        with self.world.cond:
            return self._complete()

    def Wait(self) -> None:  # noqa: N802
        end = time.monotonic() + HANG
        with self.world.cond:
            while not self._complete():
                if self.world.aborted is not None:
                    raise _Aborted(self.world.aborted)
                assert time.monotonic() < end, "the collective hung"
                self.world.cond.wait(0.01)


class _Comm:
    """One rank's ``mpi4py.MPI.Comm``: the non-blocking collectives the communicator uses."""

    def __init__(self, world: _World, rank: int) -> None:
        self.world, self.rank, self.posted = world, rank, 0

    def Get_rank(self) -> int:  # noqa: N802
        return self.rank

    def Get_size(self) -> int:  # noqa: N802
        return self.world.size

    def _post(self, value, finish) -> _Request:
        with self.world.cond:
            k, self.posted = self.posted, self.posted + 1
            self.world.rounds.setdefault(k, {})[self.rank] = value
            self.world.cond.notify_all()
        return _Request(self.world, k, finish)

    def Iallreduce(self, send, recv, op) -> _Request:  # noqa: N802
        assert op == "sum"

        def finish(posted):
            recv[...] = sum(posted[r] for r in sorted(posted))

        return self._post(np.array(send, copy=True), finish)

    def Ibcast(self, data, root) -> _Request:  # noqa: N802
        def finish(posted):
            data[...] = posted[root]

        return self._post(np.array(data, copy=True), finish)

    def Ibarrier(self) -> _Request:  # noqa: N802
        return self._post(None, lambda posted: None)

    def bcast(self, obj, root=0):
        return obj

    def Abort(self, code) -> None:  # noqa: N802
        with self.world.cond:
            self.world.aborted = code
            self.world.cond.notify_all()
        if threading.current_thread() is not threading.main_thread():
            threading.Event().wait()  # MPI_Abort does not return (a daemon watchdog)


@pytest.fixture
def mpi(monkeypatch):
    """The stand-in ``mpi4py.MPI`` (COMM_WORLD: one rank); ``threads`` sets what
    ``Query_thread`` answers (mpi4py's default is THREAD_MULTIPLE)."""
    MPI = types.ModuleType("mpi4py.MPI")
    MPI.SUM, MPI.THREAD_SERIALIZED, MPI.THREAD_MULTIPLE = "sum", 2, 3
    MPI.COMM_WORLD = _World(1).comm(0)
    MPI.threads = MPI.THREAD_MULTIPLE
    MPI.Query_thread = lambda: MPI.threads
    MPI.Query_cuda_support = lambda: False
    package = types.ModuleType("mpi4py")
    package.MPI = MPI
    monkeypatch.setitem(sys.modules, "mpi4py", package)
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", MPI)
    return MPI


def _ranks(
    world: _World, work, *, timeout: float | None = 5.0, delays=(), cuda_aware: bool = False
) -> list:
    """``work(communicator)`` on every rank of ``world``, each in a thread (rank r
    starts after ``delays[r]`` s); the results, or the exceptions, by rank."""
    results: list = [None] * world.size

    def run(rank: int) -> None:
        time.sleep(delays[rank] if rank < len(delays) else 0.0)
        try:
            comm = MPICommunicator(world.comm(rank), timeout=timeout, cuda_aware=cuda_aware)
            results[rank] = work(comm)
        except BaseException as exc:  # noqa: BLE001 (reported to the test)
            results[rank] = exc

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world.size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(2 * HANG)
    return results


@pytest.mark.parametrize("threads", ["multiple", "serialized"])
def test_mpi_collectives_of_three_ranks(mpi, threads: str) -> None:
    """The communicator uses the MPI communicator it is given (not COMM_WORLD): sums,
    rank 1's broadcast and a barrier, whether MPI waits in a thread-safe blocking call
    or is polled (the last rank comes late, so the others wait)."""
    mpi.threads = mpi.THREAD_MULTIPLE if threads == "multiple" else mpi.THREAD_SERIALIZED

    def work(comm: MPICommunicator):
        mine = np.arange(4.0) + 10 * comm.rank
        total = comm.allreduce(mine)
        root = comm.broadcast(mine, root=1)
        comm.barrier()
        return comm.rank, comm.size, mine, total, root

    results = _ranks(_World(3), work, delays=(0.0, 0.0, 0.05))
    for rank, result in enumerate(results):
        assert not isinstance(result, BaseException), repr(result)
        got_rank, size, mine, total, root = result
        assert (got_rank, size) == (rank, 3)
        np.testing.assert_array_equal(total, 3 * np.arange(4.0) + 30)
        np.testing.assert_array_equal(root, np.arange(4.0) + 10)
        np.testing.assert_array_equal(mine, np.arange(4.0) + 10 * rank)  # not written


class _DeviceArray(np.ndarray):
    """Host memory posing as a GPU array (it has ``__cuda_array_interface__``)."""

    @property
    def __cuda_array_interface__(self) -> dict:
        return self.__array_interface__


def test_cuda_aware_mpi_collectives_leave_the_callers_device_buffer(mpi, monkeypatch) -> None:
    """With a CUDA-aware MPI device arrays go to MPI as they are (no host copy), and
    still the results are new arrays: the caller's buffer is never written."""
    from xpconv.parallel import communicators

    monkeypatch.setattr(communicators, "_sync_device", lambda a: None)  # no GPU stream here

    def work(comm: MPICommunicator):
        mine = (np.arange(3.0) + 10 * comm.rank).view(_DeviceArray)
        return comm.cuda_aware, mine, comm.allreduce(mine), comm.broadcast(mine, root=1)

    for rank, result in enumerate(_ranks(_World(2), work, cuda_aware=True)):
        assert not isinstance(result, BaseException), repr(result)
        cuda_aware, mine, total, root = result
        assert cuda_aware
        np.testing.assert_array_equal(total, 2 * np.arange(3.0) + 10)
        np.testing.assert_array_equal(root, np.arange(3.0) + 10)
        np.testing.assert_array_equal(mine, np.arange(3.0) + 10 * rank)


@pytest.mark.parametrize("threads", ["multiple", "serialized"])
@pytest.mark.parametrize("what", ["all-reduce", "broadcast", "barrier"])
def test_a_collective_past_the_timeout_aborts_naming_it(
    mpi, capsys, threads: str, what: str
) -> None:
    """Rank 1 never comes: rank 0 gives up after the timeout (a watchdog thread ends
    the blocking wait; a polled wait checks the clock) and aborts the job."""
    mpi.threads = mpi.THREAD_MULTIPLE if threads == "multiple" else mpi.THREAD_SERIALIZED
    world = _World(2)
    comm = MPICommunicator(world.comm(0), timeout=0.05)
    call = {
        "all-reduce": lambda: comm.allreduce(np.ones(3)),
        "broadcast": lambda: comm.broadcast(np.ones(3)),
        "barrier": comm.barrier,
    }[what]
    start = time.monotonic()
    with pytest.raises(SystemExit) as raised:
        call()
    assert raised.value.code == 1 and world.aborted == 1
    assert time.monotonic() - start < HANG / 2
    err = capsys.readouterr().err
    assert f"xpconv: error: rank 0/2: {what} waited more than 0.05 s for the other ranks" in err


def test_abort_on_error_stops_every_rank_with_a_message(capsys) -> None:
    class Pair(Communicator):
        def __init__(self) -> None:
            super().__init__(1, 2)

    with pytest.raises(SystemExit) as raised, Pair().abort_on_error():
        raise RuntimeError("the data is missing")
    assert raised.value.code == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "xpconv: error: rank 1/2: RuntimeError: the data is missing; stopping every rank\n"
    )


def test_mpi_without_mpi4py_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(DistributedError) as raised:
        get_communicator("mpi")
    assert str(raised.value).startswith(
        "distributed 'mpi' needs mpi4py and an MPI library: pip install 'xpconv[mpi]' "
        "(mpi4py + MPICH wheels); import failed: "
    )


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_nccl_on_a_cpu_backend_is_a_clear_error(mpi, backend: str) -> None:
    pytest.importorskip(backend)
    with pytest.raises(
        DistributedError,
        match=f"distributed 'nccl': expected backend cupy or torch on a CUDA device, "
        f"got '{backend}'",
    ):
        NCCLCommunicator(get_backend(backend), MPICommunicator())


def test_collectives_count_the_calls() -> None:
    comm = SingleProcessCommunicator()
    comm.allreduce(np.ones(3))
    comm.broadcast(np.ones(3))
    comm.broadcast(np.ones(2))
    assert (comm.allreduce_calls, comm.broadcast_calls) == (1, 2)
