"""One visit of a Scheme's job node: decide how the job runs, give it a folder, run it, record
the outcome.

Each run of a job has a folder in the project, named as RELION names them (``Class2D/job004/``,
``External/job007/``), holding the job's resolved ``job.star`` (the options it ran with, after
``$$variables`` and job folders were filled in), ``note.txt`` (the command), ``run.out`` /
``run.err`` and, when it ends, RELION's ``RELION_JOB_EXIT_SUCCESS`` (or ``_FAILURE``, ``_ABORTED``).

What a visit does (mode from scheme.star):

* the job never ran, or its parameters differ from those in its folder's job.star: a new folder
  and a run from scratch (jobs that read its outputs then see a new folder in their own options,
  so they run from scratch too: a changed parameter re-runs that job and what follows);
* its last run did not end well (killed, aborted, failed): resumed in the same folder (hpcem's
  iterative jobs continue from their newest checkpoint);
* its last run ended well: mode ``new`` starts a new folder; mode ``continue`` runs an external
  command again in its folder (it picks up new input, as RELION's on-the-fly jobs do) and leaves
  an hpcem job as it is (nothing is left to continue).
"""
from __future__ import annotations

import glob
import json
import os
import re
import shlex
import time

from ..errors import InputError
from .jobstar import changed_parameters, job_star_of, read_job_star, resolve, write_job_star
from .launch import (ABORTED, cli_arguments, command_argv, hpcem_command, job_arguments, launch_of, run_command,
                     run_in_process, run_sbatch)

EXIT_FILES = {"success": "RELION_JOB_EXIT_SUCCESS", "failure": "RELION_JOB_EXIT_FAILURE",
              "aborted": "RELION_JOB_EXIT_ABORTED"}
_RELION_INPUTS = (("in_mov", "--in_movies"), ("in_mic", "--in_mics"), ("in_part", "--in_parts"),
                  ("in_coords", "--in_coords"), ("in_3dref", "--in_3dref"), ("in_mask", "--in_mask"))


def exit_status(folder: str):
    for status, name in EXIT_FILES.items():
        if os.path.exists(os.path.join(folder, name)):
            return status
    return None


def mark(folder: str, status) -> None:
    for name in EXIT_FILES.values():
        try:
            os.remove(os.path.join(folder, name))
        except FileNotFoundError:
            pass
    if status:
        with open(os.path.join(folder, EXIT_FILES[status]), "w"):
            pass


def allocate_folder(project: str, kind: str) -> str:
    """A new ``<kind>/jobNNN/`` (project-relative), numbered after every job folder of the project
    (and RELION's pipeline counter, if the project has one), made atomically."""
    used = [int(m.group(1)) for p in glob.glob(os.path.join(project, "*", "job[0-9][0-9][0-9]*"))
            for m in [re.search(r"job(\d+)$", p.rstrip("/"))] if m]
    n = max(used + [_pipeline_counter(project) - 1, 0]) + 1
    while True:
        rel = "%s/job%03d/" % (kind, n)
        try:
            os.makedirs(os.path.join(project, kind), exist_ok=True)
            os.mkdir(os.path.join(project, rel))
            return rel
        except FileExistsError:
            n += 1


def _pipeline_counter(project: str) -> int:
    try:
        with open(os.path.join(project, "default_pipeline.star")) as f:
            m = re.search(r"_rlnPipeLineJobCounter\s+(\d+)", f.read())
        return int(m.group(1)) if m else 0
    except OSError:
        return 0


def decide(scheme, node: str, resolved, log) -> str:
    """'new', 'resume', 'continue' or 'done' for this visit (module docstring)."""
    job = scheme.jobs[node]
    folder = job.folder
    if folder is None or not os.path.isdir(os.path.join(scheme.project, folder)):
        return "new"
    star = os.path.join(scheme.project, folder, "job.star")
    diff = changed_parameters(read_job_star(star), resolved) if os.path.isfile(star) else ["job.star missing"]
    if diff:
        log(" + %s: parameters changed since %s ran (%s): a new run from scratch" % (node, folder, ", ".join(diff)))
        return "new"
    status = exit_status(os.path.join(scheme.project, folder))
    if status != "success":
        return "resume"
    if job.mode == "new":
        return "new"
    return "continue" if resolved.is_external else "done"


def visit_job(ctx, node: str) -> int:
    """Run job node ``node`` as :func:`decide` says; its exit status (ABORTED when stopped)."""
    scheme, log = ctx.scheme, ctx.log
    job = scheme.jobs[node]
    spec = read_job_star(job_star_of(scheme.folder, node))
    resolved = resolve(spec, scheme.variables, ctx.translate, node)
    launch = launch_of(resolved.options, node)
    action = decide(scheme, node, resolved, log)
    if action == "done":
        log(" + %s: %s finished and its parameters are unchanged: nothing to continue" % (node, job.folder))
        return 0
    if action == "new":
        job.current, job.started = allocate_folder(scheme.project, resolved.folder_type()), True
    folder = job.current
    absdir = os.path.join(scheme.project, folder)
    resolved.is_continue = action != "new"
    write_job_star(os.path.join(absdir, "job.star"), resolved)
    mark(absdir, None)
    scheme.current = node
    scheme.write()                        # the state names this job before it runs
    program, name, values = _program(ctx, node, resolved, folder, action)
    log(" + %s: %s job %s (%s, %s)" % (node, {"new": "new", "resume": "resuming", "continue": "continuing"}[action],
                                       folder, resolved.type, launch.kind))
    if name is not None and launch.kind == "inprocess":
        _note(absdir, program, action)
        rc = run_in_process(name, values, absdir)
    else:
        if name is None and launch.kind == "sbatch":
            raise InputError("the SLURM template runs hpcem jobs; an external command runs with launcher "
                             "inprocess, mpiexec or srun", field="%s: option launcher" % node)
        if launch.kind == "sbatch":
            _note(absdir, program, action)
            rc = run_sbatch(launch, job_arguments(program), scheme.project, absdir, ctx.should_abort)
        else:
            argv = command_argv(launch, program, absdir)
            _note(absdir, argv, action)
            rc = run_command(argv, scheme.project, absdir, ctx.should_abort)
    status = "success" if rc == 0 else "aborted" if rc == ABORTED else "failure"
    mark(absdir, status)
    log(" + %s: job %s %s%s" % (node, folder, {"success": "finished", "aborted": "aborted", "failure": "failed"}[status],
                                "" if rc in (0, ABORTED) else " (exit status %d; see %srun.err)" % (rc, folder)))
    return rc


def _program(ctx, node, resolved, folder, action):
    """(argument list, hpcem job name, its parameter dictionary); for an external command the
    name and the dictionary are None."""
    opts = resolved.parameters()
    if resolved.type == "relion.external":
        argv = shlex.split(opts["fn_exe"]) + ["--o", folder]
        for key, flag in _RELION_INPUTS:
            if opts.get(key, "").strip():
                argv += [flag, opts[key]]
        for i in range(1, 11):
            label = opts.get("param%d_label" % i, "").strip()
            if label:
                argv += ["--" + label, opts.get("param%d_value" % i, "")]
        threads = resolved.options.get("nr_threads", "").strip()
        return argv + (["--j", threads] if threads and threads != "1" else []), None, None
    if resolved.is_external:
        words = json.loads(opts["command"])
        return [w.replace("$$job_dir", folder).replace("${job_dir}", folder) for w in words], None, None
    job = resolved.hpcem_job
    values = {k: v for k, v in opts.items() if str(v).strip() != ""}
    threads = resolved.options.get("nr_threads", "").strip()
    if threads and "j" not in values:
        values["j"] = threads
    values["o"] = _output(values.get("o"), folder, node)
    if action == "resume" and _iterative(job) and _has_checkpoint(ctx.scheme.project, values["o"]):
        values = _continuing(job, values)
    return hpcem_command() + [job] + cli_arguments(job, values), job, values


def _output(o, folder: str, node: str) -> str:
    """The job's ``o``: its folder, or a name inside it (a job.star cannot write elsewhere)."""
    if not o:
        return folder
    base = folder.rstrip("/")
    def within(p):
        return p == base or p.startswith(base + "/")
    path = os.path.normpath(o)
    if not within(path):
        path = os.path.normpath(os.path.join(base, o))
    if not within(path):
        raise InputError("output %r leaves the job folder %s" % (o, folder), field="%s: option o" % node)
    return path + ("/" if o.endswith("/") else "")


def _continuing(job: str, values: dict) -> dict:
    """The parameters of ``--continue`` (the run keeps its own settings from its checkpoint)."""
    from ..cli.common import CONTINUABLE
    from ..cli.main import job_module
    named = job_module(job).Params.named(values)
    out = {k: v for k, v in named.items() if k in CONTINUABLE}
    out["continue_"] = ""
    return out


def _iterative(job: str) -> bool:
    from ..cli.main import job_module
    return "continue_" in job_module(job).Params.__dataclass_fields__


def _has_checkpoint(project: str, o: str) -> bool:
    from ..runtime.output import OutputRoot
    from ..runtime.resume import newest_checkpoint
    return newest_checkpoint(OutputRoot.parse(os.path.join(project, o))) is not None


def _note(absdir: str, argv, action: str) -> None:
    with open(os.path.join(absdir, "note.txt"), "a") as f:
        f.write(" ++++ Executing %s job on %s\n ++++ with the following command(s):\n%s\n ++++\n"
                % ("new" if action == "new" else "continued", time.strftime("%Y-%m-%d %H:%M:%S"), shlex.join(argv)))
