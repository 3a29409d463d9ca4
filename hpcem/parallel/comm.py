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

    def abort(self, code: int = 1) -> None:
        sys.exit(code)

    @property
    def is_leader(self) -> bool:
        return self.rank == 0


class Comm(SerialComm):
    """mpi4py communicator with in-place array reductions."""

    is_mpi = True

    def __init__(self, mpicomm):
        self._c = mpicomm
        self.rank = mpicomm.Get_rank()
        self.size = mpicomm.Get_size()

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

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self._c.Abort(code)


def _launched_by_mpi() -> bool:
    keys = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS",
            "HYDRA_CONTROL_FD", "PMI_FD", "SLURM_PROCID")
    return any(k in os.environ for k in keys)


_WORLD = None


def get_comm(force_serial: bool = False):
    """The world communicator: :class:`Comm` under mpiexec/srun, else :class:`SerialComm`.

    A plain ``hpcem ...`` never initialises MPI, so it runs on machines where the
    MPI runtime is missing or broken."""
    global _WORLD
    if force_serial or os.environ.get("HPCEM_NO_MPI") == "1" or not _launched_by_mpi():
        return SerialComm()
    if _WORLD is None:
        try:
            from mpi4py import MPI
        except ImportError as exc:  # launched by mpiexec but mpi4py is missing
            raise RuntimeError("hpcem was started under MPI but mpi4py cannot be imported: %s" % exc)
        _WORLD = Comm(MPI.COMM_WORLD)
    return _WORLD if _WORLD.size > 1 else SerialComm()


def abort_on_error(comm, exc: BaseException) -> None:
    """Print the error once and abort every rank, so a failing rank never leaves the others hanging."""
    sys.stderr.write("hpcem: rank %d failed: %s\n" % (comm.rank, exc))
    if os.environ.get("HPCEM_DEBUG"):
        traceback.print_exc()
    if comm.size > 1:
        comm.abort(1)
