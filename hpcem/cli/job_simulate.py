"""Write a simulated data set with known truth: a RELION 3.1 particle STAR file with an
optics group + an MRC stack, the true map(s), the true poses and classes (truth.star).

3D mode: particles of one or more conformations (--K) from uniformly random poses.
2D mode: particles of --views fixed projection classes from --volumes different maps,
with random in-plane rotations (a 2D classification test set)."""
from __future__ import annotations

import os

from ..errors import InputError
from .common import log, stamp


def add_arguments(p):
    p.add_argument("--o", required=True, help="output folder")
    p.add_argument("--mode", choices=("3d", "2d"), default="3d", help="3D poses or 2D projection classes")
    p.add_argument("--n", type=int, default=2000, help="number of particles")
    p.add_argument("--box", type=int, default=64, help="box size in pixels")
    p.add_argument("--angpix", type=float, default=3.0, help="pixel size in A")
    p.add_argument("--snr", type=float, default=0.1, help="signal-to-noise ratio (0 or inf: no noise)")
    p.add_argument("--K", type=int, default=1, help="3D mode: number of conformations")
    p.add_argument("--views", type=int, default=10, help="2D mode: number of projection classes")
    p.add_argument("--volumes", type=int, default=3, help="2D mode: number of different volumes the views come from")
    p.add_argument("--no_ctf", action="store_true", help="no CTF")
    p.add_argument("--defocus", type=float, nargs=2, default=(5000.0, 25000.0), metavar=("MIN", "MAX"),
                   help="defocus range in A")
    p.add_argument("--astig", type=float, default=1000.0, help="maximum astigmatism (dU - dV) in A")
    p.add_argument("--voltage", type=float, default=300.0, help="kV")
    p.add_argument("--cs", type=float, default=2.7, help="spherical aberration in mm")
    p.add_argument("--amp_contrast", type=float, default=0.1, help="amplitude contrast")
    p.add_argument("--max_shift", type=float, default=0.0, help="maximum particle shift in A (0: 2 pixels)")
    p.add_argument("--model", choices=("blobs", "atoms"), default="blobs",
                   help="maps of smooth Gaussian blobs, or pseudo-atomic maps with a protein-like spectrum")
    p.add_argument("--bfactor", type=float, default=100.0, help="--model atoms: B-factor of the pseudo-atoms (A^2)")
    p.add_argument("--blobs", type=int, default=60, help="--model blobs: Gaussian blobs per volume")
    p.add_argument("--seed", type=int, default=0, help="random seed")


def run(args, comm):
    from ..simulate import simulate_dataset
    from ..simulate.write import write_dataset

    for name, v, ok in (("--n", args.n, args.n > 0), ("--box", args.box, args.box >= 8),
                        ("--angpix", args.angpix, args.angpix > 0), ("--snr", args.snr, args.snr >= 0),
                        ("--K", args.K, args.K >= 1), ("--views", args.views, args.views >= 1)):
        if not ok:
            raise InputError("invalid value %r" % (v,), field=name)
    if comm.rank != 0:
        return 0
    snr = args.snr if args.snr > 0 else float("inf")
    sim = simulate_dataset(n=args.box, n_particles=args.n, angpix=args.angpix, snr=snr, mode=args.mode,
                           n_classes=args.K, n_views=args.views, n_volumes=args.volumes, ctf=not args.no_ctf,
                           defocus=tuple(args.defocus), astig=args.astig, voltage=args.voltage, cs=args.cs,
                           amp_contrast=args.amp_contrast, max_shift_A=args.max_shift or None,
                           n_blobs=args.blobs, seed=args.seed, model=args.model, bfactor=args.bfactor)
    paths = write_dataset(sim, args.o)
    stamp(os.path.join(args.o, "job.json"), args)
    log(comm, "hpcem simulate: %d particles (%s mode), box %d, %.2f A/px, SNR %g, noise sigma %.4g" % (
        args.n, args.mode, args.box, args.angpix, args.snr, sim.noise_sigma))
    for k, v in paths.items():
        log(comm, "  %-12s %s" % (k, v if isinstance(v, str) else ", ".join(v)))
    return 0
