"""Reading and checking a job's inputs before any compute (one clear line naming the file and field)."""
from __future__ import annotations

import os

import numpy as np

from ..errors import InputError


def read_particles(path: str, angpix: float = 0.0, ctf: bool = False, diameter: float = 0.0):
    """The ParticleSet of a STAR file, validated (CTF columns when ``ctf``); a mask diameter
    larger than the box is refused."""
    from ..io.particles import ParticleSet

    ps = ParticleSet.read(path, angpix=angpix or None)
    ps.validate(ctf=ctf)
    if diameter > ps.box * ps.angpix:
        raise InputError("%.1f A is larger than the box (%.1f A)" % (diameter, ps.box * ps.angpix),
                         field="--particle_diameter")
    return ps


def read_reference(path: str, ps, flag: str = "--ref") -> np.ndarray:
    """A cubic reference map with the particles' box and pixel size, finite."""
    from ..io.mrc import read_mrc

    if not path:
        raise InputError("required (or --continue)", field=flag)
    if not os.path.exists(path):
        raise InputError("file not found", file=path, field=flag)
    try:
        ref, apix = read_mrc(path)
    except InputError:
        raise
    except Exception as exc:
        raise InputError("cannot read map (%s)" % exc, file=path, field=flag) from None
    ref = np.asarray(ref, np.float32)
    if ref.ndim != 3 or len(set(ref.shape)) != 1:
        raise InputError("reference must be a cubic 3D map, got shape %s" % (ref.shape,), file=path, field="box")
    if ref.shape[0] != ps.box:
        raise InputError("box %d differs from the particles' box %d (%s)" % (ref.shape[0], ps.box, ps.star_path),
                         file=path, field="box")
    if apix and apix > 0 and abs(float(apix) - ps.angpix) > 0.01 * ps.angpix:
        raise InputError("pixel size %.4f A differs from the particles' %.4f A" % (apix, ps.angpix), file=path,
                         field="pixel size")
    if not np.all(np.isfinite(ref)):
        raise InputError("map has non-finite values", file=path, field="data")
    return ref
