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


def read_map(path: str, flag: str):
    """A cubic, finite 3D map and its header pixel size (0 when absent)."""
    from ..io.mrc import read_mrc

    if not os.path.exists(path):
        raise InputError("file not found", file=path, field=flag)
    try:
        vol, apix = read_mrc(path)
    except InputError:
        raise
    except Exception as exc:
        raise InputError("cannot read map (%s)" % exc, file=path, field=flag) from None
    vol = np.asarray(vol, np.float32)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise InputError("%s must be a cubic 3D map, got shape %s" % (flag, vol.shape), file=path, field="box")
    if not np.all(np.isfinite(vol)):
        raise InputError("map has non-finite values", file=path, field="data")
    return vol, float(apix or 0.0)


def read_reference(path: str, ps, flag: str = "--ref", ref_angpix: float = 0.0, log=print) -> np.ndarray:
    """A reference map on the particles' grid: its pixel size is ``ref_angpix``, else the header's,
    else the particles'; a map of another pixel or box size is resampled onto the particles' grid
    (Fourier crop/pad, one note), like relion_refine."""
    from ..io.resample import resample_volume

    if not path:
        raise InputError("required (or --continue)", field=flag)
    ref, apix = read_map(path, flag)
    if not np.any(ref):
        raise InputError("map is empty (all zeros)", file=path, field="data")
    apix = float(ref_angpix) if ref_angpix and ref_angpix > 0 else (apix if apix > 0 else float(ps.angpix))
    if ref.shape[0] != ps.box or abs(apix - ps.angpix) > 1e-3 * ps.angpix:
        out = resample_volume(ref, apix, ps.box, float(ps.angpix))
        log("%s: %s: box %d at %.4f A/px resampled to the particles' box %d at %.4f A/px" % (
            flag, path, ref.shape[0], apix, ps.box, ps.angpix))
        ref = out
    return ref


def read_mask(path: str, ps, flag: str) -> None:
    """Check a mask: a cubic map of the particles' box with values in [0, 1]."""
    m, _ = read_map(path, flag)
    if m.shape[0] != ps.box:
        raise InputError("box %d differs from the particles' box %d" % (m.shape[0], ps.box), file=path, field="box")
    if m.min() < -1e-3 or m.max() > 1.0 + 1e-3:
        raise InputError("mask values must lie in [0, 1] (found %.3g..%.3g)" % (m.min(), m.max()), file=path,
                         field="data")
