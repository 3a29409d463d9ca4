"""Reconstruct a 3D map from particles with known poses (rlnAngleRot/Tilt/Psi,
rlnOriginXAngst/YAngst), with optional CTF correction and point-group symmetry, like
relion_reconstruct.  Under `mpiexec -n N` the particles are split across ranks.  --tv reconstructs
with seed 002's sparsity + total-variation regularisation from the same sums (and writes
<o>_tv.png: central slices with and without it); --bp_kernel gauss back-projects with its
Gaussian kernel."""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..algorithms.map_em.config3d import _known_symmetry
from ..algorithms.map_em.options import TVOptions
from ..errors import InputError
from ..runtime.params import AT_LEAST_1, NON_NEGATIVE, param
from ..runtime.device import DeviceOptions
from .common import JobIO, job_device, job_record, set_threads, stamp
from .inputs import read_particles


@dataclass(frozen=True)
class Params(JobIO, TVOptions, DeviceOptions):
    o: str = param(None, "output map (MRC)", group="I/O")
    sym: str = param("C1", "point-group symmetry: C1, Cn, Dn, T, O, I", check=(_known_symmetry, "a point group"),
                     group="reconstruction")
    ctf: bool = param(False, "apply CTF correction", action="store_true", group="reconstruction")
    maxres: float = param(0.0, "maximum resolution (A) to insert (0: Nyquist)", check=NON_NEGATIVE,
                          group="reconstruction")
    subset: int = param(0, "only particles with this rlnRandomSubset (0: all)", choices=(0, 1, 2),
                        group="reconstruction")
    pad: int = param(2, "padding factor of the Fourier grid", check=AT_LEAST_1, group="reconstruction")
    iters: int = param(10, "gridding-correction (density-compensation) iterations", flag="--iter",
                       check=NON_NEGATIVE, group="reconstruction")
    skip_gridding: bool = param(False, "divide by the weights voxel by voxel instead of gridding",
                                action="store_true", group="reconstruction")
    batch: int = param(256, "particles per kernel call", check=AT_LEAST_1, group="compute")
    check_images: bool = param(False, "scan every image for NaN/Inf before starting", action="store_true",
                               group="I/O")


def run(p: Params, ctx):
    from ..io.mrc import write_mrc
    from ..recon.mstep import reconstructor_for
    from ..recon.reconstruct import reconstruct

    set_threads(p.j, ctx.comm)
    for name in ("i", "o"):
        if not getattr(p, name):
            raise InputError("required", field="--" + name)
    gridding = 0 if p.skip_gridding else p.iters
    reg = reconstructor_for(p, gridding) if p.tv else None
    ps = read_particles(p.i, p.angpix, ctf=p.ctf)
    if p.check_images:
        ps.check_images()
    comm = ctx.comm
    ctx.log("hpcem reconstruct: %d particles, box %d, %.3f A/px, sym %s, ctf %s, %s%d rank(s)" % (
        ps.n, ps.box, ps.angpix, p.sym, "on" if p.ctf else "off", "TV-regularised, " if p.tv else "", comm.size))
    vol = reconstruct(ps, comm, sym=p.sym, ctf=p.ctf, pad=p.pad, batch=p.batch, subset=p.subset or None,
                      maxres=p.maxres or None, gridding_iters=gridding, bp_kernel=p.bp_kernel, reconstructor=reg,
                      device=job_device(p, ctx))
    if comm.rank == 0 and reg is not None:
        from ..plots import central_slices
        from ..recon.tv import summary

        ctx.log("TV: %s" % summary(vol["stats"]))
        central_slices(os.path.splitext(p.o)[0] + "_tv.png", {"TV": vol["map"], "plain": vol["plain"]},
                       "with (top) and without (bottom) the sparsity + TV regularisation")
        vol = vol["map"]
    if comm.rank == 0:
        write_mrc(p.o, vol, ps.angpix)
        stamp(os.path.splitext(p.o)[0] + ".job.json", job_record(ctx.name, p, ctx.argv))
        ctx.log("wrote %s" % p.o)
    return 0
