"""The schemer: runs a Scheme from its current node, one node after another, until an exit
operator, a node with no edge out, a failed job or an abort.

State lives in scheme.star (current node, variables, each job's folder and JobHasStarted),
written after every node and before every job starts, so a killed schemer started again goes on
from where it stopped: the job it was running is resumed in its folder, and the jobs before it
do not run again.  One lock per scheme (:mod:`hpcem.workflow.lock`); a log in
``Schemes/<name>/schemer.log`` besides the screen.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time

from ..errors import InputError
from ..io.star_text import read_star_text
from .jobrun import exit_status, mark, visit_job
from .launch import ABORTED
from .jobstar import EXEC_OPTIONS, check_type, job_star_of, read_job_star
from .lock import SchemeLock, abort_requested, clear_abort
from .operators import Clock, check_operator, run_operator
from .paths import Sandbox
from .scheme import UNDEFINED, Scheme

_JOB_PATH = re.compile(r"Schemes/([^/\s,]+)/([^/\s,]+)/")


class Aborted(BaseException):
    """The schemer was asked to stop (--abort, SIGTERM, Ctrl-C)."""


class Context:
    """What operators and jobs see of a running scheme."""

    def __init__(self, scheme: Scheme, allowed=(), echo=True):
        self.scheme = scheme
        self.sandbox = Sandbox(scheme.project, allowed)
        self.clock = Clock()
        self.echo = echo
        self._log = os.path.join(scheme.folder, "schemer.log")

    def log(self, msg: str) -> None:
        line = "%s %s" % (time.strftime("%Y-%m-%d %H:%M:%S"), msg)
        with open(self._log, "a") as f:
            f.write(line + "\n")
        if self.echo:
            print(msg, flush=True)

    def should_abort(self) -> bool:
        return abort_requested(self.scheme)

    def sleep(self, seconds: float) -> None:
        end = time.time() + seconds
        while time.time() < end:
            if self.should_abort():
                raise Aborted()
            time.sleep(min(0.5, max(0.0, end - time.time())))

    def translate(self, text: str) -> str:
        """``Schemes/<scheme>/<job>/`` in ``text`` -> that job's current folder, once it has one."""
        def one(m):
            other, job = m.group(1), m.group(2)
            if "Schemes/%s/" % other == self.scheme.name:
                j = self.scheme.jobs.get(job)
                folder = j.folder if j else None
            else:
                folder = _other_scheme_folder(self.scheme.project, other, job)
            return folder.rstrip("/") + "/" if folder else m.group(0)
        return _JOB_PATH.sub(one, str(text))


def _other_scheme_folder(project: str, scheme: str, job: str):
    path = os.path.join(project, "Schemes", scheme, "scheme.star")
    if not os.path.isfile(path):
        return None
    b = read_star_text(path).get("scheme_jobs")
    for r in b.records() if b else []:
        if r.get("rlnSchemeJobNameOriginal") == job and r.get("rlnSchemeJobName") not in (None, job):
            return r["rlnSchemeJobName"] if r.get("rlnSchemeJobHasStarted", "0") in ("1", "true") else None
    return None


def check_scheme(scheme: Scheme) -> None:
    """Everything a run needs, checked before any job starts: edges, operators, every job.star
    (readable, a type hpcem runs, option names the job knows)."""
    from ..cli.main import job_module

    scheme.validate()
    for op in scheme.operators.values():
        check_operator(scheme, op)
    for name, job in scheme.jobs.items():
        path = job_star_of(scheme.folder, name)
        spec = read_job_star(path)
        check_type(spec, name, path)
        if spec.hpcem_job:
            fields = job_module(spec.hpcem_job).Params
            names = {f for f in fields.__dataclass_fields__} | {
                (f.metadata.get("flag") or "--" + f.name).lstrip("-") for f in fields.__dataclass_fields__.values()}
            bad = [k for k in spec.options if k not in names and k not in EXEC_OPTIONS]
            if bad:
                raise InputError("job %s (%s): unknown option(s) %s" % (name, spec.type, ", ".join(bad)), file=path,
                                 field="rlnJobOptionVariable")


@contextlib.contextmanager
def _signals_abort():
    """SIGTERM (--abort) and Ctrl-C stop the scheme cleanly (main thread only: elsewhere the
    abort file alone is watched)."""
    def handler(signum, frame):
        raise Aborted()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _in_folder(path: str):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def run_scheme(folder: str, allowed=(), echo=True) -> int:
    """Run the scheme in ``folder`` from its current node; 0 when it stopped at an exit (or at a
    node with no edge out), 1 when a job failed, 3 when aborted (RELION's abort status)."""
    scheme = Scheme.read(folder)
    check_scheme(scheme)
    ctx = Context(scheme, allowed, echo)
    lock = SchemeLock(scheme)
    lock.acquire(ctx.log)
    try:
        clear_abort(scheme)
        with _in_folder(scheme.project), _signals_abort():
            return _walk(ctx)
    except Aborted:
        _aborted(ctx)
        return 3
    finally:
        lock.release()


def _walk(ctx) -> int:
    scheme = ctx.scheme
    node = scheme.current if scheme.current != UNDEFINED else (scheme.edges[0].input if scheme.edges else UNDEFINED)
    if node == UNDEFINED:
        raise InputError("the scheme has no edges", file=scheme.path, field="scheme_edges")
    op = scheme.operators.get(node)
    if op is not None and op.type == "exit":
        ctx.log(" + scheme %s is at its exit %s; --reset starts it again" % (scheme.name, node))
        return 0
    ctx.log("+++ schemer %s starts at %s" % (scheme.name, node))
    while True:
        if ctx.should_abort():
            raise Aborted()
        scheme.current = node
        if node in scheme.operators:
            go_on = run_operator(ctx, scheme.operators[node])
            scheme.write()
            if not go_on:
                ctx.log("+++ schemer %s stops at %s" % (scheme.name, node))
                return 0
        else:
            try:
                rc = visit_job(ctx, node)
            except InputError as exc:
                ctx.log(" + %s: error: %s" % (node, exc))
                _mark_current(ctx, "failure")
                scheme.write()
                raise
            if rc == ABORTED:
                raise Aborted()
            if rc != 0:
                scheme.write()
                ctx.log("+++ schemer %s stops: job %s did not finish" % (scheme.name, node))
                return 1
        nxt = scheme.next_node(node)
        if nxt == UNDEFINED:
            ctx.log("+++ schemer %s stops: no edge leaves %s" % (scheme.name, node))
            scheme.write()
            return 0
        scheme.current = nxt
        scheme.write()
        node = nxt


def _mark_current(ctx, status: str) -> None:
    """Mark the current job's run (one that has not ended yet) as failed or aborted."""
    job = ctx.scheme.jobs.get(ctx.scheme.current)
    folder = os.path.join(ctx.scheme.project, job.folder) if job is not None and job.folder else None
    if folder and os.path.isdir(folder) and exit_status(folder) is None:
        mark(folder, status)


def _aborted(ctx) -> None:
    _mark_current(ctx, "aborted")
    ctx.scheme.write()
    clear_abort(ctx.scheme)
    ctx.log("+++ schemer %s aborted at %s" % (ctx.scheme.name, ctx.scheme.current))
