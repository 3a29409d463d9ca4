"""The memory planner: what a rank needs, what it has, and a refusal before any compute.

A rank has the memory available on its node (``MemAvailable``, or the cgroup's limit less its
usage when smaller: a SLURM job's allocation) divided by the number of ranks on that node, found
from MPI's shared-memory split (not by the world size: on N nodes that would under-count each
rank's memory N times).
"""
from __future__ import annotations

import os

from ..errors import InputError

CGROUP_FILES = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))


def _read_int(path):
    try:
        with open(path) as f:
            v = f.read().strip()
    except OSError:
        return None
    return int(v) if v.isdigit() else None


def meminfo_available(path: str = "/proc/meminfo") -> int | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cgroup_available(files=CGROUP_FILES) -> int | None:
    """The cgroup (v2, else v1) memory limit less the group's usage, or None without a limit."""
    for limit_path, usage_path in files:
        limit = _read_int(limit_path)
        if limit is not None and limit < (1 << 60):
            return max(limit - (_read_int(usage_path) or 0), 0)
    return None


def node_available(meminfo: str = "/proc/meminfo", cgroup_files=CGROUP_FILES) -> int:
    """Bytes available to this node's ranks: the smaller of MemAvailable and the cgroup's room."""
    vals = [v for v in (meminfo_available(meminfo), cgroup_available(cgroup_files)) if v is not None]
    if vals:
        return int(min(vals))
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def rank_available(comm, **kw) -> float:
    """Bytes one rank may plan with: the node's available memory over the ranks on the node."""
    return node_available(**kw) / max(1, comm.node_size())


class MemoryPlan:
    """Named memory needs (bytes) of one rank; ``check`` prints the plan and refuses when the
    largest rank's need exceeds 90% of what a rank has, with ``hint`` (a string, or a function of
    the bytes a rank has) naming the flags that would fit."""

    def __init__(self, items: dict, what: str = "", hint: str = ""):
        self.items = {k: float(v) for k, v in items.items()}
        self.what, self.hint = what, hint

    @property
    def total(self) -> float:
        return sum(self.items.values())

    def check(self, comm, log, limit_bytes: float | None = None, detail: bool = False) -> float:
        need = comm.allreduce(self.total, op="max")
        have = float(limit_bytes) if limit_bytes else rank_available(comm)
        if comm.rank == 0:
            log("memory estimate: %.2f GiB per rank of %.2f GiB available (%d rank(s), %d per node%s)" % (
                need / 2 ** 30, have / 2 ** 30, comm.size, comm.node_size(),
                ", " + self.what if self.what else ""))
            if detail:
                for k, v in self.items.items():
                    log("  %-55s %10.1f MiB" % (k, v / 2 ** 20))
        if need > 0.9 * have:
            hint = self.hint(have) if callable(self.hint) else self.hint
            raise InputError("needs %.2f GiB per rank but about %.2f GiB is available%s" % (
                need / 2 ** 30, have / 2 ** 30, ": " + hint if hint else ""), field="memory")
        return need
