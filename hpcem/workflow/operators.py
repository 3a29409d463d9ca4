"""RELION-4's Scheme operators: what each reads and writes, and how it runs.

Signatures: ``b``/``f``/``s`` a boolean, float or string variable, ``n`` a float variable or a
number, ``-`` unused, ``?`` after a letter: optional.  Each operator reads its inputs, writes its
output variable and returns False only when the Scheme must stop (``exit``, ``exit_maxtime``
past its time).  String inputs that name a job folder of a Scheme (``Schemes/proc/class2d/...``)
are read as that job's current folder (``Class2D/job004/...``), as RELION does.

Where RELION's code and its documentation disagree, the documentation is followed:
``string=nth_word`` with a negative N counts from the end (-1: the last word) and
``float=star_table_sort_idx`` with N = 1 gives the row of the largest value, -1 of the smallest.
``float=star_table_max_idx`` / ``min_idx`` (named in RELION's header, not implemented there) give
the row (from 0) of the largest / smallest value.  ``email`` only writes the message to the log.
"""
from __future__ import annotations

import glob as globmod
import math
import os
import shutil
import time

from ..errors import InputError
from ..io.star_text import count_rows, read_column, read_value
from .scheme import UNDEFINED, parse_bool

_CMP = {"gt": lambda a, b: a > b, "lt": lambda a, b: a < b, "ge": lambda a, b: a >= b,
        "le": lambda a, b: a <= b, "eq": lambda a, b: abs(a - b) < 1e-8}
_ARITH = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "mult": lambda a, b: a * b,
          "divide": lambda a, b: a / b if b else math.nan}
_STRCUT = {"before_first": lambda s, t: s.split(t, 1)[0] if t in s else s,
           "after_first": lambda s, t: s.split(t, 1)[1] if t in s else "",
           "before_last": lambda s, t: s.rsplit(t, 1)[0] if t in s else s,
           "after_last": lambda s, t: s.rsplit(t, 1)[1] if t in s else ""}
_STATS = {"star_table_max": max, "star_table_min": min, "star_table_avg": lambda v: sum(v) / len(v),
          "star_table_max_idx": lambda v: max(range(len(v)), key=v.__getitem__),
          "star_table_min_idx": lambda v: min(range(len(v)), key=v.__getitem__)}

SIGNATURES = {"bool=set": "bb-", "bool=and": "bbb", "bool=or": "bbb", "bool=not": "bb-",
              "bool=file_exists": "bs-", "bool=read_star": "bsf?",
              "float=set": "fn-", "float=round": "ff-", "float=count_images": "fss?", "float=count_words": "fs-",
              "float=read_star": "fsf?", "float=star_table_sort_idx": "fsn",
              "string=set": "ss-", "string=join": "sss", "string=read_star": "ssf?", "string=glob": "ss-",
              "string=nth_word": "ssn", "touch_file": "-s-", "copy_file": "-ss", "move_file": "-ss",
              "delete_file": "-s-", "wait": "f?f-", "email": "-x?x?", "exit_maxtime": "-f-", "exit": "---"}
SIGNATURES.update({"bool=" + k: "bfn" for k in _CMP})
SIGNATURES.update({"float=" + k: "ffn" for k in _ARITH})
SIGNATURES.update({"float=" + k: "fs-" for k in _STATS})
SIGNATURES.update({"string=" + k: "sss" for k in _STRCUT})
_KIND = {"b": "bool", "f": "float", "s": "string"}


def _slots(sig: str) -> list:
    """'bsf?' -> [('b', False), ('s', False), ('f', True)]."""
    out, i = [], 0
    while i < len(sig):
        opt = i + 1 < len(sig) and sig[i + 1] == "?"
        out.append((sig[i], opt))
        i += 2 if opt else 1
    return out


def check_operator(scheme, op) -> None:
    """One InputError naming the operator and the slot when its variables do not fit its type."""
    sig = SIGNATURES.get(op.type)
    if sig is None:
        raise InputError("unknown operator type %r (known: %s)" % (op.type, ", ".join(sorted(SIGNATURES))),
                         file=scheme.path, field=op.name)
    for (code, optional), slot in zip(_slots(sig), ("output", "input1", "input2")):
        name = getattr(op, slot)
        if code == "-" or (optional and name in (UNDEFINED, "")):
            continue
        if code == "n" and (scheme.kind(name) == "float" or _is_number(name)):
            continue
        if code == "x" and scheme.kind(name) is not None:
            continue
        want = "float" if code == "n" else _KIND.get(code, "any")
        if code == "s" and slot == "input2" and op.type == "float=count_images":
            continue  # a table name may be given as text
        if scheme.kind(name) != want:
            raise InputError("%s %r of a %s operator must be a %s variable%s" % (
                slot, name, op.type, want, " or a number" if code == "n" else ""), file=scheme.path, field=op.name)


def _is_number(text) -> bool:
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False


class Clock:
    """The times ``wait`` and ``exit_maxtime`` remember within one run of the schemer."""

    def __init__(self):
        self.last_wait = None
        self.exit_time = None


def run_operator(ctx, op) -> bool:
    """Execute ``op``; False when the Scheme must stop here."""
    t = op.type
    family, _, verb = t.partition("=")
    if t in ("exit", "exit_maxtime", "wait", "email"):
        return _control(ctx, op)
    if t in ("touch_file", "copy_file", "move_file", "delete_file"):
        _file_op(ctx, op)
        return True
    if verb == "read_star":
        _set(ctx, op, _read_star(ctx, op))
    elif verb in _STATS or verb == "star_table_sort_idx":
        _set(ctx, op, _table_stat(ctx, op, verb))
    elif family == "bool":
        _set(ctx, op, _bool_op(ctx, op, verb))
    elif family == "float":
        _set(ctx, op, _float_op(ctx, op, verb))
    else:
        _set(ctx, op, _string_op(ctx, op, verb))
    return True


def _set(ctx, op, value):
    ctx.scheme.variables[op.output].value = value
    ctx.log(" + %s: %s -> %s" % (op.name, op.output, value))


def _v(ctx, name):
    return ctx.scheme.variables[name].value


def _num(ctx, name) -> float:
    return float(_v(ctx, name)) if ctx.scheme.kind(name) == "float" else float(name)


def _path(ctx, name) -> str:
    """A string variable's value as a file name: job folders translated."""
    return ctx.translate(str(_v(ctx, name)))


def _bool_op(ctx, op, verb):
    if verb in _CMP:
        return bool(_CMP[verb](_v(ctx, op.input1), _num(ctx, op.input2)))
    if verb == "file_exists":
        return os.path.exists(ctx.sandbox.check(_path(ctx, op.input1), op.name))
    a = bool(_v(ctx, op.input1))
    if verb in ("set", "not"):
        return a if verb == "set" else not a
    b = bool(_v(ctx, op.input2))
    return (a and b) if verb == "and" else (a or b)


def _float_op(ctx, op, verb):
    if verb in _ARITH:
        return float(_ARITH[verb](_v(ctx, op.input1), _num(ctx, op.input2)))
    if verb == "set":
        return _num(ctx, op.input1)
    if verb == "round":
        return float(math.floor(_v(ctx, op.input1) + 0.5))
    if verb == "count_words":
        s = str(_v(ctx, op.input1))
        return 0.0 if s in (UNDEFINED, "") else float(len(s.split(",")))
    # count_images
    path = ctx.sandbox.check(_path(ctx, op.input1), op.name)
    table = op.input2 if op.input2 not in (UNDEFINED, "") else "particles"
    table = str(_v(ctx, table)) if ctx.scheme.kind(table) == "string" else table
    return float(count_rows(path, table)) if os.path.isfile(path) else 0.0


def _string_op(ctx, op, verb):
    a = str(_v(ctx, op.input1))
    if verb == "set":
        return ctx.translate(a)
    if verb == "join":
        return a + str(_v(ctx, op.input2))
    if verb in _STRCUT:
        return _STRCUT[verb](a, str(_v(ctx, op.input2)))
    if verb == "nth_word":
        words, n = a.split(","), int(round(_num(ctx, op.input2)))
        i = n - 1 if n > 0 else len(words) + n
        return words[i] if a not in (UNDEFINED, "") and 0 <= i < len(words) and n != 0 else UNDEFINED
    # glob: matches inside the project (or the allowed paths), sorted, comma-separated
    pattern = _path(ctx, op.input1)
    found = sorted(globmod.glob(os.path.join(ctx.sandbox.project, pattern)))
    inside = [f for f in found if ctx.sandbox.inside(f)]
    if len(inside) < len(found):
        ctx.log(" + %s: %d match(es) outside the project folder left out" % (op.name, len(found) - len(inside)))
    rel = [os.path.relpath(f, ctx.sandbox.project) if not os.path.isabs(pattern) else f for f in inside]
    return ",".join(rel) if rel else UNDEFINED


def _star_spec(ctx, op):
    spec = _path(ctx, op.input1).split(",")
    if len(spec) < 3:
        raise InputError("%r: needs 'file.star,table,rlnLabel'" % _v(ctx, op.input1), field=op.name)
    return ctx.sandbox.check(spec[0].strip(), op.name), spec[1].strip(), spec[2].strip()


def _read_star(ctx, op):
    path, table, label = _star_spec(ctx, op)
    row = int(round(_num(ctx, op.input2))) if op.input2 not in (UNDEFINED, "") else 0
    text = read_value(path, table, label, row)
    kind = ctx.scheme.kind(op.output)
    return parse_bool(text, op.name) if kind == "bool" else float(text) if kind == "float" else text


def _table_stat(ctx, op, verb):
    path, table, label = _star_spec(ctx, op)
    values = read_column(path, table, label)
    if not values:
        raise InputError("table %s has no rows" % table, file=path, field=op.name)
    if verb in _STATS:
        return float(_STATS[verb](values))
    n = int(round(_num(ctx, op.input2)))
    order = sorted(range(len(values)), key=lambda i: -values[i])       # largest first
    if n == 0 or abs(n) > len(order):
        raise InputError("sort index %d outside 1..%d or -%d..-1" % (n, len(order), len(order)), field=op.name)
    return float(order[n - 1] if n > 0 else order[n])


def _file_op(ctx, op):
    src = ctx.sandbox.check(_path(ctx, op.input1), op.name)
    if op.type == "touch_file":
        os.makedirs(os.path.dirname(src), exist_ok=True)
        with open(src, "a"):
            os.utime(src, None)
        ctx.log(" + %s: touched %s" % (op.name, _path(ctx, op.input1)))
    elif op.type == "delete_file":
        for f in sorted(globmod.glob(src)) if any(c in src for c in "*?[") else [src]:
            if ctx.sandbox.inside(f) and os.path.isfile(f):
                os.remove(f)
                ctx.log(" + %s: deleted %s" % (op.name, os.path.relpath(f, ctx.sandbox.project)))
    else:
        dst = ctx.sandbox.check(_path(ctx, op.input2), op.name)
        if os.path.isdir(dst):
            dst = os.path.join(dst, os.path.basename(src))
        os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
        (shutil.copy2 if op.type == "copy_file" else shutil.move)(src, dst)
        ctx.log(" + %s: %s %s to %s" % (op.name, "copied" if op.type == "copy_file" else "moved",
                                       _path(ctx, op.input1), _path(ctx, op.input2)))


def _control(ctx, op) -> bool:
    clock, now = ctx.clock, time.time()
    if op.type == "exit":
        ctx.log(" + %s: the scheme has reached an exit point" % op.name)
        return False
    if op.type == "email":
        parts = ["%s = %s" % (n, _v(ctx, n)) for n in (op.input1, op.input2) if ctx.scheme.kind(n)]
        ctx.log(" + %s: e-mail (logged only): %s" % (op.name, "; ".join(parts)))
        return True
    if op.type == "exit_maxtime":
        if clock.exit_time is None:
            clock.exit_time = now + 3600.0 * _v(ctx, op.input1)
            ctx.log(" + %s: exit time set at %s" % (op.name, time.strftime("%Y-%m-%d %H:%M:%S",
                                                                           time.localtime(clock.exit_time))))
            return True
        if now >= clock.exit_time:
            ctx.log(" + %s: the scheme has reached its exit time" % op.name)
            return False
        return True
    if clock.last_wait is not None:      # wait: until input1 seconds have passed since the last wait
        elapsed = now - clock.last_wait
        if ctx.scheme.kind(op.output) == "float":
            ctx.scheme.variables[op.output].value = float(elapsed)
        remaining = _v(ctx, op.input1) - elapsed
        if remaining > 0:
            ctx.log(" + %s: waiting %.0f s" % (op.name, remaining))
            ctx.sleep(remaining)
    clock.last_wait = time.time()
    return True
