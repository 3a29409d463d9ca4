"""Reconstruct a 3D map from particles with known poses (rlnAngleRot/Tilt/Psi,
rlnOriginXAngst/YAngst), with optional CTF correction and point-group symmetry, like
relion_reconstruct.  Under `mpiexec -n N` the particles are split across ranks."""
from __future__ import annotations

import os

from ..errors import InputError
from .common import add_threads, log, set_threads, stamp


def add_arguments(p):
    g = p.add_argument_group("I/O")
    g.add_argument("--i", required=True, help="input particle STAR file (RELION 3.1+ or 3.0 style)")
    g.add_argument("--o", required=True, help="output map (MRC)")
    g.add_argument("--angpix", type=float, default=0.0, help="pixel size in A (only for STAR files without one)")
    g = p.add_argument_group("reconstruction")
    g.add_argument("--sym", default="C1", help="point-group symmetry: C1, Cn, Dn, T, O, I")
    g.add_argument("--ctf", action="store_true", help="apply CTF correction")
    g.add_argument("--maxres", type=float, default=0.0, help="maximum resolution (A) to insert (0: Nyquist)")
    g.add_argument("--subset", type=int, default=0, choices=(0, 1, 2), help="only particles with this rlnRandomSubset (0: all)")
    g.add_argument("--pad", type=int, default=2, help="padding factor of the Fourier grid")
    g.add_argument("--batch", type=int, default=256, help="particles per kernel call")
    g.add_argument("--check_images", action="store_true", help="scan every image for NaN/Inf before starting")
    add_threads(p)


def run(args, comm):
    from ..algorithms.reconstruct import reconstruct
    from ..core.symmetry import symmetry_ops
    from ..io.mrc import write_mrc
    from ..io.particles import ParticleSet

    set_threads(args.j)
    symmetry_ops(args.sym)  # validate before reading anything
    if args.pad < 1:
        raise InputError("must be >= 1", field="--pad")
    ps = ParticleSet.read(args.i, angpix=args.angpix or None)
    ps.validate(ctf=args.ctf)
    if args.check_images:
        ps.check_images()
    log(comm, "hpcem reconstruct: %d particles, box %d, %.3f A/px, sym %s, ctf %s, %d rank(s)" % (
        ps.n, ps.box, ps.angpix, args.sym, "on" if args.ctf else "off", comm.size))
    vol = reconstruct(ps, comm, sym=args.sym, ctf=args.ctf, pad=args.pad, batch=args.batch,
                      subset=args.subset or None, maxres=args.maxres or None)
    if comm.rank == 0:
        write_mrc(args.o, vol, ps.angpix)
        stamp(os.path.splitext(args.o)[0] + ".job.json", args)
        log(comm, "wrote %s" % args.o)
    return 0
