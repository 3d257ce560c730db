"""Communicators: a group of processes with all-reduce, broadcast and barrier over
MPI (mpi4py), NCCL, or none (one process); faults end every rank.

See :mod:`xpconv.parallel` for the overview.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any, NoReturn

import numpy as np
from array_api_compat import array_namespace

from xpconv.backends.numpy.host import usable_cores
from xpconv.backends.registry import Backend, backend_of

Array = Any

#: Environment variables that MPI launchers (MPICH/Hydra, Open MPI, PMIx, Slurm) set.
_LAUNCHER_VARIABLES = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "SLURM_PROCID")


class DistributedError(RuntimeError):
    """A distributed run cannot go on: missing engine, disagreeing ranks, a lost peer."""


def launched_by_mpi() -> bool:
    """Whether an MPI launcher (``mpiexec``, ``srun``) started this process."""
    return any(name in os.environ for name in _LAUNCHER_VARIABLES)


# --------------------------------------------------------------------------- interface


class Communicator:
    """A group of ``size`` processes; this one is ``rank`` (0 is the root).

    Buffers are 1-D arrays of any backend; results are new arrays of the same backend,
    device and dtype (the caller's buffer is never written). ``allreduce_calls`` and
    ``broadcast_calls`` count the collectives this process took part in.
    """

    engine = "none"

    def __init__(self, rank: int, size: int) -> None:
        self.rank, self.size = int(rank), int(size)
        self.allreduce_calls = 0
        self.broadcast_calls = 0

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def allreduce(self, buffer: Array) -> Array:
        """The element-wise sum over all ranks of ``buffer`` (n,); returns (n,)."""
        _check_flat(buffer, "buffer")
        self.allreduce_calls += 1
        return self._allreduce(buffer)

    def broadcast(self, buffer: Array, root: int = 0) -> Array:
        """Rank ``root``'s ``buffer`` (n,) on every rank; every rank passes the same n."""
        _check_flat(buffer, "buffer")
        if not 0 <= root < self.size:
            raise ValueError(f"root: expected a rank in [0, {self.size}), got {root}")
        self.broadcast_calls += 1
        return self._broadcast(buffer, root)

    def barrier(self) -> None:
        """Return once every rank has reached this point."""

    def abort(self, message: str, code: int = 1) -> NoReturn:
        """Print ``message`` naming this rank and end the whole job with status ``code``."""
        print(f"xpconv: error: rank {self.rank}/{self.size}: {message}", file=sys.stderr)
        sys.stderr.flush()
        raise SystemExit(code)

    @contextlib.contextmanager
    def abort_on_error(self) -> Iterator[None]:
        """Turn an exception on this rank into an abort of every rank (no hang)."""
        try:
            yield
        except BaseException as exc:
            if self.size == 1 or (isinstance(exc, SystemExit) and exc.code in (0, None)):
                raise
            code = 130 if isinstance(exc, KeyboardInterrupt) else 1
            text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            if isinstance(exc, KeyboardInterrupt):
                text = "interrupted"
            if isinstance(exc, SystemExit):
                code = exc.code if isinstance(exc.code, int) else 1
                text = f"exited with status {code}"
            self.abort(f"{text}; stopping every rank", code)

    def _allreduce(self, buffer: Array) -> Array:
        raise NotImplementedError

    def _broadcast(self, buffer: Array, root: int) -> Array:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


def _check_flat(buffer: Any, argument: str) -> None:
    shape = getattr(buffer, "shape", None)
    if shape is None or len(shape) != 1:
        shape = None if shape is None else tuple(shape)
        raise ValueError(f"{argument}: expected a 1-D array, got shape {shape}")


def _copy(buffer: Array) -> Array:
    xp = array_namespace(buffer)
    return xp.asarray(buffer, copy=True)


class SingleProcessCommunicator(Communicator):
    """Size 1: all-reduce and broadcast return a copy; the same code runs without MPI."""

    engine = "single"

    def __init__(self) -> None:
        super().__init__(0, 1)

    def _allreduce(self, buffer: Array) -> Array:
        return _copy(buffer)

    def _broadcast(self, buffer: Array, root: int) -> Array:
        return _copy(buffer)


# --------------------------------------------------------------------------- MPI


def _import_mpi() -> Any:
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise DistributedError(
            "distributed 'mpi' needs mpi4py and an MPI library: pip install 'xpconv[mpi]' "
            f"(mpi4py + MPICH wheels); import failed: {exc}"
        ) from exc
    return MPI


def _is_device_array(a: Any) -> bool:
    return hasattr(a, "__cuda_array_interface__") or (
        type(a).__module__.startswith("torch") and getattr(a, "is_cuda", False)
    )


def _sync_device(a: Any) -> None:
    """Wait for the work queued on ``a``'s current stream (MPI reads memory directly)."""
    if type(a).__module__.startswith("torch"):
        import torch

        torch.cuda.current_stream(a.device).synchronize()
    else:
        import cupy

        cupy.cuda.get_current_stream().synchronize()


class MPICommunicator(Communicator):
    """Collectives over an MPI communicator (``MPI.COMM_WORLD`` by default) via mpi4py.

    Args:
        comm: an ``mpi4py.MPI.Comm``; default ``COMM_WORLD``.
        timeout: seconds a collective may wait for the other ranks before this rank
            aborts the job (a peer died or hangs); ``None`` waits forever.
        cuda_aware: pass device arrays to MPI directly (needs a CUDA-aware MPI); default
            from ``XPCONV_MPI_CUDA_AWARE`` (``1``/``0``), else from MPI's own query.
    """

    engine = "mpi"

    def __init__(
        self, comm: Any = None, *, timeout: float | None = 300.0, cuda_aware: bool | None = None
    ) -> None:
        MPI = _import_mpi()
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        if timeout is not None and not timeout > 0:
            raise ValueError(
                f"timeout: expected a positive number of seconds or None, got {timeout}"
            )
        self.timeout = timeout
        if cuda_aware is None:
            env = os.environ.get("XPCONV_MPI_CUDA_AWARE")
            if env is not None:
                cuda_aware = env.strip() not in ("", "0", "false", "no")
            else:
                query = getattr(MPI, "Query_cuda_support", None)
                cuda_aware = bool(query()) if query is not None else False
        self.cuda_aware = bool(cuda_aware)
        super().__init__(self.comm.Get_rank(), self.comm.Get_size())

    def _wait(self, request: Any, what: str) -> None:
        """Wait for ``request``; after ``timeout`` s, abort the job (a lost peer).

        With MPI_THREAD_MULTIPLE (mpi4py's default) the wait blocks in MPI and a
        watchdog thread aborts past the deadline; otherwise the request is polled (a
        blocking wait lets MPI progress large transfers faster than polling does).
        """
        if self.timeout is None:
            request.Wait()
            return
        if self.MPI.Query_thread() >= self.MPI.THREAD_MULTIPLE:
            self._start_watchdog()
            self._deadline = (time.monotonic() + self.timeout, what)
            try:
                request.Wait()
            finally:
                self._deadline = None
            return
        deadline = time.monotonic() + self.timeout
        delay = 0.0
        while not request.Test():
            if time.monotonic() > deadline:
                self._timed_out(what)
            time.sleep(delay)
            delay = min(2 * delay or 1e-5, 1e-3)

    def _timed_out(self, what: str) -> NoReturn:
        self.abort(
            f"{what} waited more than {self.timeout:g} s for the other ranks "
            "(one has died or hangs); stopping every rank"
        )

    def _start_watchdog(self) -> None:
        if getattr(self, "_watchdog", None) is not None:
            return
        self._deadline: tuple[float, str] | None = None  # type: ignore[no-redef]
        period = min(1.0, self.timeout / 4)

        def watch() -> None:
            while True:
                time.sleep(period)
                current = self._deadline
                if current is not None and time.monotonic() > current[0]:
                    self._timed_out(current[1])

        self._watchdog = threading.Thread(target=watch, name="xpconv-mpi-watchdog", daemon=True)
        self._watchdog.start()

    def _staged(self, buffer: Array) -> tuple[np.ndarray, Any]:
        """A contiguous host copy of ``buffer`` and a function back to its backend."""
        be = backend_of(buffer)
        host = np.ascontiguousarray(be.to_numpy(buffer))
        dtype = host.dtype.name
        return host, lambda out: be.asarray(out, dtype=dtype)

    def _allreduce(self, buffer: Array) -> Array:
        if self.cuda_aware and _is_device_array(buffer):
            xp = array_namespace(buffer)
            send = xp.asarray(buffer, copy=True)
            recv = xp.empty_like(send)
            _sync_device(send)
            self._wait(self.comm.Iallreduce(send, recv, op=self.MPI.SUM), "all-reduce")
            return recv
        host, back = self._staged(buffer)
        out = np.empty_like(host)
        self._wait(self.comm.Iallreduce(host, out, op=self.MPI.SUM), "all-reduce")
        return back(out)

    def _broadcast(self, buffer: Array, root: int) -> Array:
        if self.cuda_aware and _is_device_array(buffer):
            xp = array_namespace(buffer)
            data = xp.asarray(buffer, copy=True)
            _sync_device(data)
            self._wait(self.comm.Ibcast(data, root=root), "broadcast")
            return data
        host, back = self._staged(buffer)
        data = host.copy()
        self._wait(self.comm.Ibcast(data, root=root), "broadcast")
        return back(data)

    def barrier(self) -> None:
        self._wait(self.comm.Ibarrier(), "barrier")

    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        """Rank ``root``'s picklable ``obj`` on every rank (small control data)."""
        return self.comm.bcast(obj, root=root)

    def abort(self, message: str, code: int = 1) -> NoReturn:
        print(f"xpconv: error: rank {self.rank}/{self.size}: {message}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)
        raise SystemExit(code)  # not reached: MPI_Abort ends the process


# --------------------------------------------------------------------------- NCCL


class NCCLCommunicator(Communicator):
    """All-reduce and broadcast of GPU arrays over NCCL; host arrays go over MPI.

    NCCL is reached through the backend's own library: ``cupy.cuda.nccl`` for CuPy
    arrays, ``torch.distributed`` (``nccl`` process group) for torch CUDA tensors. MPI
    bootstraps it (the NCCL unique id, or torch's rendezvous address, is broadcast from
    rank 0), so the job is launched with ``mpiexec`` like an MPI one.

    Args:
        backend: the model's backend (``cupy`` or ``torch`` on a CUDA device).
        mpi: the MPI communicator used to bootstrap and for host buffers.
        timeout: seconds a GPU collective may take before this rank aborts the job.
    """

    engine = "nccl"

    def __init__(
        self, backend: Backend, mpi: MPICommunicator | None = None, *, timeout: float | None = 300.0
    ) -> None:
        self.mpi = MPICommunicator(timeout=timeout) if mpi is None else mpi
        super().__init__(self.mpi.rank, self.mpi.size)
        self.backend, self.timeout = backend, timeout
        if backend.name == "cupy":
            self._init_cupy()
        elif backend.name == "torch" and getattr(backend.device, "type", None) == "cuda":
            self._init_torch()
        else:
            raise DistributedError(
                f"distributed 'nccl': expected backend cupy or torch on a CUDA device, got "
                f"{backend.label!r} (use --distributed mpi for CPU backends)"
            )

    def _init_cupy(self) -> None:
        try:
            from cupy.cuda import nccl
        except ImportError as exc:
            raise DistributedError(
                f"distributed 'nccl' with cupy needs CuPy's NCCL bindings: {exc}"
            ) from exc
        if not nccl.available:
            raise DistributedError("distributed 'nccl': this CuPy was built without NCCL")
        self._nccl_module = nccl
        with self.backend.device:
            uid = nccl.get_unique_id() if self.is_root else None
            uid = self.mpi.bcast_object(uid)
            self._nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
        self._engine_kind = "cupy"

    def _init_torch(self) -> None:
        import socket

        import torch.distributed as dist

        if not dist.is_available() or not dist.is_nccl_available():
            raise DistributedError("distributed 'nccl': this PyTorch has no NCCL support")
        address = None
        if self.is_root:
            with socket.socket() as s:
                s.bind(("", 0))
                address = f"tcp://{socket.gethostname()}:{s.getsockname()[1]}"
        address = self.mpi.bcast_object(address)
        import datetime

        dist.init_process_group(
            "nccl",
            init_method=address,
            rank=self.rank,
            world_size=self.size,
            timeout=datetime.timedelta(seconds=self.timeout or 1800),
            device_id=self.backend.device,
        )
        self._dist = dist
        self._engine_kind = "torch"

    def _wait_gpu(self, done: Any, what: str) -> None:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while not done():
            if deadline is not None and time.monotonic() > deadline:
                self.mpi.abort(
                    f"NCCL {what} took more than {self.timeout:g} s (a peer has died or "
                    "hangs); stopping every rank"
                )
            time.sleep(1e-5)

    def _collective(self, buffer: Array, root: int | None) -> Array:
        if isinstance(buffer, np.ndarray):
            return (
                self.mpi._allreduce(buffer) if root is None else self.mpi._broadcast(buffer, root)
            )
        if self._engine_kind == "torch":
            dist = self._dist
            data = buffer.clone()
            work = (
                dist.all_reduce(data, async_op=True)
                if root is None
                else dist.broadcast(data, src=root, async_op=True)
            )
            self._wait_gpu(work.is_completed, "all-reduce" if root is None else "broadcast")
            return data
        import cupy

        nccl = self._nccl_module
        kinds = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64}
        dtype = np.dtype(buffer.dtype).name
        if dtype not in kinds:
            raise ValueError(f"buffer: expected float32 or float64, got {dtype}")
        data = cupy.array(buffer, copy=True)
        stream = cupy.cuda.get_current_stream()
        if root is None:
            self._nccl.allReduce(
                data.data.ptr, data.data.ptr, data.size, kinds[dtype], nccl.NCCL_SUM, stream.ptr
            )
        else:
            self._nccl.bcast(data.data.ptr, data.size, kinds[dtype], root, stream.ptr)
        event = stream.record()
        self._wait_gpu(lambda: event.done, "all-reduce" if root is None else "broadcast")
        return data

    def _allreduce(self, buffer: Array) -> Array:
        return self._collective(buffer, None)

    def _broadcast(self, buffer: Array, root: int) -> Array:
        return self._collective(buffer, root)

    def barrier(self) -> None:
        self.mpi.barrier()

    def abort(self, message: str, code: int = 1) -> NoReturn:
        self.mpi.abort(message, code)


def get_communicator(
    engine: str | None, backend: Backend | None = None, *, timeout: float | None = 300.0
) -> Communicator:
    """A communicator by engine name: ``None``/``"single"``, ``"mpi"`` or ``"nccl"``."""
    if engine in (None, "single"):
        return SingleProcessCommunicator()
    if engine == "mpi":
        return MPICommunicator(timeout=timeout)
    if engine == "nccl":
        if backend is None:
            raise ValueError("backend: distributed 'nccl' needs the model's backend")
        return NCCLCommunicator(backend, timeout=timeout)
    raise ValueError(f"engine: expected 'single', 'mpi' or 'nccl', got {engine!r}")


def share_cores(communicator: Communicator, backend: Backend | None = None) -> int | None:
    """Limit this rank's BLAS (and torch) threads to its share of the machine's cores.

    Ranks on one machine that each start a thread per core oversubscribe it, and BLAS
    pools that spin then collapse (one MNIST step went from milliseconds to a second).
    The share is ``cores // ranks on this machine`` (at least 1). Needs threadpoolctl
    for the BLAS of NumPy; returns the thread count set, or ``None`` if none was set.
    """
    local = 1
    if isinstance(communicator, (MPICommunicator, NCCLCommunicator)):
        mpi = communicator if isinstance(communicator, MPICommunicator) else communicator.mpi
        local = mpi.comm.Split_type(mpi.MPI.COMM_TYPE_SHARED).Get_size()
    if local <= 1:
        return None
    threads = max(1, usable_cores() // local)
    done = None
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
        done = threads
    except ImportError:
        pass
    if backend is not None and backend.name == "torch":
        import torch

        torch.set_num_threads(threads)
        done = threads
    return done
