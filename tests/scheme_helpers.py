"""Test helpers: build a Scheme (scheme.star and job.star files) in a project folder."""
import os
import shlex
import shutil
import sys

from hpcem.workflow.jobstar import JobSpec, write_job_star
from hpcem.workflow.scheme import Edge, Job, Operator, Scheme, Variable

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "schemes")


def copy_fixture(name, project):
    dst = os.path.join(str(project), "Schemes", name)
    shutil.copytree(os.path.join(FIXTURES, name), dst)
    return dst


def make_scheme(project, name, variables=(), operators=(), jobs=(), edges=()):
    """variables: (name, kind, value); operators: (name, type, out, in1, in2); jobs: (name, mode, type,
    options dict); edges: (a, b) or (a, b_if_false, b_if_true, bool)."""
    folder = os.path.join(str(project), "Schemes", name)
    os.makedirs(folder, exist_ok=True)
    s = Scheme(folder)
    for vname, kind, value in variables:
        s.variables[vname] = Variable(vname, kind, value, value)
    for op in operators:
        s.operators[op[0]] = Operator(*op)
    for jname, mode, type_, options in jobs:
        s.jobs[jname] = Job(jname, jname, mode, False)
        write_job_star(os.path.join(folder, jname, "job.star"), JobSpec(type_, dict(options)))
    for e in edges:
        s.edges.append(Edge(e[0], e[1]) if len(e) == 2 else Edge(e[0], e[1], True, e[2], e[3]))
    s.current = s.edges[0].input if s.edges else "undefined"
    s.write()
    return folder


def py_command(code, *args):
    """An external job's command: this Python running ``code`` with ``args`` (words)."""
    return shlex.join([sys.executable, "-c", code] + list(args))


TRACE = "import sys; open(sys.argv[1], chr(97)).write(chr(32).join(sys.argv[2:]) + chr(10))"
