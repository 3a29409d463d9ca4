"""``hpcem schemer --status``: a Scheme as text (any scheme.star, RELION's own included)."""
from __future__ import annotations

import os

from ..errors import InputError
from .jobstar import job_star_of, read_job_star
from .scheme import KINDS, format_value


def _job_type(scheme, name: str) -> str:
    path = job_star_of(scheme.folder, name)
    if not os.path.isfile(path):
        return "(no job.star)"
    try:
        return read_job_star(path).type
    except InputError as exc:
        return "(unreadable job.star: %s)" % exc.message


def status_text(scheme) -> str:
    lines = ["scheme %s  (%s)" % (scheme.name, scheme.path), "current node: %s" % scheme.current, "", "variables:"]
    for kind in KINDS:
        for v in (v for v in scheme.variables.values() if v.kind == kind):
            lines.append("  %-6s %-28s %-40s (reset %s)" % (kind, v.name, format_value(kind, v.value),
                                                            format_value(kind, v.reset)))
    lines += ["", "operators:"]
    for op in scheme.operators.values():
        args = ", ".join("%s=%s" % (k, getattr(op, k)) for k in ("output", "input1", "input2")
                         if getattr(op, k) not in ("undefined", ""))
        lines.append("  %-28s %-24s %s" % (op.name, op.type, args))
    lines += ["", "jobs:"]
    for j in scheme.jobs.values():
        lines.append("  %-28s %-28s mode %-9s started %-3s %s" % (
            j.name, _job_type(scheme, j.name), j.mode, "yes" if j.started else "no",
            ("folder " + j.folder) if j.folder else ""))
    lines += ["", "edges and forks:"]
    for e in scheme.edges:
        if e.is_fork:
            lines.append("  %s -> %s if %s, else %s" % (e.input, e.output_if_true, e.bool_var, e.output))
        else:
            lines.append("  %s -> %s" % (e.input, e.output))
    return "\n".join(lines)
