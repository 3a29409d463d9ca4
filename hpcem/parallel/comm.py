"""Communicator wrapper.

Algorithms receive a :class:`Comm` and never touch ``COMM_WORLD``.  Without MPI
(or under a single process) the same interface is served by :class:`SerialComm`.
Reductions of numpy arrays are in place and chunked, so accumulators larger than
MPI's 2**31-element message limit reduce correctly.
"""
from __future__ import annotations

import os
import sys
import traceback

import numpy as np

from ..errors import InputError

_CHUNK = 1 << 26  # elements per Allreduce message


class SerialComm:
    """One-rank communicator with the :class:`Comm` interface."""

    rank = 0
    size = 1
    is_mpi = False

    def allreduce_(self, arr: np.ndarray) -> np.ndarray:
        return arr

    def allreduce(self, value, op="sum"):
        return value

    def bcast(self, obj, root: int = 0):
        return obj

    def reduce_scatter_rows(self, arr: np.ndarray) -> np.ndarray:
        """Sum of ``arr`` over ranks, this rank's block of rows only (``block_range``)."""
        return arr

    def allgather_rows(self, local: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Every rank's row block (``block_range`` of the total) concatenated, into ``out``."""
        if out is None:
            return local
        if out is not local:
            out[...] = local
        return out

    def bcast_(self, arr: np.ndarray, root: int = 0) -> np.ndarray:
        return arr

    def allgather(self, obj):
        return [obj]

    def gather(self, obj, root: int = 0):
        return [obj]

    def barrier(self) -> None:
        pass

    def split(self, color: int, key: int = 0) -> "SerialComm":
        return self

    def node_size(self) -> int:
        """Ranks of this communicator on this rank's node (shared memory)."""
        return 1

    def abort(self, code: int = 1) -> None:
        sys.exit(code)

    @property
    def is_leader(self) -> bool:
        return self.rank == 0


class Comm(SerialComm):
    """mpi4py communicator with in-place array reductions."""

    is_mpi = True

    def __init__(self, mpicomm):
        from mpi4py import MPI

        self._c = mpicomm
        self.rank = mpicomm.Get_rank()
        self.size = mpicomm.Get_size()
        node = mpicomm.Split_type(MPI.COMM_TYPE_SHARED)   # collective, like the constructor's callers
        self._node_size = node.Get_size()
        node.Free()

    def allreduce_(self, arr: np.ndarray) -> np.ndarray:
        """Sum ``arr`` over all ranks, in place (contiguous arrays), in chunks."""
        from mpi4py import MPI

        if self.size == 1:
            return arr
        if not arr.flags.c_contiguous:
            raise ValueError("allreduce_ needs a C-contiguous array")
        flat = arr.reshape(-1)
        if np.iscomplexobj(flat):
            flat = flat.view(np.float32 if flat.dtype == np.complex64 else np.float64)
        for s in range(0, flat.size, _CHUNK):
            self._c.Allreduce(MPI.IN_PLACE, flat[s:s + _CHUNK], op=MPI.SUM)
        return arr

    def allreduce(self, value, op="sum"):
        from mpi4py import MPI

        mop = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]
        return self._c.allreduce(value, op=mop)

    def bcast(self, obj, root: int = 0):
        return self._c.bcast(obj, root=root)

    def _row_counts(self, n_rows: int, row: int):
        from .decomp import block_range

        b = [block_range(n_rows, self.size, r) for r in range(self.size)]
        counts = [(e - s) * row for s, e in b]
        if n_rows * row >= 2 ** 31:
            raise ValueError("row-split message of %d elements exceeds MPI's int counts" % (n_rows * row))
        return counts, [s * row for s, _ in b], b[self.rank]

    def reduce_scatter_rows(self, arr: np.ndarray) -> np.ndarray:
        """Sum of ``arr`` (C-contiguous, rows first) over ranks, this rank's block of rows
        (``block_range``); the same communication volume as half an Allreduce."""
        from mpi4py import MPI

        if self.size == 1:
            return arr
        if not arr.flags.c_contiguous:
            raise ValueError("reduce_scatter_rows needs a C-contiguous array")
        row = int(np.prod(arr.shape[1:], dtype=np.int64))
        counts, _, (s, e) = self._row_counts(arr.shape[0], row)
        out = np.empty((e - s,) + arr.shape[1:], arr.dtype)
        self._c.Reduce_scatter(arr.reshape(-1), out.reshape(-1), recvcounts=counts, op=MPI.SUM)
        return out

    def allgather_rows(self, local: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Every rank's row block (rank r holds rows ``block_range(N, size, r)``) gathered
        into ``out`` (N, ...) on all ranks; N is the sum of the blocks."""
        from mpi4py.util.dtlib import from_numpy_dtype

        if self.size == 1:
            return SerialComm.allgather_rows(self, local, out)
        local = np.ascontiguousarray(local)
        n_rows = int(self._c.allreduce(local.shape[0]))
        if out is None:
            out = np.empty((n_rows,) + local.shape[1:], local.dtype)
        if out.dtype != local.dtype or not out.flags.c_contiguous or out.shape[0] != n_rows:
            raise ValueError("allgather_rows: out must be C-contiguous (%d, ...) %s" % (n_rows, local.dtype))
        row = int(np.prod(local.shape[1:], dtype=np.int64))
        counts, displs, _ = self._row_counts(n_rows, row)
        self._c.Allgatherv(local.reshape(-1), [out.reshape(-1), counts, displs, from_numpy_dtype(out.dtype)])
        return out

    def bcast_(self, arr: np.ndarray, root: int = 0) -> np.ndarray:
        if self.size > 1:
            flat = arr.reshape(-1)
            if np.iscomplexobj(flat):
                flat = flat.view(np.float32 if flat.dtype == np.complex64 else np.float64)
            for s in range(0, flat.size, _CHUNK):
                self._c.Bcast(flat[s:s + _CHUNK], root=root)
        return arr

    def allgather(self, obj):
        return self._c.allgather(obj)

    def gather(self, obj, root: int = 0):
        return self._c.gather(obj, root=root)

    def barrier(self) -> None:
        self._c.Barrier()

    def split(self, color: int, key: int = 0) -> "Comm":
        return Comm(self._c.Split(color, key))

    def node_size(self) -> int:
        """Ranks of this communicator on this rank's node (MPI's shared-memory split, made
        collectively when the communicator is)."""
        return self._node_size

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self._c.Abort(code)


class LaunchError(InputError):
    """The launcher started N tasks but MPI sees another world (see :mod:`hpcem.parallel.launch`);
    ``reporter`` is True on the one task that prints it (the launcher's rank 0)."""

    def __init__(self, message: str, reporter: bool):
        super().__init__(message)
        self.reporter = reporter


_WORLD = None


def get_comm(force_serial: bool = False):
    """The world communicator: :class:`Comm` under mpiexec/srun, else :class:`SerialComm`.

    A plain ``hpcem ...`` (the batch script of an sbatch job included) never initialises MPI, so
    it runs on machines where the MPI runtime is missing or broken.  Under a launcher, a world
    other than the launcher's task count raises :class:`LaunchError` before any work."""
    global _WORLD
    from .launch import launch_mismatch, launched_by_mpi, reports, slurm_task

    if force_serial or os.environ.get("HPCEM_NO_MPI") == "1" or not launched_by_mpi():
        return SerialComm()
    if _WORLD is None:
        try:
            from mpi4py import MPI
        except ImportError as exc:  # launched by mpiexec but mpi4py is missing
            raise RuntimeError("hpcem was started under MPI but mpi4py cannot be imported: %s" % exc)
        _WORLD = Comm(MPI.COMM_WORLD)
    peers = _WORLD.allgather(slurm_task()) if _WORLD.size > 1 else None
    mismatch = launch_mismatch(_WORLD.size, peers=peers)
    if mismatch:
        raise LaunchError(mismatch, reports())
    return _WORLD if _WORLD.size > 1 else SerialComm()


def abort_on_error(comm, exc: BaseException) -> None:
    """Print the error once and abort every rank, so a failing rank never leaves the others hanging."""
    sys.stderr.write("hpcem: rank %d failed: %s\n" % (comm.rank, exc))
    if os.environ.get("HPCEM_DEBUG"):
        traceback.print_exc()
    if comm.size > 1:
        comm.abort(1)
