"""RELION-5 tomography tables: the tomogram table (``tomograms.star``) and particle tables of
tomogram coordinates.

Tomograms: a loop (RELION-5 names it ``data_global``) with ``rlnTomoName`` and
``rlnTomoReconstructedTomogram`` (the tomogram MRC; a relative path is looked up from the working
directory, then from the STAR file's folder); the voxel size is the MRC header's, else
``rlnTomoTiltSeriesPixelSize`` times ``rlnTomoTomogramBinning`` (default 1).

Particles (``data_particles``): ``rlnTomoName``, ``rlnCoordinateX/Y/Z`` in tomogram voxels
(0-based, voxel centres) or RELION-5's ``rlnCenteredCoordinateX/Y/ZAngst`` (Angstrom from the
tomogram centre, ``(coordinate - size/2) * voxel size``), ``rlnClassNumber`` (species 1..S).
Written tables carry both coordinate forms.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hpcem.errors import InputError
from hpcem.io.mrc import read_header
from hpcem.io.star import read_star, write_star

COORDS = ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")
CENTRED = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst")


@dataclass(frozen=True)
class TomoEntry:
    """One tomogram of a tomogram table: name, MRC path, voxel size (A) and shape (nz, ny, nx)."""

    name: str
    path: str
    angpix: float
    shape: tuple

    @property
    def centre(self) -> np.ndarray:
        """RELION-5's centre (x, y, z) in voxels: size / 2."""
        return np.array(self.shape[::-1], np.float64) / 2.0


def _first_block(path, blocks: dict, prefer: tuple) -> pd.DataFrame:
    for name in prefer:
        if name in blocks:
            return blocks[name]
    return next(iter(blocks.values()))


def _resolve(name: str, star_dir: Path) -> Path | None:
    p = Path(name)
    if p.is_absolute():
        return p if p.is_file() else None
    for base in (Path.cwd(), star_dir):
        if (base / p).is_file():
            return (base / p).resolve()
    return None


def _require(df: pd.DataFrame, cols, path, what: str) -> None:
    for c in cols:
        if c not in df.columns:
            raise InputError("missing column (%s)" % what, file=str(path), field=c)


def read_tomograms(path) -> list[TomoEntry]:
    """The tomograms of a RELION-5 tomogram table, every MRC header checked (see the module
    docstring); one InputError naming the file and the field for anything missing."""
    df = _first_block(path, read_star(path), ("global", "tomograms", ""))
    _require(df, ("rlnTomoName", "rlnTomoReconstructedTomogram"), path, "a RELION-5 tomogram table")
    star_dir = Path(path).resolve().parent
    names = df["rlnTomoName"].astype(str).tolist()
    if len(set(names)) != len(names):
        raise InputError("tomogram names repeat", file=str(path), field="rlnTomoName")
    out = []
    for i, row in df.reset_index(drop=True).iterrows():       # a loop over tomograms, not voxels
        mrc = _resolve(str(row["rlnTomoReconstructedTomogram"]), star_dir)
        if mrc is None:
            raise InputError("row %d: tomogram %s not found" % (i + 1, row["rlnTomoReconstructedTomogram"]),
                             file=str(path), field="rlnTomoReconstructedTomogram")
        h = read_header(mrc)
        apix = h.angpix
        if not apix > 0:
            apix = float(row.get("rlnTomoTiltSeriesPixelSize", 0.0) or 0.0) * float(
                row.get("rlnTomoTomogramBinning", 1.0) or 1.0)
        if not apix > 0:
            raise InputError("row %d: no voxel size in %s's header nor in the table" % (i + 1, mrc),
                             file=str(path), field="rlnTomoTiltSeriesPixelSize")
        out.append(TomoEntry(str(row["rlnTomoName"]), str(mrc), float(apix), (h.nz, h.ny, h.nx)))
    if not out:
        raise InputError("no tomograms", file=str(path), field="rlnTomoName")
    return out


def tomograms_table(entries, voltage=300.0, cs=2.7, amp_contrast=0.1) -> pd.DataFrame:
    """RELION-5's tomogram table (``data_global``) of :class:`TomoEntry` rows."""
    return pd.DataFrame({
        "rlnTomoName": [e.name for e in entries],
        "rlnVoltage": voltage, "rlnSphericalAberration": cs, "rlnAmplitudeContrast": amp_contrast,
        "rlnMicrographOriginalPixelSize": [e.angpix for e in entries],
        "rlnTomoHand": -1,
        "rlnTomoTiltSeriesPixelSize": [e.angpix for e in entries],
        "rlnTomoTomogramBinning": 1.0,
        "rlnTomoSizeX": [e.shape[2] for e in entries],
        "rlnTomoSizeY": [e.shape[1] for e in entries],
        "rlnTomoSizeZ": [e.shape[0] for e in entries],
        "rlnTomoReconstructedTomogram": [e.path for e in entries],
    })


def write_tomograms(path, entries, **kw) -> None:
    write_star(path, {"global": tomograms_table(entries, **kw)})


def particles_table(tomo: TomoEntry, coords_xyz, classes, extra: dict | None = None) -> pd.DataFrame:
    """Particle rows of one tomogram: name, voxel and centred Angstrom coordinates, class, extras."""
    c = np.asarray(coords_xyz, np.float64).reshape(-1, 3)
    centred = (c - tomo.centre[None]) * tomo.angpix
    d = {"rlnTomoName": [tomo.name] * len(c)}
    d.update({k: c[:, i] for i, k in enumerate(COORDS)})
    d.update({k: centred[:, i] for i, k in enumerate(CENTRED)})
    d["rlnClassNumber"] = np.asarray(classes, np.int64).reshape(-1)
    d.update(extra or {})
    return pd.DataFrame(d)


def write_particles(path, table: pd.DataFrame) -> None:
    write_star(path, {"particles": table})


@dataclass(frozen=True)
class TomoParticles:
    """Particles of a table, by tomogram: ``coords[name]`` (N, 3) x, y, z in voxels, ``classes[name]``
    (N,) 1..S, and ``score[name]`` when the table has one (``rlnAutopickFigureOfMerit``)."""

    coords: dict
    classes: dict
    score: dict


def read_particles(path, tomos: dict | None, require_class: bool = True, others: str = "error") -> TomoParticles:
    """A particle table's coordinates per tomogram (``tomos``: name -> :class:`TomoEntry`, used to
    convert centred Angstrom coordinates); rows of tomograms not in ``tomos`` are an InputError
    (``others="skip"``: left out).  Without ``tomos`` the table needs voxel coordinates."""
    if not os.path.isfile(str(path)):
        raise InputError("particle STAR file not found", file=str(path), field="file")
    df = _first_block(path, read_star(path), ("particles", ""))
    _require(df, ("rlnTomoName",), path, "a tomography particle table")
    if require_class:
        _require(df, ("rlnClassNumber",), path, "species 1..S")
    voxels = all(c in df.columns for c in COORDS)
    if not voxels and not all(c in df.columns for c in CENTRED):
        raise InputError("needs rlnCoordinateX/Y/Z (voxels) or rlnCenteredCoordinateX/Y/ZAngst",
                         file=str(path), field="rlnCoordinateX")
    if tomos is None and not voxels:
        raise InputError("centred coordinates need the tomogram table (--i)", file=str(path), field=CENTRED[0])
    names = df["rlnTomoName"].astype(str).to_numpy()
    if tomos is not None and others == "skip":
        keep = np.isin(names, list(tomos))
        df, names = df[keep].reset_index(drop=True), names[keep]
    unknown = sorted(set(names) - set(tomos)) if tomos is not None else []
    if unknown:
        raise InputError("tomogram %s is not in the tomogram table" % unknown[0], file=str(path),
                         field="rlnTomoName")
    cls = df["rlnClassNumber"].to_numpy() if "rlnClassNumber" in df.columns else np.ones(len(df))
    if require_class and (not np.all(np.isfinite(cls)) or np.any(cls < 1) or np.any(cls != np.round(cls))):
        raise InputError("class numbers must be integers >= 1", file=str(path), field="rlnClassNumber")
    score = df["rlnAutopickFigureOfMerit"].to_numpy(np.float64) if "rlnAutopickFigureOfMerit" in df else None
    out = TomoParticles({}, {}, {})
    for name in dict.fromkeys(names):                          # a loop over tomograms
        sel = names == name
        if voxels:
            xyz = df.loc[sel, list(COORDS)].to_numpy(np.float64)
        else:
            e = tomos[name]
            xyz = df.loc[sel, list(CENTRED)].to_numpy(np.float64) / e.angpix + e.centre[None]
        if not np.all(np.isfinite(xyz)):
            raise InputError("non-finite coordinates for tomogram %s" % name, file=str(path), field=COORDS[0])
        out.coords[name] = xyz
        out.classes[name] = cls[sel].astype(np.int64)
        if score is not None:
            out.score[name] = score[sel]
    return out
