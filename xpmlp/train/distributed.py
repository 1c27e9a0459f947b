"""Data-parallel training over MPI: each process computes one slice of every batch.

Every rank walks the same seeded batch order and takes its contiguous slice of each global batch
(rank r of W: :func:`shard_bounds`); dropout masks are made for the whole batch and sliced. Its
gradient is weighted by the slice's share of the batch, so the sum over ranks is the gradient of
the batch mean; an empty slice contributes zeros. The reduction is one call per step on the flat
gradient buffer:

- ``ordered`` (default): every rank gathers all slices and sums them in rank order, so W ranks
  compute exactly what one process computes with ``grad_shards=W`` (the same additions in the
  same order), on any MPI library;
- ``allreduce``: MPI's own sum, faster on many ranks, in an order the library chooses.

The step's stop flag (a SIGINT/SIGTERM received by any rank) travels with the gradient, so every
rank stops at the same step boundary. Loss and correct counts are reduced once per epoch, in rank
order. mpi4py is imported only when MPI is asked for.

No rank waits forever for one that failed. An error is met by every rank at the same point:

- computing a step's gradient: the rank sends zeros with the flag :data:`FAILED` in place of the
  stop flag, and every rank raises the first failing rank's error (:func:`reduce_step`);
- on rank 0's run directory (:func:`on_root`): its outcome is broadcast;
- at start (:func:`together`): the ranks exchange their errors, settings and data fingerprint
  once, and all refuse when any failed or when they differ.

So in a job an :class:`~xpmlp.errors.XpmlpError` (or an interrupt) is raised on every rank alike,
and rank 0 reports it; any other exception is one rank's own, which the command line reports
there and answers by aborting the job (:meth:`MPI.abort`).
"""

from __future__ import annotations

import os
import pickle

import numpy as np

from ..backend import Backend, get_backend, local_backend
from ..errors import ConfigError, XpmlpError, install_hint, os_error_message

MODES = ("auto", "none", "mpi")
REDUCTIONS = ("ordered", "allreduce")
# Set by mpiexec/srun launchers (MPICH/Hydra, Open MPI, PMIx, MVAPICH) in every process they start.
LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE")
LAUNCHER_VARIABLES = (*LAUNCHER_SIZE_VARIABLES, "PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK")
FAILED = 255  # in place of a step's stop flag (a signal number): this rank's gradient failed


class JobError(XpmlpError, RuntimeError):
    """An error one process of a distributed job met, raised on every process at the same point."""


def shard_bounds(n: int, shards: int, index: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of slice ``index`` when ``n`` rows are cut into ``shards``
    contiguous slices, the first ``n % shards`` of them one row longer."""
    size, extra = divmod(n, shards)
    start = index * size + min(index, extra)
    return start, start + size + (index < extra)


class Local:
    """One process: the communicator of an ordinary run."""

    rank, size, local_rank, local_size = 0, 1, 0, 1

    def reduce_gradients(self, grad, stop: int):
        return grad, stop

    def sum_in_rank_order(self, values: np.ndarray) -> np.ndarray:
        return values

    def broadcast(self, obj):
        return obj

    def allgather(self, obj) -> list:
        return [obj]


class MPI:
    """The processes of an MPI job (``mpiexec -n W``, ``srun``), through mpi4py.

    Parameters
    ----------
    comm : mpi4py communicator
    reduce : str
        ``ordered`` or ``allreduce`` (see the module docstring).
    """

    def __init__(self, comm, *, reduce: str = "ordered"):
        if reduce not in REDUCTIONS:
            raise ConfigError(
                f"unknown reduction {reduce!r}; choose one of {', '.join(REDUCTIONS)}"
            )
        from mpi4py import MPI as mpi

        self._mpi, self.comm, self.reduce = mpi, comm, reduce
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        local = comm.Split_type(mpi.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()

    def reduce_gradients(self, grad: np.ndarray, stop: int):
        """The sum of every rank's ``grad`` (a host array) and the largest stop flag: one call
        (and a second one in the rare step where some flag is set, with ``allreduce``)."""
        send = np.empty(grad.shape[0] + 1, dtype=grad.dtype)
        send[:-1], send[-1] = grad, stop
        if self.reduce == "allreduce":
            self.comm.Allreduce(self._mpi.IN_PLACE, send, op=self._mpi.SUM)
            flag = int(send[-1])  # a sum of flags: which one is largest, every rank asks once
            return send[:-1], max(self.comm.allgather(stop)) if flag else 0
        gathered = np.empty((self.size, send.shape[0]), dtype=grad.dtype)
        self.comm.Allgather(send, gathered)
        return _sum_rows(gathered[:, :-1]), int(gathered[:, -1].max())

    def sum_in_rank_order(self, values: np.ndarray) -> np.ndarray:
        gathered = np.empty((self.size, *values.shape), dtype=values.dtype)
        self.comm.Allgather(np.ascontiguousarray(values), gathered)
        return _sum_rows(gathered)

    def broadcast(self, obj):
        return self.comm.bcast(obj, root=0)

    def allgather(self, obj) -> list:
        return self.comm.allgather(obj)

    def failed_communicating(self, exc: BaseException) -> bool:
        """Whether ``exc`` is MPI's own error: most often another process failed or left."""
        return isinstance(exc, self._mpi.Exception)

    def abort(self, status: int) -> None:
        """End every process of the job now, with exit status ``status``."""
        self.comm.Abort(status)
        os._exit(status)  # MPICH's Abort may return before the launcher's kill lands


def _sum_rows(rows: np.ndarray) -> np.ndarray:
    """rows[0] + rows[1] + ... in that order (what one process with shards adds)."""
    total = rows[0].copy()
    for row in rows[1:]:
        total += row
    return total


def launched_size() -> int | None:
    """How many processes a launcher says it started, or None outside one."""
    for name in LAUNCHER_SIZE_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return None


def communicator(mode: str = "auto", *, reduce: str = "ordered"):
    """The communicator for ``mode``: ``none`` (this process alone), ``mpi``, or ``auto`` (MPI
    when an MPI launcher started this process).

    Raises
    ------
    ConfigError
        MPI asked for without mpi4py, or a launcher that started several processes while MPI
        sees one (mpi4py built against another MPI than the launcher's): not a silent second job.
    """
    if mode not in MODES:
        raise ConfigError(f"unknown --distributed {mode!r}; choose one of {', '.join(MODES)}")
    launched = launched_size()
    under_launcher = any(name in os.environ for name in LAUNCHER_VARIABLES)
    if mode == "none" or (mode == "auto" and not under_launcher):
        return Local()
    try:
        from mpi4py import MPI as mpi
    except ImportError:
        raise ConfigError(
            "MPI was asked for (or an MPI launcher started this process) but mpi4py is not "
            f"installed: {install_hint('mpi4py>=4', 'mpi')}"
        ) from None
    size = mpi.COMM_WORLD.Get_size()
    if size == 1 and launched and launched > 1:
        raise ConfigError(
            f"the launcher started {launched} processes but MPI sees only this one: mpi4py is "
            "built against another MPI library than the launcher's (use the mpiexec of the MPI "
            "mpi4py was built with)"
        )
    return Local() if size == 1 else MPI(mpi.COMM_WORLD, reduce=reduce)


def blas_threads_per_rank(local_size: int) -> int:
    """Cores of this machine divided among the ranks on it (at least one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, local_size))


def on_root(comm, work):
    """``work()`` on rank 0 only (what touches the run directory); its result, or the error it
    raised, on every rank (in a job, as a :class:`JobError` where it was not an XpmlpError)."""
    if comm.size == 1:
        return work()
    outcome = error = None
    if comm.rank == 0:
        try:
            outcome = ("result", work())
        except Exception as exc:
            outcome, error = ("error", _portable(exc, 0)), exc
    kind, value = comm.broadcast(outcome)
    if kind == "error":
        raise value from (error if comm.rank == 0 else None)
    return value


def together(comm, work, facts=None):
    """``work()`` on every rank, then one exchange: when it failed on any rank, every rank raises
    the first failure; when the ranks' ``facts(result)`` (a dict: their settings, the data's
    fingerprint) differ, every rank raises a ConfigError naming the first difference."""
    if comm.size == 1:
        return work()
    result = error = mine = None
    try:
        result = work()
        mine = facts(result) if facts is not None else {}
    except Exception as exc:
        error = exc
    gathered = comm.allgather((_portable(error, comm.rank), mine))
    _raise_first([failure for failure, _ in gathered], cause=error)
    _refuse_differences([found for _, found in gathered])
    return result


def reduce_step(comm, gradient, stop: int, *, size: int, dtype) -> tuple:
    """``comm.reduce_gradients(gradient(), stop)``; when ``gradient()`` fails on a rank, that rank
    sends zeros of (size,) and :data:`FAILED`, and every rank raises the first failure here."""
    try:
        grad, error = gradient(), None
    except Exception as exc:
        grad, error = np.zeros(size, dtype=dtype), exc
    total, flag = comm.reduce_gradients(grad, FAILED if error is not None else stop)
    if flag == FAILED:
        _raise_first(comm.allgather(_portable(error, comm.rank)), cause=error)
    return total, flag


def describe(exc: BaseException) -> str:
    """An exception in one line: ours and the OS's by their message, others by type too."""
    if isinstance(exc, OSError):
        return os_error_message(exc)
    if isinstance(exc, XpmlpError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _portable(exc: BaseException | None, rank: int):
    """What another rank can raise for ``exc``: itself where it is one of ours and pickles, else
    a :class:`JobError` with its message; a rank other than 0 is named."""
    if exc is None:
        return None
    if rank == 0 and isinstance(exc, XpmlpError):
        try:
            return pickle.loads(pickle.dumps(exc))
        except Exception:
            pass
    where = f"on rank {rank}: " if rank else ""
    return JobError(where + describe(exc))


def _raise_first(failures: list, *, cause: BaseException | None = None) -> None:
    for failure in failures:
        if failure is not None:
            raise failure from cause


MISSING = "not given"


def _refuse_differences(found: list[dict]) -> None:
    first = found[0]
    for rank, other in enumerate(found[1:], start=1):
        for name in sorted(first.keys() | other.keys()):
            ours, theirs = first.get(name, MISSING), other.get(name, MISSING)
            if ours != theirs:
                raise ConfigError(
                    f"the processes of this job differ: {name} is {_shown(theirs)} on rank "
                    f"{rank} but {_shown(ours)} on rank 0; start every process with the same "
                    "command and data"
                )


def _shown(value) -> str:
    return value if value is MISSING else repr(value)


def launched_rank() -> int:
    """This process's rank as its launcher says (0 outside one): for messages only rank 0 prints."""
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def limit_blas_threads(comm) -> None:
    """Give each of the ranks on a machine its share of the cores for BLAS (2 ranks with 2
    OpenBLAS threads each on 2 cores ran 10x slower), through threadpoolctl when installed."""
    if comm.local_size == 1:
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(blas_threads_per_rank(comm.local_size), user_api="blas")


def backend_for(spec: str, comm) -> Backend:
    """This process's backend: in a distributed job, ``gpu``, ``cuda`` and ``auto`` take one of
    the GPUs this process sees, by its local rank (:func:`xpmlp.backend.local_backend`)."""
    return local_backend(spec, comm.local_rank) if comm.size > 1 else get_backend(spec)
