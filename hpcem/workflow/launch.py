"""How a Scheme's job runs: in this process (``hpcem.cli.main.run_job``), or as a command
(``mpiexec -n N hpcem <job> ...``, ``srun``, ``sbatch --wait`` of a SLURM template), or, for an
external job, as its own argument list.  Commands never go through a shell.

Job options that choose it (RELION's names where RELION has one): ``nr_mpi`` (ranks, default 1),
``launcher`` (``auto``: in this process for one rank, ``mpiexec`` for more; or ``inprocess``,
``mpiexec``, ``srun``, ``sbatch``), ``do_queue`` = Yes (RELION's way to say ``sbatch``),
``qsubscript`` (the SLURM template; default: the installed CPU template, ``hpcem --slurm_template
cpu``; submitted and waited for by :mod:`hpcem.runtime.slurm`, cancelled on abort),
``nr_threads`` (threads per rank, ``--cpus-per-task``).  A scheme sets them for all its jobs
through variables (``nr_mpi  $$nr_mpi`` in each job.star).

A command started here dies with the schemer (Linux: the parent-death signal), runs in its own
process group (an abort stops mpiexec and its ranks together) and writes ``run.out`` /
``run.err`` in the job folder, as RELION's jobs do.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import traceback

from ..errors import InputError
from ..runtime.params import flag_of

LAUNCHERS = ("auto", "inprocess", "mpiexec", "srun", "sbatch")
ABORTED = -signal.SIGTERM


@dataclasses.dataclass(frozen=True)
class Launch:
    kind: str
    ntasks: int = 1
    threads: int = 0
    template: str = ""


def launch_of(options: dict, job: str) -> Launch:
    """The launcher a job's run options ask for."""
    def number(name, default):
        text = str(options.get(name, "") or default)
        try:
            return int(float(text))
        except ValueError:
            raise InputError("%r is not a number" % text, field="%s: option %s" % (job, name)) from None
    n, threads = number("nr_mpi", 1), number("nr_threads", 0)
    kind = (options.get("launcher") or "auto").strip().lower()
    if str(options.get("do_queue", "")).strip().lower() in ("yes", "true", "1"):
        kind = "sbatch"
    if kind not in LAUNCHERS:
        raise InputError("launcher %r is not one of %s" % (kind, ", ".join(LAUNCHERS)), field="%s: option launcher" % job)
    if n < 1:
        raise InputError("nr_mpi must be >= 1", field="%s: option nr_mpi" % job)
    if kind == "auto":
        kind = "mpiexec" if n > 1 else "inprocess"
    if kind == "inprocess" and n > 1:
        raise InputError("%d ranks cannot run in the schemer's process; launcher mpiexec, srun or sbatch" % n,
                         field="%s: option launcher" % job)
    return Launch(kind, n, threads, options.get("qsubscript", "") if kind == "sbatch" else "")


def hpcem_command() -> list:
    """The installed ``hpcem`` entry point beside this Python (else ``python -m hpcem.cli.main``)."""
    exe = _which("hpcem")
    return [exe] if exe else [sys.executable, "-m", "hpcem.cli.main"]


def _which(name):
    return shutil.which(name, path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))


def cli_arguments(job: str, values: dict) -> list:
    """``values`` (parameter names to values, as a workflow gives them) as ``hpcem <job>``'s flags."""
    from ..cli.main import job_module

    params = job_module(job).Params
    fields = {f.name: f for f in dataclasses.fields(params)}
    named = params.named(values)
    args, positional = [], []
    for name, v in named.items():
        f = fields[name]
        md, flag = f.metadata, flag_of(f)
        action = md.get("action")
        if md.get("positional"):
            positional.append(str(v))
        elif action == "store_true":
            args += [flag] if v else []
        elif action == "store_false":
            args += [] if v else [flag]
        elif isinstance(action, type) and issubclass(action, argparse.BooleanOptionalAction):
            args.append(flag if v else "--no-" + flag[2:])
        elif md.get("nargs") == "?" and v == md.get("const"):
            args.append(flag)
        elif isinstance(v, (tuple, list)):
            args += [flag] + [str(x) for x in v]
        elif v is not None:
            args += [flag, str(v)]
    return positional + args


def sbatch_options(job: str, ntasks: int, threads: int, job_dir: str) -> tuple:
    """(ntasks, cpus per task, extra sbatch flags) of a scheme job submitted to SLURM."""
    return ntasks, max(1, threads), ["--job-name=hpcem-%s" % job, "--output=%s" % os.path.join(job_dir, "run.out"),
                                     "--error=%s" % os.path.join(job_dir, "run.err")]


def run_sbatch(launch: Launch, arguments: list, cwd: str, job_dir: str, should_abort, poll_s: float = 5.0) -> int:
    """Submit ``hpcem <arguments>`` through the SLURM template (``launch.template``, else the
    installed CPU template) with :func:`hpcem.runtime.slurm.submit`, wait for it with squeue /
    scontrol / sacct, and return its exit status (1 when it ended otherwise than COMPLETED);
    ABORTED, with the job cancelled, when ``should_abort()`` turned true meanwhile."""
    from ..runtime import slurm

    ntasks, cpus, extra = sbatch_options(arguments[0] if arguments else "job", launch.ntasks, launch.threads, job_dir)
    try:
        job = slurm.submit(launch.template or "cpu", arguments, ntasks, cpus, extra, chdir=cwd)
    except slurm.SlurmError as exc:
        with open(os.path.join(job_dir, "run.err"), "a") as err:
            err.write("%s\n" % exc)
        return 1
    with open(os.path.join(job_dir, "run.out"), "a") as out:
        out.write("+ submitted SLURM job %s\n" % job)
    while True:
        r = slurm.state(job)
        if r.state not in slurm.ACTIVE:
            break
        if should_abort():
            slurm.cancel(job)
            return ABORTED
        time.sleep(poll_s)
    r = slurm.wait(job, poll_s=min(poll_s, 1.0))
    return 0 if r.ok else (r.exit_code or 1)


def command_argv(launch: Launch, program: list, job_dir: str) -> list:
    """The argument list that runs ``program`` (``hpcem <job> <flags>`` or an external command)."""
    if launch.kind == "inprocess":
        return list(program)
    if launch.kind == "mpiexec":
        exe = _which("mpiexec")
        if exe is None:
            raise InputError("mpiexec not found (install hpcem with the [mpich] extra, or load the site's MPI)",
                             field="launcher")
        return [exe, "-n", str(launch.ntasks)] + list(program)
    if launch.kind == "srun":
        return ["srun", "--ntasks=%d" % launch.ntasks, "--cpus-per-task=%d" % max(1, launch.threads)] + list(program)
    raise ValueError("sbatch jobs run through run_sbatch")


def job_arguments(program: list) -> list:
    """``<job> <flags>`` of an ``hpcem <job> <flags>`` argument list (what a SLURM template takes)."""
    hp = hpcem_command()
    return program[len(hp):] if program[:len(hp)] == hp else list(program)


def run_in_process(job: str, values: dict, job_dir: str) -> int:
    """Run hpcem job ``job`` here, its output appended to run.out / run.err; its exit status."""
    from ..cli.main import run_job

    with open(os.path.join(job_dir, "run.out"), "a") as out, open(os.path.join(job_dir, "run.err"), "a") as err:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                return run_job(job, values)
            except InputError as exc:
                print("hpcem %s: error: %s" % (job, exc), file=sys.stderr)
                return 2
            except Exception:
                traceback.print_exc()
                return 1


def _die_with_parent():
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_command(argv: list, cwd: str, job_dir: str, should_abort, out_name: str = "run.out") -> int:
    """Run ``argv`` (no shell) in ``cwd``; its exit status, or ABORTED when ``should_abort()``
    turned true while it ran (the whole process group is stopped)."""
    with open(os.path.join(job_dir, out_name), "ab") as out, open(os.path.join(job_dir, "run.err"), "ab") as err:
        out.write(("+ %s\n" % shlex.join(argv)).encode())
        out.flush()
        try:
            p = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                 start_new_session=True, preexec_fn=_die_with_parent if os.name == "posix" else None)
        except OSError as exc:
            err.write(("cannot start %s: %s\n" % (argv[0], exc.strerror)).encode())
            return 127
        try:
            while True:
                try:
                    return p.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    if should_abort():
                        stop(p)
                        return ABORTED
        except BaseException:
            stop(p)
            raise


def stop(p) -> None:
    """Stop a started command and everything it started (SIGTERM, then SIGKILL after 10 s)."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(p.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        t0 = time.time()
        while p.poll() is None and time.time() - t0 < wait:
            time.sleep(0.1)
        if p.poll() is not None:
            return
