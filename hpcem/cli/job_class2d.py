"""Reference-free 2D classification by regularised-likelihood (MAP) EM, like relion_refine
without --ref: K class averages from random subsets, exact marginalisation over classes x
in-plane angles x translations with adaptive oversampling, Wiener-filtered class averages.
Writes RELION-named files per iteration into --o (run_itNNN_classes.mrcs, _data.star,
_model.star, _optimiser.star, an HDF5 checkpoint and a montage PNG sorted by class size).
Resume with --continue run_itNNN_optimiser.star. Under `mpiexec -n N` the particles are split
across ranks; rank 0 writes."""
from __future__ import annotations

import os

from ..errors import InputError
from .common import add_threads, log, resolve_continue, set_threads, stamp


def add_arguments(p):
    g = p.add_argument_group("I/O")
    g.add_argument("--i", default=None, help="input particle STAR file (RELION 3.1+ or 3.0 style)")
    g.add_argument("--o", default=None, help="output folder, e.g. Class2D/job001 (files run_itNNN_*)")
    g.add_argument("--continue", dest="continue_", default=None, metavar="OPTIMISER_STAR",
                   help="resume from a run_itNNN_optimiser.star (its settings are kept; --iter may be raised)")
    g.add_argument("--angpix", type=float, default=0.0, help="pixel size in A (only for STAR files without one)")
    g = p.add_argument_group("model")
    g.add_argument("--K", type=int, default=10, help="number of classes")
    g.add_argument("--iter", type=int, default=None, help="number of EM iterations (default 25)")
    g.add_argument("--particle_diameter", type=float, default=0.0,
                   help="mask diameter in A (0: 80%% of the box)")
    g.add_argument("--ctf", action="store_true", help="CTF-aware likelihood and class averages")
    g.add_argument("--tau2_fudge", type=float, default=2.0, help="regularisation parameter T")
    g.add_argument("--ini_high", type=float, default=30.0,
                   help="low-pass (A) of the initial references and first resolution limit")
    g.add_argument("--random_seed", type=int, default=0, help="seed of the initialisation")
    g.add_argument("--init", choices=("particles", "subsets"), default="particles",
                   help="initial references: K random particles (fast symmetry breaking) or averages of K "
                        "random subsets (RELION's start)")
    g = p.add_argument_group("sampling")
    g.add_argument("--psi_step", type=float, default=10.0, help="in-plane angular step (deg)")
    g.add_argument("--offset_range", type=float, default=5.0, help="translation search range (pixels)")
    g.add_argument("--offset_step", type=float, default=1.0, help="translation step (pixels)")
    g.add_argument("--oversampling", type=int, default=1, choices=(0, 1),
                   help="adaptive oversampling order (1: children at half the step)")
    g.add_argument("--maxsig", type=int, default=200,
                   help="most significant coarse hypotheses oversampled per particle (0: all)")
    g = p.add_argument_group("compute")
    g.add_argument("--batch", type=int, default=0, help="particles per kernel call (0: automatic)")
    add_threads(p)


def _config(args, restart):
    from ..algorithms.map_em import Class2DConfig

    if restart is not None:  # keep the run's settings; only the iteration count and batch may change
        c = dict(restart["config"])
        c.setdefault("init", "subsets")
        c["iters"] = max(int(args.iter), int(restart["iteration"])) if args.iter is not None else c["iters"]
        if args.batch:
            c["batch"] = args.batch
        return Class2DConfig(**c)
    return Class2DConfig(K=args.K, iters=args.iter or 25, particle_diameter=args.particle_diameter, ctf=args.ctf,
                         psi_step=args.psi_step, offset_range=args.offset_range, offset_step=args.offset_step,
                         oversampling=args.oversampling, tau2_fudge=args.tau2_fudge, random_seed=args.random_seed,
                         batch=args.batch, ini_high=args.ini_high, maxsig=args.maxsig, init=args.init)


def _validate(args):
    checks = [("--K", args.K >= 1), ("--iter", args.iter is None or args.iter >= 1), ("--psi_step", 0 < args.psi_step <= 180),
              ("--offset_range", args.offset_range >= 0), ("--offset_step", args.offset_step > 0),
              ("--tau2_fudge", args.tau2_fudge > 0), ("--particle_diameter", args.particle_diameter >= 0),
              ("--batch", args.batch >= 0), ("--ini_high", args.ini_high > 0), ("--maxsig", args.maxsig >= 0)]
    for flag, ok in checks:
        if not ok:
            raise InputError("invalid value", field=flag)


def run(args, comm):
    from ..algorithms.map_em import classify_2d
    from ..algorithms.map_em_io import checkpoint_of_optimiser, load_checkpoint
    from ..io.particles import ParticleSet

    set_threads(args.j)
    _validate(args)
    restart = resolve_continue(args, lambda p: load_checkpoint(checkpoint_of_optimiser(p)))
    cfg = _config(args, restart)
    ps = ParticleSet.read(args.i, angpix=args.angpix or None)
    ps.validate(ctf=cfg.ctf)
    if cfg.particle_diameter > ps.box * ps.angpix:
        raise InputError("%.1f A is larger than the box (%.1f A)" % (cfg.particle_diameter, ps.box * ps.angpix),
                         field="--particle_diameter")
    log(comm, "hpcem class2d: %d particles, box %d, %.3f A/px, K %d, ctf %s, %d rank(s)" % (
        ps.n, ps.box, ps.angpix, cfg.K, "on" if cfg.ctf else "off", comm.size))
    if comm.rank == 0:
        stamp(os.path.join(args.o, "job.json"), args)
    classify_2d(ps, cfg, comm, args.o, restart=restart, log=lambda *m: log(comm, *m),
                job={"input": os.path.abspath(args.i), "argv": getattr(args, "_argv", None)})
    return 0
