"""Deep 2D classification (ROME): reference-free MAP alignment with the class2d engine
(--map2d_K classes, --map2d_iter iterations, into <folder>/map2d/), then statistical manifold
learning (GTM, --sml_K classes, --sml_iter iterations) of the particles put into their MAP
class frames (rlnAnglePsi, rlnOriginXAngst/YAngst of the final MAP iteration).  By default
(--sml_mode per_class) one GTM runs inside each MAP class, into <folder>/sml/classNNN/, with the
--sml_K classes shared in proportion to the class populations; --sml_mode global is ROME's
strategy I as printed, one GTM over all particles into <folder>/sml/ (see DESIGN_NOTES.md for
the purity measured with each).  Final files under the rootname --o: run_classes.mrcs
(CTF-corrected Wiener-type averages, ROME eq 17), run_data.star (MAP poses, rlnClassNumber of
the GTM class, rlnMaxValueProbDistribution; the MAP class as hpcemMapClassNumber),
run_model.star (class sizes), run_classes.png (montage sorted by class size), run_loglik.txt,
aligned.star.

Under `mpiexec -n N` the MAP stage splits the particles and the GTM stage the Fourier
coefficients across ranks.  --continue (with --o, or naming the run) resumes whichever stage was
interrupted from its newest checkpoint, with the settings of the original run (iteration counts
may be raised).  Strategy II afterwards: `hpcem sml --i <o>/run_data.star --classes 3,17 --K 50`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import InputError
from ..runtime.params import AT_LEAST_1, NON_NEGATIVE, POSITIVE, param
from ..runtime.device import DeviceOptions
from .common import IterativeJobIO, continued, job_device, job_record, set_threads, stamp
from .inputs import read_particles

MAY_CHANGE = frozenset({"i", "o", "continue_", "map2d_iter", "sml_iter", "j", "angpix", "memory_gb", "gpu"})


@dataclass(frozen=True)
class Params(IterativeJobIO, DeviceOptions):
    ctf: bool = param(False, "CTF-aware alignment, GTM and class averages", action="store_true", group="I/O")
    particle_diameter: float = param(0.0, "mask diameter in A (0: 80%% of the box for MAP, 90%% for GTM)",
                                     check=NON_NEGATIVE, group="I/O")
    random_seed: int = param(0, "seed of both stages' initialisations", group="I/O")
    map2d_K: int = param(50, "number of MAP classes", check=AT_LEAST_1, group="stage 1: MAP alignment")
    map2d_iter: int = param(20, "MAP iterations", check=AT_LEAST_1, group="stage 1: MAP alignment")
    psi_step: float = param(10.0, "in-plane angular step (deg)", check=(lambda v: 0 < v <= 180, "in (0, 180]"),
                            group="stage 1: MAP alignment")
    offset_range: float = param(5.0, "translation search range (pixels)", check=NON_NEGATIVE,
                                group="stage 1: MAP alignment")
    offset_step: float = param(1.0, "translation step (pixels)", check=POSITIVE, group="stage 1: MAP alignment")
    tau2_fudge: float = param(2.0, "regularisation parameter T", check=POSITIVE, group="stage 1: MAP alignment")
    ini_high: float = param(30.0, "low-pass (A) of the initial MAP references", check=POSITIVE,
                            group="stage 1: MAP alignment")
    sml_K: int = param(1000, "number of GTM classes (latent grid points)", check=AT_LEAST_1, group="stage 2: GTM")
    sml_iter: int = param(30, "GTM iterations", check=NON_NEGATIVE, group="stage 2: GTM")
    sml_mode: str = param("per_class", "per_class: one GTM inside each MAP class, --sml_K shared in proportion "
                          "to the class sizes; global: ROME's strategy I as printed, one GTM over all particles",
                          choices=("per_class", "global"), group="stage 2: GTM")
    dimension: int = param(2, "latent grid dimension", choices=(1, 2, 3), group="stage 2: GTM")
    basis: int = param(0, "Gaussian basis functions along the longest latent axis (0: 1.5 sqrt(side))",
                       check=NON_NEGATIVE, group="stage 2: GTM")
    alpha: float = param(1.0, "Gaussian prior on W (eq 11)", check=NON_NEGATIVE, group="stage 2: GTM")
    maxres: float = param(0.0, "highest resolution used by GTM (A); 0: n/4 shells", check=NON_NEGATIVE,
                          group="stage 2: GTM")
    memory_gb: float = param(0.0, "memory per rank the GTM plans with (GB); 0: available memory / ranks",
                             check=NON_NEGATIVE, group="compute")


def _configs(p, ps):
    from ..algorithms.map_em.class2d import Class2DConfig
    from .job_sml import Params as SmlParams, gtm_config

    if p.sml_K > ps.n or p.map2d_K > ps.n:
        raise InputError("more classes than the %d particles" % ps.n, file=p.i,
                         field="--sml_K" if p.sml_K > ps.n else "--map2d_K")
    if p.particle_diameter > ps.box * ps.angpix:
        raise InputError("invalid value", field="--particle_diameter")
    mc = Class2DConfig(K=p.map2d_K, iters=p.map2d_iter, particle_diameter=p.particle_diameter, ctf=bool(p.ctf),
                       psi_step=p.psi_step, offset_range=p.offset_range, offset_step=p.offset_step,
                       tau2_fudge=p.tau2_fudge, random_seed=p.random_seed, ini_high=p.ini_high)
    sp = SmlParams(K=p.sml_K, iters=p.sml_iter, dimension=p.dimension, basis=p.basis, alpha=p.alpha, ctf=p.ctf,
                   maxres=p.maxres, particle_diameter=p.particle_diameter, random_seed=p.random_seed)
    return mc, gtm_config(sp, ps)


def _resolve(p, ctx):
    """(params, root, resuming) of a fresh run or of ``--continue`` (the settings from job.json)."""
    from ..runtime.output import OutputRoot
    from ..runtime.resume import clean_stale, resolve_folder

    if p.continue_ is None:
        if not p.o:
            raise InputError("required", field="--o")
        if not p.i:
            raise InputError("required (or --continue)", field="--i")
        return p, OutputRoot.parse(p.o), False
    root = resolve_folder(p.continue_, p.o)
    path = root.file("job.json")
    try:
        with open(path) as f:
            stored = json.load(f)["params"]
    except (OSError, ValueError, KeyError) as exc:
        raise InputError("cannot read the run's settings (%s)" % exc, file=path, field="--continue") from None
    q = continued(p, stored, ctx.given, ctx.log, MAY_CHANGE)
    for k in ("map2d_iter", "sml_iter"):     # iteration counts may only grow
        q = q.replace(**{k: max(getattr(q, k), stored.get(k, 0))})
    clean_stale(root, ctx.comm)
    return q, root, True


def run(p: Params, ctx):
    from ..algorithms.rome.deep2d import deep_classify_2d

    set_threads(p.j, ctx.comm)
    p, root, resume = _resolve(p, ctx)
    if p.sml_mode == "per_class" and p.sml_K < p.map2d_K:
        raise InputError("--sml_mode per_class needs at least one GTM class per MAP class (--map2d_K %d)"
                         % p.map2d_K, field="--sml_K")
    ps = read_particles(p.i, p.angpix, ctf=p.ctf)
    if ps.box < 8:
        raise InputError("box %d is too small" % ps.box, file=p.i, field="rlnImageSize")
    mc, sc = _configs(p, ps)
    ctx.log("hpcem deep2d: %d particles, box %d, %.3f A/px, MAP K %d x %d iterations -> GTM K %d x %d "
            "iterations (%s), ctf %s, %d rank(s)" % (ps.n, ps.box, ps.angpix, mc.K, mc.iters, sc.K, sc.iters,
                                                     p.sml_mode, "on" if mc.ctf else "off", ctx.comm.size))
    job = job_record(ctx.name, p, ctx.argv)
    if ctx.comm.rank == 0:
        stamp(root.file("job.json"), job)
    ctx.comm.barrier()
    deep_classify_2d(ps, mc, sc, ctx.comm, root, resume=resume, log=ctx.log, job=job,
                     memory_limit=p.memory_gb * 2 ** 30 if p.memory_gb > 0 else None, sml_mode=p.sml_mode,
                     device=job_device(p, ctx))
    return 0
