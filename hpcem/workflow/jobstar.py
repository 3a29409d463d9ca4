"""A Scheme's jobs: RELION's ``job.star`` (job type, options as rlnJobOptionVariable /
rlnJobOptionValue), the job types hpcem runs, and an option set resolved for one run.

Job types: ``hpcem.<job>`` runs an hpcem job (``hpcem --help`` lists them) with the options as
its flags by name (``i``, ``K``, ``grad``, ...); ``external`` runs the command in option
``command`` (an argument list, never a shell); RELION's ``relion.external`` runs ``fn_exe`` with
RELION's arguments (``--o``, ``--in_mics``, ``--<paramN_label> <paramN_value>``, ...).  Every other
type (``relion.motioncorr.own``, ...) is refused with one message naming the job and its type.

The options that say how a job runs (``nr_mpi``, ``nr_threads``, ``launcher``, ``qsubscript``,
RELION's queue options, and hpcem's ``j`` and ``batch``, which the job is given) are not
parameters: changing them never makes a job run again.
"""
from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field

from ..errors import InputError
from ..io.star_text import Block, read_star_text, write_star_text

EXEC_OPTIONS = frozenset({"nr_mpi", "nr_threads", "launcher", "do_queue", "qsub", "qsubscript", "queuename",
                          "min_dedicated", "qsub_extra1", "qsub_extra2", "qsub_extra3", "qsub_extra4"})
COMPUTE_OPTIONS = frozenset({"j", "batch"})
_VAR = re.compile(r"\$\$([A-Za-z0-9_]+)")
_WORD_VAR = re.compile(r"\$\$([A-Za-z0-9_]+)|\$\{([A-Za-z0-9_]+)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
# RELION job types with an hpcem job of the same purpose (named in the refusal)
_RELION_TWINS = {"relion.class2d": "hpcem.class2d", "relion.class3d": "hpcem.class3d",
                 "relion.refine3d": "hpcem.refine3d", "relion.initialmodel": "hpcem.initial_model",
                 "relion.select.class2dauto": "hpcem.rank_classes", "relion.reconstruct": "hpcem.reconstruct"}
FOLDERS = {"class2d": "Class2D", "class3d": "Class3D", "refine3d": "Refine3D", "initial_model": "InitialModel",
           "rank_classes": "Select", "reconstruct": "Reconstruct", "fsc": "PostProcess", "simulate": "Simulate",
           "import": "Import", "sml": "SML", "deep2d": "Deep2D"}


@dataclass
class JobSpec:
    type: str
    options: dict = field(default_factory=dict)
    is_continue: bool = False

    @property
    def hpcem_job(self):
        """The hpcem job name of an ``hpcem.<job>`` type, else None."""
        return self.type[6:] if self.type.startswith("hpcem.") and self.type != "hpcem.external" else None

    @property
    def is_external(self) -> bool:
        return self.type in ("external", "hpcem.external", "relion.external")

    def parameters(self) -> dict:
        return {k: v for k, v in self.options.items() if k not in EXEC_OPTIONS}

    def folder_type(self) -> str:
        if self.is_external:
            return "External"
        name = self.hpcem_job
        return FOLDERS.get(name, name[:1].upper() + name[1:])


def read_job_star(path: str) -> JobSpec:
    blocks = read_star_text(path)
    job, opts = blocks.get("job"), blocks.get("joboptions_values")
    if job is None or "rlnJobTypeLabel" not in job.labels:
        raise InputError("no data_job block with _rlnJobTypeLabel", file=path, field="rlnJobTypeLabel")
    pairs = job.pairs()
    options = {}
    if opts is not None:
        for lab in ("rlnJobOptionVariable", "rlnJobOptionValue"):
            if lab not in opts.labels:
                raise InputError("missing label %s" % lab, file=path, field="data_joboptions_values")
        for r in opts.records():
            options[r["rlnJobOptionVariable"]] = r["rlnJobOptionValue"]
    cont = pairs.get("rlnJobIsContinue", "0").strip().lower() in ("1", "true", "yes")
    return JobSpec(pairs["rlnJobTypeLabel"], options, cont)


def write_job_star(path: str, spec: JobSpec) -> None:
    write_star_text(path, [
        Block("job", ["rlnJobTypeLabel", "rlnJobIsContinue"], [[spec.type, "1" if spec.is_continue else "0"]],
              loop=False),
        Block("joboptions_values", ["rlnJobOptionVariable", "rlnJobOptionValue"],
              [[k, v] for k, v in spec.options.items()])])


def check_type(spec: JobSpec, job: str, path: str) -> None:
    """One InputError when hpcem cannot run this job type."""
    if spec.is_external:
        need = "fn_exe" if spec.type == "relion.external" else "command"
        if not spec.options.get(need, "").strip():
            raise InputError("job %s of type %s has no %s option" % (job, spec.type, need), file=path, field=need)
        return
    name = spec.hpcem_job
    if name is not None:
        from ..cli.main import job_module
        try:
            job_module(name)
        except InputError:
            raise InputError("job %s has type %s, but hpcem has no job %r (hpcem --help lists them)"
                             % (job, spec.type, name), file=path, field="rlnJobTypeLabel") from None
        return
    twin = _RELION_TWINS.get(spec.type)
    hint = (" (hpcem's own is %s, with hpcem's flag names as options)" % twin) if twin else ""
    raise InputError("job %s has type %s, which hpcem does not implement%s; run that program as an external job "
                     "(type external, option command)" % (job, spec.type, hint), file=path, field="rlnJobTypeLabel")


def substitute(text: str, variables: dict, where: str) -> str:
    """``$$name`` replaced by the value of the scheme variable ``name`` (RELION's job.star syntax)."""
    def one(m):
        v = variables.get(m.group(1))
        if v is None:
            raise InputError("$$%s is not a variable of the scheme" % m.group(1), field=where)
        return ("Yes" if v.value else "No") if v.kind == "bool" else _text(v)
    return _VAR.sub(one, text)


def _text(v) -> str:
    if v.kind == "float":
        return ("%d" % v.value) if float(v.value).is_integer() else repr(float(v.value))
    return str(v.value)


def resolve(spec: JobSpec, variables: dict, translate, job: str) -> JobSpec:
    """The options of one run: ``$$variables`` replaced and paths of scheme jobs
    (``Schemes/<scheme>/<job>/...``) turned into those jobs' current folders.  The ``command`` of
    an external job is split into arguments first (:func:`command_arguments`) and kept as the
    JSON list of its arguments (quotes as \\u0027, so that any argument fits in a STAR value)."""
    out = {}
    for k, v in spec.options.items():
        where = "%s: option %s" % (job, k)
        if spec.is_external and k == "command":
            out[k] = json.dumps(command_arguments(v, variables, translate, where)).replace("'", "\\u0027")
        else:
            out[k] = translate(substitute(v, variables, where))
    return JobSpec(spec.type, out, spec.is_continue)


def command_arguments(command: str, variables: dict, translate, where: str) -> list:
    """An external command as an argument list: split as a POSIX shell would split words (no
    expansion, no redirection, no pipes), then in each word ``$$name``, ``${name}`` and ``$name``
    replaced by the scheme variable's value.  A word that is exactly one variable becomes its
    value as one argument, whatever it holds (spaces, ``;``, quotes), so no value can add a
    command or an argument.  ``$$job_dir`` (unless the scheme has such a variable) is left for
    the run, which puts the job's folder there."""
    try:
        words = shlex.split(command, comments=False, posix=True)
    except ValueError as exc:
        raise InputError("cannot split the command into arguments (%s)" % exc, field=where) from None
    if not words:
        raise InputError("empty command", field=where)

    def one(m):
        name = m.group(1) or m.group(2) or m.group(3)
        v = variables.get(name)
        if v is None:
            if m.group(1) and name != "job_dir":
                raise InputError("$$%s is not a variable of the scheme" % name, field=where)
            return m.group(0)
        return ("Yes" if v.value else "No") if v.kind == "bool" else _text(v)
    return [translate(_WORD_VAR.sub(one, w)) for w in words]


def changed_parameters(old: JobSpec, new: JobSpec) -> list:
    """Names of the parameters (not the run options) whose values differ, and a changed type."""
    a, b = old.parameters(), new.parameters()
    diff = sorted(k for k in set(a) | set(b) if k not in COMPUTE_OPTIONS and a.get(k, "") != b.get(k, ""))
    return (["job type"] if old.type != new.type else []) + diff


def job_star_of(scheme_folder: str, job: str) -> str:
    return os.path.join(scheme_folder, job, "job.star")
