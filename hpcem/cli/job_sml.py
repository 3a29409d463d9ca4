"""Deep 2D classification by statistical manifold learning (ROME's GTM with CTF).

Classifies already aligned particles: each particle's pose from the input STAR file
(rlnAnglePsi and rlnOriginXAngst/YAngst, e.g. from a previous class2d or refine run) is
applied, as ROME does, then K latent points on a regular 1/2/3-D grid are fitted by EM
(Gaussian basis functions plus a constant, CTF per particle, mean noise precision, Gaussian
prior alpha on the weights).  Outputs in --o: run_classes.mrcs (CTF-corrected, Wiener-type
averages, ROME eq 17), run_data.star (rlnClassNumber, rlnMaxValueProbDistribution),
run_model.star (class sizes), run_classes.png (montage sorted by class size),
run_loglik.txt, and a checkpoint run_itNNN_gtm.h5 per iteration for --continue.

Strategy II: --classes 3,17 sub-classifies only the particles whose rlnClassNumber is in
the list, each selected class independently, into --o/classNNN/.

Under `mpiexec -n N` the Fourier coefficients are split across ranks (every rank reads all
particles); one Allreduce of the N x K distances per iteration.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import InputError
from .common import add_threads, log, set_threads, stamp


def add_arguments(p):
    g = p.add_argument_group("I/O")
    g.add_argument("--i", default=None, help="input particle STAR file with poses (aligned particles)")
    g.add_argument("--o", default=None, help="output directory")
    g.add_argument("--continue", dest="continue_from", default=None,
                   help="resume from a checkpoint run_itNNN_gtm.h5 (its configuration is used; "
                        "--iter may be raised)")
    g.add_argument("--angpix", type=float, default=0.0, help="pixel size in A (only for STAR files without one)")
    g = p.add_argument_group("GTM")
    g.add_argument("--K", type=int, default=100, help="number of classes (latent grid points)")
    g.add_argument("--iter", type=int, default=30, help="number of EM iterations")
    g.add_argument("--dimension", type=int, default=2, choices=(1, 2, 3), help="latent grid dimension")
    g.add_argument("--basis", type=int, default=0,
                   help="Gaussian basis functions along the longest latent axis (0: 1.5 sqrt(side))")
    g.add_argument("--basis_width", type=float, default=1.0, help="basis width sigma in units of the basis spacing")
    g.add_argument("--alpha", type=float, default=1.0,
                   help="Gaussian prior on W (eq 11), in units of the normalised data (mean power 1)")
    g.add_argument("--ctf", action="store_true", help="model the CTF (eq 2) and CTF-correct the averages")
    g.add_argument("--maxres", type=float, default=0.0, help="highest resolution used (A); 0: 4 pixels (n/4 shells)")
    g.add_argument("--max_shell", type=float, default=0.0, help="highest Fourier shell used (overridden by --maxres)")
    g.add_argument("--particle_diameter", type=float, default=0.0,
                   help="soft circular mask diameter (A); 0: 90%% of the box")
    g.add_argument("--classes", default="",
                   help="strategy II: comma-separated rlnClassNumber values to sub-classify, each on its own")
    g.add_argument("--random_seed", type=int, default=0, help="seed of the PCA initialisation")
    g.add_argument("--pca_particles", type=int, default=4000, help="particles used for the PCA initialisation")
    g.add_argument("--memory_gb", type=float, default=0.0,
                   help="memory per rank to plan with (GB); 0: this machine's available memory / ranks")
    add_threads(p)


def _config(args, ps):
    from ..algorithms.gtm import GTMConfig

    if args.K < 1:
        raise InputError("must be >= 1", field="--K")
    if args.iter < 0:
        raise InputError("must be >= 0", field="--iter")
    if args.alpha < 0:
        raise InputError("must be >= 0", field="--alpha")
    if args.basis_width <= 0:
        raise InputError("must be > 0", field="--basis_width")
    max_shell = args.max_shell
    if args.maxres and args.maxres > 0:
        if args.maxres < 2 * ps.angpix:
            raise InputError("%.3g A is beyond Nyquist (%.3g A)" % (args.maxres, 2 * ps.angpix), field="--maxres")
        max_shell = ps.box * ps.angpix / args.maxres
    radius = args.particle_diameter / (2 * ps.angpix) if args.particle_diameter > 0 else 0.0
    return GTMConfig(K=args.K, dimension=args.dimension, basis=args.basis, basis_width=args.basis_width,
                     alpha=args.alpha, max_shell=max_shell, iters=args.iter, ctf=bool(args.ctf),
                     mask_radius_px=radius, seed=args.random_seed, pca_particles=args.pca_particles)


def run(args, comm):
    from ..algorithms.gtm import GTMConfig
    from ..algorithms.gtm_io import read_checkpoint, run_gtm
    from ..io.particles import ParticleSet

    set_threads(args.j)
    resume = None
    if args.continue_from:
        resume = read_checkpoint(args.continue_from)
        ex = resume["extra"]
        args.i = args.i or ex.get("input")
        args.o = args.o or os.path.dirname(os.path.abspath(args.continue_from))
        if args.i is None:
            raise InputError("no input STAR file recorded; give --i", field="--continue")
    if not args.i or not args.o:
        raise InputError("--i and --o are required (or --continue)", field="--i/--o")
    ps = ParticleSet.read(args.i, angpix=args.angpix or None)
    ps.validate(ctf=args.ctf)
    if resume is not None:
        cfg = GTMConfig(**resume["config"])
        cfg.iters = max(args.iter, resume["iteration"])
    else:
        cfg = _config(args, ps)
    if ps.box < 8:
        raise InputError("box %d is too small" % ps.box, field="rlnImageSize")
    jobs = [(ps, args.o, None)]
    sel = resume["extra"].get("subclass") if resume is not None else None
    if args.classes or sel:
        cn = ps.class_numbers()
        if cn is None:
            raise InputError("--classes needs rlnClassNumber in the input", file=args.i, field="rlnClassNumber")
        wanted = [int(sel)] if sel else [int(c) for c in str(args.classes).split(",") if c.strip()]
        jobs = []
        for c in wanted:
            idx = np.flatnonzero(cn == c)
            if idx.size < 2:
                raise InputError("class %d has %d particles" % (c, idx.size), file=args.i, field="--classes")
            out = args.o if sel else os.path.join(args.o, "class%03d" % c)
            jobs.append((ps.subset(idx), out, c))
    log(comm, "hpcem sml: %d particles, box %d, %.3f A/px, %d job(s), %d rank(s)" % (
        ps.n, ps.box, ps.angpix, len(jobs), comm.size))
    for sub, out, c in jobs:
        if c is not None:
            log(comm, "== sub-classifying class %d (%d particles) into %s" % (c, sub.n, out))
        if comm.rank == 0:
            os.makedirs(out, exist_ok=True)
            stamp(os.path.join(out, "job.json"), args, {"gtm_config": cfg.to_dict()})
        comm.barrier()
        run_gtm(sub, comm, cfg, out, log=lambda *m: log(comm, *m), resume=resume,
                memory_limit_gb=args.memory_gb,
                extra={"input": os.path.abspath(args.i), "subclass": c})
        log(comm, "wrote %s/run_classes.mrcs, run_data.star, run_model.star" % out)
    return 0

