"""Deep 2D classification by statistical manifold learning (ROME's GTM with CTF).

Classifies already aligned particles: each particle's pose from the input STAR file
(rlnAnglePsi and rlnOriginXAngst/YAngst, e.g. from a previous class2d or refine run) is
applied, as ROME does, then K latent points on a regular 1/2/3-D grid are fitted by EM
(Gaussian basis functions plus a constant, CTF per particle, mean noise precision, Gaussian
prior alpha on the weights).  Outputs under the rootname --o: run_classes.mrcs (CTF-corrected,
Wiener-type averages, ROME eq 17), run_data.star (rlnClassNumber, rlnMaxValueProbDistribution),
run_model.star (class sizes), run_classes.png (montage sorted by class size), run_loglik.txt,
and a checkpoint run_itNNN_gtm.h5 (+ run_itNNN_optimiser.star) per iteration for --continue.

Strategy II: --classes 3,17 sub-classifies only the particles whose rlnClassNumber is in
the list, each selected class independently, into --o/classNNN/.

Under `mpiexec -n N` the Fourier coefficients are split across ranks (every rank reads all
particles); one Reduce_scatter + Allgatherv of the N x K distances per iteration.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..runtime.params import AT_LEAST_1, NON_NEGATIVE, POSITIVE, param
from ..runtime.device import DeviceOptions
from .common import IterativeJobIO, continued, job_device, job_record, set_threads, stamp
from .inputs import read_particles


@dataclass(frozen=True)
class Params(IterativeJobIO, DeviceOptions):
    K: int = param(100, "number of classes (latent grid points)", check=AT_LEAST_1, group="GTM")
    iters: int = param(30, "number of EM iterations", flag="--iter", check=NON_NEGATIVE, group="GTM")
    dimension: int = param(2, "latent grid dimension", choices=(1, 2, 3), group="GTM")
    basis: int = param(0, "Gaussian basis functions along the longest latent axis (0: 1.5 sqrt(side))",
                       check=NON_NEGATIVE, group="GTM")
    basis_width: float = param(1.0, "basis width sigma in units of the basis spacing", check=POSITIVE, group="GTM")
    alpha: float = param(1.0, "Gaussian prior on W (eq 11), in units of the normalised data (mean power 1)",
                         check=NON_NEGATIVE, group="GTM")
    ctf: bool = param(False, "model the CTF (eq 2) and CTF-correct the averages", action="store_true", group="GTM")
    maxres: float = param(0.0, "highest resolution used (A); 0: 4 pixels (n/4 shells)", check=NON_NEGATIVE,
                          group="GTM")
    max_shell: float = param(0.0, "highest Fourier shell used (overridden by --maxres)", check=NON_NEGATIVE,
                             group="GTM")
    particle_diameter: float = param(0.0, "soft circular mask diameter (A); 0: 90%% of the box", check=NON_NEGATIVE,
                                     group="GTM")
    classes: str = param("", "strategy II: comma-separated rlnClassNumber values to sub-classify, each on its own",
                         group="GTM")
    random_seed: int = param(0, "seed of the PCA initialisation", group="GTM")
    pca_particles: int = param(4000, "particles used for the PCA initialisation", check=AT_LEAST_1, group="GTM")
    memory_gb: float = param(0.0, "memory per rank to plan with (GB); 0: this node's available memory / ranks",
                             check=NON_NEGATIVE, group="compute")


def gtm_config(p, ps):
    """The GTM settings of an sml-style job on the particle set ``ps`` (resolution and mask in
    pixels); ``p`` has the fields of :class:`Params` (deep2d's flags map onto them)."""
    from ..algorithms.rome.gtm import GTMConfig

    max_shell = p.max_shell
    if p.maxres > 0:
        if p.maxres < 2 * ps.angpix:
            raise InputError("%.3g A is beyond Nyquist (%.3g A)" % (p.maxres, 2 * ps.angpix), field="--maxres")
        max_shell = ps.box * ps.angpix / p.maxres
    radius = p.particle_diameter / (2 * ps.angpix) if p.particle_diameter > 0 else 0.0
    return GTMConfig(K=p.K, dimension=p.dimension, basis=p.basis, basis_width=p.basis_width, alpha=p.alpha,
                     max_shell=max_shell, iters=p.iters, ctf=bool(p.ctf), mask_radius_px=radius, seed=p.random_seed,
                     pca_particles=p.pca_particles)


def _resolve(p, ctx):
    """(params, root, checkpoint, sub-class or None) of a fresh or continued run."""
    from ..runtime.output import OutputRoot
    from ..runtime.resume import clean_stale, resolve_checkpoint

    if p.continue_ is None:
        if not p.i or not p.o:
            raise InputError("--i and --o are required (or --continue)", field="--i/--o")
        return p, OutputRoot.parse(p.o), None, None
    root, ck = resolve_checkpoint(p.continue_, p.o if "o" in ctx.given else None, "sml")
    q = continued(p, ck.job.get("params", {}), ctx.given, ctx.log)
    if "iters" in ctx.given:
        q = q.replace(iters=max(p.iters, ck.iteration))
    clean_stale(root, ctx.comm)
    return q, root, ck, ck.job.get("subclass")


def _jobs(p, ps, root, subclass):
    """(particles, output root, class) of each GTM run: all particles, or each selected class."""
    if not p.classes and subclass is None:
        return [(ps, root, None)]
    cn = ps.class_numbers()
    if cn is None:
        raise InputError("--classes needs rlnClassNumber in the input", file=p.i, field="rlnClassNumber")
    wanted = [int(subclass)] if subclass is not None else [int(c) for c in str(p.classes).split(",") if c.strip()]
    out = []
    for c in wanted:
        idx = np.flatnonzero(cn == c)
        if idx.size < 2:
            raise InputError("class %d has %d particles" % (c, idx.size), file=p.i, field="--classes")
        out.append((ps.subset(idx), root if subclass is not None else root.sub("class%03d" % c), c))
    return out


def run(p: Params, ctx):
    from ..algorithms.rome.sml import run_sml

    set_threads(p.j, ctx.comm)
    p, root, restart, subclass = _resolve(p, ctx)
    ps = read_particles(p.i, p.angpix, ctf=p.ctf)
    if ps.box < 8:
        raise InputError("box %d is too small" % ps.box, field="rlnImageSize")
    cfg = gtm_config(p, ps)
    jobs = _jobs(p, ps, root, subclass)
    device = job_device(p, ctx)
    ctx.log("hpcem sml: %d particles, box %d, %.3f A/px, %d job(s), %d rank(s)" % (
        ps.n, ps.box, ps.angpix, len(jobs), ctx.comm.size))
    for sub, out, c in jobs:
        if c is not None:
            ctx.log("== sub-classifying class %d (%d particles) into %s" % (c, sub.n, out.folder))
        job = dict(job_record(ctx.name, p, ctx.argv), subclass=c)
        if ctx.comm.rank == 0:
            stamp(out.file("job.json"), job)
        ctx.comm.barrier()
        run_sml(sub, ctx.comm, cfg, out, log=ctx.log, restart=restart, job=job,
                memory_limit=p.memory_gb * 2 ** 30 if p.memory_gb > 0 else None, device=device)
        ctx.log("wrote %s_classes.mrcs, run_data.star, run_model.star" % out.rootname)
    return 0
