"""Convert cryoSPARC particles (a .cs file, with its passthrough file) to a RELION 3.1 particle STAR file:
one optics group per exposure group, poses as RELION Euler angles (rlnAngleRot/Tilt/Psi), shifts as
rlnOriginXAngst/YAngst, CTF, classes, micrographs and coordinates (see hpcem/io/cryosparc.py for the
conventions). cryoSPARC's image paths are relative to its project folder: give that folder as
--stack_dir, or run later jobs from it."""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import InputError
from ..runtime.params import NON_NEGATIVE, Params as Base, param
from .common import job_record, stamp


@dataclass(frozen=True)
class Params(Base):
    i: str = param(None, "cryoSPARC particle file (.cs), e.g. J24_particles.cs", group="I/O")
    passthrough: str = param(None, "its passthrough file (.cs, e.g. P24_passthrough_particles.cs): fields "
                             "missing from --i (CTF, micrographs) are taken from it, matched by uid", group="I/O")
    o: str = param(None, "output particle STAR file (RELION 3.1)", group="I/O")
    angpix: float = param(0.0, "pixel size in A; overrides blob/psize_A (0: from the .cs file)",
                          check=NON_NEGATIVE, group="I/O")
    stack_dir: str = param(None, "folder put in front of the relative image and micrograph paths "
                           "(the cryoSPARC project folder)", group="I/O")


def run(p: Params, ctx):
    from ..io.cryosparc import cs_to_star
    from ..io.star import write_star

    for name in ("i", "o"):
        if not getattr(p, name):
            raise InputError("required", field="--" + name)
    blocks = cs_to_star(p.i, p.passthrough, angpix=p.angpix or None, stack_dir=p.stack_dir,
                        log=lambda m: ctx.log("hpcem import: " + m))
    if ctx.comm.rank == 0:
        out_dir = os.path.dirname(os.path.abspath(p.o))
        os.makedirs(out_dir, exist_ok=True)
        write_star(p.o, blocks)
        stamp(os.path.splitext(p.o)[0] + ".job.json", job_record(ctx.name, p, ctx.argv))
        ctx.log("wrote %s (%d particles)" % (p.o, len(blocks["particles"])))
    return 0
