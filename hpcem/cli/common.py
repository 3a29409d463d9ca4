"""Shared CLI helpers: flag groups, output-directory stamping."""
from __future__ import annotations

import json
import os
import platform
import time

from .. import __version__


def add_threads(p):
    p.add_argument("--j", type=int, default=0,
                   help="threads per MPI rank (0: all cores of this rank / $OMP_NUM_THREADS)")


def set_threads(j: int) -> None:
    if j and j > 0:
        from .. import _core
        _core.set_threads(int(j))


def stamp(path: str, args, extra: dict | None = None) -> None:
    """Write the job's configuration (version, argv, flags) to ``path`` (JSON, atomically)."""
    from ..io.atomic import atomic_write

    cfg = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    rec = {"hpcem_version": __version__, "argv": getattr(args, "_argv", None), "config": cfg,
           "time": time.strftime("%Y-%m-%d %H:%M:%S"), "host": platform.node()}
    if extra:
        rec.update(extra)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with atomic_write(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(rec, f, indent=1, default=str)


def log(comm, *msg) -> None:
    if comm.rank == 0:
        print(*msg, flush=True)


def resolve_continue(args, load_checkpoint_of):
    """``--continue OPTIMISER_STAR``: load the checkpoint it names (``load_checkpoint_of(path)``),
    default ``--o`` to its folder and ``--i`` to the run's input; then require both.
    Returns the checkpoint dict, or None when not continuing."""
    import os

    from ..errors import InputError

    restart = None
    if args.continue_:
        restart = load_checkpoint_of(args.continue_)
        job = restart.get("job") or {}
        args.o = args.o or os.path.dirname(os.path.abspath(args.continue_))
        args.i = args.i or job.get("input")
        # a killed run may have left temporary files (never under an output name): remove them
        # (rank 0 only, the one writer; a live writer's files are kept)
        from ..io.atomic import remove_stale_temps
        from ..parallel.comm import get_comm
        if get_comm().rank == 0:
            remove_stale_temps(args.o)
    if not args.i:
        raise InputError("required (or --continue)", field="--i")
    if not args.o:
        raise InputError("required (or --continue)", field="--o")
    return restart
