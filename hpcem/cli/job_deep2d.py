"""Deep 2D classification (ROME): reference-free MAP alignment with the class2d engine
(--map2d_K classes, --map2d_iter iterations, into --o/map2d/), then statistical manifold
learning (GTM, --sml_K classes, --sml_iter iterations) of the particles put into their MAP
class frames (rlnAnglePsi, rlnOriginXAngst/YAngst of the final MAP iteration).  By default
(--sml_mode per_class) one GTM runs inside each MAP class, into --o/sml/classNNN/, with the
--sml_K classes shared in proportion to the class populations; --sml_mode global is ROME's
strategy I as printed, one GTM over all particles into --o/sml/ (see DESIGN_NOTES.md for
the purity measured with each).  Final files in --o: run_classes.mrcs (CTF-corrected Wiener-type
averages, ROME eq 17), run_data.star (MAP poses, rlnClassNumber of the GTM class,
rlnMaxValueProbDistribution; the MAP class as hpcemMapClassNumber), run_model.star (class
sizes), run_classes.png (montage sorted by class size), run_loglik.txt, aligned.star.

Under `mpiexec -n N` the MAP stage splits the particles and the GTM stage the Fourier
coefficients across ranks.  --continue (with --o) resumes whichever stage was interrupted
from its newest checkpoint, with the settings of the original run (iteration counts may be
raised).  Strategy II afterwards: `hpcem sml --i <o>/run_data.star --classes 3,17 --K 50`.
"""
from __future__ import annotations

import json
import os

from ..errors import InputError
from .common import add_threads, log, set_threads, stamp


def add_arguments(p):
    g = p.add_argument_group("I/O")
    g.add_argument("--i", default=None, help="input particle STAR file (poses not needed)")
    g.add_argument("--o", default=None, help="output folder, e.g. Deep2D/job001")
    g.add_argument("--continue", dest="continue_", action="store_true",
                   help="resume the run in --o from its newest checkpoint (its settings are kept)")
    g.add_argument("--angpix", type=float, default=0.0, help="pixel size in A (only for STAR files without one)")
    g.add_argument("--ctf", action="store_true", help="CTF-aware alignment, GTM and class averages")
    g.add_argument("--particle_diameter", type=float, default=0.0,
                   help="mask diameter in A (0: 80%% of the box for MAP, 90%% for GTM)")
    g.add_argument("--random_seed", type=int, default=0, help="seed of both stages' initialisations")
    g = p.add_argument_group("stage 1: MAP alignment (class2d engine)")
    g.add_argument("--map2d_K", type=int, default=50, help="number of MAP classes")
    g.add_argument("--map2d_iter", type=int, default=None, help="MAP iterations (default 20)")
    g.add_argument("--psi_step", type=float, default=10.0, help="in-plane angular step (deg)")
    g.add_argument("--offset_range", type=float, default=5.0, help="translation search range (pixels)")
    g.add_argument("--offset_step", type=float, default=1.0, help="translation step (pixels)")
    g.add_argument("--tau2_fudge", type=float, default=2.0, help="regularisation parameter T")
    g.add_argument("--ini_high", type=float, default=30.0, help="low-pass (A) of the initial MAP references")
    g = p.add_argument_group("stage 2: statistical manifold learning (GTM)")
    g.add_argument("--sml_K", type=int, default=1000, help="number of GTM classes (latent grid points)")
    g.add_argument("--sml_iter", type=int, default=None, help="GTM iterations (default 30)")
    g.add_argument("--sml_mode", choices=("per_class", "global"), default=None,
                   help="per_class (default): one GTM inside each MAP class, --sml_K shared in proportion "
                        "to the class sizes; global: ROME's strategy I as printed, one GTM over all particles")
    g.add_argument("--dimension", type=int, default=2, choices=(1, 2, 3), help="latent grid dimension")
    g.add_argument("--basis", type=int, default=0,
                   help="Gaussian basis functions along the longest latent axis (0: 1.5 sqrt(side))")
    g.add_argument("--alpha", type=float, default=1.0, help="Gaussian prior on W (eq 11)")
    g.add_argument("--maxres", type=float, default=0.0, help="highest resolution used by GTM (A); 0: n/4 shells")
    g.add_argument("--memory_gb", type=float, default=0.0,
                   help="memory per rank the GTM plans with (GB); 0: available memory / ranks")
    add_threads(p)


def _configs(args, ps):
    from ..algorithms.gtm import GTMConfig
    from ..algorithms.map_em import Class2DConfig

    checks = [("--map2d_K", args.map2d_K >= 1), ("--sml_K", args.sml_K >= 1),
              ("--map2d_iter", args.map2d_iter is None or args.map2d_iter >= 1),
              ("--sml_iter", args.sml_iter is None or args.sml_iter >= 0),
              ("--psi_step", 0 < args.psi_step <= 180), ("--offset_range", args.offset_range >= 0),
              ("--offset_step", args.offset_step > 0), ("--tau2_fudge", args.tau2_fudge > 0),
              ("--ini_high", args.ini_high > 0), ("--alpha", args.alpha >= 0),
              ("--particle_diameter", 0 <= args.particle_diameter <= ps.box * ps.angpix)]
    for flag, ok in checks:
        if not ok:
            raise InputError("invalid value", field=flag)
    if (args.sml_mode or "per_class") == "per_class" and args.sml_K < args.map2d_K:
        raise InputError("--sml_mode per_class needs at least one GTM class per MAP class (--map2d_K %d)"
                         % args.map2d_K, field="--sml_K")
    if args.sml_K > ps.n or args.map2d_K > ps.n:
        raise InputError("more classes than the %d particles" % ps.n, file=args.i,
                         field="--sml_K" if args.sml_K > ps.n else "--map2d_K")
    max_shell = 0.0
    if args.maxres > 0:
        if args.maxres < 2 * ps.angpix:
            raise InputError("%.3g A is beyond Nyquist (%.3g A)" % (args.maxres, 2 * ps.angpix), field="--maxres")
        max_shell = ps.box * ps.angpix / args.maxres
    mc = Class2DConfig(K=args.map2d_K, iters=args.map2d_iter or 20, particle_diameter=args.particle_diameter,
                       ctf=bool(args.ctf), psi_step=args.psi_step, offset_range=args.offset_range,
                       offset_step=args.offset_step, tau2_fudge=args.tau2_fudge, random_seed=args.random_seed,
                       ini_high=args.ini_high)
    sc = GTMConfig(K=args.sml_K, dimension=args.dimension, basis=args.basis, alpha=args.alpha,
                   max_shell=max_shell, iters=30 if args.sml_iter is None else args.sml_iter, ctf=bool(args.ctf),
                   mask_radius_px=args.particle_diameter / (2 * ps.angpix) if args.particle_diameter > 0 else 0.0,
                   seed=args.random_seed)
    return mc, sc


def run(args, comm):
    from dataclasses import asdict, replace

    from ..algorithms.deep2d import deep_classify_2d
    from ..algorithms.gtm import GTMConfig
    from ..algorithms.map_em import Class2DConfig
    from ..io.particles import ParticleSet

    set_threads(args.j)
    if not args.o:
        raise InputError("required", field="--o")
    stored = None
    if args.continue_:
        path = os.path.join(args.o, "job.json")
        try:
            with open(path) as f:
                stored = json.load(f)
            args.i = args.i or stored["input"]
        except (OSError, ValueError, KeyError) as exc:
            raise InputError("cannot read the run's settings (%s)" % exc, file=path, field="--continue") from None
        if not args.angpix:
            args.angpix = float(stored.get("angpix") or 0.0)
    if not args.i:
        raise InputError("required (or --continue)", field="--i")
    ps = ParticleSet.read(args.i, angpix=args.angpix or None)
    if stored is not None:
        mc = Class2DConfig(**stored["map2d_config"])
        sc = GTMConfig(**stored["sml_config"])
        if args.map2d_iter:
            mc = replace(mc, iters=max(mc.iters, args.map2d_iter))
        if args.sml_iter is not None:
            sc.iters = max(sc.iters, args.sml_iter)
        mode = stored.get("sml_mode", "global")      # runs from before the per-class mode were global
    else:
        mc, sc = _configs(args, ps)
        mode = args.sml_mode or "per_class"
    ps.validate(ctf=mc.ctf)
    if ps.box < 8:
        raise InputError("box %d is too small" % ps.box, file=args.i, field="rlnImageSize")
    log(comm, "hpcem deep2d: %d particles, box %d, %.3f A/px, MAP K %d x %d iterations -> GTM K %d x %d "
        "iterations (%s), ctf %s, %d rank(s)" % (ps.n, ps.box, ps.angpix, mc.K, mc.iters, sc.K, sc.iters,
                                                 mode, "on" if mc.ctf else "off", comm.size))
    job = {"input": os.path.abspath(args.i), "angpix": args.angpix, "argv": getattr(args, "_argv", None)}
    if comm.rank == 0 and stored is None:
        stamp(os.path.join(args.o, "job.json"), args, dict(input=job["input"], angpix=args.angpix,
                                                          map2d_config=asdict(mc), sml_config=sc.to_dict(),
                                                          sml_mode=mode))
    comm.barrier()
    deep_classify_2d(ps, mc, sc, comm, args.o, resume=stored is not None, log=lambda *m: log(comm, *m),
                     job=job, memory_limit_gb=args.memory_gb, sml_mode=mode)
    return 0
