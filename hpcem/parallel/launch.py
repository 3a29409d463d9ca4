"""What launched this process, and whether MPI agrees with it.

The classic first day on a cluster: ``srun -n 8 hpcem ...`` where srun gives the tasks no PMI
(``MpiDefault=none``) or mpi4py was built against another MPI than the one srun talks to.  Every
task then initialises MPI alone, sees a world of 1 and runs the whole job, all writing the same
files.  :func:`launch_mismatch` compares the launcher's task count with MPI's world before any
work; :func:`launched_tasks` reads the launcher from the environment:

* Open MPI's ``mpirun``: ``OMPI_COMM_WORLD_SIZE`` / ``_RANK``;
* a PMI launcher (MPICH's Hydra ``mpiexec``, ``srun --mpi=pmi2``): ``PMI_SIZE`` / ``PMI_RANK``;
* PMIx: ``PMIX_RANK`` (and ``PMIX_SIZE`` where the launcher sets one, else srun's count);
* a task of an ``srun`` step: ``SLURM_STEP_NUM_TASKS`` (``SLURM_NTASKS``, ``SLURM_NPROCS``) and
  ``SLURM_PROCID``, only where ``SLURM_STEP_ID`` says the process is a task of a step.  The batch
  script of ``sbatch --ntasks=N`` (and an ``salloc`` shell) has ``SLURM_NTASKS=N`` too, but it is
  one process, not a launched task: a plain ``hpcem ...`` there runs on one rank.

The innermost launcher comes first: ``mpiexec -n 2`` inside an allocation runs its ranks in an
``srun`` step of one task per node, and their ``PMI_SIZE`` (2) is what MPI must see.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

FIX = ("give srun an MPI plugin: srun --mpi=pmi2 (or --mpi=pmix; srun --mpi=list shows them), or "
       "install mpi4py against the site's MPI: MPICC=mpicc pip install --no-binary mpi4py mpi4py")
SKIP_VAR = "HPCEM_SKIP_LAUNCH_CHECK"


@dataclass(frozen=True)
class Launch:
    """Tasks started by a launcher: how many, this one's rank, and the variables that say so."""

    size: int | None
    rank: int | None
    what: str


def _int(env, key):
    try:
        return int(env[key])
    except (KeyError, ValueError):
        return None


def _slurm_step(env):
    """(tasks, rank, variable) of an srun step's task, or None outside a step (batch shell)."""
    if "SLURM_STEP_ID" not in env and "SLURM_STEPID" not in env:
        return None
    for key in ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS"):
        if _int(env, key) is not None:
            return _int(env, key), _int(env, "SLURM_PROCID"), key
    return None, _int(env, "SLURM_PROCID"), "SLURM_STEP_ID"


def launched_tasks(env=None) -> Launch | None:
    """The innermost launcher of this process, or None for a plain process (batch shell included)."""
    env = os.environ if env is None else env
    if _int(env, "OMPI_COMM_WORLD_SIZE") is not None:
        n = _int(env, "OMPI_COMM_WORLD_SIZE")
        return Launch(n, _int(env, "OMPI_COMM_WORLD_RANK"), "Open MPI: OMPI_COMM_WORLD_SIZE=%d" % n)
    if _int(env, "PMI_SIZE") is not None:
        n = _int(env, "PMI_SIZE")
        who = "mpiexec" if "MPI_LOCALNRANKS" in env else ("srun" if "SLURM_STEP_ID" in env else "PMI")
        return Launch(n, _int(env, "PMI_RANK"), "%s: PMI_SIZE=%d" % (who, n))
    step = _slurm_step(env)
    if "PMIX_RANK" in env:
        n = _int(env, "PMIX_SIZE") or (step[0] if step else None)
        src = "PMIX_SIZE" if _int(env, "PMIX_SIZE") else (step[2] if step else None)
        return Launch(n, _int(env, "PMIX_RANK"), "PMIx: PMIX_RANK=%s%s" % (
            env["PMIX_RANK"], ", %s=%d" % (src, n) if n else ""))
    if step is not None:
        n, rank, key = step
        return Launch(n, rank, "srun: %s=%s" % (key, env.get(key)))
    return None


def launched_by_mpi(env=None) -> bool:
    """Started by mpiexec/mpirun/srun (so MPI is initialised), or a plain process."""
    env = os.environ if env is None else env
    return launched_tasks(env) is not None or any(k in env for k in ("HYDRA_CONTROL_FD", "MPI_LOCALNRANKS", "PMI_FD",
                                                                    "PMI_RANK"))


def slurm_task(env=None):
    """(job id, step id, task rank, tasks of the step) of a task of an srun step, else None."""
    env = os.environ if env is None else env
    step = _slurm_step(env)
    if step is None:
        return None
    return env.get("SLURM_JOB_ID"), env.get("SLURM_STEP_ID", env.get("SLURM_STEPID")), step[1], step[0]


def launch_mismatch(world_size: int, env=None, peers=None) -> str | None:
    """One line when the launcher and MPI's world disagree, else None.

    Forward: N > 1 tasks (or a task of launcher rank > 0) while MPI sees a world of 1.  Reverse
    (``peers``: :func:`slurm_task` of every rank of a world of W > 1): the world holds only some
    of its srun step's tasks, so each task started a world of its own (``srun -n 2 mpiexec -n 2``:
    two worlds of 2 running the same job); or the launcher's count is not W."""
    env = os.environ if env is None else env
    launch = launched_tasks(env)
    if launch is None or env.get(SKIP_VAR) == "1":
        return None
    if world_size == 1 and ((launch.size or 1) > 1 or (launch.rank or 0) > 0):
        tasks = "%d tasks" % launch.size if launch.size else "task %d of several" % launch.rank
        return ("launched as %s (%s) but MPI sees a world of 1 rank, so every task would run the whole "
                "job alone; %s" % (tasks, launch.what, FIX))
    if world_size > 1 and peers and all(peers) and len({p[:2] for p in peers}) == 1 and peers[0][3]:
        held = sorted({p[2] for p in peers})
        if held != list(range(peers[0][3])):
            return ("MPI sees a world of %d ranks that holds srun task(s) %s of the %d of its step: each "
                    "srun task started an MPI world of its own (mpiexec inside srun?); start the ranks with "
                    "srun alone (srun --mpi=pmi2 -n N hpcem ...) or mpiexec alone, or set %s=1 if this is "
                    "intended" % (world_size, ",".join(map(str, held)), peers[0][3], SKIP_VAR))
    if world_size > 1 and launch.size is not None and launch.size != world_size:
        return ("MPI sees a world of %d ranks but the launcher started %d task(s) (%s); start hpcem with "
                "one launcher (or set %s=1 if this is intended)" % (world_size, launch.size, launch.what, SKIP_VAR))
    return None


def reports(env=None) -> bool:
    """Whether this process prints a launch error: rank 0 of its launcher (and of its srun step),
    so that a job says it once."""
    env = os.environ if env is None else env
    launch, task = launched_tasks(env), slurm_task(env)
    return (launch is None or not launch.rank) and (task is None or not task[2])
