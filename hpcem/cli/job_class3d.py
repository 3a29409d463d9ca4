"""3D classification by regularised-likelihood (MAP) EM, like relion_refine --ref with K classes:
exact marginalisation over classes x HEALPix directions (asymmetric unit of --sym) x in-plane angles
x translations with adaptive oversampling; K maps reconstructed by back-projection with the
reference-power prior (--tau2_fudge). Input poses are ignored (global search). Writes
run_itNNN_classKKK.mrc, _data.star, _model.star, _optimiser.star, an HDF5 checkpoint and central
slices per class under the rootname --o; resume with --continue run_itNNN_optimiser.star (as with
relion_refine, the searches and the prior may change there: --healpix_order, --sigma_ang, --tau2_fudge,
--tv, ...). At low SNR, --auto_sampling --tv --tv_auto lets the searches follow the resolution (cross
halves, then joined, then the finer order with importance-sampled searches). Under `mpiexec -n N` the
particles are split across ranks; rank 0 writes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..errors import InputError
from ..algorithms.map_em.config3d import Class3DConfig
from ..runtime.device import DeviceOptions
from .common import (CONTINUABLE_SEARCH, IterativeJobIO, job_device, job_record, ref_angpix_param, ref_param,
                     resolve_run, set_threads, stamp)
from .inputs import read_mask, read_particles, read_reference


@dataclass(frozen=True)
class Params(IterativeJobIO, Class3DConfig, DeviceOptions):
    continue_may_change: ClassVar[frozenset] = CONTINUABLE_SEARCH
    ref: str = ref_param()
    ref_angpix: float = ref_angpix_param()


def run_map3d(p, ctx, algorithm, config_cls, what: str):
    """The shared body of class3d and refine3d: inputs, record, the driver."""
    from ..runtime.driver import run_iterations

    set_threads(p.j, ctx.comm)
    p, root, restart = resolve_run(p, ctx)
    ps = read_particles(p.i, p.angpix, ctf=p.ctf, diameter=p.particle_diameter)
    ref = None
    if getattr(p, "ref", None) and restart is None:
        ref = read_reference(p.ref, ps, ref_angpix=p.ref_angpix, log=ctx.log)
    if p.solvent_mask:
        read_mask(p.solvent_mask, ps, "--solvent_mask")
    if p.sigma_ang > 0 and "rlnAngleRot" not in ps.table:
        raise InputError("local searches from the start need the particles' poses (rlnAngleRot/Tilt/Psi)",
                         file=p.i, field="--sigma_ang")
    cfg = config_cls.subset(p)
    ctx.log("hpcem %s: %d particles, box %d, %.3f A/px, %s, sym %s, ctf %s, %d rank(s)" % (
        ctx.name, ps.n, ps.box, ps.angpix, what % cfg.__dict__, cfg.sym, "on" if cfg.ctf else "off", ctx.comm.size))
    job = job_record(ctx.name, p, ctx.argv)
    if ctx.comm.rank == 0:
        stamp(root.file("job.json"), job)
    algo = algorithm(ps, ref, cfg, ctx.comm, ctx.log, device=job_device(p, ctx))
    run_iterations(algo, root, ctx.comm, ctx.log, restart=restart, job=job)
    return 0


def run(p: Params, ctx):
    from ..algorithms.map_em.class3d import Class3D

    return run_map3d(p, ctx, Class3D, Class3DConfig, "K %(K)d")
