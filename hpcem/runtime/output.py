"""Where a job writes: RELION's output rootname.

``--o`` is either a folder, ``Class2D/job001`` (files ``Class2D/job001/run_it001_*``, hpcem's
form), or a RELION rootname whose last part is ``run`` or starts with ``run_``,
``Class2D/job001/run`` (files ``Class2D/job001/run_it001_*``, as ``relion_refine --o`` writes)
or ``Class2D/job001/run_ct5`` (files ``run_ct5_it006_*``).  An existing folder, or a path
ending in ``/``, is always a folder.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

_ROOTNAME = re.compile(r"^run(_.*)?$")


@dataclass(frozen=True)
class OutputRoot:
    folder: str
    prefix: str = "run"

    @classmethod
    def parse(cls, o: str) -> "OutputRoot":
        o = str(o)
        if o.endswith(("/", os.sep)) or os.path.isdir(o):
            return cls(os.path.normpath(o))
        head, tail = os.path.split(os.path.normpath(o))
        if _ROOTNAME.match(tail):
            return cls(head or ".", tail)
        return cls(os.path.normpath(o))

    @classmethod
    def of_file(cls, path: str) -> "OutputRoot":
        """The root that wrote ``<folder>/<prefix>_itNNN_<what>`` (else ``<folder>/run``)."""
        folder, name = os.path.split(os.path.abspath(path))
        m = re.match(r"^(?P<prefix>.+?)_it\d{3,}_", name)
        return cls(folder, m.group("prefix") if m else "run")

    @property
    def rootname(self) -> str:
        return os.path.join(self.folder, self.prefix)

    def path(self, suffix: str) -> str:
        """``<folder>/<prefix>_<suffix>``, e.g. ``path('class001.mrc')``."""
        return "%s_%s" % (self.rootname, suffix)

    def iteration(self, it: int, suffix: str) -> str:
        """``<folder>/<prefix>_itNNN_<suffix>``."""
        return "%s_it%03d_%s" % (self.rootname, int(it), suffix)

    def file(self, name: str) -> str:
        """A file in the folder that carries no prefix (job.json)."""
        return os.path.join(self.folder, name)

    def sub(self, name: str) -> "OutputRoot":
        """The root of a stage in a sub-folder (``<folder>/<name>/run``)."""
        return OutputRoot(os.path.join(self.folder, name))

    def makedirs(self) -> None:
        os.makedirs(self.folder, exist_ok=True)
