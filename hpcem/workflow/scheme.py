"""A RELION-4 Scheme: typed variables, operators, jobs and edges, read from and written to
``Schemes/<name>/scheme.star`` in RELION's own format (blocks ``scheme_general``,
``scheme_floats``, ``scheme_bools``, ``scheme_strings``, ``scheme_operators``, ``scheme_jobs``,
``scheme_edges`` with RELION's labels), so that RELION's prep and proc schemes parse as they are
and RELION reads what hpcem writes.

A Scheme is a directed graph whose nodes are jobs and operators.  An edge leads from one node to
the next; a fork leads to ``output_if_true`` when its boolean variable is true, else to
``output``.  When several edges leave one node the last one counts (as in RELION).  The state of
a run (current node, variable values, each job's current folder and whether it has started) is
kept in scheme.star itself.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import InputError
from ..io.star_text import Block, read_star_text, write_star_text

UNDEFINED = "undefined"
KINDS = ("float", "bool", "string")
_BLOCK = {"float": "scheme_floats", "bool": "scheme_bools", "string": "scheme_strings"}
_LABEL = {"float": "Float", "bool": "Boolean", "string": "String"}
_JOB_LABELS = ("rlnSchemeJobNameOriginal", "rlnSchemeJobName", "rlnSchemeJobMode", "rlnSchemeJobHasStarted")
_OP_LABELS = ("rlnSchemeOperatorName", "rlnSchemeOperatorType", "rlnSchemeOperatorOutput",
              "rlnSchemeOperatorInput1", "rlnSchemeOperatorInput2")
_EDGE_LABELS = ("rlnSchemeEdgeInputNodeName", "rlnSchemeEdgeOutputNodeName", "rlnSchemeEdgeIsFork",
                "rlnSchemeEdgeOutputNodeNameIfTrue", "rlnSchemeEdgeBooleanVariable")
JOB_MODES = ("new", "continue")


@dataclass
class Variable:
    name: str
    kind: str
    value: object
    reset: object


@dataclass
class Operator:
    name: str
    type: str
    output: str = UNDEFINED
    input1: str = UNDEFINED
    input2: str = UNDEFINED


@dataclass
class Job:
    name: str                 # the node's name (rlnSchemeJobNameOriginal), its folder in the scheme
    current: str              # the job's folder in the project once it runs (rlnSchemeJobName)
    mode: str = "continue"
    started: bool = False

    @property
    def folder(self):
        """The project folder the job runs in, or None before it first runs."""
        return self.current if self.started and self.current != self.name else None


@dataclass
class Edge:
    input: str
    output: str
    is_fork: bool = False
    output_if_true: str = UNDEFINED
    bool_var: str = UNDEFINED


def parse_bool(text, what: str = "value") -> bool:
    s = str(text).strip().lower()
    if s in ("1", "true", "yes"):
        return True
    if s in ("0", "false", "no"):
        return False
    raise InputError("%r is not a boolean (true/false, 1/0, yes/no)" % (text,), field=what)


def parse_value(kind: str, text, what: str = "value"):
    if kind == "bool":
        return parse_bool(text, what)
    if kind == "float":
        try:
            return float(text)
        except (TypeError, ValueError):
            raise InputError("%r is not a number" % (text,), field=what) from None
    return str(text)


def format_value(kind: str, value) -> str:
    if kind == "bool":
        return "1" if value else "0"
    if kind == "float":
        s = "%.6f" % value
        return s if float(s) == value else repr(float(value))
    return str(value)


class Scheme:
    """The scheme in folder ``Schemes/<name>`` of a project; ``name`` is RELION's
    ``Schemes/<name>/`` (relative to the project folder, the folder above ``Schemes``)."""

    def __init__(self, folder: str):
        self.folder = os.path.abspath(folder)
        parent = os.path.dirname(self.folder)
        self.project = os.path.dirname(parent) if os.path.basename(parent) == "Schemes" else os.getcwd()
        self.name = os.path.relpath(self.folder, self.project).replace(os.sep, "/") + "/"
        self.current = UNDEFINED
        self.variables: dict = {}
        self.operators: dict = {}
        self.jobs: dict = {}
        self.edges: list = []

    @property
    def path(self) -> str:
        return os.path.join(self.folder, "scheme.star")

    # ---- reading and writing ------------------------------------------------------------------
    @classmethod
    def read(cls, folder: str) -> "Scheme":
        s = cls(folder)
        blocks = read_star_text(s.path)
        gen = blocks.get("scheme_general")
        if gen is None:
            raise InputError("no data_scheme_general block", file=s.path, field="scheme_general")
        s.current = gen.pairs().get("rlnSchemeCurrentNodeName", UNDEFINED) or UNDEFINED
        for kind in KINDS:
            b, lab = blocks.get(_BLOCK[kind]), _LABEL[kind]
            for r in _records(b, s.path, ["rlnScheme%sVariable%s" % (lab, x) for x in ("Name", "Value", "ResetValue")]):
                name = r["rlnScheme%sVariableName" % lab]
                if name in s.variables:
                    raise InputError("variable defined twice", file=s.path, field=name)
                what = "%s (%s)" % (name, _BLOCK[kind])
                s.variables[name] = Variable(name, kind, parse_value(kind, r["rlnScheme%sVariableValue" % lab], what),
                                             parse_value(kind, r["rlnScheme%sVariableResetValue" % lab], what))
        for r in _records(blocks.get("scheme_operators"), s.path, _OP_LABELS):
            op = Operator(*(r[k] for k in _OP_LABELS))
            s.operators[op.name] = op
        for r in _records(blocks.get("scheme_jobs"), s.path, _JOB_LABELS):
            name, current, mode, started = (r[k] for k in _JOB_LABELS)
            if mode not in JOB_MODES:
                raise InputError("job mode %r is not new or continue" % mode, file=s.path, field=name)
            s.jobs[name] = Job(name, current, mode, parse_bool(started, name))
        for r in _records(blocks.get("scheme_edges"), s.path, _EDGE_LABELS):
            s.edges.append(Edge(r[_EDGE_LABELS[0]], r[_EDGE_LABELS[1]], parse_bool(r[_EDGE_LABELS[2]]),
                                r[_EDGE_LABELS[3]], r[_EDGE_LABELS[4]]))
        if s.current == UNDEFINED and s.edges:
            s.current = s.edges[0].input
        return s

    def blocks(self) -> list:
        out = [Block("scheme_general", ["rlnSchemeName", "rlnSchemeCurrentNodeName"], [[self.name, self.current]],
                     loop=False)]
        for kind in KINDS:
            vs = [v for v in self.variables.values() if v.kind == kind]
            if vs:
                lab = _LABEL[kind]
                out.append(Block(_BLOCK[kind], ["rlnScheme%sVariable%s" % (lab, x) for x in ("Name", "Value", "ResetValue")],
                                 [[v.name, format_value(kind, v.value), format_value(kind, v.reset)] for v in vs]))
        if self.operators:
            out.append(Block("scheme_operators", list(_OP_LABELS),
                             [[o.name, o.type, o.output, o.input1, o.input2] for o in self.operators.values()]))
        if self.jobs:
            out.append(Block("scheme_jobs", list(_JOB_LABELS),
                             [[j.name, j.current, j.mode, "1" if j.started else "0"] for j in self.jobs.values()]))
        if self.edges:
            out.append(Block("scheme_edges", list(_EDGE_LABELS),
                             [[e.input, e.output, "1" if e.is_fork else "0", e.output_if_true, e.bool_var]
                              for e in self.edges]))
        return out

    def write(self) -> None:
        write_star_text(self.path, self.blocks())

    # ---- state ----------------------------------------------------------------------------------
    def value(self, name: str):
        return self.variables[name].value

    def kind(self, name: str):
        v = self.variables.get(name)
        return v.kind if v else None

    def set_value(self, name: str, value) -> None:
        v = self.variables[name]
        v.value = parse_value(v.kind, value, name) if isinstance(value, str) and v.kind != "string" else value

    def configure(self, assignment: str) -> Variable:
        """``VAR=VALUE`` from the command line: sets the variable's value and its reset value."""
        if "=" not in assignment:
            raise InputError("expected VAR=VALUE, got %r" % assignment, field="--set")
        name, text = assignment.split("=", 1)
        name = name.strip()
        if name not in self.variables:
            raise InputError("no such variable in %s (its variables: %s)" % (self.name, ", ".join(self.variables)),
                             field=name)
        v = self.variables[name]
        v.value = v.reset = parse_value(v.kind, text, name)
        return v

    def reset(self) -> None:
        """RELION's --reset: variables to their reset values, jobs not started, back to the first node."""
        for v in self.variables.values():
            v.value = v.reset
        for j in self.jobs.values():
            j.current, j.started = j.name, False
        self.current = self.edges[0].input if self.edges else UNDEFINED

    def is_node(self, name: str) -> bool:
        return name in self.jobs or name in self.operators

    def next_node(self, node: str) -> str:
        """The node after ``node`` (a fork reads its boolean variable now)."""
        nxt = UNDEFINED
        for e in self.edges:
            if e.input == node:
                nxt = e.output_if_true if e.is_fork and self.variables[e.bool_var].value else e.output
        return nxt

    def validate(self) -> None:
        """Every edge joins known nodes and every fork names a boolean variable: one InputError."""
        for e in self.edges:
            for end in (e.input, e.output) + ((e.output_if_true,) if e.is_fork else ()):
                if not self.is_node(end):
                    raise InputError("edge %s -> %s: %s is neither a job nor an operator" % (e.input, e.output, end),
                                     file=self.path, field="scheme_edges")
            if e.is_fork and self.kind(e.bool_var) != "bool":
                raise InputError("fork at %s: %s is not a boolean variable" % (e.input, e.bool_var),
                                 file=self.path, field="scheme_edges")
        if self.current != UNDEFINED and not self.is_node(self.current):
            raise InputError("current node %s is neither a job nor an operator" % self.current, file=self.path,
                             field="rlnSchemeCurrentNodeName")


def _records(block, path: str, labels) -> list:
    if block is None:
        return []
    missing = [lab for lab in labels if lab not in block.labels]
    if missing:
        raise InputError("missing label(s) %s" % ", ".join(missing), file=path, field="data_" + block.name)
    return block.records()
