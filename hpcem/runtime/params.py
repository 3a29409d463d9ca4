"""Frozen, validated job parameters: one declaration per setting serves the command line, a
parameter dictionary (a Schemes workflow builds jobs without argparse) and the checkpoint.

A setting is a dataclass field made by :func:`param`: its default, help text, command-line flag
(``--<name>`` unless given), argparse group, choices/action, and a check ``(predicate,
'what it must be')``.  :class:`Params` validates every field when an instance is made and raises
one :class:`hpcem.errors.InputError` naming the flag; :meth:`Params.from_dict` converts strings
(from a workflow file) to the fields' types and refuses unknown names.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields

from ..errors import InputError


def param(default, help: str = "", *, flag: str | None = None, check=None, group: str = "options",
          choices=None, action: str | None = None, nargs=None, const=None, metavar=None, type=None,
          positional: bool = False, cli: bool = True):
    """A dataclass field carrying its command-line description (see the module docstring);
    ``type`` is the element type of an ``nargs`` field, ``positional`` a plain argument."""
    md = dict(help=help, flag=flag, check=check, group=group, choices=choices, action=action,
              nargs=nargs, const=const, metavar=metavar, type=type, positional=positional, cli=cli)
    return field(default=default, metadata=md)


def flag_of(f) -> str:
    return f.metadata.get("flag") or "--" + f.name


def _hint(cls, name):
    return typing.get_type_hints(cls)[name]


def _unwrap_optional(hint):
    """``X`` of ``Optional[X]`` / ``X | None``, else ``hint``."""
    if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def _coerce(value, hint, name):
    """``value`` as the field type ``hint`` (int, float, str, bool or an Optional of one)."""
    base = _unwrap_optional(hint)
    if typing.get_origin(base) is tuple and isinstance(value, (list, tuple)):
        elem = typing.get_args(base)[0]
        return tuple(_coerce(v, elem, name) for v in value)
    if value is None or base not in (int, float, str, bool):
        return value
    if base is bool and isinstance(value, str):
        low = value.strip().lower()
        if low not in ("1", "0", "true", "false", "yes", "no"):
            raise InputError("%r is not a yes/no value" % value, field=name)
        return low in ("1", "true", "yes")
    try:
        v = base(value)
    except (TypeError, ValueError):
        raise InputError("%r is not a valid %s" % (value, base.__name__), field=name) from None
    if base is int and isinstance(value, float) and value != v:
        raise InputError("%r is not an integer" % value, field=name)
    return v


@dataclass(frozen=True)
class Params:
    """Base of every job's and algorithm's settings (frozen dataclasses of :func:`param` fields)."""

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            choices = f.metadata.get("choices")
            if choices is not None and v is not None and v not in choices:
                raise InputError("%r is not one of %s" % (v, ", ".join(map(str, choices))), field=flag_of(f))
            chk = f.metadata.get("check")
            if chk is not None and v is not None:
                ok, what = chk
                if not ok(v):
                    raise InputError("invalid value %r (must be %s)" % (v, what), field=flag_of(f))

    @classmethod
    def named(cls, values: dict) -> dict:
        """``values`` keyed by field name (keys may be field names or flags with or without the
        dashes), converted to the fields' types; unknown keys raise InputError."""
        by_name = {f.name: f for f in fields(cls)}
        by_flag = {flag_of(f).lstrip("-"): f for f in fields(cls)}
        out = {}
        for k, v in values.items():
            f = by_name.get(k) or by_flag.get(str(k).lstrip("-"))
            if f is None:
                raise InputError("unknown parameter of %s" % cls.__name__, field=str(k))
            out[f.name] = _coerce(v, _hint(cls, f.name), flag_of(f))
        return out

    @classmethod
    def from_dict(cls, values: dict):
        """An instance from a dictionary (see :meth:`named`); missing fields take their defaults."""
        return cls(**cls.named(values))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    @classmethod
    def subset(cls, obj, **override):
        """An instance of ``cls`` from the same-named fields of ``obj`` (e.g. a job's settings)."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in dataclasses.asdict(obj).items() if k in names}
        kw.update(override)
        return cls(**kw)


POSITIVE = (lambda v: v > 0, "> 0")
NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
AT_LEAST_1 = (lambda v: v >= 1, ">= 1")
FRACTION = (lambda v: 0 < v <= 1, "in (0, 1]")
