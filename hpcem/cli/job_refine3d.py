"""3D auto-refinement with gold-standard halves, like relion_refine --auto_refine --split_random_halves:
the particles are split by rlnRandomSubset (seeded random halves if absent), each half is refined
against its own reference (both from the low-passed --ref), regularised by the half-map FSC; the
HEALPix order grows with the resolution, local searches from --auto_local_healpix_order; after
convergence a final iteration combines both halves into run_class001.mrc (plus
run_half{1,2}_class001_unfil.mrc, run_fsc.star/png, masked and unmasked resolution at FSC 0.143).
Input poses are ignored. Under `mpiexec -n N` the ranks form two groups, one per half (-n 2
works); one rank refines both halves in turn. Resume with --continue run_itNNN_optimiser.star."""
from __future__ import annotations

import os

from .common import log, stamp
from .job_class3d import add_common, prepare


def add_arguments(p):
    add_common(p, refine=True)


def run(args, comm):
    from ..algorithms.map_em3d import refine_3d

    cfg, ps, ref, restart = prepare(args, comm, refine=True)
    log(comm, "hpcem refine3d: %d particles, box %d, %.3f A/px, sym %s, ctf %s, %d rank(s)" % (
        ps.n, ps.box, ps.angpix, cfg.sym, "on" if cfg.ctf else "off", comm.size))
    if comm.rank == 0:
        stamp(os.path.join(args.o, "job.json"), args)
    refine_3d(ps, ref, cfg, comm, args.o, restart=restart, log=lambda *m: log(comm, *m),
              job={"input": os.path.abspath(args.i), "argv": getattr(args, "_argv", None)})
    return 0
