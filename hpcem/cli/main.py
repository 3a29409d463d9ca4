"""``hpcem <job> --flags``: one explicit, grouped registry of jobs.

Each job module provides ``Params`` (a frozen, validated :class:`hpcem.runtime.params.Params`
dataclass whose fields are the job's flags) and ``run(params, comm, given)``.  The CLI only parses:
the flags given become a dictionary, :func:`run_job` builds the job's parameters from it (as a
Schemes workflow does, without argparse) and runs the job.  Bad input
(:class:`hpcem.errors.InputError`) prints one line and exits with status 2 on every rank, before
any compute; a failing rank takes the job down instead of hanging the others.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from .. import __version__
from ..errors import InputError
from .params import add_arguments, given
from .relion_flags import strip_tuning, unknown_flag_error

# group -> [(job name, module, one-line help)]
REGISTRY = {
    "data": [
        ("simulate", "hpcem.cli.job_simulate", "write a simulated data set with known truth"),
        ("import", "hpcem.cli.job_import", "convert cryoSPARC particles (.cs) to a RELION 3.1 STAR file"),
    ],
    "reconstruction": [
        ("reconstruct", "hpcem.cli.job_reconstruct", "3D map from particles with known poses (like relion_reconstruct)"),
    ],
    "classification and refinement": [
        ("class2d", "hpcem.cli.job_class2d", "reference-free 2D classification (MAP-EM)"),
        ("class3d", "hpcem.cli.job_class3d", "3D classification (MAP-EM)"),
        ("refine3d", "hpcem.cli.job_refine3d", "3D auto-refine with gold-standard halves"),
        ("initial_model", "hpcem.cli.job_initial_model", "3D initial model(s) from the particles alone (VDAM, as "
         "RELION-4)"),
        ("abinitio", "hpcem.cli.job_abinitio", "ab initio 3D maps from random starts (SAGD with importance-sampled "
         "poses, as cryoSPARC)"),
        ("sml", "hpcem.cli.job_sml", "deep 2D classification of aligned particles by statistical manifold learning (ROME GTM)"),
        ("deep2d", "hpcem.cli.job_deep2d", "deep 2D classification, ROME strategy I: MAP alignment then GTM (sml)"),
    ],
    "cryo-ET": [
        ("pick3d", "hpcem.cli.job_pick3d", "cryo-ET particle picking: train (RobPicker or supervised 3D U-Net), predict, "
         "evaluate"),
    ],
    "analysis": [
        ("fsc", "hpcem.cli.job_fsc", "FSC curve between two maps, resolutions at 0.143 and 0.5, PNG plot"),
        ("rank_classes", "hpcem.cli.job_rank_classes", "automated 2D class selection (RELION-4's class ranker)"),
    ],
    "automation": [
        ("schemer", "hpcem.cli.job_schemer", "run, inspect and steer a RELION-4 Scheme (Schemes/<name>/scheme.star)"),
        ("mdcatch", "hpcem.cli.job_mdcatch", "read EPU / SerialEM acquisition metadata: movies.star, metadata.json, "
         "a scheme's variables"),
    ],
}


def _jobs():
    for group, jobs in REGISTRY.items():
        for name, mod, helptext in jobs:
            if importlib.util.find_spec(mod) is not None:  # jobs still being built are left out
                yield group, name, mod, helptext


def job_module(name: str):
    for _, n, mod, _ in _jobs():
        if n == name:
            return importlib.import_module(mod)
    raise InputError("unknown job (hpcem --help lists them)", field=name)


def run_job(name: str, values: dict, comm=None, argv=None) -> int:
    """Build job ``name``'s parameters from ``values`` (field names or flags without dashes to
    values, strings allowed) and run it; the entry point of the CLI and of workflows."""
    from ..parallel.comm import get_comm
    from .common import JobContext

    mod = job_module(name)
    named = mod.Params.named(values)
    ctx = JobContext(name, comm if comm is not None else get_comm(), frozenset(named), argv)
    return int(mod.run(mod.Params(**named), ctx) or 0)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command-line parser; with ``only`` (a job name, or "" for none) only that job's module is
    imported and given its flags, the others listed by name and help line (each `hpcem` start then
    imports one job's code, not every job's)."""
    p = argparse.ArgumentParser(
        prog="hpcem",
        description="hpcem %s: distributed cryo-EM processing. Run any job under `mpiexec -n N` or "
                    "`srun` to split the work over ranks." % __version__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version="hpcem %s" % __version__)
    p.add_argument("--slurm_template", choices=("cpu", "gpu", "array"), dest="_slurm_template",
                   help="print the installed path of a SLURM job template (sbatch $(hpcem --slurm_template cpu) "
                        "<job> ...) and exit")
    sub = p.add_subparsers(dest="job", metavar="<job>")
    epilog = []
    for group, name, mod, helptext in _jobs():
        epilog.append("  %-12s %s  [%s]" % (name, helptext, group))
        if only is not None and name != only:
            sub.add_parser(name, help=helptext, allow_abbrev=False)
            continue
        m = importlib.import_module(mod)
        sp = sub.add_parser(name, help=helptext, description=(m.__doc__ or helptext).strip(),
                            formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
        (m.add_arguments if hasattr(m, "add_arguments") else lambda s: add_arguments(s, m.Params))(sp)
    p.epilog = "jobs:\n" + "\n".join(epilog)
    return p


def _job_flags(parser, job: str) -> list:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [s for a in sub.choices[job]._actions for s in a.option_strings if s.startswith("--")]


def parse_command(argv, parser=None):
    """(job, the flags given by field name, notes) of a command line (without the program name):
    RELION's tuning flags taken off with a note each, an unknown flag one InputError."""
    parser = parser or build_parser()
    job = argv[0] if argv and not argv[0].startswith("-") else None
    rest, notes = strip_tuning(job, argv[1:]) if job else (list(argv), [])
    args, unknown = parser.parse_known_args(([job] if job else []) + rest)
    if args.job and unknown:
        raise unknown_flag_error(args.job, unknown, _job_flags(parser, args.job))
    if unknown:
        parser.error("unrecognized arguments: %s" % " ".join(unknown))
    return args.job, given(args), notes


def _slurm_template(argv) -> str | None:
    """The path asked for by ``hpcem --slurm_template KIND`` (before MPI is touched), else None."""
    if not argv or argv[0].split("=", 1)[0] != "--slurm_template":
        return None
    from ..runtime.slurm import TEMPLATES, SlurmError, template_path

    kind = argv[0].split("=", 1)[1] if "=" in argv[0] else (argv[1] if len(argv) > 1 else "")
    if kind not in TEMPLATES:
        raise InputError("one of %s" % ", ".join(TEMPLATES), field="--slurm_template")
    try:
        return template_path(kind)
    except SlurmError as exc:
        raise InputError(str(exc), field="--slurm_template") from None


def main(argv=None) -> int:
    from ..parallel.comm import LaunchError, abort_on_error, get_comm

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        path = _slurm_template(argv)
        if path:
            print(path)
            return 0
        comm = get_comm()
    except InputError as exc:  # the launcher and MPI disagree: one line from the launcher's rank 0
        if not isinstance(exc, LaunchError) or exc.reporter:
            sys.stderr.write("hpcem: error: %s\n" % exc)
        return 2
    job = argv[0] if argv and not argv[0].startswith("-") else ""
    parser = build_parser(only=job)
    try:
        job, values, notes = parse_command(argv, parser)
        if not job:
            parser.print_help()
            return 1
        for note in notes if comm.rank == 0 else ():
            print("hpcem %s: %s" % (job, note), flush=True)
        return run_job(job, values, comm, argv=["hpcem"] + argv)
    except InputError as exc:
        if comm.rank == 0:
            sys.stderr.write("hpcem %s: error: %s\n" % (job, exc))
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a failing rank takes the job down instead of hanging the others
        abort_on_error(comm, exc)
        raise


if __name__ == "__main__":
    sys.exit(main())
