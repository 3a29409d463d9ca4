"""One meaning of ``--continue`` for every job.

``--continue X`` resumes a run from its newest (or a given) checkpoint with the settings the run
was started with (flags given again may raise ``--iter`` and change ``--j``/``--batch``), where
``X`` is RELION's ``run_itNNN_optimiser.star``, a checkpoint ``.h5``, the run's rootname
(``Class2D/job001/run``) or its folder; a bare ``--continue`` takes ``--o``.  Output goes to the
run's own rootname, or to ``--o`` when that is given as well (RELION:
``--continue run_it025_optimiser.star --o Class2D/job001/run_ct25``).
"""
from __future__ import annotations

import glob
import os
import re

from ..errors import InputError
from ..io.atomic import remove_stale_temps
from .checkpoint import Checkpoint, checkpoint_of_optimiser, load_checkpoint
from .output import OutputRoot

_IT = re.compile(r"_it(\d{3,})_[^/]*\.h5$")


def newest_checkpoint(root: OutputRoot) -> str | None:
    """The checkpoint (``<rootname>_itNNN_*.h5``) of the highest iteration, or None."""
    best, path = -1, None
    for p in glob.glob(glob.escape(root.rootname) + "_it*_*.h5"):
        m = _IT.search(p)
        if m and int(m.group(1)) > best and os.path.basename(p).startswith(root.prefix + "_it"):
            best, path = int(m.group(1)), p
    return path


def _target(continue_from: str, o: str | None) -> str:
    target = continue_from if continue_from else o
    if not target:
        raise InputError("needs a run to continue: an optimiser STAR, a checkpoint, a rootname or --o",
                         field="--continue")
    return target


def resolve_checkpoint(continue_from: str, o: str | None, kind: str) -> tuple[OutputRoot, Checkpoint]:
    """(output root, checkpoint) of ``--continue continue_from`` (see the module docstring)."""
    target = _target(continue_from, o)
    if target.endswith(".star"):
        path = checkpoint_of_optimiser(target)
        root = OutputRoot.of_file(target)
    elif target.endswith(".h5"):
        path, root = target, OutputRoot.of_file(target)
    else:
        root = OutputRoot.parse(target)
        path = newest_checkpoint(root)
        if path is None:
            raise InputError("no checkpoint %s_itNNN_*.h5 to continue from" % root.rootname, file=target,
                             field="--continue")
    ck = load_checkpoint(path, kind)
    if o and continue_from:
        root = OutputRoot.parse(o)
    return root, ck


def resolve_folder(continue_from: str, o: str | None) -> OutputRoot:
    """The output root of a multi-stage run resumed with ``--continue`` (each stage finds its own
    newest checkpoint)."""
    return OutputRoot.parse(_target(continue_from, o))


def clean_stale(root: OutputRoot, comm) -> None:
    """A killed run may have left temporary files (never under an output name): remove them
    (rank 0, the one writer; a live writer's files are kept)."""
    if comm.rank == 0:
        remove_stale_temps(root.folder)
