"""Atomic output files: write to a temporary name in the same folder, then rename.

Every file hpcem writes goes through :func:`atomic_write`, so a run that is killed
never leaves a half-written file under the final name.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def temp_path_for(path: str | os.PathLike) -> Path:
    """The temporary name used for ``path``: ``.<name>.tmp-<pid>`` in the same folder."""
    p = Path(path)
    return p.with_name(f".{p.name}.tmp-{os.getpid()}")


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
