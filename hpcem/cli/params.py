"""Command lines from :class:`hpcem.runtime.params.Params` classes: one argparse flag per field,
grouped; parsing returns only the flags the user gave (so that ``--continue`` can tell a flag given
again from a default)."""
from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, fields

from ..runtime.params import _unwrap_optional, flag_of

GROUP_ORDER = ("I/O", "model", "sampling", "compute")


def _type_of(hint):
    base = _unwrap_optional(hint)
    return base if base in (int, float, str) else None


def add_arguments(parser, cls) -> None:
    """Flags of every command-line field of ``cls``, with its default in the help text; parsed
    values land in attributes named like the fields, and absent flags are left out."""
    hints = typing.get_type_hints(cls)
    groups = {}
    cli = [f for f in fields(cls) if f.metadata.get("cli", False)]
    names = sorted({f.metadata.get("group", "options") for f in cli},
                   key=lambda g: (GROUP_ORDER.index(g) if g in GROUP_ORDER else len(GROUP_ORDER), g))
    for g in names:
        groups[g] = parser.add_argument_group(g)
    for f in cli:
        md = f.metadata
        group = groups[md.get("group", "options")]
        if md.get("positional"):
            group.add_argument(f.name, help=md.get("help", ""))
            continue
        default = None if f.default is MISSING else f.default
        kw = dict(dest=f.name, default=argparse.SUPPRESS,
                  help="%s (default: %s)" % (md.get("help", ""), default) if md.get("help") else argparse.SUPPRESS)
        if md.get("action"):
            kw["action"] = md["action"]
        else:
            kw["type"] = md.get("type") or _type_of(hints[f.name]) or str
            for k in ("choices", "nargs", "const", "metavar"):
                if md.get(k) is not None:
                    kw[k] = md[k]
            if "metavar" not in kw and "choices" not in kw:
                kw["metavar"] = flag_of(f).lstrip("-").upper()
        group.add_argument(flag_of(f), **kw)


def given(namespace) -> dict:
    """The flags the user gave, by field name."""
    return {k: v for k, v in vars(namespace).items() if not k.startswith("_") and k != "job"}
