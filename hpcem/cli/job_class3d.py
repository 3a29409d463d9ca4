"""3D classification by regularised-likelihood (MAP) EM, like relion_refine --ref with K classes:
exact marginalisation over classes x HEALPix directions (asymmetric unit of --sym) x in-plane angles
x translations with adaptive oversampling; K maps reconstructed by back-projection with the
reference-power prior (--tau2_fudge). Input poses are ignored (global search). Writes
run_itNNN_classKKK.mrc, _data.star, _model.star, _optimiser.star, an HDF5 checkpoint and central
slices per class into --o; resume with --continue run_itNNN_optimiser.star. Under `mpiexec -n N`
the particles are split across ranks; rank 0 writes."""
from __future__ import annotations

import os

from ..errors import InputError
from .common import add_threads, log, resolve_continue, set_threads, stamp


def add_common(p, refine: bool):
    g = p.add_argument_group("I/O")
    g.add_argument("--i", default=None, help="input particle STAR file")
    g.add_argument("--ref", default=None, help="initial reference map (MRC), same box and pixel size as the particles")
    g.add_argument("--o", default=None, help="output folder (files run_*)")
    g.add_argument("--continue", dest="continue_", default=None, metavar="OPTIMISER_STAR",
                   help="resume from a run_itNNN_optimiser.star (its settings are kept)")
    g.add_argument("--angpix", type=float, default=0.0, help="pixel size in A (only for STAR files without one)")
    g = p.add_argument_group("model")
    if not refine:
        g.add_argument("--K", type=int, default=4, help="number of classes")
    g.add_argument("--iter", type=int, default=None,
                   help="iterations (class3d, default 25) / most iterations before the final one (refine3d, default 50)")
    g.add_argument("--sym", default="C1", help="point-group symmetry (Cn, Dn, T, O, I)")
    g.add_argument("--particle_diameter", type=float, default=0.0, help="mask diameter in A (0: 80%% of the box)")
    g.add_argument("--ctf", action="store_true", help="CTF-aware likelihood and reconstruction")
    g.add_argument("--ini_high", type=float, default=40.0, help="low-pass (A) of the reference, first resolution limit")
    g.add_argument("--tau2_fudge", type=float, default=1.0 if refine else 4.0, help="regularisation parameter T")
    g.add_argument("--random_seed", type=int, default=0, help="seed (initial classes / half sets)")
    g = p.add_argument_group("sampling")
    g.add_argument("--healpix_order", type=int, default=2, help="HEALPix order of the (first) angular sampling")
    if refine:
        g.add_argument("--auto_local_healpix_order", type=int, default=4,
                       help="local angular searches from this HEALPix order on")
        g.add_argument("--max_healpix_order", type=int, default=0,
                       help="finest HEALPix order (0: from the Nyquist-limited accuracy)")
    else:
        g.add_argument("--psi_step", type=float, default=0.0, help="in-plane step (deg; 0: the HEALPix step)")
    g.add_argument("--offset_range", type=float, default=5.0, help="translation search range (pixels)")
    g.add_argument("--offset_step", type=float, default=1.0, help="translation step (pixels)")
    g.add_argument("--oversampling", type=int, default=1, choices=(0, 1), help="adaptive oversampling order")
    g.add_argument("--maxsig", type=int, default=30,
                   help="most significant coarse hypotheses oversampled per particle (0: all)")
    g = p.add_argument_group("compute")
    g.add_argument("--batch", type=int, default=0, help="particles per kernel call (0: automatic)")
    add_threads(p)


def add_arguments(p):
    add_common(p, refine=False)


def validate(args, refine):
    checks = [("--iter", args.iter is None or args.iter >= 1), ("--healpix_order", 0 <= args.healpix_order <= 6),
              ("--offset_range", args.offset_range >= 0), ("--offset_step", args.offset_step > 0),
              ("--tau2_fudge", args.tau2_fudge > 0), ("--particle_diameter", args.particle_diameter >= 0),
              ("--batch", args.batch >= 0), ("--ini_high", args.ini_high > 0), ("--maxsig", args.maxsig >= 0)]
    if not refine:
        checks += [("--K", args.K >= 1), ("--psi_step", 0 <= args.psi_step <= 180)]
    for flag, ok in checks:
        if not ok:
            raise InputError("invalid value", field=flag)
    from ..core.symmetry import symmetry_ops
    try:
        symmetry_ops(args.sym)
    except Exception as exc:
        raise InputError("unknown symmetry (%s)" % exc, field="--sym")


def load_inputs(args, cfg, restart):
    """ParticleSet and reference, checked before any compute."""
    import numpy as np

    from ..io.mrc import read_mrc
    from ..io.particles import ParticleSet

    ps = ParticleSet.read(args.i, angpix=args.angpix or None)
    ps.validate(ctf=cfg.ctf)
    if cfg.particle_diameter > ps.box * ps.angpix:
        raise InputError("%.1f A is larger than the box (%.1f A)" % (cfg.particle_diameter, ps.box * ps.angpix),
                         field="--particle_diameter")
    ref = None
    if restart is None:
        if not args.ref:
            raise InputError("required (or --continue)", field="--ref")
        if not os.path.exists(args.ref):
            raise InputError("file not found", file=args.ref, field="--ref")
        try:
            ref, apix = read_mrc(args.ref)
        except InputError:
            raise
        except Exception as exc:
            raise InputError("cannot read map (%s)" % exc, file=args.ref, field="--ref")
        ref = np.asarray(ref, np.float32)
        if ref.ndim != 3 or len(set(ref.shape)) != 1:
            raise InputError("reference must be a cubic 3D map, got shape %s" % (ref.shape,), file=args.ref, field="box")
        if ref.shape[0] != ps.box:
            raise InputError("box %d differs from the particles' box %d (%s)" % (ref.shape[0], ps.box, args.i),
                             file=args.ref, field="box")
        if apix and apix > 0 and abs(float(apix) - ps.angpix) > 0.01 * ps.angpix:
            raise InputError("pixel size %.4f A differs from the particles' %.4f A" % (apix, ps.angpix),
                             file=args.ref, field="pixel size")
        if not np.all(np.isfinite(ref)):
            raise InputError("map has non-finite values", file=args.ref, field="data")
    return ps, ref


def make_config(args, restart, refine):
    from ..algorithms.map_em3d import Map3DConfig

    if restart is not None:
        c = dict(restart["config"])
        if args.iter is not None:
            c["iters"] = max(int(args.iter), int(restart.get("iteration", restart.get("global", {}).get("iteration", 0))))
        if args.batch:
            c["batch"] = args.batch
        return Map3DConfig(**c)
    kw = dict(iters=args.iter or (50 if refine else 25), sym=args.sym, particle_diameter=args.particle_diameter,
              ctf=args.ctf, healpix_order=args.healpix_order, offset_range=args.offset_range,
              offset_step=args.offset_step, oversampling=args.oversampling, tau2_fudge=args.tau2_fudge,
              ini_high=args.ini_high, random_seed=args.random_seed, batch=args.batch, maxsig=args.maxsig,
              refine=refine)
    if refine:
        kw.update(K=1, auto_local_healpix_order=args.auto_local_healpix_order,
                  max_healpix_order=args.max_healpix_order)
    else:
        kw.update(K=args.K, psi_step=args.psi_step)
    return Map3DConfig(**kw)


def prepare(args, comm, refine):
    from ..algorithms.map_em3d_io import checkpoint_of_optimiser, load_state

    set_threads(args.j)
    validate(args, refine)
    restart = resolve_continue(args, lambda p: load_state(checkpoint_of_optimiser(p)))
    cfg = make_config(args, restart, refine)
    ps, ref = load_inputs(args, cfg, restart)
    return cfg, ps, ref, restart


def run(args, comm):
    from ..algorithms.map_em3d import classify_3d

    cfg, ps, ref, restart = prepare(args, comm, refine=False)
    log(comm, "hpcem class3d: %d particles, box %d, %.3f A/px, K %d, sym %s, ctf %s, %d rank(s)" % (
        ps.n, ps.box, ps.angpix, cfg.K, cfg.sym, "on" if cfg.ctf else "off", comm.size))
    if comm.rank == 0:
        stamp(os.path.join(args.o, "job.json"), args)
    classify_3d(ps, ref, cfg, comm, args.o, restart=restart, log=lambda *m: log(comm, *m),
                job={"input": os.path.abspath(args.i), "argv": getattr(args, "_argv", None)})
    return 0
