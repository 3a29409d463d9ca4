"""RELION optics groups (data_optics) and the conversion of RELION 3.0-style particle tables."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from hpcem.errors import InputError

# optics-level CTF columns -> (key in ctf_params, OpticsGroup attribute)
_OPTICS_CTF = {"rlnVoltage": "voltage", "rlnSphericalAberration": "cs",
               "rlnAmplitudeContrast": "amp_contrast"}
_PIXEL_TOL = 1e-4  # relative tolerance when comparing pixel sizes


@dataclass(frozen=True)
class OpticsGroup:
    """One RELION optics group. Lengths in Angstrom, voltage in kV, Cs in mm."""

    number: int
    name: str
    angpix: float
    box: int
    voltage: float | None = None
    cs: float | None = None
    amp_contrast: float | None = None
    ctf_premultiplied: bool = False

    @property
    def ctf_data_are_ctf_premultiplied(self) -> bool:
        return self.ctf_premultiplied


def _finite_float(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def build_optics(ot: pd.DataFrame, src: str, angpix: float | None):
    """Validated optics groups of a data_optics table: (table, {number: OpticsGroup}, box, pixel
    size), box and pixel size of the common grid being the first group's (RELION's reference
    pixel size; the other groups' images are resampled to it, :mod:`hpcem.io.resample`)."""
    if "rlnOpticsGroup" not in ot.columns:
        if len(ot) == 1:
            ot = ot.copy()
            ot["rlnOpticsGroup"] = 1
        else:
            raise InputError("data_optics has no rlnOpticsGroup column", file=src,
                             field="rlnOpticsGroup")
    if len(ot) == 0:
        raise InputError("data_optics is empty", file=src, field="data_optics")
    if "rlnImagePixelSize" not in ot.columns:
        if angpix is None:
            raise InputError("data_optics has no rlnImagePixelSize; give the pixel size",
                             file=src, field="rlnImagePixelSize")
        ot = ot.copy()
        ot["rlnImagePixelSize"] = float(angpix)
    optics: dict[int, OpticsGroup] = {}
    for _, row in ot.iterrows():
        try:
            num = int(row["rlnOpticsGroup"])
        except (TypeError, ValueError):
            raise InputError(f"optics group number {row['rlnOpticsGroup']!r} is not an integer",
                             file=src, field="rlnOpticsGroup") from None
        if num in optics:
            raise InputError(f"optics group {num} defined twice", file=src, field="rlnOpticsGroup")
        px = _finite_float(row["rlnImagePixelSize"])
        if px is None or px <= 0:
            raise InputError(f"optics group {num}: pixel size {row['rlnImagePixelSize']} must be "
                             "positive", file=src, field="rlnImagePixelSize")
        box = 0
        if "rlnImageSize" in ot.columns:
            b = _finite_float(row["rlnImageSize"])
            if b is None or b <= 0 or b != int(b):
                raise InputError(f"optics group {num}: image size {row['rlnImageSize']} is not a "
                                 "positive integer", file=src, field="rlnImageSize")
            box = int(b)
        vals = {}
        for col, attr in _OPTICS_CTF.items():
            vals[attr] = _finite_float(row[col]) if col in ot.columns else None
        pre = False
        if "rlnCtfDataAreCtfPremultiplied" in ot.columns:
            pre = bool(int(row["rlnCtfDataAreCtfPremultiplied"]))
        name = str(row["rlnOpticsGroupName"]) if "rlnOpticsGroupName" in ot.columns \
            else f"opticsGroup{num}"
        optics[num] = OpticsGroup(num, name, px, box, ctf_premultiplied=pre, **vals)
    first = optics[min(optics)]
    return ot, dict(sorted(optics.items())), first.box, float(first.angpix)


def mixed_groups_note(optics: dict, box: int, angpix: float) -> str | None:
    """A one-line note when optics groups differ in pixel or box size from the common grid (the
    first group's), or None."""
    other = [g for g in optics.values()
             if abs(g.angpix - angpix) > _PIXEL_TOL * angpix or (g.box and box and g.box != box)]
    if not other:
        return None
    return ("optics groups %s differ from group %d's %.4g A/px, %d px: their images are resampled to it"
            % (", ".join("%d (%.4g A/px, %d px)" % (g.number, g.angpix, g.box) for g in other),
               min(optics), angpix, box))


def convert_relion30(df: pd.DataFrame, path: str, angpix: float | None):
    """A RELION 3.0-style particle table as (particles, optics) tables of one optics group:
    pixel size from rlnImagePixelSize, rlnDetectorPixelSize + rlnMagnification or ``angpix``;
    constant optics columns moved to the group; rlnOriginX/Y (px) converted to Angstrom."""
    df = df.copy()
    if "rlnImagePixelSize" in df.columns:
        ps = df["rlnImagePixelSize"].to_numpy(np.float64)
        field = "rlnImagePixelSize"
    elif "rlnDetectorPixelSize" in df.columns and "rlnMagnification" in df.columns:
        ps = df["rlnDetectorPixelSize"].to_numpy(np.float64) * 1e4 / \
            df["rlnMagnification"].to_numpy(np.float64)
        field = "rlnDetectorPixelSize"
    elif angpix is not None:
        ps = np.full(len(df), float(angpix))
        field = "angpix"
    else:
        raise InputError("no pixel size: RELION 3.0-style file without rlnDetectorPixelSize + "
                         "rlnMagnification; give the pixel size (--angpix)",
                         file=path, field="rlnImagePixelSize")
    if len(ps) and (not np.all(np.isfinite(ps)) or np.any(ps <= 0)):
        raise InputError("pixel size must be positive", file=path, field=field)
    px = float(ps[0]) if len(ps) else (float(angpix) if angpix else 1.0)
    if len(ps) and np.any(np.abs(ps - px) > _PIXEL_TOL * px):
        raise InputError("pixel size varies between particles; not supported",
                         file=path, field=field)
    optics = {"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
              "rlnImagePixelSize": [px]}
    for c in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
        if c in df.columns:
            v = df[c].to_numpy(np.float64)
            optics[c] = [float(v[0])] if len(v) else [np.nan]
            if len(v) and np.allclose(v, v[0], rtol=1e-9, atol=0, equal_nan=True):
                df = df.drop(columns=c)  # constant: lives in the optics group
            # else: kept per particle, and ctf_params() uses the per-particle values
    for old, new in (("rlnOriginX", "rlnOriginXAngst"), ("rlnOriginY", "rlnOriginYAngst")):
        if old in df.columns:
            if new not in df.columns:
                df[new] = df[old].to_numpy(np.float64) * px
            df = df.drop(columns=old)
    for c in ("rlnImagePixelSize",):
        if c in df.columns:
            df = df.drop(columns=c)
    df["rlnOpticsGroup"] = 1
    return df, pd.DataFrame(optics)

