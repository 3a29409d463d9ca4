"""What every job's command line shares: the I/O flags, threads, the job record (job.json) and the
one ``--continue`` resolution (:mod:`hpcem.runtime.resume`)."""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass

from .. import __version__
from ..errors import InputError
from ..runtime.output import OutputRoot
from ..runtime.params import NON_NEGATIVE, Params, param

# flags that may change when a run is continued (everything else is the run's own)
CONTINUABLE = frozenset({"i", "o", "continue_", "iters", "batch", "j", "angpix", "gpu", "grad_write_iter"})
# and those relion_refine --continue also takes for a classification: the searches and the prior (and
# hpcem's own candidate generator, --importance_sampling, and the --tv prior)
CONTINUABLE_SEARCH = frozenset({"healpix_order", "psi_step", "sigma_ang", "offset_range", "offset_step",
                                "tau2_fudge", "maxsig", "importance_sampling", "s0", "cross_join",
                                "auto_sampling", "max_healpix_order", "final_healpix_order",
                                # the prior of the maps: like tau2_fudge, the seed-002 regularisation
                                "tv", "tv_auto", "tv_alpha", "tv_beta", "tv_eps", "tv_epsp", "tv_weight",
                                "tv_lr", "tv_iters"})


@dataclass(frozen=True)
class JobContext:
    """How a job was called: its name, the communicator, the parameters given explicitly (the
    rest took defaults) and the command line (None from a workflow)."""

    name: str
    comm: object
    given: frozenset = frozenset()
    argv: list | None = None

    def log(self, *msg):
        if self.comm.rank == 0:
            print(*msg, flush=True)


@dataclass(frozen=True)
class JobIO(Params):
    i: str = param(None, "input particle STAR file (RELION 3.0/3.1+)", group="I/O")
    o: str = param(None, "output rootname, e.g. Class2D/job001/run (files run_it001_*), or a folder "
                   "(files <folder>/run_*)", group="I/O")
    angpix: float = param(0.0, "pixel size in A (only for STAR files without one)", check=NON_NEGATIVE, group="I/O")
    j: int = param(0, "threads per MPI rank (0: $OMP_NUM_THREADS, or the cores over the ranks on the node)",
                   check=NON_NEGATIVE, group="compute")


@dataclass(frozen=True)
class IterativeJobIO(JobIO):
    continue_: str = param(None, "resume: a run_itNNN_optimiser.star, a checkpoint (.h5), the run's rootname "
                           "or folder; alone: the run in --o", flag="--continue", nargs="?", const="",
                           metavar="RUN", group="I/O")


def job_device(p, ctx):
    """The one device decision of a job from its ``--gpu`` (:mod:`hpcem.runtime.device`)."""
    from ..runtime.device import select_device

    return select_device(getattr(p, "gpu", None), ctx.comm, ctx.log)


def set_threads(j: int, comm=None) -> int:
    """The job's threads per rank: ``--j``, or with 0 $OMP_NUM_THREADS when set, else the cores this
    process may run on (its affinity: a SLURM allocation's) over the ranks on its node, so that
    ``mpiexec -n 4`` on 16 cores runs 4 x 4 threads, not 4 x 16.  Returns the number set."""
    import os

    from .. import kernels

    n = int(j or 0)
    if n <= 0:
        env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        n = int(env) if env.isdigit() and int(env) > 0 else cores // (comm.node_size() if comm else 1)
    n = max(1, n)
    kernels.set_threads(n)
    return n


def job_record(name: str, p, argv=None) -> dict:
    """What a checkpoint and job.json keep of a job: its name, parameters (input as an absolute
    path), the command line, hpcem's version, host and time."""
    d = p.to_dict()
    if d.get("i"):
        d["i"] = os.path.abspath(d["i"])
    return {"job": name, "params": d, "argv": argv, "hpcem_version": __version__,
            "time": time.strftime("%Y-%m-%d %H:%M:%S"), "host": platform.node()}


def stamp(path: str, record: dict) -> None:
    """Write a job record (JSON, atomically)."""
    from ..io.atomic import atomic_write

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(record, f, indent=1, default=str)


def ref_param():
    return param(None, "initial reference map (MRC); another box or pixel size is resampled to the particles'",
                 group="I/O")


def ref_angpix_param():
    return param(0.0, "pixel size of --ref in A (0: its header's, else the particles')", check=NON_NEGATIVE,
                 group="I/O")


def continued(p, stored: dict, given, log, may_change=CONTINUABLE):
    """The stored run's parameters with the flags given again that may change; ``--iter`` may only
    grow past the iterations done (handled by the caller)."""
    cls = type(p)
    base = cls.from_dict({k: v for k, v in stored.items() if k in cls.__dataclass_fields__})
    keep = {k: getattr(p, k) for k in given if k in may_change}
    ignored = sorted(set(given) - set(may_change))
    if ignored:
        log("note: --continue keeps the run's settings; ignored: %s" % ", ".join("--" + k for k in ignored))
    return base.replace(**keep)


def resolve_run(p, ctx: JobContext):
    """(parameters, output root, checkpoint or None) of an iterative job: a fresh start needs
    --i and --o; ``--continue`` takes the run's parameters from its checkpoint."""
    from ..runtime.resume import clean_stale, resolve_checkpoint

    given, comm, log = ctx.given, ctx.comm, ctx.log
    if p.continue_ is None:
        for name in ("i", "o"):
            if not getattr(p, name):
                raise InputError("required (or --continue)", field="--" + name)
        return p, OutputRoot.parse(p.o), None
    root, ck = resolve_checkpoint(p.continue_, p.o if "o" in given else None, ctx.name)
    q = continued(p, ck.job.get("params", {}), given, log,
                  may_change=CONTINUABLE | getattr(type(p), "continue_may_change", frozenset()))
    if "iters" in given:
        q = q.replace(iters=max(int(p.iters), ck.iteration))
    if not q.i:
        raise InputError("no input recorded in the checkpoint; give --i", file=ck.path, field="--i")
    clean_stale(root, comm)
    return q.replace(o=root.rootname), root, ck
