"""Reference-free 2D classification by regularised-likelihood (MAP) EM, like relion_refine
without --ref: K class averages from random particles (or subsets), exact marginalisation over
classes x in-plane angles x translations with adaptive oversampling, Wiener-filtered class
averages.  Writes RELION-named files per iteration (run_itNNN_classes.mrcs, _data.star,
_model.star, _optimiser.star, an HDF5 checkpoint and a montage PNG sorted by class size) under
the rootname --o.  Resume with --continue run_itNNN_optimiser.star (or the rootname).  Under
`mpiexec -n N` the particles are split across ranks; rank 0 writes."""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..algorithms.map_em.class2d import Class2D, Class2DConfig
from ..algorithms.map_em.class2d_grad import Class2DGrad
from ..runtime.device import DeviceOptions
from .common import IterativeJobIO, job_device, job_record, resolve_run, set_threads, stamp
from .inputs import read_particles


@dataclass(frozen=True)
class Params(IterativeJobIO, Class2DConfig, DeviceOptions):
    pass


def run(p: Params, ctx):
    from ..runtime.driver import run_iterations

    set_threads(p.j, ctx.comm)
    p, root, restart = resolve_run(p, ctx)
    ps = read_particles(p.i, p.angpix, ctf=p.ctf, diameter=p.particle_diameter)
    cfg = Class2DConfig.subset(p)
    if cfg.grad and restart is None and "iters" not in ctx.given:
        cfg = replace(cfg, iters=200)    # RELION's VDAM default: 200 mini-batches
    algo = Class2DGrad if cfg.grad else Class2D
    device = job_device(p, ctx)
    ctx.log("hpcem class2d%s: %d particles, box %d, %.3f A/px, K %d, ctf %s, %d rank(s)" % (
        " (VDAM, %d mini-batches)" % cfg.iters if cfg.grad else "", ps.n, ps.box, ps.angpix, cfg.K,
        "on" if cfg.ctf else "off", ctx.comm.size))
    job = job_record(ctx.name, p, ctx.argv)
    if ctx.comm.rank == 0:
        stamp(root.file("job.json"), job)
    run_iterations(algo(ps, cfg, ctx.comm, ctx.log, device=device), root, ctx.comm, ctx.log, restart=restart,
                   job=job)
    return 0
