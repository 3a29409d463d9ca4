"""Ab initio 3D reconstruction from random starts (cryoSPARC's Ab-Initio Reconstruction; seed 003):
K maps from random densities by stochastic average gradient descent on the MAP objective
(exponential prior, non-negativity), poses marginalised over a quadrature sized from the current
resolution (frequency marching from --init_res to --max_res) with importance-sampled candidates.
cryoSPARC's parameters under their names without the abinit_ prefix (--init_res, --max_res,
--num_init_iters, --num_final_iters, --minisize_init, --minisize, --minisize_num_init_iters,
--high_lr, --class_anneal_beta, --nonneg, ...). Writes run_itNNN_classKKK.mrc, _data.star,
_model.star, _optimiser.star, an HDF5 checkpoint and central slices every --write_iter iterations,
run_log.star/.png (resolution, step size, fraction of the quadrature evaluated, class shares), and
at the end run_classKKK.mrc and run_data.star (every particle's class and pose); resume with
--continue (which may change the step factor's schedule, --high_lr, --high_lr_duration,
--high_lr_stop and --high_lr_rearm, --reseed_from, and --num_final_iters to run longer at
--max_res). With K > 1 the step factor restarts at --high_lr once the classes settle after the
frequency marching (--high_lr_restart, default) and halves once more when the classes move again
after the restart (--high_lr_stop relapse, default; 'resettle': when they settle again after
that); --high_lr_rearm restarts it again after each re-seed or split-merge move. Under
`mpiexec -n N` each mini-batch's particles are split across ranks; rank 0 writes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..algorithms.sagd.config import AbInitioConfig
from ..errors import InputError
from .common import IterativeJobIO, job_record, resolve_run, set_threads, stamp
from .inputs import read_particles


@dataclass(frozen=True)
class Params(IterativeJobIO, AbInitioConfig):
    # the SAGD step factor's schedule may change on --continue: a run whose classes have settled while its
    # maps lag the E-step's resolution goes on with larger steps (DESIGN_NOTES, issue 12, sixth pass)
    # and a run may go on longer at the final resolution (--num_final_iters, never below what is done)
    continue_may_change: ClassVar[frozenset] = frozenset({"high_lr", "high_lr_duration", "high_lr_stop",
                                                          "high_lr_rearm", "reseed_from", "num_final_iters"})


def run(p: Params, ctx):
    from ..algorithms.sagd.abinitio import AbInitio
    from ..algorithms.sagd.schedule import Schedule
    from ..runtime.driver import run_iterations

    set_threads(p.j, ctx.comm)
    p, root, restart = resolve_run(p, ctx)
    ps = read_particles(p.i, p.angpix, ctf=p.ctf, diameter=p.particle_diameter)
    cfg = AbInitioConfig.subset(p)
    cfg = cfg.replace(iters=Schedule(cfg, ps.box, ps.angpix, ps.n).total)
    if restart is not None and cfg.iters < restart.iteration:
        raise InputError("the run has done %d iterations; --num_final_iters %d ends it at %d"
                         % (restart.iteration, cfg.num_final_iters, cfg.iters), field="--num_final_iters")
    ctx.log("hpcem abinitio: %d particles, box %d, %.3f A/px, K %d, %.1f -> %.1f A, sym %s, ctf %s, %s, %d rank(s)" % (
        ps.n, ps.box, ps.angpix, cfg.K, cfg.init_res, cfg.max_res, cfg.sym, "on" if cfg.ctf else "off",
        "importance sampling s0 %g" % cfg.s0 if cfg.importance_sampling else "full quadrature", ctx.comm.size))
    job = job_record(ctx.name, p, ctx.argv)
    if ctx.comm.rank == 0:
        stamp(root.file("job.json"), job)
    run_iterations(AbInitio(ps, cfg, ctx.comm, ctx.log), root, ctx.comm, ctx.log, restart=restart, job=job)
    return 0
