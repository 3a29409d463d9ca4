"""Reconstruction from particles with known poses (what relion_reconstruct does).

Particles are split across ranks; each rank back-projects its block (CTF x image
into the data accumulator, CTF^2 into the weights), one Allreduce per
accumulator, and rank 0 divides and inverts (or, given a regularised reconstructor,
:class:`hpcem.recon.tv.TVReconstructor`, solves seed 002's penalised problem from the same sums).
On a GPU (``device``) each batch of images crosses to the device once and is back-projected
there; the accumulators come back once, before the reduction.
"""
from __future__ import annotations


import numpy as np

from ..core.ctf import ctf_from_params
from ..core.euler import euler_to_matrix
from ..core.fourier import friedel_unique, ft2, shift_phases
from ..core.symmetry import symmetry_ops
from ..parallel.decomp import block_range
from ..runtime.log import progress_printer
from ..runtime.device import HOST
from .projector import GRIDDING_ITERS, BackProjector


def particle_slices(ps, idx, ctf: bool):
    """Centred Fourier images (B, n, n//2+1), the CTF per coefficient (or None) and pose matrices."""
    n = ps.box
    F = ft2(ps.read_images(idx))
    F *= shift_phases(n, ps.origins_px(idx))          # particle sits at -origin: shift by +origin
    A = euler_to_matrix(*ps.poses(idx)).astype(np.float32)
    c = ctf_from_params(n, ps.angpix, ps.ctf_params(idx)) if ctf else None
    return F, c, A


def insert_slices(bp: BackProjector, F, c, A, r_max: float | None = None) -> None:
    """Insert centred Fourier images ``F`` (B, n, n//2+1) at pose matrices ``A``: CTF x image and CTF^2
    (``c`` None: no CTF), each independent coefficient once (:func:`friedel_unique`)."""
    put = bp.device.put
    once = friedel_unique(F.shape[-2])
    if c is None:
        bp.insert(put((F * once).astype(np.complex64)), put(np.broadcast_to(once, F.shape).astype(np.float32)),
                  A, r_max=r_max)
    else:
        bp.insert(put((F * (c * once)).astype(np.complex64)), put((c * c * once).astype(np.float32)), A, r_max=r_max)


def backproject_particles(ps, idx, bp: BackProjector, ctf: bool = True, batch: int = 256,
                          r_max: float | None = None, progress=None) -> None:
    """Insert particles ``idx`` of ``ps`` at their poses (CTF x image and CTF^2), each independent
    Fourier coefficient once (:func:`friedel_unique`)."""
    for s in range(0, len(idx), batch):
        b = idx[s:s + batch]
        insert_slices(bp, *particle_slices(ps, b, ctf), r_max=r_max)
        if progress is not None:
            progress(min(s + batch, len(idx)), len(idx))


def reconstruct(ps, comm, sym: str = "C1", ctf: bool = True, pad: int = 2, batch: int = 256,
                subset: int | None = None, maxres: float | None = None, verbose: bool = True,
                gridding_iters: int = GRIDDING_ITERS, bp_kernel: str = "linear", reconstructor=None,
                device=HOST):
    """Reconstruct a map from ``ps`` (a ParticleSet with poses). Returns the map on rank 0, None elsewhere;
    with a ``reconstructor`` (e.g. :class:`hpcem.recon.tv.TVReconstructor`) a dict: ``map`` (its
    reconstruction), ``plain`` (the ordinary one from the same sums) and ``stats`` (its ``last``).

    ``subset`` 1 or 2 restricts to rlnRandomSubset == subset; ``maxres`` (A) limits the
    frequencies inserted; ``gridding_iters`` the density-compensation iterations (0: the
    voxel-wise division, see :meth:`BackProjector.reconstruct`); ``bp_kernel`` the back-projection
    kernel ("linear" or seed 002's "gauss")."""
    ops = symmetry_ops(sym)
    n = ps.box
    idx = np.arange(ps.n)
    if subset is not None:
        rs = ps.random_subset()
        if rs is None:
            from ..errors import InputError
            raise InputError("needed for --subset", file=ps.star_path, field="rlnRandomSubset")
        idx = np.flatnonzero(rs == subset)
    s, e = block_range(len(idx), comm.size, comm.rank)
    mine = idx[s:e]
    r_max = n // 2 if maxres is None else min(n // 2, n * ps.angpix / maxres)
    bp = BackProjector(n, pad=pad, kernel=bp_kernel, device=device)
    prog = progress_printer("back-projecting (rank 0 of %d) particles" % comm.size) if (verbose and comm.rank == 0) \
        else None
    backproject_particles(ps, mine, bp, ctf=ctf, batch=batch, r_max=r_max, progress=prog)
    bp.to_host()
    comm.allreduce_(bp.data)
    comm.allreduce_(bp.weight)
    if comm.rank != 0:
        return None
    plain = bp.reconstruct(symmetry_ops=ops if len(ops) > 1 else None, gridding_iters=gridding_iters)
    if reconstructor is None:
        return plain
    vol = reconstructor.reconstruct(bp, None, 1.0, ops)
    return {"map": vol, "plain": plain, "stats": reconstructor.last}
