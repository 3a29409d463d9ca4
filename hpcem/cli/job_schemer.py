"""Run, inspect and steer a RELION-4 Scheme (``Schemes/<name>/scheme.star`` with one
``job.star`` per job folder), as relion_schemer does.

  hpcem schemer --scheme Schemes/proc --status
  hpcem schemer --scheme Schemes/proc --set min_nr_parts_3d=3000 --set iniref=ref.mrc --run
  hpcem schemer --scheme Schemes/proc --abort
  hpcem schemer --scheme Schemes/proc --reset

Run it from the project folder (the one holding ``Schemes/``).  ``--set`` sets a variable's value
and its reset value; ``--reset`` puts every variable back to its reset value and forgets the jobs'
folders (the next run starts every job anew); ``--set_current_node`` moves the scheme to a node
(jobs keep their folders: unchanged jobs continue, changed ones run anew).  File operators stay
inside the project folder; ``--allow_path`` (and any path given with ``--set`` on the same command
line) lets them use a file or folder outside it.  ``hpcem.workflow`` holds the machinery;
``jobs/schemes/proc`` (installed with hpcem) is a ready scheme: particles -> class2d --grad ->
rank_classes -> initial_model -> refine3d."""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import InputError
from ..runtime.params import Params as Base, param


@dataclass(frozen=True)
class Params(Base):
    scheme: str = param(None, "the scheme's folder, e.g. Schemes/proc", group="I/O")
    run: bool = param(False, "run the scheme from its current node until an exit", action="store_true")
    status: bool = param(False, "print the current node, variables, operators, jobs and edges", action="store_true")
    abort: bool = param(False, "stop the running scheme (and its running job)", action="store_true")
    reset: bool = param(False, "variables to their reset values, jobs not started, back to the first node",
                        action="store_true")
    set_: tuple[str, ...] = param((), "VAR=VALUE: set a variable (value and reset value); repeat for several",
                                  flag="--set", action="append", metavar="VAR=VALUE")
    set_current_node: str = param(None, "move the scheme to this node (a job or an operator)")
    allow_path: tuple[str, ...] = param((), "a file or folder outside the project the scheme's file operators may "
                                        "use; repeat for several", action="append", metavar="PATH")
    quiet: bool = param(False, "--run: log to Schemes/<name>/schemer.log only", action="store_true")


def run(p: Params, ctx):
    from ..workflow.lock import SchemeLock, request_abort
    from ..workflow.scheme import Scheme
    from ..workflow.schemer import run_scheme
    from ..workflow.status import status_text

    if ctx.comm.size > 1:
        raise InputError("the schemer runs on one process; give each job its ranks (job option nr_mpi)",
                         field="mpiexec")
    if not p.scheme:
        raise InputError("required", field="--scheme")
    if not os.path.isfile(os.path.join(p.scheme, "scheme.star")):
        raise InputError("no scheme.star in this folder", file=p.scheme, field="--scheme")
    if not (p.run or p.status or p.abort or p.reset or p.set_ or p.set_current_node):
        raise InputError("nothing to do: give --run, --status, --abort, --reset, --set or --set_current_node",
                         field="--scheme")
    scheme = Scheme.read(p.scheme)
    if p.abort:
        request_abort(scheme)
        return 0
    if p.reset or p.set_ or p.set_current_node:
        _change(scheme, p, SchemeLock(scheme))
    if p.status:
        print(status_text(scheme))
    if p.run:
        allowed = list(p.allow_path) + [a.split("=", 1)[1] for a in p.set_ if "=" in a and a.split("=", 1)[1]]
        return run_scheme(p.scheme, allowed=allowed, echo=not p.quiet)
    return 0


def _change(scheme, p, lock) -> None:
    """--reset, --set, --set_current_node under the scheme's lock (refused while it runs)."""
    with lock:
        if p.reset:
            scheme.reset()
            print("scheme %s reset: current node %s" % (scheme.name, scheme.current))
        for assignment in p.set_:
            v = scheme.configure(assignment)
            print("%s %s = %s" % (v.kind, v.name, v.value))
        if p.set_current_node:
            if not scheme.is_node(p.set_current_node):
                raise InputError("no such node (jobs: %s; operators: %s)" % (", ".join(scheme.jobs),
                                                                             ", ".join(scheme.operators)),
                                 field=p.set_current_node)
            scheme.current = p.set_current_node
            print("scheme %s: current node %s" % (scheme.name, scheme.current))
        scheme.write()
