"""Atomic output files: write to a temporary name in the same folder, then rename.

Every file hpcem writes goes through :func:`atomic_write`, so a run that is killed
never leaves a half-written file under the final name.  A killed run can leave its
temporary files (``.<name>.tmp-<pid>``, hidden, never an output name) behind;
:func:`remove_stale_temps` deletes those whose writer no longer runs (``--continue`` calls it).
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def temp_path_for(path: str | os.PathLike) -> Path:
    """The temporary name used for ``path``: ``.<name>.tmp-<pid>`` in the same folder."""
    p = Path(path)
    return p.with_name(f".{p.name}.tmp-{os.getpid()}")


_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>[0-9]+)$")


def _pid_running(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (zombies count as ended)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return False
    try:  # a killed process nobody has reaped yet is a zombie: its writes are over
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Temporary files of :func:`atomic_write` in ``folder`` whose writing process has ended
    (on this host) without renaming them: the leftovers of a killed run."""
    out = []
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return out
    for name in sorted(names):
        m = _TEMP_NAME.match(name)
        if m and not _pid_running(int(m.group("pid"))):
            out.append(Path(folder) / name)
    return out


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete :func:`stale_temps` of ``folder``; returns the paths removed.  Call it from the
    one process that writes into ``folder`` (rank 0), before it writes: a temporary file of a
    process running on another host would look stale here."""
    removed = []
    for p in stale_temps(folder):
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Context manager yielding a temporary path next to ``path``.

    Write the whole file to the yielded path; on a normal exit it is flushed to disk
    and renamed over ``path`` (``os.replace``, atomic on POSIX within one file system).
    On an exception the temporary file is removed and the target is left untouched.
    """
    target = Path(path)
    tmp = temp_path_for(target)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic_write: nothing was written to {tmp}")
        try:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass
        os.replace(tmp, target)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
