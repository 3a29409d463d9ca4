"""Decompositions of particles (MAP, VDAM, SAGD) and pixels (GTM) over ranks."""
from __future__ import annotations

import numpy as np


def block_range(n: int, size: int, rank: int) -> tuple[int, int]:
    """Contiguous block [start, stop) of n items for ``rank`` of ``size`` (sizes differ by at most 1)."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def particle_blocks(n: int, comm) -> np.ndarray:
    """Indices of the particles this rank handles."""
    s, e = block_range(n, comm.size, comm.rank)
    return np.arange(s, e)


def half_groups(comm):
    """Split ranks into two gold-standard half groups.

    Returns (half, subcomm, work_fraction): with one rank, that rank does both
    halves (half = None); with >= 2 ranks, even ranks take half 1 and odd ranks
    half 2, so ``-n 2`` works."""
    if comm.size == 1:
        return None, comm, 1.0
    half = 1 + comm.rank % 2
    return half, comm.split(half, comm.rank), 1.0
