"""STAR files read and written as text: every value stays the exact string in the file.

RELION's control files (a Scheme's ``scheme.star``, a job's ``job.star``) hold names, modes and
values whose text matters (``None``, ``undefined``, ``0.000000``, ``Yes``, ``$$var``, ``""``);
:mod:`hpcem.io.star` goes through starfile and pandas, which turn such values into numbers or NaN.
This reader tokenises as RELION's own does: ``data_<name>`` blocks, either ``_label value`` pairs
or a ``loop_`` of labels (``_label #n``) and rows, values separated by white space, ``"..."`` or
``'...'`` quoting a value with spaces (``""`` is the empty string), ``#`` lines are comments.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ..errors import InputError
from .atomic import atomic_write

_TOKEN = re.compile(r'"([^"]*)"|\'([^\']*)\'|(\S+)')


@dataclass
class Block:
    """One ``data_`` block: ``labels`` (without the leading ``_``) and ``rows`` of strings; a
    block of pairs (``loop=False``) has one row."""

    name: str
    labels: list = field(default_factory=list)
    rows: list = field(default_factory=list)
    loop: bool = True

    def records(self) -> list:
        """The rows as dictionaries label -> value."""
        return [dict(zip(self.labels, r)) for r in self.rows]

    def pairs(self) -> dict:
        return dict(zip(self.labels, self.rows[0])) if self.rows else {}


def tokens(line: str) -> list:
    """The values of one line (quotes removed)."""
    return [next(g for g in m.groups() if g is not None) for m in _TOKEN.finditer(line)]


def parse_star_text(text: str, source: str = "<text>") -> dict:
    """``{block name without data_: Block}`` of STAR text; a malformed row is one InputError
    naming the file, the block and the line."""
    blocks, block, state = {}, None, None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("data_"):
            block = Block(line[5:].split()[0] if len(line) > 5 else "")
            blocks[block.name] = block
            state = "pairs"
            continue
        if block is None:
            raise InputError("line %d: text before the first data_ block" % n, file=source, field="format")
        if line.startswith("loop_"):
            block.loop, state = True, "labels"
            continue
        if line.startswith("_"):
            parts = tokens(line)
            label = parts[0][1:]
            if state == "labels":
                block.labels.append(label)
                continue
            if state == "rows":
                raise InputError("line %d: label %s after the rows of a loop" % (n, label), file=source,
                                 field="data_" + block.name)
            block.loop = False
            if not block.rows:
                block.rows.append([])
            block.labels.append(label)
            block.rows[0].append(parts[1] if len(parts) > 1 else "")
            continue
        if state in ("labels", "rows"):
            state = "rows"
            row = tokens(line)
            if len(row) != len(block.labels):
                raise InputError("line %d: %d values for %d labels" % (n, len(row), len(block.labels)),
                                 file=source, field="data_" + block.name)
            block.rows.append(row)
            continue
        raise InputError("line %d: value outside a loop or label: %r" % (n, line[:60]), file=source,
                         field="data_" + block.name)
    return blocks


def read_star_text(path) -> dict:
    p = str(path)
    try:
        with open(p, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        raise InputError("file not found", file=p, field="file") from None
    except OSError as exc:
        raise InputError("cannot read (%s)" % exc.strerror, file=p, field="file") from None
    return parse_star_text(text, p)


def quote(value) -> str:
    """A value as written: bare, or quoted when empty or holding white space.  A value with a
    line break or with both kinds of quotes cannot be written in STAR: one InputError."""
    s = str(value)
    if "\n" in s or "\r" in s or ('"' in s and "'" in s):
        raise InputError("%r cannot be written in a STAR file (a line break, or both kinds of quotes)" % s[:60],
                         field="value")
    if s and not re.search(r"\s", s) and not s.startswith(("'", '"', "#", "_", "data_", "loop_")):
        return s
    return "'%s'" % s if '"' in s else '"%s"' % s


def format_star_text(blocks, version: str = "30001") -> str:
    """STAR text of ``blocks`` (Block objects, in order), laid out as RELION writes them."""
    out = []
    for b in blocks:
        out.append("\n# version %s\n\ndata_%s\n" % (version, b.name))
        if not b.loop:
            w = max([len(lab) for lab in b.labels] + [1]) + 2
            for lab, val in zip(b.labels, b.rows[0] if b.rows else []):
                out.append("_%-*s %s" % (w, lab, quote(val)))
            out.append(" ")
            continue
        out.append("loop_ ")
        out.extend("_%s #%d " % (lab, i + 1) for i, lab in enumerate(b.labels))
        cells = [[quote(v) for v in r] for r in b.rows]
        widths = [max([len(c[i]) for c in cells] + [1]) for i in range(len(b.labels))]
        out.extend(" ".join(c.rjust(w) for c, w in zip(r, widths)) + " " for r in cells)
        out.append(" ")
    return "\n".join(out) + "\n"


def write_star_text(path, blocks, version: str = "30001") -> None:
    """Write ``blocks`` atomically (the folder is made if needed)."""
    folder = os.path.dirname(os.path.abspath(str(path)))
    os.makedirs(folder, exist_ok=True)
    with atomic_write(path) as tmp:
        with open(tmp, "w") as f:
            f.write(format_star_text(blocks, version))


def _table(path: str, table: str) -> Block:
    blocks = read_star_text(path)
    name = table[5:] if table.startswith("data_") else table
    if name not in blocks:
        raise InputError("no table data_%s (tables: %s)" % (name, ", ".join(blocks)), file=path, field="data_" + name)
    return blocks[name]


def read_column(path: str, table: str, label: str) -> list:
    """The numbers in column ``label`` of table ``table``."""
    b = _table(path, table)
    lab = label.lstrip("_")
    if lab not in b.labels:
        raise InputError("no column %s in data_%s" % (lab, b.name), file=path, field=lab)
    i = b.labels.index(lab)
    try:
        return [float(r[i]) for r in b.rows]
    except ValueError:
        raise InputError("column %s holds text, not numbers" % lab, file=path, field=lab) from None


def read_value(path: str, table: str, label: str, row: int = 0) -> str:
    """The text of ``label`` in row ``row`` (from 0) of table ``table`` (a table of pairs: row 0)."""
    b = _table(path, table)
    lab = label.lstrip("_")
    if lab not in b.labels:
        raise InputError("no column %s in data_%s" % (lab, b.name), file=path, field=lab)
    if not 0 <= row < len(b.rows):
        raise InputError("row %d outside the %d row(s) of data_%s" % (row, len(b.rows), b.name), file=path,
                         field=lab)
    return b.rows[row][b.labels.index(lab)]


def count_rows(path: str, table: str) -> int:
    """Rows of the loop ``data_<table>`` without tokenising them (particle files are large)."""
    name = table[5:] if table.startswith("data_") else table
    n, inside, in_loop = 0, False, False
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            line = raw.strip()
            if line.startswith("data_"):
                if inside:
                    break
                inside, in_loop = line[5:].split()[0] == name if len(line) > 5 else name == "", False
            elif inside and line.startswith("loop_"):
                in_loop = True
            elif inside and in_loop and line and not line.startswith(("_", "#")):
                n += 1
    return n
